"""parakernel's API for cells, importable in every lane as `parakernel` (shipped inside the
kernel; nothing is installed): channels and shared buffers between lanes.

    from parakernel import channel, channels, Empty, Full, ChannelClosed
    results = channel("results", maxsize=0)   # get or create, process-wide by name
    results.send(("lr", 0.1, 0.934))          # waits only when bounded and full
    value = results.recv(timeout=5.0)         # releases the GIL while waiting; interruptible

Values cross as data rebuilt in the receiving lane: None, bool, int, float, complex, str, bytes,
and tuples, lists and dicts of these; an object with the buffer protocol arrives as a read-only
memoryview of one copy; anything else is pickled (its class must be importable where it is
received).

    from parakernel import shared_buffer
    grid = shared_buffer("grid", 8 * 1024)    # every lane that opens "grid" sees the same bytes
    grid.cast("d")[0] = 1.5                   # a writable memoryview: no copy, no send
"""

import json

import _parakernel
from _parakernel_shell.pool import LanePool, RemoteTraceback

# `map` too, but not in `__all__`: `from parakernel import *` must not hide the built-in map.
__all__ = [
    "Channel", "ChannelClosed", "Empty", "Full", "LanePool", "RemoteTraceback", "channel", "channels",
    "record", "shared_buffer", "shared_buffers",
]


class Empty(Exception):
    """Nothing to receive (recv_nowait, or recv's timeout passed)."""


class Full(Exception):
    """No room in a bounded channel (send_nowait, or send's timeout passed)."""


class ChannelClosed(Exception):
    """The channel is closed: nothing more can be sent, and everything sent was received."""


class Channel:
    """A process-wide FIFO, shared by name by every lane. Every message is received once."""

    __slots__ = ("maxsize", "name")

    def __init__(self, name, maxsize=None):
        self.name = name
        # The bound this handle asked for (None: none asked); `bound` is the channel's.
        self.maxsize = maxsize

    @property
    def bound(self):
        """The channel's bound (0: unbounded), whoever set it."""
        stats = self.stats()
        return stats["maxsize"] if stats else 0

    def stats(self):
        """This channel's row of `channels()`, or None once it is unlinked."""
        text = _parakernel.channel_stats(self.name)
        return None if text is None else json.loads(text)

    def send(self, value, timeout=None):
        """Sends `value`; waits while the channel is bounded and full (at most `timeout`
        seconds, then `Full`). Raises `ChannelClosed` if the channel is closed."""
        self._sent(_parakernel.channel_send(self.name, self.maxsize, value, timeout), timeout)

    def send_nowait(self, value):
        self._sent(_parakernel.channel_send(self.name, self.maxsize, value, 0), 0)

    def _sent(self, status, timeout):
        if status == "full":
            waited = "" if not timeout else f" for {timeout} s"
            raise Full(f"channel {self.name!r} is full (maxsize {self.bound}){waited}")
        if status == "closed":
            raise ChannelClosed(f"channel {self.name!r} is closed: nothing more can be sent")

    def recv(self, timeout=None):
        """The oldest message; waits while there is none (at most `timeout` seconds, then
        `Empty`). Raises `ChannelClosed` once the channel is closed and drained."""
        return self._received(*_parakernel.channel_recv(self.name, timeout), timeout)

    def recv_nowait(self):
        return self._received(*_parakernel.channel_recv(self.name, 0), 0)

    def _received(self, status, value, timeout):
        if status == "received":
            return value
        if status == "closed":
            raise ChannelClosed(f"channel {self.name!r} is closed and everything sent was received")
        waited = "" if not timeout else f" within {timeout} s"
        raise Empty(f"channel {self.name!r} had nothing to receive{waited}")

    def close(self):
        """Senders fail from now on; receivers get what is queued, then `ChannelClosed`."""
        _parakernel.channel_close(self.name)

    def unlink(self):
        """Closes the channel, frees what nobody received and forgets its name: `channel(name)`
        makes a new one (for a notebook run again after it closed its channels)."""
        _parakernel.channel_unlink(self.name)

    def __iter__(self):
        """Receives until the channel is closed and drained."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    def __len__(self):
        stats = self.stats()
        return stats["depth"] if stats else 0

    def __bool__(self):
        # A handle is a handle, empty or not (as `queue.Queue`): `if ch:` is not a depth test.
        return True

    def __repr__(self):
        bound = self.bound
        return f"channel({self.name!r}{f', maxsize={bound}' if bound else ''})"


def channel(name, maxsize=None):
    """The channel `name`, created if it does not exist. `maxsize` bounds it (0: unbounded): the
    first lane to ask for a bound sets it, even if a receiver opened the channel before; asking
    for another bound later is a ValueError. Without `maxsize` the channel is opened as it is.
    """
    if maxsize is not None and (not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0):
        raise ValueError("maxsize must be None, 0 (unbounded) or a positive int")
    _parakernel.channel_open(name, maxsize)
    return Channel(name, maxsize)


def channels():
    """Every channel: name, depth, maxsize, sent, received, waiting senders and receivers, closed."""
    return json.loads(_parakernel.channels())


def shared_buffer(name, size=None):
    """A writable memoryview of the shared buffer `name`: a block of the kernel's memory that
    every lane opening the same name sees, byte for byte (zero copy). Made with `size` bytes,
    zeroed, if no lane holds it; `size=None` opens an existing one (KeyError if there is none).
    A different `size` for a living buffer is a ValueError.

    The block lives while any lane holds a view of it (this one, a slice or a cast of it):
    restarting the lane that made it does not free it. `view.release()` (or dropping every
    view) in every lane frees it. Writes are not ordered between lanes: tell the readers that
    the data is ready through a channel."""
    return _parakernel.shared_buffer(name, size)


def shared_buffers():
    """Every living shared buffer: name, size, and how many opened views hold it."""
    return json.loads(_parakernel.shared_buffers())


def map(function, iterable, lanes=None, chunksize=None):  # noqa: A001 - parakernel.map
    """`[function(item) for item in iterable]` on fresh lanes (at most one per core, or `lanes`
    of them), results in order. Functions and lambdas defined in cells work (shipped with
    cloudpickle). An exception in a task is raised here, with the lane's traceback as its
    cause; an interrupt cancels the tasks not started yet. More than a few dozen tasks show a
    progress bar under the cell that ends as a summary line."""
    from _parakernel_shell import pool

    return pool.map(function, iterable, lanes=lanes, chunksize=chunksize)


def record(name, value):
    """Records `value` (anything JSON can hold) under `name` in the cell's outputs, in
    scrapbook's format (scrapbook reads it back from the notebook); `parakernel run` shows each
    notebook's recorded values in its summary."""
    from IPython.display import display

    if not isinstance(name, str) or not name:
        raise ValueError("record needs a name: a non-empty str")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"record({name!r}, ...) takes what JSON can hold (numbers, text, lists, dicts): {error}") from None
    scrap = {"name": name, "data": value, "encoder": "json", "version": 1}
    display(
        {"application/scrapbook.scrap.json+json": scrap},
        metadata={"scrapbook": {"name": name, "data": True, "display": False}},
        raw=True,
    )
