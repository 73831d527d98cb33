"""The channels group of `make bench` (issue 8): what moving data between lanes costs, beside
what a Python user would reach for otherwise. Called from bench.py (`--only channels` runs it
alone); every row is measured in the same run as its anchors, and printed as ratios.

- 64-byte round trips between two named lanes (ping-pong over two channels) against
  multiprocessing.Pipe between two processes, and against CPython's own `_interpqueues`
  between two own-GIL subinterpreters of a plain process (a thread each, running
  `_interpreters.run_string`). CPython 3.13's queues have no blocking get (its
  `interpreters.queues.Queue.get` polls every 10 ms), so the anchor spins on `get`: the
  fastest it can go, at the price of two busy cores.
- 1 MiB `bytes` from one lane to another (MB/s, a bounded channel so the sender cannot run
  ahead) against one copy in one process (ctypes.memmove, and `bytes(bytearray)`, which also
  allocates: with CPython's default allocator, and with the kernel's, under which each new
  1 MiB object page-faults) and multiprocessing.Pipe's send_bytes/recv_bytes.
- The shared_buffer handover: lane a makes a buffer of 1, 16, 256 MiB, writes a byte, names it
  in a channel message; lane b opens it and reads the byte back. Flat in size if zero-copy.
- parakernel.map: 10,000 tiny tasks against multiprocessing.Pool(2).map (a plain Python
  subprocess; the pool made once, and made per map as parakernel.map makes its pool) and
  ThreadPoolExecutor().map (a main-lane cell of the same kernel); 8 CPU-bound tasks (~0.3 s
  each) against the same tasks run serially in one main-lane cell, beside the capacity probe
  taken in the same rounds (the target is judged only when it finds every core free).

Rows whose parakernel API is missing (shared_buffer, map) print "n/a (not available: ...)".
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import uuid

import zmq

from bench import (
    CANDIDATE,
    REPLY_TIMEOUT,
    Bench,
    Row,
    Running,
    cpu_loop_seconds,
    format_value,
    free_cores,
    lanes_unavailable,
)

MIB = 2**20
MESSAGE_BYTES = 64
ROUNDS = 4  # lanes and anchors take turns, so that machine noise hits all of them
ROUND_TRIPS = 5_000  # per round: 20,000 in all
BATCHES = 5  # per round; a row shows the median batch
WARMUP_TRIPS = 1_000
THROUGHPUT_MESSAGES = 64  # 1 MiB messages per batch
THROUGHPUT_BOUND = 4  # the channel's maxsize (and the pipe's own buffer bounds the anchor)
SHARED_SIZES = (1 * MIB, 16 * MIB, 256 * MIB)
SHARED_REPEATS = 5
TINY_TASKS = 10_000
MAP_RUNS = 3
CPU_TASKS = 8
CPU_TASK_LOOP = 10_000_000  # ~0.3 s of pure Python (a function's loop) on this machine
CPU_ROUNDS = 2

LANE_A, LANE_B = "bench-ch-a", "bench-ch-b"


# --------------------------------------------------------------------------------------
# Running cells and probes
# --------------------------------------------------------------------------------------


def run_cells(kernel: Running, codes: list[str], timeout: float = REPLY_TIMEOUT) -> list[str]:
    """Sends every cell at once; returns each cell's stdout once all have replied and gone
    idle. A cell that fails is a RuntimeError with its error."""
    msg_ids = [kernel.kc.execute(code, store_history=False, stop_on_error=False) for code in codes]
    stdout = {msg_id: [] for msg_id in msg_ids}
    replies: dict[str, dict] = {}
    idle: set[str] = set()
    poller = zmq.Poller()
    for channel in (kernel.kc.iopub_channel, kernel.kc.shell_channel):
        poller.register(channel.socket, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while len(replies) < len(msg_ids) or len(idle) < len(msg_ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{kernel.name}: no reply within {timeout} s")
        ready = dict(poller.poll(100))
        for channel in (kernel.kc.iopub_channel, kernel.kc.shell_channel):
            if channel.socket not in ready:
                continue
            msg = channel.get_msg(timeout=0)
            parent = msg["parent_header"].get("msg_id")
            if parent not in stdout:
                continue
            if channel is kernel.kc.shell_channel:
                replies[parent] = msg["content"]
            elif msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                stdout[parent].append(msg["content"]["text"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle.add(parent)
    for msg_id in msg_ids:
        if replies[msg_id]["status"] != "ok":
            content = replies[msg_id]
            raise RuntimeError(f"{kernel.name}: a cell failed: {content.get('ename')}: "
                               f"{content.get('evalue')}")
    return ["".join(stdout[msg_id]) for msg_id in msg_ids]


def last_json(text: str):
    return json.loads(text.strip().splitlines()[-1])


def run_python(code: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = REPLY_TIMEOUT):
    """Runs ``code`` in a plain Python process (this venv's, with ``env`` added to the
    environment); returns its last line as JSON."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"probe failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return last_json(done.stdout)


