"""The entry points the kernel's Rust side calls, each with JSON strings in and out: `start`
(once per lane), `execute`, `comm`, `query`, `stop`, `other_threads` and `restore`. The package
re-exports them; this module ties the other parts together."""

import builtins
import contextlib
import contextvars
import functools
import getpass
import glob
import json
import os
import sys
import threading

import _parakernel

from . import fresh, lane, libraries, magics, messages, queries, shell, streams, subinterpreter


def _run_startup_files(shell):
    # What InteractiveShellApp does for ipykernel: $PYTHONSTARTUP, then the profile's startup/.
    startup = os.environ.get("PYTHONSTARTUP")
    files = [startup] if startup and os.path.isfile(startup) else []
    startup_dir = shell.profile_dir.startup_dir
    files += sorted(
        glob.glob(os.path.join(startup_dir, "*.py")) + glob.glob(os.path.join(startup_dir, "*.ipy"))
    )
    for path in files:
        try:
            if path.endswith(".ipy"):
                shell.safe_execfile_ipy(path)
            else:
                shell.safe_execfile(path, shell.user_ns)
        except Exception:
            shell.showtraceback()


def start(options_json):
    """Set up this interpreter's streams, environment and shell. Called once per lane."""
    options = json.loads(options_json)
    lane.name = options.get("lane", "main")
    lane.fresh = bool(options.get("fresh"))

    sys.stdout = streams.OutStream("stdout", _parakernel.write_stdout)
    sys.stderr = streams.OutStream("stderr", _parakernel.write_stderr)
    if not options.get("main"):
        subinterpreter.setup_subinterpreter()

    if options.get("main"):
        import signal

        # SIGINT means KeyboardInterrupt in the running cell, whatever handler the host
        # process had when Python started.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "MPLBACKEND" not in os.environ:
            import importlib.util

            if importlib.util.find_spec("matplotlib_inline") is not None:
                os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

    # As IPython's shell app: the working directory is importable, after the standard library.
    if "" not in sys.path and not sys.flags.safe_path:
        for index, path in enumerate(sys.path):
            if os.path.basename(path) in ("site-packages", "dist-packages"):
                sys.path.insert(index, "")
                break
        else:
            sys.path.append("")

    messages.install_comms()

    if options.get("shell_on_demand"):
        # `parakernel run`: the main lane's shell is made by the first job that needs it (a run
        # of lane notebooks may never need it, and it costs about 15 MiB).
        del lane.shell
        lane.make_shell = functools.partial(_make_shell, options)
        return
    _make_shell(options)


def _make_shell(options):
    """Makes the lane's IPython shell (`lane.shell`) and registers parakernel's magics."""
    try:
        from traitlets.config import Config
        import IPython  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"parakernel runs cells with IPython, which the environment {sys.prefix} lacks "
            f"({error}); install it with: {sys.executable} -m pip install ipython"
        ) from error

    config = Config()
    # The kernel keeps history (one record for every lane); IPython's history thread would also
    # hang interpreter teardown.
    config.HistoryManager.enabled = False
    shell_class = shell.define_shell_classes()
    libraries.stand_in_for_zmqshell(shell_class)
    libraries.lane_clocks()
    lane.shell = shell_class.instance(config=config)
    lane.shell.kernel = lane.kernel
    magics.register_magics(lane.shell)

    session_name = os.environ.get("JPY_SESSION_NAME")
    if session_name:
        lane.shell.user_ns["__session__"] = session_name
    if options.get("main"):
        # Startup files often import numpy & co., which subinterpreter lanes refuse: they run in
        # the main lane only.
        _run_startup_files(lane.shell)
    if lane.fresh:
        # Measured (DESIGN.md): without `random` imported here, each cell that imports it (as
        # tempfile, uuid and others do) grew the lane after its restore.
        import gc
        import random  # noqa: F401

        fresh.warm_up(lane.shell)
        fresh.snapshot()
        # The warm state is permanent: frozen, the collection after each job (restore) looks
        # only at what the job left (measured: 4 ms -> well under 1 ms).
        gc.collect()
        gc.freeze()


