"""What a subinterpreter lane refuses or does differently, with errors that say what to do
instead: packages and extension modules that do not support subinterpreters, process features
(signals, fork, `os._exit`; daemon threads become plain threads that the lane ends), and
`!command` without a pseudo-terminal. `setup_subinterpreter` puts it all in place before IPython
is imported."""

import contextlib
import functools
import os
import sys
import threading

import _parakernel

from . import lane, streams, wakeable

# Packages whose extension modules refuse own-GIL subinterpreters (measured, DESIGN.md): refused
# at once, before numpy & co. print their own long explanation of a failed import.
_REFUSED_PACKAGES = frozenset({
    "numpy", "pandas", "matplotlib", "scipy", "sklearn", "orjson", "pydantic_core", "pyarrow",
    "readline", "curses", "_curses", "tkinter", "_tkinter",
})


def _refusal(module, detail):
    top = module.partition(".")[0]
    error = ImportError(
        f"{top} cannot be imported in lane {lane.name!r}: {detail}. {top} works in the main lane: "
        f"{lane.TO_MAIN}.",
        name=top,
    )
    return error


class _RefusedLoader:
    """Loader of a package known to refuse subinterpreters: fails at once, with the fix."""

    def __init__(self, name):
        self.name = name

    def create_module(self, spec):
        raise _refusal(
            spec.name, "its extension modules do not support subinterpreters (own GIL)"
        )

    def exec_module(self, module):  # pragma: no cover - create_module always raises
        raise _refusal(module.__name__, "it does not support subinterpreters")


class _RefusedFinder:
    """First on sys.meta_path in a lane: finds the known refusing packages (a spec is returned,
    so `importlib.util.find_spec` still answers; importing fails)."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in _REFUSED_PACKAGES:
            return None
        import importlib.machinery

        # A package that is not installed stays "not found" (ModuleNotFoundError, and
        # find_spec None), as libraries that probe for optional dependencies expect.
        if "." not in fullname and importlib.machinery.PathFinder.find_spec(fullname, path) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _RefusedLoader(fullname))

    @classmethod
    def invalidate_caches(cls):
        pass


def _guard_extension_loader():
    """Any other extension module that CPython refuses in a subinterpreter (single-phase init,
    no per-interpreter GIL support: PyO3 modules, most Cython and pybind11 ones) fails with an
    error naming its package and the fix, instead of CPython's bare message."""
    from importlib.machinery import ExtensionFileLoader

    original = ExtensionFileLoader.create_module

    def create_module(self, spec):
        try:
            return original(self, spec)
        except ImportError as error:
            if "subinterpreter" not in str(error):
                raise
            raise _refusal(
                spec.name,
                f"its extension module {spec.name} does not support subinterpreters ({error})",
            ) from None

    # Per interpreter: importlib's classes belong to this interpreter only.
    ExtensionFileLoader.create_module = create_module


def _guard_process_features():
    """signal.signal and os.fork (so multiprocessing's default start method) are refused in
    isolated subinterpreters: say what to do instead. os._exit is refused too: in a lane it
    would end the whole process, every other lane with it. Daemon threads, also refused there,
    are plain threads that the lane ends (_lane_daemon_threads)."""
    import signal

    original_signal = signal.signal

    def signal_(signalnum, handler):
        try:
            return original_signal(signalnum, handler)
        except ValueError as error:
            # A ValueError still, as libraries catch that one.
            raise ValueError(
                f"signal.signal() works only in the main lane ({error}): signals reach only the "
                f"main thread of the main interpreter. To handle signals, {lane.TO_MAIN}."
            ) from None

    signal_.__doc__ = original_signal.__doc__
    signal.signal = signal_

    if hasattr(os, "fork"):
        original_fork = os.fork

        def fork():
            try:
                return original_fork()
            except RuntimeError as error:
                raise RuntimeError(
                    f"os.fork() is not allowed in lane {lane.name!r} ({error}): CPython does not "
                    "fork subinterpreters. For multiprocessing use the spawn start method "
                    "(multiprocessing.get_context('spawn'), or "
                    "concurrent.futures.ProcessPoolExecutor(mp_context=...)), or run the cell in "
                    f"the main lane: {lane.TO_MAIN}."
                ) from None

        fork.__doc__ = original_fork.__doc__
        os.fork = fork

    if hasattr(os, "register_at_fork"):
        original_register = os.register_at_fork

        # A subinterpreter never forks, so its at-fork callbacks never run; but CPython keeps
        # them as long as the interpreter lives, and with each one the whole module that
        # registered it (asyncio, logging, concurrent.futures, ...): a fresh lane could never
        # free such a module dropped after a cell (measured: 2.1 MiB a cell importing asyncio).
        def register_at_fork(*, before=None, after_in_child=None, after_in_parent=None):
            callbacks = [c for c in (before, after_in_child, after_in_parent) if c is not None]
            if not callbacks:
                raise TypeError("At least one argument is required.")
            for callback in callbacks:
                if not callable(callback):
                    raise TypeError(f"'{type(callback).__name__}' object is not callable")

        register_at_fork.__doc__ = original_register.__doc__
        os.register_at_fork = register_at_fork

    original_exit = os._exit

    def _exit(status):
        raise RuntimeError(
            f"os._exit({status!r}) in lane {lane.name!r} would end the whole kernel process: "
            "every lane, the main lane and all their state, without a reply. To end this cell, "
            f"raise SystemExit or return; to end the lane, run `%lane stop {lane.name}` (or "
            f"`%lane restart {lane.name}`) from another cell; to end the kernel, restart it from "
            "the client."
        )

    _exit.__doc__ = original_exit.__doc__
    os._exit = _exit

    _lane_daemon_threads()


