"""The IPython shell of one parakernel lane.

Shipped inside the parakernel binary and executed as the module `_parakernel_shell` in every
interpreter that runs cells (the main interpreter and each subinterpreter lane). Rust calls the
functions at the bottom (`start`, `execute`, `comm`, `query`, `stop`, `other_threads`,
`restore`) with JSON strings (and `execute` with the cell's code as a `str` of its own) and gets
JSON strings back; everything a cell publishes goes out through the native module `_parakernel`,
which knows the request the lane is running.

Behaviour follows ipykernel (ipkernel.py, zmqshell.py, displayhook.py, iostream.py) so that
notebooks and libraries see what they see under ipykernel.
"""

import base64
import builtins
import contextlib
import contextvars
import datetime
import functools
import getpass
import glob
import io
import json
import linecache
import math
import numbers
import operator
import os
import re
import sys
import threading
from collections.abc import Iterable, Sequence

import _parakernel

_shell = None
_comm_manager = None
# Set by start(): the lane's name ("main", a lane name, or "fresh-N") and whether it is a fresh
# lane (each cell in a new contextvars.Context, warm state restored after each job).
_lane = "main"
_fresh = False
# A fresh lane's warm state, taken at the end of start() (see _snapshot / restore).
_warm = None

# How to move a cell to the main lane, for every error that says "this works only there".
_TO_MAIN = (
    "make `%%lane main` the cell's first line (or remove the cell's `lane:`/`parallel` tag)"
)


class LaneError(RuntimeError):
    """The kernel refused a lane request (%lanes, %wait, %lane ...), e.g. an unknown lane."""


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


class InStream(io.TextIOBase):
    """`sys.stdin` of a subinterpreter lane: a line read from it is asked of the cell's client,
    as `input()` does (a subinterpreter would otherwise read the kernel process's fd 0)."""

    encoding = "utf-8"
    errors = "strict"

    @property
    def name(self):
        return "<stdin>"

    def readable(self):
        return True

    def writable(self):
        return False

    def seekable(self):
        return False

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation("stdin is a kernel stream and has no file descriptor")

    def readline(self, size=-1):
        try:
            line = _raw_input("")
        except EOFError:
            return ""
        return line + "\n"

    def read(self, size=-1):
        # One line per read: the client sends input a line at a time.
        return self.readline(size)

    def __repr__(self):
        return "<parakernel.InStream name='<stdin>'>"


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


# --- what a subinterpreter lane refuses, with errors that say what to do ------------------------

# Packages whose extension modules refuse own-GIL subinterpreters (measured, DESIGN.md): refused
# at once, before numpy & co. print their own long explanation of a failed import.
_REFUSED_PACKAGES = frozenset({
    "numpy", "pandas", "matplotlib", "scipy", "sklearn", "orjson", "pydantic_core", "pyarrow",
    "readline", "curses", "_curses", "tkinter", "_tkinter",
})