def short(reason: str, limit: int = 70) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


# --------------------------------------------------------------------------------------
# 64-byte round trips
# --------------------------------------------------------------------------------------

# The batches of round trips, the same loop in every transport: `send(msg)` then `recv()`.
BATCH_LOOP = """
def batch(n):
    started = time.perf_counter()
    for _ in range(n):
        send(msg)
        recv()
    return (time.perf_counter() - started) / n
batch({warmup})
per = [batch({trips} // {batches}) for _ in range({batches})]
"""


def batch_loop(trips: int = ROUND_TRIPS) -> str:
    return BATCH_LOOP.format(warmup=WARMUP_TRIPS, trips=trips, batches=BATCHES)


def lane_round_trip_cells(prefix: str) -> list[str]:
    ping = textwrap.dedent(f"""\
        import json, time
        from parakernel import channel
        ping, pong = channel("{prefix}-ping"), channel("{prefix}-pong")
        send, recv, msg = ping.send, pong.recv, b"x" * {MESSAGE_BYTES}
        """) + batch_loop() + "send(None)\nprint(json.dumps(per))\n"
    pong = textwrap.dedent(f"""\
        from parakernel import channel
        ping, pong = channel("{prefix}-ping"), channel("{prefix}-pong")
        while (m := ping.recv()) is not None:
            pong.send(m)
        """)
    return [f"%%lane {LANE_A}\n{ping}", f"%%lane {LANE_B}\n{pong}"]


PIPE_ROUND_TRIP = """
import json, multiprocessing, time

def echo(conn):
    while (m := conn.recv_bytes()) != b"":
        conn.send_bytes(m)

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    child = context.Process(target=echo, args=(theirs,))
    child.start()
    send, recv, msg = mine.send_bytes, mine.recv_bytes, b"x" * %d
%s
    send(b"")
    child.join()
    print(json.dumps(per))
""" % (MESSAGE_BYTES, textwrap.indent(batch_loop(), "    "))

# Two own-GIL subinterpreters, each run by a thread of a plain process, exchanging bytes
# through two `_interpqueues` queues (format 0: shareable data, no pickle); `get` spins.
INTERPQUEUES_ROUND_TRIP = """
import json, threading
import _datetime  # before any subinterpreter does (CPython gh-136421)
import _interpreters, _interpqueues
try:
    from test.support.interpreters import queues
    UNBOUND = queues._serialize_unbound(queues.UNBOUND)[0]
except Exception:
    UNBOUND = 3  # 3.13's _crossinterp.UNBOUND
ping, pong, out = (_interpqueues.create(0, 0, UNBOUND) for _ in range(3))
common = f'''
import json, time, _interpqueues as Q
def get(queue):
    while True:
        try:
            return Q.get(queue)[0]
        except Q.QueueError:
            pass
'''
pinger = common + f'''
send, recv, msg = lambda m: Q.put({ping}, m, 0, {UNBOUND}), lambda: get({pong}), b"x" * %d
%s
send(b"")
Q.put({out}, json.dumps(per), 0, {UNBOUND})
'''
ponger = common + f'''
while (m := get({ping})) != b"":
    Q.put({pong}, m, 0, {UNBOUND})
'''
interpreters = [_interpreters.create() for _ in range(2)]
failures = []
def run(interpreter, code):
    failure = _interpreters.run_string(interpreter, code)
    if failure is not None:
        failures.append(failure)
threads = [threading.Thread(target=run, args=pair) for pair in zip(interpreters, (pinger, ponger))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
if failures:
    raise SystemExit(f"a subinterpreter failed: {failures[0]}")
per = json.loads(_interpqueues.get(out)[0])
for queue in (ping, pong, out):
    _interpqueues.destroy(queue)
for interpreter in interpreters:
    _interpreters.destroy(interpreter)
print(json.dumps(per))
""" % (MESSAGE_BYTES, batch_loop())


