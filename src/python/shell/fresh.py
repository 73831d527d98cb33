"""A fresh lane's warm state and the way back to it: `warm_up` runs once what every cell runs,
`snapshot` records the interpreter and the shell as they then are, and `restore_warm_state` puts
them back after each job, so the next cell starts clean in a warm interpreter."""

import builtins
import os
import sys
import threading

from . import lane, messages

# A fresh lane's warm state, taken at the end of entry.start (see snapshot / restore_warm_state).
warm_state = None


def warm_up(shell):
    """Run what every cell runs once (IPython imports hashlib, bdb, ... at the first cell, and
    the traceback formatting at the first error), so that a restore does not drop those
    modules and the next cell does not import them again."""
    messages.muted = True  # nothing of this goes out
    try:
        shell.run_cell("pass", store_history=False, silent=True)
        shell.run_cell("1 / 0", store_history=False, silent=True)
    finally:
        messages.muted = False
        shell._last_traceback = None
        shell._last_error = None
        for name in ("last_exc", "last_type", "last_value", "last_traceback"):
            if hasattr(sys, name):
                delattr(sys, name)


def snapshot():
    """Record a fresh lane's warm state; restore_warm_state returns to it after every job."""
    import linecache
    import warnings

    global warm_state
    shell = lane.shell
    history = shell.history_manager
    manager = shell.magics_manager
    transformers = shell.input_transformer_manager
    warm = {
        "user_ns": dict(shell.user_ns),
        "user_ns_hidden": dict(shell.user_ns_hidden),
        "modules": dict(sys.modules),
        "path": list(sys.path),
        "meta_path": list(sys.meta_path),
        "path_hooks": list(sys.path_hooks),
        "path_importer_cache": dict(sys.path_importer_cache),
        "builtins": dict(builtins.__dict__),
        "linecache": set(linecache.cache),
        "filename_map": dict(shell.compile._filename_map),
        "compile_flags": shell.compile.flags,
        "warnings": (list(warnings.filters), warnings.showwarning, warnings.formatwarning),
        "sys_hooks": (sys.stdout, sys.stderr, sys.stdin, sys.displayhook, sys.excepthook,
                      sys.unraisablehook, sys.breakpointhook, threading.excepthook),
        # %config, %xmode, %precision, %pdb, %autoawait and friends.
        "settings": {name: getattr(shell, name) for name in shell.trait_names(config=True)},
        "xmode": shell.InteractiveTB.mode,
        "precision": shell.display_formatter.formatters["text/plain"].float_precision,
        "limits": (sys.getrecursionlimit(), sys.getswitchinterval()),
        "magics": {kind: dict(table) for kind, table in manager.magics.items()},
        "registry": dict(manager.registry),
        # IPython 9 loads some magics (%xmode, ...) at first use and remembers that it did:
        # with the table put back to its placeholders, it must forget that too.
        "loaded_lazy": set(getattr(manager, "_loaded_lazy", ())),
        "events": {name: list(callbacks) for name, callbacks in shell.events.callbacks.items()},
        "ast_transformers": list(shell.ast_transformers),
        "input_transformers_post": list(shell.input_transformers_post),
        "cleanup_transforms": list(transformers.cleanup_transforms),
        "line_transforms": list(transformers.line_transforms),
        "formatters": {
            mime: (dict(f.type_printers), dict(f.deferred_printers), dict(f.singleton_printers))
            for mime, f in shell.display_formatter.formatters.items()
        },
        "extensions": set(shell.extension_manager.loaded),
        "custom": (shell.custom_exceptions, shell.CustomTB),
        "history": (list(history.input_hist_parsed), list(history.input_hist_raw), list(history.dir_hist)),
    }
    if "logging" in sys.modules:
        import logging

        warm["logging"] = (
            list(logging.root.handlers),
            logging.root.level,
            set(logging.Logger.manager.loggerDict),
        )
    warm_state = warm


def _restore_dict(target, warm):
    for key in [key for key in target if key not in warm]:
        del target[key]
    for key, value in warm.items():
        if target.get(key, _MISSING) is not value:
            target[key] = value


_MISSING = object()

# What a fresh lane's job found of the process-wide state it may change (set by entry.execute).
before_job = {"environ": None, "cwd": None}


