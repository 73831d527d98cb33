"""The IPython shell of one parakernel lane.

Shipped inside the parakernel binary and executed as the module `_parakernel_shell` in every
interpreter that runs cells. Rust calls the functions at the bottom (`start`, `execute`, `comm`,
`query`, `stop`) with JSON strings and gets JSON strings back; everything a cell publishes goes
out through the native module `_parakernel`, which knows the request the lane is running.

Behaviour follows ipykernel (ipkernel.py, zmqshell.py, displayhook.py, iostream.py) so that
notebooks and libraries see what they see under ipykernel.
"""

import base64
import builtins
import contextlib
import datetime
import getpass
import glob
import io
import json
import math
import numbers
import os
import sys
import threading
from collections.abc import Iterable

import _parakernel

_shell = None
_comm_manager = None


# --- JSON, as jupyter_client packs messages ------------------------------------------------------


def _json_default(obj):
    # jupyter_client.jsonutil.json_default: what a Session would accept.
    if isinstance(obj, datetime.datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=datetime.timezone.utc)
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, datetime.date):
        return obj.isoformat()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, Iterable) and not isinstance(obj, (str, dict)):
        return list(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise TypeError(f"{obj!r} is not JSON serializable")


def _json_clean(obj):
    # The fallback jupyter_client uses when plain packing fails (NaN, inf, odd keys).
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return repr(value) if math.isnan(value) or math.isinf(value) else value
    if isinstance(obj, dict):
        return {str(key): _json_clean(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_json_clean(value) for value in obj]
    return _json_clean(_json_default(obj))


def _dumps(obj):
    try:
        return json.dumps(obj, default=_json_default, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_json_clean(obj), ensure_ascii=False, allow_nan=False)


def _publish(msg_type, content, metadata=None, buffers=None):
    if buffers:
        buffers = [b if isinstance(b, bytes) else memoryview(b).tobytes() for b in buffers]
    _parakernel.publish(msg_type, _dumps(content), _dumps(metadata or {}), buffers or None)


# --- sys.stdout / sys.stderr ---------------------------------------------------------------------


class OutStream(io.TextIOBase):
    """A text stream whose writes become `stream` messages of the lane's current request.

    `write` is the native function itself (an instance attribute), so a `print` costs one
    call into Rust and nothing else.
    """

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, name, write):
        super().__init__()
        self._name = name
        self.write = write

    @property
    def name(self):
        return self._name

    @property
    def mode(self):
        return "w"

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        _parakernel.flush()

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation(f"{self._name} is a kernel stream and has no file descriptor")

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def close(self):
        # Like ipykernel's OutStream, closing a kernel stream is ignored: the next cell still
        # needs it.
        pass

    @property
    def closed(self):
        return False

    def __repr__(self):
        return f"<parakernel.OutStream name={self._name!r}>"


# --- input() and getpass -------------------------------------------------------------------------


def _input_request(prompt, password):
    try:
        value = _parakernel.input(str(prompt), password)
    except KeyboardInterrupt:
        # As ipykernel: a short traceback that ends here.
        raise KeyboardInterrupt("Interrupted by user") from None
    if value == "\x04":
        raise EOFError
    return value


def _raw_input(prompt=""):
    if not _parakernel.allow_stdin():
        from IPython.core.error import StdinNotImplementedError

        raise StdinNotImplementedError(
            "raw_input was called, but this frontend does not support input requests."
        )
    return _input_request(prompt, False)


def _getpass(prompt="Password: ", stream=None, *, echo_char=None):
    if not _parakernel.allow_stdin():
        from IPython.core.error import StdinNotImplementedError

        raise StdinNotImplementedError(
            "getpass was called, but this frontend does not support input requests."
        )
    if stream is not None or echo_char is not None:
        import warnings

        warnings.warn(
            "The `stream` and `echo_char` parameters of `getpass.getpass` have no effect "
            "in parakernel",
            UserWarning,
            stacklevel=2,
        )
    return _input_request(prompt, True)


# --- the shell -----------------------------------------------------------------------------------


def _define_shell_classes():
    """IPython is imported here, after sys.stdout and the environment are set up."""
    from IPython.core import page, payloadpage
    from IPython.core.autocall import ZMQExitAutocall
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell, InteractiveShellABC
    from IPython.core.usage import default_banner
    from traitlets import Any, CBool, Instance, Type, default

    class ParakernelDisplayHook(DisplayHook):
        """Publishes `execute_result` with the cell's execution count."""

        msg = None

        def start_displayhook(self):
            self.msg = {"data": {}, "metadata": {}}

        def write_output_prompt(self):
            if self.msg is not None:
                self.msg["execution_count"] = self.prompt_count

        def write_format_data(self, format_dict, md_dict=None):
            if self.msg is not None:
                self.msg["data"] = format_dict
                self.msg["metadata"] = md_dict or {}

        def finish_displayhook(self):
            msg, self.msg = self.msg, None
            if msg and msg["data"]:
                content = {
                    "execution_count": msg.get("execution_count", self.prompt_count),
                    "data": msg["data"],
                    "metadata": msg["metadata"],
                }
                _publish("execute_result", content)

    class ParakernelDisplayPublisher(DisplayPublisher):
        """`display_data`, `update_display_data` and `clear_output` for the current request."""

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            self._validate_data(data, metadata)
            content = {
                "data": data,
                "metadata": metadata if metadata is not None else {},
                "transient": transient if transient is not None else {},
            }
            _publish("update_display_data" if update else "display_data", content)

        def clear_output(self, wait=False):
            _publish("clear_output", {"wait": bool(wait)})

    class ZMQInteractiveShell(InteractiveShell):
        """The lane's shell.

        Named like ipykernel's shell on purpose: libraries (tqdm, plotly, many notebooks) decide
        "am I in a notebook?" by `get_ipython().__class__.__name__ == "ZMQInteractiveShell"`.
        """

        displayhook_class = Type(ParakernelDisplayHook)
        display_pub_class = Type(ParakernelDisplayPublisher)
        data_pub_class = Any()
        kernel = Any()
        readline_use = CBool(False)
        autoindent = CBool(False)
        exiter = Instance(ZMQExitAutocall)
        keepkernel_on_exit = None

        @default("exiter")
        def _default_exiter(self):
            return ZMQExitAutocall(self)

        @default("banner1")
        def _default_banner1(self):
            return default_banner

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # tqdm.autonotebook looks for IPKernelApp in the config to pick its notebook bar
            # (ipykernel sets the same placeholder).
            if "IPKernelApp" not in self.config:
                self.config.IPKernelApp.tqdm = "dummy value for https://github.com/tqdm/tqdm/pull/1628"

        def init_environment(self):
            env = os.environ
            env["TERM"] = "xterm-color"
            env["CLICOLOR"] = "1"
            env["FORCE_COLOR"] = "1"
            env["CLICOLOR_FORCE"] = "1"
            # No terminal to page on: keep subprocesses from starting a pager.
            env["PAGER"] = "cat"
            env["GIT_PAGER"] = "cat"

        def init_virtualenv(self):
            # The kernel already runs in the environment of its kernelspec.
            pass

        def init_hooks(self):
            super().init_hooks()
            # `?`, `??`, %page and friends answer with a `page` payload in the execute_reply.
            self.set_hook("show_in_pager", page.as_hook(payloadpage.page), 99)

        def init_data_pub(self):
            pass

        def enable_gui(self, gui=None):
            if gui not in (None, "inline"):
                raise UsageError(
                    f"GUI event loop {gui!r} is not supported by parakernel; "
                    "use %matplotlib inline (the default)"
                )
            self.active_eventloop = gui

        def ask_exit(self):
            self.exit_now = not self.keepkernel_on_exit
            self.payload_manager.write_payload(
                {"source": "ask_exit", "keepkernel": self.keepkernel_on_exit}
            )

        def set_next_input(self, text, replace=False):
            self.payload_manager.write_payload(
                {"source": "set_next_input", "text": text, "replace": replace}
            )

        @contextlib.contextmanager
        def _tee(self, channel):
            # IPython 9 wraps sys.stdout.write in a Python function that keeps every line a cell
            # prints in history_manager.outputs: five times slower printing and memory that
            # grows with output. The kernel keeps the history, so streams are not teed.
            yield

        def run_cell(self, *args, **kwargs):
            self._last_traceback = None
            self._last_traceback_during_displayhook = False
            self._last_error = None
            return super().run_cell(*args, **kwargs)

        def _showtraceback(self, etype, evalue, stb):
            if getattr(self.displayhook, "msg", None) is not None:
                # An error while formatting a result fails the execute_request (as ipykernel).
                self._last_traceback_during_displayhook = True
            _publish("error", {"traceback": stb, "ename": str(etype.__name__), "evalue": str(evalue)})
            self._last_traceback = stb
            self._last_error = (str(etype.__name__), str(evalue))

    InteractiveShellABC.register(ZMQInteractiveShell)
    return ZMQInteractiveShell


def _install_comms():
    """Point the `comm` package at this lane, so ipywidgets and friends work."""
    global _comm_manager
    try:
        import comm
        from comm.base_comm import BaseComm, CommManager
    except ImportError:
        return

    class ParakernelComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            content = dict(data={} if data is None else data, comm_id=self.comm_id, **keys)
            _publish(msg_type, content, metadata, buffers)

    _comm_manager = CommManager()
    comm.create_comm = lambda *args, **kwargs: ParakernelComm(*args, **kwargs)
    comm.get_comm_manager = lambda: _comm_manager


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
    global _shell
    options = json.loads(options_json)

    sys.stdout = OutStream("stdout", _parakernel.write_stdout)
    sys.stderr = OutStream("stderr", _parakernel.write_stderr)

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

    _install_comms()

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
    shell_class = _define_shell_classes()
    _shell = shell_class.instance(config=config)
    _shell.kernel = _kernel

    session_name = os.environ.get("JPY_SESSION_NAME")
    if session_name:
        _shell.user_ns["__session__"] = session_name
    _run_startup_files(_shell)


def _error_content(exc):
    return {"status": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": []}


class _Kernel:
    """What `get_ipython().kernel` offers to libraries: ipywidgets' `Output` widget asks it for
    the request being run (`get_parent()`) to capture that request's output."""

    def __init__(self):
        self.parent = {}

    def get_parent(self, channel=None):
        return self.parent

    @property
    def _parent_header(self):
        return self.parent


_kernel = _Kernel()


def execute(job_json):
    """Run one cell, as ipykernel's do_execute; returns the execute_reply content."""
    job = json.loads(job_json)
    _kernel.parent = {"header": job["parent_header"]}
    shell = _shell
    shell.execution_count = job["execution_count"]

    saved_input, saved_getpass = builtins.input, getpass.getpass
    builtins.input, getpass.getpass = _raw_input, _getpass
    try:
        result = shell.run_cell(
            job["code"], store_history=job["store_history"], silent=job["silent"]
        )
    finally:
        builtins.input, getpass.getpass = saved_input, saved_getpass

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
    return _dumps(reply)


def comm(msg_type, message_json, buffers):
    """Feed a frontend's comm_open / comm_msg / comm_close to the comm manager."""
    if _comm_manager is None:
        return
    message = json.loads(message_json)
    header = message["header"]
    _kernel.parent = {"header": header}
    msg = {
        "header": header,
        "msg_id": header.get("msg_id"),
        "msg_type": msg_type,
        "parent_header": {},
        "metadata": message["metadata"],
        "content": message["content"],
        "buffers": [memoryview(buffer) for buffer in buffers],
    }
    handler = getattr(_comm_manager, msg_type, None)
    if handler is None:
        raise ValueError(f"not a comm message type: {msg_type!r}")
    handler(None, None, msg)


def _complete(code, cursor_pos):
    # ipykernel's experimental (Jedi-backed) completion, its default.
    from IPython.core.completer import provisionalcompleter, rectify_completions

    if cursor_pos is None:
        cursor_pos = len(code)
    with provisionalcompleter():
        completions = list(rectify_completions(code, _shell.Completer.completions(code, cursor_pos)))
    types = [
        {
            "start": c.start,
            "end": c.end,
            "text": c.text,
            "type": c.type,
            "signature": c.signature,
        }
        for c in completions
    ]
    if completions:
        start, end = completions[0].start, completions[0].end
    else:
        start = end = cursor_pos
    return {
        "matches": [c.text for c in completions],
        "cursor_end": end,
        "cursor_start": start,
        "metadata": {"_jupyter_types_experimental": types},
        "status": "ok",
    }


def _inspect(code, cursor_pos, detail_level):
    from IPython.utils.tokenutil import token_at_cursor

    name = token_at_cursor(code, cursor_pos)
    reply = {"status": "ok", "data": {}, "metadata": {}}
    try:
        bundle = _shell.object_inspect_mime(name, detail_level=detail_level)
        reply["data"].update(bundle)
        if not _shell.enable_html_pager:
            reply["data"].pop("text/html", None)
        reply["found"] = True
    except KeyError:
        reply["found"] = False
    return reply


def _is_complete(code):
    status, indent_spaces = _shell.input_transformer_manager.check_complete(code)
    reply = {"status": status}
    if status == "incomplete":
        reply["indent"] = " " * indent_spaces
    return reply


def _comm_info(target_name):
    comms = {}
    if _comm_manager is not None:
        for comm_id, comm in list(_comm_manager.comms.items()):
            if target_name is None or comm.target_name == target_name:
                comms[comm_id] = {"target_name": comm.target_name}
    return {"status": "ok", "comms": comms}


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
            reply = _complete(request["code"], request["cursor_pos"])
        elif kind == "inspect":
            reply = _inspect(request["code"], request["cursor_pos"], request["detail_level"])
        elif kind == "is_complete":
            reply = _is_complete(request["code"])
        elif kind == "comm_info":
            reply = _comm_info(request["target_name"])
        else:
            raise ValueError(f"unknown query {kind!r}")
    except Exception as exc:
        reply = _error_content(exc)
    finally:
        sys.setswitchinterval(switch_interval)
    return _dumps(reply)


def stop(timeout):
    """Before finalizing: wait up to `timeout` seconds for the threads cells started.

    Returns True when no non-daemon thread is left, so Py_FinalizeEx will not wait forever.
    """
    import time

    deadline = time.monotonic() + timeout
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is current or thread.daemon or not thread.is_alive():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(
        t.is_alive() and not t.daemon and t is not current for t in threading.enumerate()
    )