def _error_content(exc):
    return {"status": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": []}


def execute(job_json, code):
    """Run one cell, as ipykernel's do_execute; returns the execute_reply content."""
    job = json.loads(job_json)
    moves = job.get("transfer") or {}
    quiet = job["silent"] and not code.strip() and not job["user_expressions"] and not (moves.get("inputs") or moves.get("outputs"))
    if quiet and lane.make_shell is not None:
        # Nothing to run, in a lane whose shell is made on demand and not made yet (`parakernel
        # run` sends this to learn that the main lane is up): answered without making it.
        reply = {"status": "ok", "execution_count": job["execution_count"], "user_expressions": {}, "payload": []}
        return messages.dumps(reply)
    lane.kernel.parent = {"header": job["parent_header"]}
    shell = lane.shell
    shell.execution_count = job["execution_count"]

    saved_input, saved_getpass = builtins.input, getpass.getpass
    builtins.input, getpass.getpass = streams.raw_input, streams.getpass
    run = shell.run_cell
    if lane.fresh:
        # A fresh lane keeps nothing of a cell, context variables included (and a fresh context
        # per cell kept the lane's memory flat: DESIGN.md).
        run = functools.partial(contextvars.Context().run, shell.run_cell)
        fresh.before_job["environ"], fresh.before_job["cwd"] = dict(os.environ), os.getcwd()
    transfer = job.get("transfer") or {}
    shell._last_traceback = None
    try:
        home = transfer.get("home")
        failed = transfer.get("inputs") and _copy_in(shell, transfer["inputs"], home)
        if failed:
            return _failed(shell, job, failed)
        result = run(code, store_history=job["store_history"], silent=job["silent"])
        failed = transfer.get("outputs") and result.success and _copy_out(shell, transfer["outputs"], home)
        if failed:
            return _failed(shell, job, failed)
    finally:
        builtins.input, getpass.getpass = saved_input, saved_getpass
    # With the history database off, IPython still queues every cell's source for it, forever.
    history = shell.history_manager
    if history is not None and not history.enabled:
        history.db_input_cache.clear()
        history.db_output_cache.clear()
    if history is not None and history.input_hist_parsed:
        # A transformed cell equal to the raw one (a non-ASCII cell, see transform_cell) is the
        # raw one in `In` too: one copy of the cell in the history, not two.
        parsed, raw = history.input_hist_parsed, history.input_hist_raw
        if parsed[-1] is not raw[-1] and parsed[-1] == raw[-1]:
            parsed[-1] = raw[-1]

    error = result.error_before_exec if result.error_before_exec is not None else result.error_in_exec
    if result.success and not getattr(shell, "_last_traceback_during_displayhook", False):
        reply = {"status": "ok"}
    else:
        if error is not None:
            ename, evalue = str(type(error).__name__), str(error)
        else:
            # The result's repr failed: report that exception (ipykernel says NoneType here).
            ename, evalue = getattr(shell, "_last_error", None) or ("NoneType", "None")
        reply = {
            "status": "error",
            "traceback": shell._last_traceback or [],
            "ename": ename,
            "evalue": evalue,
        }
    reply["execution_count"] = job["execution_count"]
    if reply["status"] == "ok":
        reply["user_expressions"] = shell.user_expressions(job["user_expressions"] or {})
    else:
        reply["user_expressions"] = {}
    reply["payload"] = shell.payload_manager.read_payload()
    shell.payload_manager.clear_payload()
    return messages.dumps(reply)


def _copy_in(shell, names, home):
    """`--in`: once the home lane (the main lane, or with one lane per session the session's
    own) has run every cell sent before this one, its values of `names` are copied into this
    lane. Returns the error (shown under the cell) if that fails."""
    from .magics import _call

    try:
        _call("wait", lanes=[home or "main"])
        shell.user_ns.update(_parakernel.home_values(home, names))
    except BaseException as error:  # noqa: BLE001 - shown under the cell, as its own errors are
        shell.showtraceback()
        return error
    return None


def _copy_out(shell, names, home):
    """`--out`: the cell's values of `names` are copied into the home lane. Returns the error
    (shown under the cell) if a name was not set or a value cannot cross."""
    try:
        missing = [name for name in names if name not in shell.user_ns]
        if missing:
            raise NameError(
                f"--out {', '.join(missing)}: the cell did not set "
                + ", ".join(repr(name) for name in missing)
            )
        _parakernel.set_home_values(home, list(names), [shell.user_ns[name] for name in names])
    except BaseException as error:  # noqa: BLE001 - shown under the cell
        shell.showtraceback()
        return error
    return None


def _failed(shell, job, error):
    """The error reply of a cell whose `--in` or `--out` failed (its traceback already shown)."""
    return messages.dumps({
        "status": "error",
        "execution_count": job["execution_count"],
        "ename": type(error).__name__,
        "evalue": str(error),
        "traceback": shell._last_traceback or [],
        "user_expressions": {},
        "payload": [],
    })


def comm(msg_type, message_json, buffers):
    """Feed a frontend's comm_open / comm_msg / comm_close to the comm manager."""
    if lane.comm_manager is None:
        return
    message = json.loads(message_json)
    header = message["header"]
    lane.kernel.parent = {"header": header}
    msg = {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": msg_type,
        "parent_header": {},
        "metadata": message["metadata"],
        "content": message["content"],
        "buffers": [memoryview(buffer) for buffer in buffers],
    }
    handler = getattr(lane.comm_manager, msg_type, None)
    if handler is None:
        raise ValueError(f"not a comm message type: {msg_type!r}")
    handler(None, None, msg)


def query(query_json):
    """Answer complete / inspect / is_complete / comm_info; runs beside a busy cell."""
    request = json.loads(query_json)
    kind = request["kind"]
    # A busy cell takes the GIL back for a whole switch interval (5 ms) each time this thread
    # lets go of it (file access, imports), which turned a 5 ms Jedi completion into seconds.
    # A short interval for the length of the query keeps it near its idle speed.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.0001))
    try:
        if kind == "complete":
            reply = queries.complete(request["code"], request["cursor_pos"])
        elif kind == "inspect":
            reply = queries.inspect(request["code"], request["cursor_pos"], request["detail_level"])
        elif kind == "is_complete":
            reply = queries.is_complete(request["code"])
        elif kind == "comm_info":
            reply = queries.comm_info(request["target_name"])
        else:
            raise ValueError(f"unknown query {kind!r}")
    except Exception as exc:
        reply = _error_content(exc)
    finally:
        sys.setswitchinterval(switch_interval)
    return messages.dumps(reply)


def stop(timeout):
    """Before finalizing: wait up to `timeout` seconds for the threads cells started.

    Returns True when no non-daemon thread is left, so Py_FinalizeEx (or Py_EndInterpreter)
    will not wait forever.
    """
    import time

    # `_daemonic`, not `daemon`: a lane's daemon threads are plain threads that read daemon
    # (subinterpreter._lane_daemon_threads), and its interpreter cannot end while they run.
    deadline = time.monotonic() + timeout
    for thread in _started_threads():
        if not thread._daemonic:
            thread.join(max(0.0, deadline - time.monotonic()))
    done = not any(not t._daemonic for t in _started_threads())
    if lane.name != "main":
        # To `threading` the lane's own thread is a dummy thread, forgotten when its thread
        # state is cleared: that is after the module is torn down when the interpreter ends,
        # and it then fails ("Exception ignored in _DeleteDummyThreadOnDel.__del__"). Now, as
        # the last thing this thread does with `threading`.
        with contextlib.suppress(AttributeError):
            del threading._thread_local_info._track_dummy_thread_ref
    return done


def _started_threads():
    """Threads of this interpreter that cells started and that still run. Not the lane's own
    thread, nor the kernel's threads that visit it (queries, interrupts): Python knows those
    as dummy threads. In a subinterpreter `threading.main_thread()` stands for the process's
    main thread (it runs the main lane, not this interpreter)."""
    current = threading.current_thread()
    main = threading.main_thread()
    return [
        thread
        for thread in threading.enumerate()
        if thread is not current
        and (thread is not main or lane.name == "main")
        and not isinstance(thread, threading._DummyThread)
        and thread.ident is not None
        and thread.is_alive()
    ]


def other_threads():
    """The idents of the threads cells started, as JSON (the lane raises SystemExit in them
    before it ends)."""
    return json.dumps([thread.ident for thread in _started_threads()])


def restore():
    """After a fresh lane's job: return to the warm state. False when that cannot be trusted
    (a thread the cell started still runs, an asyncio task is pending, a step failed): the
    kernel then replaces the interpreter."""
    if fresh.warm_state is None or _started_threads():
        return False
    try:
        fresh.restore_warm_state()
    except Exception:
        import traceback

        traceback.print_exc(file=sys.__stderr__)
        return False
    return True

