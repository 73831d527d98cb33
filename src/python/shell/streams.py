"""The lane's `sys.stdout` and `sys.stderr` (writes become `stream` messages of the current
request), the `sys.stdin` of a subinterpreter lane, and `input()` and `getpass`, which ask the
cell's client."""

import io

import _parakernel


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
            line = raw_input("")
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


def raw_input(prompt=""):
    if not _parakernel.allow_stdin():
        from IPython.core.error import StdinNotImplementedError

        raise StdinNotImplementedError(
            "raw_input was called, but this frontend does not support input requests."
        )
    return _input_request(prompt, False)


def getpass(prompt="Password: ", stream=None, *, echo_char=None):
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