def round_trips(kernel: Running, prefix: str) -> list[Row]:
    metric = f"{MESSAGE_BYTES} B round trip, 2 lanes (median batch, {ROUNDS * ROUND_TRIPS:,} trips)"
    samples: dict[str, list[float]] = {"pipe": [], "lanes": [], "interpqueues": []}
    failed: dict[str, str] = {}
    for round_ in range(ROUNDS):
        for name in samples:
            if name in failed:
                continue
            try:
                if name == "lanes":
                    samples[name] += last_json(run_cells(kernel, lane_round_trip_cells(f"{prefix}-rt{round_}"))[0])
                elif name == "pipe":
                    samples[name] += run_python(PIPE_ROUND_TRIP)
                else:
                    samples[name] += run_python(INTERPQUEUES_ROUND_TRIP)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as failure:
                if name == "lanes":
                    raise
                failed[name] = short(str(failure))
    lanes = statistics.median(samples["lanes"])
    rows = []
    for name, anchor, target in (("pipe", "multiprocessing.Pipe, 2 processes", 0.2),
                                 ("interpqueues", "_interpqueues, 2 subinterpreters (spinning get)", None)):
        if name in failed:
            rows.append(Row.not_available(metric, anchor, failed[name]))
        else:
            rows.append(Row(metric, "µs", anchor, statistics.median(samples[name]), lanes,
                            max_ratio=target))
    return rows


# --------------------------------------------------------------------------------------
# 1 MiB throughput
# --------------------------------------------------------------------------------------


def lane_throughput_cells(prefix: str) -> list[str]:
    sender = textwrap.dedent(f"""\
        import json, time
        from parakernel import channel
        data, done = channel("{prefix}-data", maxsize={THROUGHPUT_BOUND}), channel("{prefix}-done")
        payload = bytes(range(256)) * ({MIB} // 256)
        def batch(n):
            started = time.perf_counter()
            for _ in range(n):
                data.send(payload)
            done.recv()
            return n * len(payload) / 1e6 / (time.perf_counter() - started)
        rates = [batch(n) for n in [{THROUGHPUT_MESSAGES} // 4] + [{THROUGHPUT_MESSAGES}] * {BATCHES}][1:]
        data.send(None)
        print(json.dumps(rates))
        """)
    receiver = textwrap.dedent(f"""\
        from parakernel import channel
        data, done = channel("{prefix}-data", maxsize={THROUGHPUT_BOUND}), channel("{prefix}-done")
        counts = [{THROUGHPUT_MESSAGES} // 4] + [{THROUGHPUT_MESSAGES}] * {BATCHES}
        for n in counts:
            for _ in range(n):
                got = data.recv()
            assert type(got) is bytes and len(got) == {MIB} and got[1] == 1, (type(got), len(got))
            done.send(n)
        assert data.recv() is None
        """)
    return [f"%%lane {LANE_A}\n{sender}", f"%%lane {LANE_B}\n{receiver}"]


PIPE_THROUGHPUT = f"""
import json, multiprocessing, time

def drain(conn, counts):
    for n in counts:
        for _ in range(n):
            got = conn.recv_bytes()
        assert len(got) == {MIB}
        conn.send_bytes(b"done")

if __name__ == "__main__":
    counts = [{THROUGHPUT_MESSAGES} // 4] + [{THROUGHPUT_MESSAGES}] * {BATCHES}
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    child = context.Process(target=drain, args=(theirs, counts))
    child.start()
    payload = bytes(range(256)) * ({MIB} // 256)
    rates = []
    for n in counts:
        started = time.perf_counter()
        for _ in range(n):
            mine.send_bytes(payload)
        mine.recv_bytes()
        rates.append(n * len(payload) / 1e6 / (time.perf_counter() - started))
    child.join()
    print(json.dumps(rates[1:]))
"""

