"""The lane's IPython shell classes: the shell itself (named `ZMQInteractiveShell`, as
ipykernel's), its display hook and display publisher (which publish for the lane's current
request), and its compiler; together they keep one copy of a cell's text."""

import contextlib
import linecache
import operator
import os
import re
from collections.abc import Sequence

from . import lane, messages, subinterpreter

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


def define_shell_classes():
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
                messages.publish("execute_result", content)

    class ParakernelDisplayPublisher(DisplayPublisher):
        """`display_data`, `update_display_data` and `clear_output` for the current request."""

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            self._validate_data(data, metadata)
            content = {
                "data": data,
                "metadata": metadata if metadata is not None else {},
                "transient": transient if transient is not None else {},
            }
            messages.publish("update_display_data" if update else "display_data", content)

        def clear_output(self, wait=False):
            messages.publish("clear_output", {"wait": bool(wait)})

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
            if lane.name == "main":
                return super().system_piped(cmd)
            # As InteractiveShell.system_piped, with pipes instead of a pseudo-terminal.
            if cmd.rstrip().endswith("&"):
                raise OSError("Background processes not supported.")
            exit_code = subinterpreter.system_with_pipes(self.var_expand(cmd, depth=1))
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
            content = {"traceback": stb, "ename": str(etype.__name__), "evalue": str(evalue)}
            messages.publish("error", content)
            self._last_traceback = stb
            self._last_error = (str(etype.__name__), str(evalue))

    InteractiveShellABC.register(ZMQInteractiveShell)
    return ZMQInteractiveShell