def restore_warm_state():
    """Return to the warm state (entry.restore checks first that this can be trusted)."""
    import atexit
    import gc
    import linecache
    import random
    import warnings

    shell = lane.shell
    warm = warm_state
    from IPython.core import async_helpers

    loop = async_helpers._asyncio_event_loop
    if loop is not None and not loop.is_closed():
        import asyncio

        if asyncio.all_tasks(loop):
            raise RuntimeError("asyncio tasks of the cell are still pending")

    sys.settrace(None)
    sys.setprofile(None)
    threading.settrace(None)
    threading.setprofile(None)
    (sys.stdout, sys.stderr, sys.stdin, sys.displayhook, sys.excepthook, sys.unraisablehook,
     sys.breakpointhook, threading.excepthook) = warm["sys_hooks"]
    sys.setrecursionlimit(warm["limits"][0])
    sys.setswitchinterval(warm["limits"][1])
    for name in ("last_exc", "last_type", "last_value", "last_traceback"):
        if hasattr(sys, name):
            delattr(sys, name)

    # The user's namespace and IPython's caches of the cell (In, Out, _N, _iN, tracebacks).
    _restore_dict(shell.user_ns, warm["user_ns"])
    _restore_dict(shell.user_ns_hidden, warm["user_ns_hidden"])
    history = shell.history_manager
    parsed, raw, dirs = warm["history"]
    history.input_hist_parsed[:] = parsed
    history.input_hist_raw[:] = raw
    history.dir_hist[:] = dirs
    history.output_hist.clear()
    history.output_hist_reprs.clear()
    history.db_input_cache.clear()
    history.db_output_cache.clear()
    history._i00 = history._i = history._ii = history._iii = ""
    displayhook = shell.displayhook
    displayhook._ = displayhook.___ = ""
    setattr(displayhook, "_DisplayHook__", "")
    shell.last_execution_result = None
    shell._last_traceback = None
    shell._last_error = None
    shell.payload_manager.clear_payload()
    shell.clear_main_mod_cache()
    lane.kernel.parent = {}
    shell.custom_exceptions, shell.CustomTB = warm["custom"]
    shell.compile.flags = warm["compile_flags"]
    shell.compile._filename_map.clear()
    shell.compile._filename_map.update(warm["filename_map"])
    for name in [name for name in linecache.cache if name not in warm["linecache"]]:
        del linecache.cache[name]

    # What a cell may have registered with IPython.
    manager = shell.magics_manager
    for kind, table in warm["magics"].items():
        manager.magics[kind].clear()
        manager.magics[kind].update(table)
    manager.registry.clear()
    manager.registry.update(warm["registry"])
    loaded_lazy = getattr(manager, "_loaded_lazy", None)
    if loaded_lazy is not None:
        loaded_lazy.intersection_update(warm["loaded_lazy"])
    for name, callbacks in warm["events"].items():
        shell.events.callbacks[name][:] = callbacks
    shell.ast_transformers[:] = warm["ast_transformers"]
    shell.input_transformers_post[:] = warm["input_transformers_post"]
    shell.input_transformer_manager.cleanup_transforms[:] = warm["cleanup_transforms"]
    shell.input_transformer_manager.line_transforms[:] = warm["line_transforms"]
    for mime, (types, deferred, singletons) in warm["formatters"].items():
        formatter = shell.display_formatter.formatters.get(mime)
        if formatter is not None:
            _restore_dict(formatter.type_printers, types)
            _restore_dict(formatter.deferred_printers, deferred)
            _restore_dict(formatter.singleton_printers, singletons)
    shell.extension_manager.loaded.intersection_update(warm["extensions"])
    for name, value in warm["settings"].items():
        if getattr(shell, name) is not value:
            setattr(shell, name, value)
    if shell.InteractiveTB.mode != warm["xmode"]:
        shell.InteractiveTB.set_mode(warm["xmode"])
    plain = shell.display_formatter.formatters["text/plain"]
    if plain.float_precision != warm["precision"]:
        plain.float_precision = warm["precision"]

    # The interpreter: modules, import system, builtins, environment, warnings, logging.
    dropped = [(name, module) for name, module in sys.modules.items() if name not in warm["modules"]]
    _restore_dict(sys.modules, warm["modules"])
    # The import system also bound each new submodule on its package: a package that stays
    # must not hand the old submodule to the next cell's `from package import submodule`.
    for name, module in dropped:
        package, _, child = name.rpartition(".")
        parent = sys.modules.get(package)
        if parent is not None and getattr(parent, child, None) is module:
            delattr(parent, child)
    sys.path[:] = warm["path"]
    sys.meta_path[:] = warm["meta_path"]
    sys.path_hooks[:] = warm["path_hooks"]
    _restore_dict(sys.path_importer_cache, warm["path_importer_cache"])
    _restore_dict(builtins.__dict__, warm["builtins"])
    # The environment and the working directory are the process's, shared with every lane:
    # what changed while the job ran is put back as it was when the job started, and nothing
    # another lane set before that is touched.
    before, before_job["environ"] = before_job["environ"], None
    if before is not None:
        environ = dict(os.environ)
        for key in [key for key in environ if key not in before]:
            del os.environ[key]
        for key, value in before.items():
            if environ.get(key) != value:
                os.environ[key] = value
    cwd, before_job["cwd"] = before_job["cwd"], None
    if cwd is not None and os.getcwd() != cwd:
        os.chdir(cwd)
    filters, showwarning, formatwarning = warm["warnings"]
    warnings.filters[:] = filters
    warnings.showwarning, warnings.formatwarning = showwarning, formatwarning
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()
    if "logging" in warm:
        import logging

        handlers, level, loggers = warm["logging"]
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
        for name in [name for name in logging.Logger.manager.loggerDict if name not in loggers]:
            del logging.Logger.manager.loggerDict[name]
    atexit._clear()
    random.seed()
    gc.collect()