# One copy of 1 MiB in one process: ctypes.memmove into a buffer kept for all copies (memcpy
# itself), and `bytes(bytearray)` (a new object each time: an allocation and a copy). Run with
# CPython's default allocator, and with the one the kernel gives its lanes (mimalloc, and
# MIMALLOC_PURGE_DELAY=0: src/python/embed.rs), under which every 1 MiB object is new memory
# from the system (page faults) once the last one was freed.
KERNEL_ALLOCATOR = {"PYTHONMALLOC": "mimalloc", "MIMALLOC_PURGE_DELAY": "0"}
MEMCPY = f"""
import ctypes, json, time
source = bytearray(range(256)) * ({MIB} // 256)
target = bytearray({MIB})
src = (ctypes.c_char * {MIB}).from_buffer(source)
dst = (ctypes.c_char * {MIB}).from_buffer(target)
def memmove(n):
    started = time.perf_counter()
    for _ in range(n):
        ctypes.memmove(dst, src, {MIB})
    return n * {MIB} / 1e6 / (time.perf_counter() - started)
def copy(n):
    started = time.perf_counter()
    for _ in range(n):
        b = bytes(source)
    return n * {MIB} / 1e6 / (time.perf_counter() - started)
result = {{}}
for name, f in (("memmove", memmove), ("bytes", copy)):
    f({THROUGHPUT_MESSAGES} // 4)
    result[name] = [f({THROUGHPUT_MESSAGES}) for _ in range({BATCHES})]
print(json.dumps(result))
"""


def throughput(kernel: Running, prefix: str) -> list[Row]:
    metric = f"1 MiB `bytes` lane → lane (median batch of {THROUGHPUT_MESSAGES})"
    samples: dict[str, list[float]] = {"memmove": [], "bytes": [], "kernel bytes": [],
                                       "pipe": [], "lanes": []}
    for round_ in range(ROUNDS):
        copies = run_python(MEMCPY)
        samples["memmove"] += copies["memmove"]
        samples["bytes"] += copies["bytes"]
        samples["kernel bytes"] += run_python(MEMCPY, env=KERNEL_ALLOCATOR)["bytes"]
        samples["pipe"] += run_python(PIPE_THROUGHPUT)
        samples["lanes"] += last_json(run_cells(kernel, lane_throughput_cells(f"{prefix}-tp{round_}"))[0])
    median = {name: statistics.median(values) for name, values in samples.items()}
    return [
        Row(metric, "MB/s", "memcpy (ctypes.memmove), 1 process", median["memmove"],
            median["lanes"], min_ratio=0.5),
        Row(metric, "MB/s", "`bytes(bytearray)` copy, 1 process", median["bytes"],
            median["lanes"], min_ratio=0.5),
        Row(metric, "MB/s", "the same, allocator of the kernel's lanes", median["kernel bytes"],
            median["lanes"], note="mimalloc, MIMALLOC_PURGE_DELAY=0"),
        Row(metric, "MB/s", "multiprocessing.Pipe send_bytes, 2 processes", median["pipe"],
            median["lanes"]),
    ]


# --------------------------------------------------------------------------------------
# shared_buffer handover
# --------------------------------------------------------------------------------------


def shared_buffer_cells(prefix: str) -> list[str]:
    """Lane a, for each size and repeat: makes a new shared buffer, writes its last byte,
    sends its name; lane b opens it by name, reads the byte, answers with it, releases its
    view. Timed by lane a, from making the buffer to the answer (then a releases it too, which
    frees the block)."""
    opener = textwrap.dedent(f"""\
        import json, time
        from parakernel import channel, shared_buffer
        names, answers = channel("{prefix}-names"), channel("{prefix}-answers")
        times = {{}}
        for size in {list(SHARED_SIZES)!r}:
            times[size] = []
            for i in range({SHARED_REPEATS} + 1):  # the first is a warm-up
                name = f"{prefix}-{{size}}-{{i}}"
                started = time.perf_counter()
                buffer = shared_buffer(name, size)
                buffer[size - 1] = i + 1
                names.send((name, size))
                assert answers.recv() == i + 1
                times[size].append(time.perf_counter() - started)
                buffer.release()  # b released its view: the block is unmapped
            times[size] = times[size][1:]
        names.send(None)
        print(json.dumps(times))
        """)
    reader = textwrap.dedent(f"""\
        from parakernel import channel, shared_buffer
        names, answers = channel("{prefix}-names"), channel("{prefix}-answers")
        while (message := names.recv()) is not None:
            name, size = message
            buffer = shared_buffer(name)  # opens the living one
            assert len(buffer) == size
            answers.send(buffer[-1])
            buffer.release()
        """)
    return [f"%%lane {LANE_A}\n{opener}", f"%%lane {LANE_B}\n{reader}"]