def _refusal(module, detail):
    top = module.partition(".")[0]
    error = ImportError(
        f"{top} cannot be imported in lane {_lane!r}: {detail}. {top} works in the main lane: "
        f"{_TO_MAIN}.",
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
    """signal.signal, os.fork (so multiprocessing's default start method) and daemon threads
    are refused in isolated subinterpreters: say what to do instead. os._exit is refused too:
    in a lane it would end the whole process, every other lane with it."""
    import signal

    original_signal = signal.signal

    def signal_(signalnum, handler):
        try:
            return original_signal(signalnum, handler)
        except ValueError as error:
            # A ValueError still, as libraries catch that one.
            raise ValueError(
                f"signal.signal() works only in the main lane ({error}): signals reach only the "
                f"main thread of the main interpreter. To handle signals, {_TO_MAIN}."
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
                    f"os.fork() is not allowed in lane {_lane!r} ({error}): CPython does not fork "
                    "subinterpreters. For multiprocessing use the spawn start method "
                    "(multiprocessing.get_context('spawn'), or "
                    "concurrent.futures.ProcessPoolExecutor(mp_context=...)), or run the cell in "
                    f"the main lane: {_TO_MAIN}."
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
            f"os._exit({status!r}) in lane {_lane!r} would end the whole kernel process: every "
            "lane, the main lane and all their state, without a reply. To end this cell, raise "
            f"SystemExit or return; to end the lane, run `%lane stop {_lane}` (or `%lane restart "
            f"{_lane}`) from another cell; to end the kernel, restart it from the client."
        )

    _exit.__doc__ = original_exit.__doc__
    os._exit = _exit

    def explain(error):
        return RuntimeError(
            f"daemon threads are not allowed in lane {_lane!r} ({error}): start the thread "
            "with daemon=False and let it end before the lane does, or run the cell in the "
            f"main lane: {_TO_MAIN}."
        )

    # CPython checks in Thread.__init__, in the `daemon` setter and when the thread starts.
    thread = threading.Thread
    original_init, original_start, daemon = thread.__init__, thread.start, thread.daemon

    @functools.wraps(original_init)
    def init(self, *args, **kwargs):
        try:
            original_init(self, *args, **kwargs)
        except RuntimeError as error:
            if "daemon" not in str(error):
                raise
            raise explain(error) from None

    @functools.wraps(original_start)
    def start(self):
        try:
            return original_start(self)
        except RuntimeError as error:
            if "daemon" not in str(error):
                raise
            raise explain(error) from None

    def set_daemon(self, daemonic):
        try:
            daemon.fset(self, daemonic)
        except RuntimeError as error:
            if "daemon threads" not in str(error):
                raise
            raise explain(error) from None

    thread.__init__, thread.start = init, start
    thread.daemon = property(daemon.fget, set_daemon, doc=daemon.__doc__)


def _system_with_pipes(command):
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


def _setup_subinterpreter():
    """What every subinterpreter lane needs before IPython is imported."""
    import time

    # Signals never reach a subinterpreter's thread: an interrupt of the lane wakes this sleep.
    time.sleep = _parakernel.sleep
    sys.stdin = InStream()
    sys.meta_path.insert(0, _RefusedFinder)
    _guard_extension_loader()
    _guard_process_features()


# --- parakernel's magics (every lane) ------------------------------------------------------------

_FIRST_LINE_ONLY = (
    "%%lane and %%parallel choose a cell's lane, and only as the first line of a cell that the "
    "kernel runs (it removes that line before the cell runs); this code already runs in lane "
    "{lane!r}. Put `%%lane NAME`, `%%lane main` or `%%parallel` on the cell's first line, or "
    "tag the cell `lane:NAME` or `parallel`."
)

_LANE_USAGE = (
    "usage: %lane interrupt NAME | %lane restart NAME | %lane stop NAME "
    "(to run a cell in a lane, make `%%lane NAME` its first line)"
)


def _call(op, **args):
    """Ask the kernel; blocks (interruptibly) until it answers. Raises LaneError if it refuses."""
    ok, text = _parakernel.call(op, json.dumps(args))
    if not ok:
        raise LaneError(text)
    return json.loads(text)


def _format_seconds(seconds):
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:02.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


_LANES_COLUMNS = (
    ("name", "lane"),
    ("kind", "kind"),
    ("state", "state"),
    ("running", "running"),
    ("queued", "queued"),
    ("cells_run", "cells run"),
    ("cpu", "CPU time"),
)


def _lanes_table(rows):
    """The %lanes table as text/plain and text/html."""
    import html

    cpu = json.loads(_parakernel.cpu_times())
    cells = []
    for row in rows:
        row = dict(row)
        row["cpu"] = _format_seconds(cpu.get(str(row.get("name"))))
        cells.append(["" if row.get(key) is None else str(row.get(key)) for key, _ in _LANES_COLUMNS])
    titles = [title for _, title in _LANES_COLUMNS]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, title in enumerate(titles)]
    lines = ["  ".join(title.ljust(width) for title, width in zip(titles, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for line in cells:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    if not cells:
        lines.append("(no lanes)")
    head = "".join(f"<th>{html.escape(title)}</th>" for title in titles)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>" for line in cells
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return "\n".join(lines), table


def _register_magics(shell):
    from IPython.core.error import UsageError
    from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class

    @magics_class
    class LaneMagics(Magics):
        @line_magic
        def lanes(self, line):
            """Show the kernel's lanes: state, running cell, cells run, CPU time."""
            if line.strip():
                raise UsageError("%lanes takes no arguments")
            from IPython.display import display

            text, table = _lanes_table(_call("lanes"))
            display({"text/plain": text, "text/html": table}, raw=True)

        @line_magic
        def wait(self, line):
            """%wait [NAME ...]: block until the lanes (default: all others) have run every cell
            requested before this one."""
            _call("wait", lanes=line.split())

        @line_cell_magic
        def lane(self, line, cell=None):
            """%lane interrupt|restart|stop NAME. (`%%lane NAME` as a cell's first line runs
            the cell in lane NAME.)"""
            if cell is not None:
                raise UsageError(_FIRST_LINE_ONLY.format(lane=_lane))
            words = line.split()
            if len(words) != 2 or words[0] not in ("interrupt", "restart", "stop"):
                raise UsageError(_LANE_USAGE)
            _call(words[0], lane=words[1])

        @cell_magic
        def parallel(self, line, cell):
            """`%%parallel` as a cell's first line runs the cell in a fresh lane."""
            raise UsageError(_FIRST_LINE_ONLY.format(lane=_lane))

    shell.register_magics(LaneMagics)


# --- the shell -----------------------------------------------------------------------------------


# --- One copy of a cell ---------------------------------------------------------------------------
#
# The kernel makes one `str` of a cell's code and hands it to run_cell. IPython, left alone, keeps
# three more copies for as long as the kernel runs or until the next cell: the transformed cell
# (`In`), the shell's last result, and the cell's lines in linecache (for tracebacks). A 200 MB
# cell was held four times after it ran. The shell below shares the one `str` instead.

# Cells of at least this many characters keep their linecache lines as _CellLines.
_LARGE_CELL = 1 << 20


def _unchanged(raw_cell, cell):
    """Whether IPython's transformation left `raw_cell` as it was, but for the newline it adds
    at the end."""
    if len(cell) == len(raw_cell):
        return cell == raw_cell
    return len(cell) == len(raw_cell) + 1 and cell.endswith("\n") and cell.startswith(raw_cell)


class _CellLines(Sequence):
    """What linecache holds for a very large cell: IPython's `[line + "\\n" for line in
    code.splitlines()]`, but each line made when it is read (a traceback, inspect, pdb) from the
    cell's own text, which the history holds anyway. A plain list would be a second copy of the
    cell for as long as the kernel runs."""

    # Where str.splitlines splits.
    _BREAK = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

    def __init__(self, text):
        self._text = text
        self._length = None
        # The last line read and where it starts: reading lines in order costs one pass.
        self._cursor = (0, 0)

    def __len__(self):
        if self._length is None:
            count, end = 0, 0
            for match in self._BREAK.finditer(self._text):
                count, end = count + 1, match.end()
            self._length = count + (end < len(self._text))
        return self._length

    def __iter__(self):
        start = 0
        for match in self._BREAK.finditer(self._text):
            yield self._text[start : match.start()] + "\n"
            start = match.end()
        if start < len(self._text):
            yield self._text[start:] + "\n"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[line] for line in range(*index.indices(len(self)))]
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("line index out of range")
        line, start = self._cursor
        if line > index:
            line, start = 0, 0
        while line < index:
            line, start = line + 1, self._BREAK.search(self._text, start).end()
        self._cursor = (line, start)
        end = self._BREAK.search(self._text, start)
        return self._text[start : end.start() if end else len(self._text)] + "\n"

    def __repr__(self):
        return f"<lines of a cell of {len(self._text)} characters>"


def _define_shell_classes():
    """IPython is imported here, after sys.stdout and the environment are set up."""
    from IPython.core import page, payloadpage
    from IPython.core.autocall import ZMQExitAutocall
    from IPython.core.compilerop import CachingCompiler
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

        @staticmethod
        def semicolon_at_end_of_expression(expression):
            # IPython tokenizes the whole cell again to see whether it ends with ';' (a 200 MB cell
            # became an 800 MB StringIO and the tokenizer's copies): a cell with no ';' cannot.
            if ";" not in expression:
                return False
            return DisplayHook.semicolon_at_end_of_expression(expression)

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

    class ParakernelCompiler(CachingCompiler):
        """IPython's compiler, naming and caching a cell as IPython does, but sharing the text of
        very large cells with the history instead of copying it into linecache."""

        def get_code_name(self, raw_code, transformed_code, number):
            if transformed_code is raw_code and not raw_code.endswith("\n"):
                # The shell runs the raw cell itself (transform_cell below); IPython names a
                # cell after its transformed text, which ends with the newline it adds.
                transformed_code = raw_code + "\n"
            return super().get_code_name(raw_code, transformed_code, number)

        def cache(self, transformed_code, number=0, raw_code=None):
            if len(transformed_code) < _LARGE_CELL:
                return super().cache(transformed_code, number, raw_code)
            # CachingCompiler.cache, with _CellLines for the list of lines.
            if raw_code is None:
                raw_code = transformed_code
            name = self.get_code_name(raw_code, transformed_code, number)
            self._filename_map[name] = number
            linecache.cache[name] = (len(transformed_code), None, _CellLines(transformed_code), name)
            return name

    class ZMQInteractiveShell(InteractiveShell):
        """The lane's shell.

        Named like ipykernel's shell on purpose: libraries (tqdm, plotly, many notebooks) decide
        "am I in a notebook?" by `get_ipython().__class__.__name__ == "ZMQInteractiveShell"`.
        """

        displayhook_class = Type(ParakernelDisplayHook)
        display_pub_class = Type(ParakernelDisplayPublisher)
        compiler_class = Type(ParakernelCompiler)
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

        def system_piped(self, cmd):
            if _lane == "main":
                return super().system_piped(cmd)
            # As InteractiveShell.system_piped, with pipes instead of a pseudo-terminal.
            if cmd.rstrip().endswith("&"):
                raise OSError("Background processes not supported.")
            exit_code = _system_with_pipes(self.var_expand(cmd, depth=1))
            self.user_ns["_exit_code"] = exit_code
            if self.system_raise_on_error and exit_code != 0:
                from subprocess import CalledProcessError

                raise CalledProcessError(exit_code, cmd)

        system = system_piped

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

        def transform_cell(self, raw_cell):
            cell = super().transform_cell(raw_cell)
            # A cell no transformation changed runs as the very `str` the kernel made: Python
            # compiles it as it compiles it with IPython's final newline (the name the cell gets
            # is IPython's too: ParakernelCompiler), and `In`, `_i`, the shell's last result and
            # the compiled cell then share it instead of each holding a copy. Not for non-ASCII
            # cells: compiling a non-ASCII `str` attaches a UTF-8 copy to it for as long as it
            # lives, which the history would then keep.
            if raw_cell.isascii() and _unchanged(raw_cell, cell):
                return raw_cell
            return cell

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
    global _shell, _lane, _fresh
    options = json.loads(options_json)
    _lane = options.get("lane", "main")
    _fresh = bool(options.get("fresh"))

    sys.stdout = OutStream("stdout", _parakernel.write_stdout)
    sys.stderr = OutStream("stderr", _parakernel.write_stderr)
    if not options.get("main"):
        _setup_subinterpreter()

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
    _register_magics(_shell)

    session_name = os.environ.get("JPY_SESSION_NAME")
    if session_name:
        _shell.user_ns["__session__"] = session_name
    if options.get("main"):
        # Startup files often import numpy & co., which subinterpreter lanes refuse: they run in
        # the main lane only.
        _run_startup_files(_shell)
    if _fresh:
        # Measured (DESIGN.md): without `random` imported here, each cell that imports it (as
        # tempfile, uuid and others do) grew the lane after its restore.
        import gc
        import random  # noqa: F401

        _warm_up(_shell)
        _snapshot()
        # The warm state is permanent: frozen, the collection after each job (restore) looks
        # only at what the job left (measured: 4 ms -> well under 1 ms).
        gc.collect()
        gc.freeze()


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


def execute(job_json, code):
    """Run one cell, as ipykernel's do_execute; returns the execute_reply content."""
    job = json.loads(job_json)
    _kernel.parent = {"header": job["parent_header"]}
    shell = _shell
    shell.execution_count = job["execution_count"]

    saved_input, saved_getpass = builtins.input, getpass.getpass
    builtins.input, getpass.getpass = _raw_input, _getpass
    run = shell.run_cell
    if _fresh:
        # A fresh lane keeps nothing of a cell, context variables included (and a fresh context
        # per cell kept the lane's memory flat: DESIGN.md).
        run = functools.partial(contextvars.Context().run, shell.run_cell)
        _before_job["environ"], _before_job["cwd"] = dict(os.environ), os.getcwd()
    try:
        result = run(code, store_history=job["store_history"], silent=job["silent"])
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
    for thread in _started_threads():
        if not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    done = not any(not t.daemon for t in _started_threads())
    if _lane != "main":
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
        and (thread is not main or _lane == "main")
        and not isinstance(thread, threading._DummyThread)
        and thread.ident is not None
        and thread.is_alive()
    ]


def other_threads():
    """The idents of the threads cells started, as JSON (the lane raises SystemExit in them
    before it ends)."""
    return json.dumps([thread.ident for thread in _started_threads()])


# --- fresh lanes: back to the warm state after each job ------------------------------------------


def _warm_up(shell):
    """Run what every cell runs once (IPython imports hashlib, bdb, ... at the first cell, and
    the traceback formatting at the first error), so that restore() does not drop those
    modules and the next cell does not import them again."""
    global _publish
    publish = _publish
    _publish = lambda *args, **kwargs: None  # noqa: E731 - nothing of this goes out
    try:
        shell.run_cell("pass", store_history=False, silent=True)
        shell.run_cell("1 / 0", store_history=False, silent=True)
    finally:
        _publish = publish
        shell._last_traceback = None
        shell._last_error = None
        for name in ("last_exc", "last_type", "last_value", "last_traceback"):
            if hasattr(sys, name):
                delattr(sys, name)


def _snapshot():
    """Record a fresh lane's warm state; restore() returns to it after every job."""
    import linecache
    import warnings

    global _warm
    shell = _shell
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
    _warm = warm


def _restore_dict(target, warm):
    for key in [key for key in target if key not in warm]:
        del target[key]
    for key, value in warm.items():
        if target.get(key, _MISSING) is not value:
            target[key] = value


_MISSING = object()

# What a fresh lane's job found of the process-wide state it may change (set by execute()).
_before_job = {"environ": None, "cwd": None}


def restore():
    """After a fresh lane's job: return to the warm state. False when that cannot be trusted
    (a thread the cell started still runs, an asyncio task is pending, a step failed): the
    kernel then replaces the interpreter."""
    if _warm is None or _started_threads():
        return False
    try:
        _restore()
    except Exception:
        import traceback

        traceback.print_exc(file=sys.__stderr__)
        return False
    return True


def _restore():
    import atexit
    import gc
    import linecache
    import random
    import warnings

    shell = _shell
    warm = _warm
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
    _kernel.parent = {}
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
    before, _before_job["environ"] = _before_job["environ"], None
    if before is not None:
        environ = dict(os.environ)
        for key in [key for key in environ if key not in before]:
            del os.environ[key]
        for key, value in before.items():
            if environ.get(key) != value:
                os.environ[key] = value
    cwd, _before_job["cwd"] = _before_job["cwd"], None
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