def _lane_daemon_threads():
    """Daemon threads in a lane. CPython refuses them in isolated subinterpreters (an
    interpreter cannot end while a thread of its runs), yet libraries start them for
    background chores (tqdm's monitor, watchdogs, pollers) and would warn or fail. Here a thread
    asked to be daemon (daemon=True, `thread.daemon = True`, or inherited from a daemon thread)
    starts as a plain thread, still reads `daemon == True`, and the lane ends it when the lane
    ends: before its interpreter ends, the lane raises SystemExit in every thread its cells
    started (entry.other_threads), blocking waits included (wakeable). What remains: such a
    thread does not end the moment the lane does if it is stuck inside C code; the lane is then
    set aside, as for any stuck thread, and a fresh lane's interpreter is replaced rather than
    reused while one still runs (as for any thread left running)."""
    thread = threading.Thread
    original_init, original_start, daemon = thread.__init__, thread.start, thread.daemon
    # The thread being started by the calling thread: Thread.start passes `self.daemon` to
    # CPython, which must read the real (plain) status there.
    starting = threading.local()

    @functools.wraps(original_init)
    def init(self, *args, daemon=None, **kwargs):
        original_init(self, *args, daemon=False if daemon else daemon, **kwargs)
        # daemon=None inherits the current thread's `daemon`, which reads True in a lane daemon
        # thread: Thread.__init__ then sets it without CPython's check.
        self._lane_daemon = bool(daemon if daemon is not None else self._daemonic)
        self._daemonic = False

    @functools.wraps(original_start)
    def start(self):
        starting.thread = self
        try:
            return original_start(self)
        finally:
            starting.thread = None

    def get_daemon(self):
        if self._daemonic:
            return True
        return getattr(self, "_lane_daemon", False) and getattr(starting, "thread", None) is not self

    def set_daemon(self, daemonic):
        # CPython's own checks (initialized, not started), then the lane's daemon status.
        daemon.fset(self, False)
        self._lane_daemon = bool(daemonic)

    thread.__init__, thread.start = init, start
    thread.daemon = property(get_daemon, set_daemon, doc=daemon.__doc__)


def system_with_pipes(command):
    """`!command` in a subinterpreter lane. IPython runs it on a pseudo-terminal (pexpect),
    which needs fork: refused in subinterpreters. Here it runs with its output on a pipe,
    printed as it comes; an interrupt sends SIGINT to the command (as IPython sends ^C) and the
    cell goes on. Returns the exit status as IPython does (negative: the ending signal)."""
    import codecs
    import select
    import signal
    import subprocess
    import time

    process = subprocess.Popen(
        ["/bin/sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    decoder = codecs.getincrementaldecoder(sys.getfilesystemencoding())("replace")
    fd = process.stdout.fileno()

    def pump(timeout):
        # select with a timeout: the lane thread comes back to Python often enough for an
        # interrupt (raised asynchronously) to land.
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return True
        data = os.read(fd, 65536)
        text = decoder.decode(data, final=not data)
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
        return bool(data)

    try:
        while pump(0.05):
            pass
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and pump(0.05):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.stdout.close()
    status = process.wait()
    # sh exits with 128 + n when its command died of signal n.
    return -(status - 128) if status > 128 else status


def setup_subinterpreter():
    """What every subinterpreter lane needs before IPython is imported."""
    import time

    # Signals never reach a subinterpreter's thread: an interrupt of the lane wakes this sleep.
    time.sleep = _parakernel.sleep
    sys.stdin = streams.InStream()
    sys.meta_path.insert(0, _RefusedFinder)
    _guard_extension_loader()
    _guard_process_features()
    wakeable.install()