def shared_buffers(kernel: Running, prefix: str, missing: str | None, round_trip: float | None) -> list[Row]:
    metrics = [f"shared_buffer {size // MIB} MiB handover: a opens, writes, names it; b opens, reads"
               for size in SHARED_SIZES]
    anchors = ["a 64-byte round trip (above)"] + [f"the same, {SHARED_SIZES[0] // MIB} MiB"] * 2
    if missing:
        return [Row.not_available(m, a, missing) for m, a in zip(metrics, anchors)]
    times = last_json(run_cells(kernel, shared_buffer_cells(f"{prefix}-sb"))[0])
    medians = [statistics.median(times[str(size)]) for size in SHARED_SIZES]
    rows = [Row(metrics[0], "µs", anchors[0], round_trip, medians[0],
                note=f"median of {SHARED_REPEATS}")]
    for metric, anchor, value in zip(metrics[1:], anchors[1:], medians[1:]):
        rows.append(Row(metric, "µs", anchor, medians[0], value, max_ratio=2.0,
                        target_text="flat: ≤ 2.00×"))
    return rows


# --------------------------------------------------------------------------------------
# parakernel.map
# --------------------------------------------------------------------------------------

TINY = "def tiny(x):\n    return x + 1\n"
CPU_TASK = f"""
def spin(n):
    total = 0
    for i in range(n):
        total += i
    return total
"""

MAP_TINY_CELL = TINY + textwrap.dedent(f"""\
    import json, time, parakernel
    list(parakernel.map(tiny, range(100)))  # warm-up: the map's lanes start
    times = []
    for _ in range({MAP_RUNS}):
        started = time.perf_counter()
        out = list(parakernel.map(tiny, range({TINY_TASKS})))
        times.append(time.perf_counter() - started)
    assert out == list(range(1, {TINY_TASKS} + 1)), out[:5]
    print(json.dumps(times))
    """)

THREADS_TINY_CELL = TINY + textwrap.dedent(f"""\
    import json, time
    from concurrent.futures import ThreadPoolExecutor
    times = []
    with ThreadPoolExecutor() as pool:
        list(pool.map(tiny, range(100)))
        for _ in range({MAP_RUNS}):
            started = time.perf_counter()
            out = list(pool.map(tiny, range({TINY_TASKS})))
            times.append(time.perf_counter() - started)
    assert out == list(range(1, {TINY_TASKS} + 1))
    print(json.dumps(times))
    """)

# Pool.map on a pool made once (`times`), and with the pool made and closed each time, as
# parakernel.map does with its lanes (`whole`).
POOL_TINY = TINY + textwrap.dedent(f"""\
    import json, multiprocessing, time
    if __name__ == "__main__":
        context = multiprocessing.get_context("fork")
        times, whole = [], []
        with context.Pool(2) as pool:
            pool.map(tiny, range(100))
            for _ in range({MAP_RUNS}):
                started = time.perf_counter()
                out = pool.map(tiny, range({TINY_TASKS}))
                times.append(time.perf_counter() - started)
        assert out == list(range(1, {TINY_TASKS} + 1))
        for _ in range({MAP_RUNS}):
            started = time.perf_counter()
            with context.Pool(2) as pool:
                pool.map(tiny, range({TINY_TASKS}))
            whole.append(time.perf_counter() - started)
        print(json.dumps([times, whole]))
    """)

SERIAL_CPU_CELL = CPU_TASK + textwrap.dedent(f"""\
    import json, time
    started = time.perf_counter()
    out = [spin({CPU_TASK_LOOP}) for _ in range({CPU_TASKS})]
    print(json.dumps(time.perf_counter() - started))
    """)

