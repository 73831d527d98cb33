"""`parakernel.LanePool` and `parakernel.map`: tasks run on fresh lanes, as a
`concurrent.futures.Executor` does them on threads or processes.

Each worker is a job the calling cell spawns on a fresh lane (`LaneCall::Spawn`): it takes tasks
from the pool's task channel and sends what they return to its result channel, until the task
channel is closed. Functions (lambdas and functions defined in cells too) are shipped by value
with cloudpickle; arguments and results cross by the channel value rules when they are plain data,
and pickled with cloudpickle otherwise (so instances of a cell's classes cross too). A worker tells
the pool when it leaves; the pool's channels are discarded once every worker has left.
"""

import concurrent.futures
import itertools
import math
import threading
import time
import traceback
import uuid

from . import lane

# Types whose values cross a channel as data (the channel value rules, without buffers).
_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})
_CONTAINERS = frozenset({tuple, list, dict})
# More tasks than this show a progress bar under the calling cell.
PROGRESS_FROM = 36


class RemoteTraceback(Exception):
    """The traceback of a task's exception, in the lane that ran it (the `__cause__` of the
    exception re-raised in the caller)."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


def _plain(value, depth=0):
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind not in _CONTAINERS or depth > 50:
        return False
    if kind is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return all(_plain(item, depth + 1) for item in value)


def _pack(value):
    """Plain data as it is; anything else pickled with cloudpickle (cells' classes by value)."""
    if _plain(value):
        return ("data", value)
    import cloudpickle

    return ("pickled", cloudpickle.dumps(value))


def _unpack(packed):
    kind, value = packed
    if kind == "data":
        return value
    import pickle

    return pickle.loads(value)


def _fresh_lane_count():
    from .magics import _call

    return sum(1 for row in _call("lanes") if row.get("name", "").startswith("fresh-"))


# True while this lane runs a pool's worker loop: a pool started from a task would wait for
# fresh lanes its own workers hold.
in_worker = False


def work(tasks_name, results_name):
    """A worker's loop, run as a spawned job on a fresh lane. Every task it takes is answered,
    whatever fails (the function's unpickling, the task, the packing of its result); an
    interrupt, idle or in a task, makes it leave (the pool replaces it if it goes on)."""
    global in_worker
    from parakernel import ChannelClosed, channel

    tasks, results = channel(tasks_name), channel(results_name)
    functions = {}
    in_worker = True
    try:
        while True:
            try:
                task = tasks.recv()
            except KeyboardInterrupt:
                return
            try:
                results.send(_run_task(task, functions))
            except ChannelClosed:
                raise
            except BaseException as error:  # noqa: BLE001 - the task is answered, whatever failed
                results.send((task[0], "error", _error_payload(error)))
                if isinstance(error, KeyboardInterrupt):
                    return
    except ChannelClosed:
        pass
    finally:
        in_worker = False
        try:
            results.send(("exit", lane.name, None))
        except ChannelClosed:
            pass


def _run_task(task, functions):
    """The answer to one task: `(id, "ok", packed results)`; raises what the task raised."""
    import pickle

    task_id, function_bytes, packed_items, packed_kwargs = task
    function = functions.get(function_bytes)
    if function is None:
        if len(functions) > 16:
            functions.clear()
        function = functions[function_bytes] = pickle.loads(function_bytes)
    kwargs = _unpack(packed_kwargs)
    out = [function(*args, **kwargs) for args in _unpack(packed_items)]
    return (task_id, "ok", _pack(out))


def _error_payload(error):
    """What the caller needs to raise `error` again: each part made so that it cannot fail."""
    cancelled = isinstance(error, KeyboardInterrupt)
    kind = f"{type(error).__module__}.{type(error).__qualname__}"
    try:
        # From the task's own frames on: the worker's loop is not the user's business.
        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
            frames = frames.tb_next
        text = "".join(traceback.format_exception(type(error), error, frames))
    except BaseException:  # noqa: BLE001 - an exception whose formatting fails
        text = f"{kind} (its traceback could not be formatted)\n"
    try:
        message = str(error)
    except BaseException:  # noqa: BLE001 - an exception whose str() fails
        message = f"<{kind} whose str() failed>"
    try:
        import cloudpickle

        pickled = cloudpickle.dumps(error)
    except BaseException:  # noqa: BLE001 - sent as text instead
        pickled = None
    return (cancelled, pickled, f'\n"""\nIn lane {lane.name}:\n{text}"""', kind, message)


def _rebuild_error(payload):
    cancelled, pickled, text, kind, message = payload
    error = None
    if pickled is not None:
        try:
            import pickle

            error = pickle.loads(pickled)
        except Exception:  # noqa: BLE001 - the class cannot be rebuilt here: its name and text
            error = None
    if error is None:
        error = RuntimeError(f"{kind}: {message}")
    error.__cause__ = RemoteTraceback(text)
    return cancelled, error


class _Workers:
    """A pool's channels, workers and futures; its collector thread holds this, not the
    `LanePool`, so that a pool dropped without `shutdown()` is collected and lets its workers go."""

    def __init__(self, max_workers=None):
        if in_worker:
            raise RuntimeError(
                "a lane pool cannot start inside a task of another pool: its workers would wait "
                "for the fresh lanes the outer pool's workers hold; do the inner work in the task"
            )
        available = _fresh_lane_count()
        if lane.fresh:
            # This cell holds one fresh lane: the workers need others.
            available -= 1
        if available < 1:
            raise RuntimeError(
                "a LanePool needs a free fresh lane for its workers: set PARAKERNEL_FRESH_LANES "
                "to 2 or more, or start the pool from the main lane or a named lane"
            )
        if max_workers is None:
            max_workers = available
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError("max_workers must be a positive int")
        self._max_workers = min(max_workers, available)
        from parakernel import channel

        pool_id = uuid.uuid4().hex[:12]
        self._tasks = channel(f"__pool-{pool_id}-tasks")
        self._results = channel(f"__pool-{pool_id}-results")
        self._lock = threading.Lock()
        self._futures = {}
        self._ids = itertools.count()
        self._spawned = 0
        self._exited = 0
        self._all_exited = threading.Event()
        self._shutdown = False
        self._collector = None
        self._last_function = (None, None)

    @property
    def workers(self):
        return self._max_workers

    def _function_bytes(self, function):
        if self._last_function[0] is not function:
            import cloudpickle

            self._last_function = (function, cloudpickle.dumps(function))
        return self._last_function[1]

    def submit_items(self, function, items, kwargs):
        """One task: `function(*args, **kwargs)` for each `args` in `items`; its future's result
        is the list of what they returned."""
        function_bytes = self._function_bytes(function)
        future = concurrent.futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new tasks after shutdown")
            task_id = next(self._ids)
            self._futures[task_id] = future
            live = self._spawned - self._exited
            spawn = live < self._max_workers and live < len(self._futures)
            if spawn:
                self._spawned += 1
            if self._collector is None:
                self._collector = threading.Thread(target=self._collect, name="LanePool collector", daemon=True)
                self._collector.start()
        self._tasks.send((task_id, function_bytes, _pack(items), _pack(kwargs)))
        if spawn:
            self._spawn_worker()
        return future

    def _spawn_worker(self):
        from .magics import _call

        code = f"import _parakernel_shell.pool\n_parakernel_shell.pool.work({self._tasks.name!r}, {self._results.name!r})"
        try:
            _call("spawn", code=code)
        except BaseException:
            with self._lock:
                self._spawned -= 1
                done = self._shutdown and self._exited >= self._spawned
            if done:
                self._discard()
            raise

    def map_futures(self, fn, argument_tuples, chunksize):
        if chunksize < 1:
            raise ValueError("chunksize must be 1 or more")
        futures = []
        iterator = iter(argument_tuples)
        while chunk := list(itertools.islice(iterator, chunksize)):
            futures.append((len(chunk), self.submit_items(fn, chunk, {})))
        return futures

    def _collect(self):
        """Receives every result (a thread of the calling lane) until every worker has left."""
        from parakernel import ChannelClosed

        while True:
            try:
                task_id, status, payload = self._results.recv()
            except KeyboardInterrupt:
                continue
            except ChannelClosed:
                return
            if task_id == "exit":
                with self._lock:
                    self._exited += 1
                    done = self._shutdown and self._exited >= self._spawned
                    replace = not self._shutdown and bool(self._futures)
                    if replace:
                        self._spawned += 1
                if done:
                    self._discard()
                    return
                if replace:
                    # An interrupted worker left while the pool goes on.
                    try:
                        self._spawn_worker()
                    except BaseException:  # noqa: BLE001 - the calling cell has ended
                        pass
                continue
            with self._lock:
                future = self._futures.pop(task_id, None)
            if future is None or future.cancelled():
                continue
            if status == "ok":
                try:
                    future.set_result(_unpack(payload))
                except Exception as error:  # noqa: BLE001 - a result that cannot be rebuilt here
                    future.set_exception(error)
            else:
                _, error = _rebuild_error(payload)
                future.set_exception(error)

    def _discard(self):
        """Once every worker has left: the channels go (names and all); once only."""
        with self._lock:
            if self._all_exited.is_set():
                return
            self._all_exited.set()
        self._tasks.unlink()
        self._results.unlink()

    def cancel_pending(self):
        """Cancels every task no worker has taken yet; returns how many."""
        from parakernel import ChannelClosed, Empty

        cancelled = 0
        while True:
            with self._lock:
                # Once the channels are gone, a receive would make the name anew: the check
                # and the receive happen under the lock `_discard` sets the flag under.
                if self._all_exited.is_set():
                    break
                try:
                    task_id, *_ = self._tasks.recv_nowait()
                except (Empty, ChannelClosed):
                    break
                future = self._futures.pop(task_id, None)
            if future is not None and future.cancel():
                cancelled += 1
        return cancelled

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No new tasks; the workers leave once the tasks taken are done (`cancel_futures`:
        the others are cancelled). `wait`: until every worker has left."""
        with self._lock:
            already = self._shutdown
            self._shutdown = True
            no_workers = self._spawned == 0
        if cancel_futures:
            self.cancel_pending()
        if not already:
            self._tasks.close()
            if no_workers:
                self._discard()
                return
            with self._lock:
                gone = self._exited >= self._spawned
            if gone:
                self._discard()
        if wait:
            self._all_exited.wait()


class LanePool(concurrent.futures.Executor):
    """An executor whose workers are fresh lanes (own-GIL subinterpreters of the kernel): as
    `ProcessPoolExecutor`, without processes. `max_workers` defaults to the number of fresh
    lanes (one per core). A pool dropped without `shutdown()` (a cell run again) lets its
    workers go when it is collected, as does the end of the lane that made it."""

    def __init__(self, max_workers=None):
        import weakref

        self._workers = _Workers(max_workers)
        # Dropped without shutdown(): no new tasks, and the workers leave once the tasks sent
        # are done (their futures still complete: the collector holds `_Workers`).
        weakref.finalize(self, self._workers.shutdown, False)

    @property
    def workers(self):
        """How many worker lanes the pool uses at most."""
        return self._workers.workers

    def submit(self, fn, /, *args, **kwargs):
        """Runs `fn(*args, **kwargs)` on a worker lane; returns its Future."""
        inner = self._workers.submit_items(fn, [args], kwargs)
        outer = concurrent.futures.Future()

        def relay(done):
            # A future cancelled by its caller stays cancelled (the task's answer is dropped).
            if done.cancelled():
                outer.cancel()
            if not outer.set_running_or_notify_cancel():
                return
            if done.exception() is not None:
                outer.set_exception(done.exception())
            else:
                outer.set_result(done.result()[0])

        inner.add_done_callback(relay)
        return outer

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """As `Executor.map`: the results in order; `chunksize` items go to a worker at once."""
        return _in_order(self._workers.map_futures(fn, zip(*iterables), chunksize), timeout)

    def cancel_pending(self):
        """Cancels every task no worker has taken yet; returns how many."""
        return self._workers.cancel_pending()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No new tasks; the workers leave once the tasks taken are done (`cancel_futures`:
        the others are cancelled). `wait`: until every worker has left."""
        self._workers.shutdown(wait, cancel_futures=cancel_futures)


def _in_order(futures, timeout):
    deadline = None if timeout is None else time.monotonic() + timeout
    for _, future in futures:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        yield from future.result(left)


def map(function, iterable, lanes=None, chunksize=None):  # noqa: A001 - parakernel.map
    """`[function(item) for item in iterable]`, run on fresh lanes (at most one per core, or
    `lanes`), results in order. An exception in a task is raised here with the lane's
    traceback as its cause; an interrupt cancels the tasks not started. More than a few dozen
    tasks show a progress bar under the cell, which ends as a summary line."""
    items = [(item,) for item in iterable]
    started = time.monotonic()
    pool = LanePool(lanes)
    bar = _Progress(len(items), pool.workers) if len(items) > PROGRESS_FROM else None
    if chunksize is None:
        # Four chunks a worker (few messages); sixteen under a progress bar, so that it moves.
        chunksize = max(1, math.ceil(len(items) / (pool.workers * (16 if bar else 4))))
    results = []
    try:
        futures = pool._workers.map_futures(function, items, chunksize)
        for _, future in futures:
            # The bar moves with every chunk done, in any order, while this one is awaited.
            while bar is not None and not future.done():
                concurrent.futures.wait([future], timeout=0.25)
                bar.show(sum(n for n, f in futures if f.done()))
            results.extend(future.result())
    except BaseException:
        cancelled = pool.cancel_pending()
        pool.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.finish(f"stopped: {len(results)} of {len(items)} results, {cancelled} task chunks cancelled")
        raise
    pool.shutdown()
    if bar is not None:
        bar.finish(f"{len(items)} tasks on {pool.workers} lanes in {time.monotonic() - started:.2f} s")
    return results


class _Progress:
    """A bar under the calling cell, updated in place (update_display), at most 10 times a
    second, that ends as a summary line."""

    def __init__(self, total, workers):
        from IPython.display import display

        self.total, self.workers = total, workers
        self.shown_at = 0.0
        self.started = time.monotonic()
        self.handle = display(self._bundle(0), raw=True, display_id=True)

    def _bundle(self, done, summary=None):
        import html

        if summary is not None:
            text = f"parakernel.map: {summary}"
            return {"text/plain": text, "text/html": f"<pre>{html.escape(text)}</pre>"}
        width = 30
        filled = int(width * done / self.total) if self.total else width
        text = f"parakernel.map [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} on {self.workers} lanes"
        return {
            "text/plain": text,
            "text/html": f'<progress value="{done}" max="{self.total}"></progress> {done}/{self.total} on {self.workers} lanes',
        }

    def show(self, done):
        now = time.monotonic()
        if self.handle is None or now - self.shown_at < 0.1:
            return
        self.shown_at = now
        self.handle.update(self._bundle(done), raw=True)

    def finish(self, summary):
        if self.handle is not None:
            self.handle.update(self._bundle(self.total, summary), raw=True)

