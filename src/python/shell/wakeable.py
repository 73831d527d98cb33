"""Blocking calls an interrupt can end, in subinterpreter lanes.

An interrupt reaches a subinterpreter lane as a KeyboardInterrupt raised in its thread
(PyThreadState_SetAsyncExc), which CPython checks between bytecodes only. A call blocked in C
never gets there, and a signal cannot help: CPython retries a system call that a signal cut
short unless a signal handler raised, and it runs handlers only on the main interpreter's main
thread. So in a lane the blocking calls below wait in slices of at most _SLICE seconds, coming
back to Python between slices: an interrupt ends them within a slice. Each keeps its own
timeout semantics (a slice that finds the thing ready returns at once). The main lane keeps
CPython's own calls: SIGINT wakes them there.
"""

import functools
import os
import threading

import _parakernel

_SLICE = 0.05


def _sliced(wait, timeout):
    """Calls wait(t) with 0 <= t <= _SLICE until it returns something true or `timeout` seconds
    (None or negative: no limit) have passed; returns the last result."""
    import time

    if timeout is None or timeout < 0:
        while True:
            result = wait(_SLICE)
            if result:
                return result
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        result = wait(min(max(remaining, 0.0), _SLICE))
        if result or remaining <= _SLICE:
            return result


def _fd_ready(fd, write, timeout):
    """Whether `fd` is ready to read (or write) within `timeout` seconds; a slice of a wait."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN | select.POLLPRI)
    return bool(poller.poll(timeout * 1000.0))


def _wait_fd(fd, write, timeout=None):
    """Blocks until `fd` is ready, interruptibly; False when `timeout` passed first."""
    return _fd_ready(fd, write, 0.0) or _sliced(lambda t: _fd_ready(fd, write, t), timeout)


def _interruptible_locks():
    """threading's locks (and so Condition, Event, Semaphore, Barrier, queue.Queue), Thread.join
    and queue.SimpleQueue."""
    import _thread
    import queue

    allocate = _thread.allocate_lock

    class Lock:
        """A lock whose blocking acquire an interrupt of the lane can end."""

        __slots__ = ("_lock", "__weakref__")

        def __init__(self):
            self._lock = allocate()

        def acquire(self, blocking=True, timeout=-1):
            lock = self._lock
            if lock.acquire(False):
                return True
            if not blocking or timeout == 0 or (timeout < 0 and timeout != -1):
                # Non-blocking, or arguments CPython refuses: its own answer or error.
                return lock.acquire(blocking, timeout)
            return bool(_sliced(lambda t: lock.acquire(True, t), None if timeout == -1 else timeout))

        def __enter__(self):
            return self.acquire()

        def __exit__(self, *exc_info):
            self._lock.release()

        def release(self):
            self._lock.release()

        def locked(self):
            return self._lock.locked()

        def _at_fork_reinit(self):
            self._lock._at_fork_reinit()

        acquire_lock, release_lock, locked_lock = acquire, release, locked

        def __repr__(self):
            return f"<{'locked' if self.locked() else 'unlocked'} lock (lane) at {id(self):#x}>"

    _thread.allocate_lock = _thread.allocate = Lock
    threading.Lock = threading._allocate_lock = Lock
    # RLock in Python, on the lock above, instead of CPython's C RLock.
    threading._CRLock = None

    original_join = threading.Thread.join

    @functools.wraps(original_join)
    def join(self, timeout=None):
        if timeout is not None and timeout <= 0:
            return original_join(self, timeout)

        def joined(t):
            original_join(self, t)
            return not self.is_alive()

        _sliced(joined, timeout)

    threading.Thread.join = join
    queue.SimpleQueue = queue._PySimpleQueue


def _interruptible_io():
    """select.select, selectors (so asyncio's event loop and subprocess's communicate), the
    blocking methods of sockets, os.read and os.waitpid (so subprocess.run)."""
    import select
    import selectors
    import socket

    original_select = select.select

    @functools.wraps(original_select)
    def select_(rlist, wlist, xlist, timeout=None):
        if timeout is not None and timeout <= 0:
            return original_select(rlist, wlist, xlist, timeout)
        # Iterables are read once: keep them as lists for every slice.
        rlist, wlist, xlist = list(rlist), list(wlist), list(xlist)

        def slice_(t):
            ready = original_select(rlist, wlist, xlist, t)
            return ready if any(ready) else None

        return _sliced(slice_, timeout) or ([], [], [])

    select.select = select_

    def interruptible(original):
        @functools.wraps(original)
        def select_ready(self, timeout=None):
            if timeout is not None and timeout <= 0:
                return original(self, timeout)
            return _sliced(lambda t: original(self, t), timeout) or []

        return select_ready

    for name in ("SelectSelector", "PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector"):
        cls = getattr(selectors, name, None)
        if cls is not None:
            cls.select = interruptible(cls.select)

    def waiting_for(original, write):
        @functools.wraps(original)
        def method(self, *args, **kwargs):
            timeout = self.gettimeout()
            if timeout != 0.0 and self.fileno() >= 0 and not _wait_fd(self.fileno(), write, timeout):
                raise TimeoutError("timed out")
            return original(self, *args, **kwargs)

        return method

    sock = socket.socket
    for name in ("accept", "recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "recvmsg_into"):
        setattr(sock, name, waiting_for(getattr(sock, name), False))
    for name in ("send", "sendall", "sendto", "sendmsg"):
        setattr(sock, name, waiting_for(getattr(sock, name), True))

    original_read = os.read

    @functools.wraps(original_read)
    def read(fd, length, /):
        if not _fd_ready(fd, False, 0.0) and os.get_blocking(fd):
            _wait_fd(fd, False)
        return original_read(fd, length)

    os.read = read

    original_waitpid = os.waitpid

    @functools.wraps(original_waitpid)
    def waitpid(pid, options, /):
        if options & os.WNOHANG:
            return original_waitpid(pid, options)
        try:
            # A pidfd is readable once the child has ended.
            pidfd = os.pidfd_open(pid) if pid > 0 and not options & (os.WUNTRACED | os.WCONTINUED) else None
        except OSError:
            pidfd = None
        if pidfd is None:
            # Any child, or stops and continues: poll, backing off to a slice.
            delay = 0.001
            while (result := original_waitpid(pid, options | os.WNOHANG)) == (0, 0):
                _parakernel.sleep(delay)
                delay = min(delay * 2, _SLICE)
            return result
        try:
            _wait_fd(pidfd, False)
        finally:
            os.close(pidfd)
        return original_waitpid(pid, options)

    os.waitpid = waitpid


def install():
    """Puts the interruptible calls in place (before IPython is imported)."""
    _interruptible_locks()
    _interruptible_io()