MAP_CPU_CELL = CPU_TASK + textwrap.dedent(f"""\
    import json, time, parakernel
    started = time.perf_counter()
    out = list(parakernel.map(spin, [{CPU_TASK_LOOP}] * {CPU_TASKS}))
    elapsed = time.perf_counter() - started
    assert out == [spin({CPU_TASK_LOOP})] * {CPU_TASKS}
    print(json.dumps(elapsed))
    """)


def lane_map(kernel: Running, missing: str | None) -> list[Row]:
    tiny = f"{TINY_TASKS:,} tiny tasks (x + 1): parakernel.map in a cell (median of {MAP_RUNS})"
    cores = os.cpu_count() or 1
    cpu = (f"{CPU_TASKS} CPU-bound tasks ({CPU_TASK_LOOP:,} loop steps): parakernel.map "
           f"(median of {CPU_ROUNDS})")
    pool_anchor = "multiprocessing.Pool(2).map, plain python subprocess"
    threads_anchor = "ThreadPoolExecutor().map, main-lane cell, same kernel"
    serial_anchor = "the tasks in turn, one main-lane cell"
    if missing:
        return [Row.not_available(tiny, pool_anchor, missing),
                Row.not_available(tiny, threads_anchor, missing),
                Row.not_available(cpu, serial_anchor, missing)]
    samples: dict[str, list[float]] = {"pool": [], "threads": [], "map": []}
    pool_times, pool_whole = run_python(POOL_TINY)
    samples["pool"] += pool_times
    samples["threads"] += last_json(run_cells(kernel, [THREADS_TINY_CELL])[0])
    samples["map"] += last_json(run_cells(kernel, [MAP_TINY_CELL])[0])
    tiny_map = statistics.median(samples["map"])
    rows = [Row(tiny, "s", pool_anchor, statistics.median(samples["pool"]), tiny_map,
                note=f"pool made once; made and closed with each map: "
                     f"{format_value(statistics.median(pool_whole), 's')}"),
            Row(tiny, "s", threads_anchor, statistics.median(samples["threads"]), tiny_map)]
    serial, parallel, free = [], [], []
    for _ in range(CPU_ROUNDS):
        serial.append(last_json(run_cells(kernel, [SERIAL_CPU_CELL])[0]))
        parallel.append(last_json(run_cells(kernel, [MAP_CPU_CELL])[0]))
        alone = cpu_loop_seconds(1)[0]
        free.append(free_cores(alone, cpu_loop_seconds(cores)))
    serial_time, map_time, free_now = (statistics.median(x) for x in (serial, parallel, free))
    judged = free_now >= 0.9 * cores
    note = (f"{serial_time / map_time:.2f}× faster; capacity probe in the same rounds: "
            f"{free_now:.2f} of {cores} cores free" + ("" if judged else f"; target needs {cores}"))
    rows.append(Row(cpu, "s", serial_anchor, serial_time, map_time,
                    max_ratio=1 / (0.875 * cores), judged=judged,
                    target_text=f"≥ {0.875 * cores:.2f}× faster", note=note))
    return rows


# --------------------------------------------------------------------------------------


API_CHECK = textwrap.dedent("""\
    import json
    missing = {}
    for name in ("shared_buffer", "map"):
        try:
            exec(f"from parakernel import {name}")
        except ImportError as error:
            missing[name] = f"{type(error).__name__}: {error}"
    print(json.dumps(missing))
    """)


def channels(bench: Bench) -> list[Row]:
    """The channels group, in a kernel of its own (its lanes and channels are not left in the
    kernel other rows share)."""
    reason = lanes_unavailable(bench)
    if reason:
        metrics = ["64-byte round trip, lane ↔ lane", "1 MiB `bytes` lane → lane, throughput",
                   "shared_buffer handover", "parakernel.map"]
        return [Row.not_available(metric, "", reason) for metric in metrics]
    kernel, _ = Running.start(bench.names[CANDIDATE])
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        kernel.execute("pass")
        missing = {name: f"not available: {why.split(':')[0]} of parakernel.{name}"
                   for name, why in last_json(run_cells(kernel, [API_CHECK])[0]).items()}
        rows = round_trips(kernel, prefix)
        rows += throughput(kernel, prefix)
        rows += shared_buffers(kernel, prefix, missing.get("shared_buffer"), rows[0].value)
        rows += lane_map(kernel, missing.get("map"))
    finally:
        kernel.stop()
    return rows
