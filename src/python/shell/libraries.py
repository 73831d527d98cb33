"""What libraries look at, in every lane: the signs of a notebook kernel, and the CPU clock that
IPython's `%time`/`%%time` read.

How libraries decide "am I in a notebook?" (checked in their sources):
- tqdm.autonotebook (so tqdm.auto), 4.67 and later: `'ipykernel.zmqshell' in sys.modules`, then
  the shell's class name must not say qt or spyder; before that, `'IPKernelApp' in
  get_ipython().config`. tqdm.notebook itself needs only ipywidgets and IPython.display.
- rich, pandas, vizro and many notebooks: `get_ipython().__class__.__name__ ==
  'ZMQInteractiveShell'` (pandas: "zmq" in the class's str).
- transformers, older tqdm and many notebooks: `'IPKernelApp' in get_ipython().config`.
- plotly's default renderer: the class name, and `type(get_ipython()).__module__` starting with
  `ipykernel.` (else it falls back to a heavier renderer that also works).
- ipywidgets, yaml2plot-like helpers and old comm users: `get_ipython().kernel` (with
  `comm_manager`, `get_parent()`), or `from ipykernel.zmqshell import ZMQInteractiveShell` and
  `isinstance`.
- matplotlib (main lane only) reads MPLBACKEND, set to the inline backend at start; bokeh and
  altair are told by the user (`output_notebook()`, renderers) and publish display data.

So the shell class is named `ZMQInteractiveShell` (shell.py), its config has `IPKernelApp`,
`get_ipython().kernel` offers what libraries use (lane.Kernel), and the class's module is a
stand-in `ipykernel.zmqshell` that holds it. The stand-in is the module entry only: the
`ipykernel` package is not claimed, so `import ipykernel` (and its comm, kernelapp, ...) still
finds the real package, or fails as before where it is not installed.
"""

import sys
import types


STAND_IN = "ipykernel.zmqshell"


def stand_in_for_zmqshell(shell_class):
    """Makes `shell_class` the `ZMQInteractiveShell` of a module `ipykernel.zmqshell` in
    sys.modules (this interpreter's), unless the real module is already loaded."""
    if STAND_IN in sys.modules:
        return
    import importlib.machinery

    module = types.ModuleType(
        STAND_IN, "parakernel's lane shell, where libraries look for ipykernel's shell class"
    )
    # find_spec() of a loaded module answers its __spec__ (and raises when there is none).
    module.__spec__ = importlib.machinery.ModuleSpec(STAND_IN, None, origin="parakernel")
    module.ZMQInteractiveShell = shell_class
    # Where the class's source is, for `??` and tracebacks (inspect reads the module's file).
    home = sys.modules.get(shell_class.__module__)
    if getattr(home, "__file__", None):
        module.__file__ = home.__file__
    shell_class.__module__ = STAND_IN
    sys.modules[STAND_IN] = module


def lane_clocks():
    """IPython's `%time`, `%%time` and `%run -t` read the process's CPU time
    (`getrusage(RUSAGE_SELF)`, in IPython.utils.timing), which counts every lane that runs
    meanwhile, and the fresh lanes warming up. In every lane, the main lane included, they read
    the CPU time of the lane's thread instead (`RUSAGE_THREAD`): the thread that runs the lane's
    cells, whose time `%lanes` shows too. Threads a cell starts (a BLAS pool, say) are not
    counted, where ipykernel counts the whole process. Called after IPython is imported."""
    import resource

    from IPython.utils import timing

    if not hasattr(resource, "RUSAGE_THREAD"):
        return

    def clock2():
        return tuple(resource.getrusage(resource.RUSAGE_THREAD)[:2])

    def clocku():
        return clock2()[0]

    def clocks():
        return clock2()[1]

    def clock():
        user, system = clock2()
        return user + system

    for function, original in ((clock2, timing.clock2), (clocku, timing.clocku),
                               (clocks, timing.clocks), (clock, timing.clock)):
        function.__name__, function.__doc__ = original.__name__, original.__doc__
        setattr(timing, original.__name__, function)
