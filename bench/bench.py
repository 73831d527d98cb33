#!/usr/bin/env python3
"""`make bench`: parakernel side by side with its anchor kernel, driven by the same
jupyter_client code in one run, printed as ratios (parakernel / anchor).

    .venv/bin/python bench/bench.py [--kernel parakernel] [--baseline python3]

The kernels are kernelspec names; PARAKERNEL_BENCH_KERNEL and PARAKERNEL_BENCH_BASELINE set
the defaults (bench the anchor against itself to check this script: both = python3). Runs are
interleaved (anchor, parakernel, anchor, parakernel, ...) so that machine noise hits both.
Benchmarks are not tests: a missed target is reported, not failed.

A benchmark is a function from a `Bench` (the two kernels, settings, shared started clients)
to `Row`s; add one to BENCHMARKS to add rows. Rows may have an anchor of their own:

- lanes: a capacity probe (a CPU loop in 1 process, then in one process per core at once:
  how many cores are really free now); two CPU-bound cells sent at once to two lanes against
  the same two cells in the anchor kernel (which runs them in turn), with the probe run again
  in every round so the target is judged against the cores of that moment; N cells in N lanes
  against one alone; RSS per extra lane (the fresh-lane pool warmed first, so it is not
  counted) against a whole anchor process, beside a bare subinterpreter, one with an IPython
  shell (`_interpreters`) and a fork worker; fresh-lane dispatch (a `%%parallel` `pass` round
  trip minus a main-lane one); RSS over 500 fresh-lane cells.
- lane-life: what a lane's life leaves behind (RSS per `%lane restart` cycle, over 1,000
  fresh-lane cells that import modules, per named lane and given back by `%lane stop`) beside
  CPython's own create/destroy of an interpreter in a plain process, and ipykernel.
- channels (bench/channels.py): messages between two lanes (64-byte round trips, 1 MiB
  throughput) beside mp.Pipe, CPython's `_interpqueues` and memcpy; the shared_buffer
  handover by size; parakernel.map against multiprocessing.Pool and a thread pool.
- big-request: one 200 MB execute_request (`s = '<200 MB>'`, signed, to a new kernel of each
  kind): peak RSS (VmHWM), RSS kept after the cell and after `del s`, each also as a multiple
  of the request's size, and the time to the reply.
- notebooks (bench/notebooks.py): 8 CPU-bound and 40 tiny notebooks through `parakernel run
  --jobs 1` and `--jobs 2` against papermill on ipykernel (one papermill process per notebook,
  one after another and two at a time): wall time and peak RSS of the whole process tree,
  beside the capacity probe.
  A target that needs more cores than the probe found free is shown but not judged; a row
  whose kernel feature is missing says "n/a (why)".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import psutil
import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager

REPLY_TIMEOUT = 120.0  # a failure guard only
# The kernels' own stdout and stderr (start-up warnings, logs) go here, not between results.
KERNEL_LOG = os.path.join(tempfile.gettempdir(), "parakernel-bench-kernels.log")
LINES = 100_000
PRINT_LINES = f"for i in range({LINES}):\n    print(i)"


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a metric measured on an anchor and on parakernel.

    A row whose feature is missing has no values and says why (``unavailable``); a row whose
    target cannot be judged on this machine (too few free cores) says so in ``note``."""

    metric: str
    unit: str  # "s", "µs" (seconds, shown in µs), "bytes", "MB/s" or "" (a count)
    anchor: str  # what parakernel is compared with on this row
    anchor_value: float | None
    value: float | None
    max_ratio: float | None = None  # target for value / anchor_value
    max_value: float | None = None  # target for value itself
    min_ratio: float | None = None  # target for value / anchor_value, when more is better
    note: str = ""
    unavailable: str | None = None  # why the row could not be measured
    judged: bool = True  # False: the target does not apply on this machine (see note)
    show_ratio: bool = True
    target_text: str = ""  # the target in words, when the ratio alone reads badly

    @classmethod
    def not_available(cls, metric: str, anchor: str, reason: str) -> Row:
        return cls(metric, "", anchor, None, None, unavailable=reason)

    @property
    def ratio(self) -> float:
        if self.value is None or self.anchor_value is None:
            return float("nan")
        return self.value / self.anchor_value if self.anchor_value else float("inf")

    @property
    def met(self) -> bool | None:
        if self.unavailable or not self.judged:
            return None
        checks = []
        if self.max_ratio is not None:
            checks.append(self.ratio <= self.max_ratio)
        if self.max_value is not None:
            checks.append(self.value <= self.max_value)
        if self.min_ratio is not None:
            checks.append(self.ratio >= self.min_ratio)
        return all(checks) if checks else None

    @property
    def target(self) -> str:
        if self.target_text:
            return self.target_text
        parts = []
        if self.max_ratio is not None:
            parts.append(f"≤ {self.max_ratio:.2f}×")
        if self.max_value is not None:
            parts.append(f"≤ {format_value(self.max_value, self.unit)}")
        if self.min_ratio is not None:
            parts.append(f"≥ {self.min_ratio:.2f}×")
        return ", ".join(parts)


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "s":
        return f"{value * 1e3:.2f} ms" if abs(value) < 1 else f"{value:.3f} s"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit == "µs":
        return f"{value * 1e6:.1f} µs"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    return f"{value:g}"


def row_cells(row: Row) -> list[str]:
    if row.unavailable:
        return [row.metric, row.anchor, "", f"n/a ({row.unavailable})", "", row.target, ""]
    verdict = {True: "met", False: "MISSED", None: ""}[row.met]
    if row.note:
        verdict = f"{verdict} ({row.note})" if verdict else f"({row.note})"
    return [
        row.metric,
        row.anchor,
        format_value(row.anchor_value, row.unit),
        format_value(row.value, row.unit),
        f"{row.ratio:.2f}×" if row.show_ratio else "",
        row.target,
        verdict,
    ]


def print_table(rows: list[Row], candidate: str) -> None:
    headers = ["metric", "anchor", "anchor value", candidate, "ratio", "target", ""]
    lines = [row_cells(row) for row in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *lines)]
    right = {2, 3, 4}
    for i, line in enumerate([headers, *lines]):
        cells = [str(c).rjust(w) if j in right else str(c).ljust(w)
                 for j, (c, w) in enumerate(zip(line, widths))]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------------------
# The one client code every kernel is driven by
# --------------------------------------------------------------------------------------


def wait_reply(kc: BlockingKernelClient, msg_id: str, timeout: float = REPLY_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_until_idle(kc: BlockingKernelClient, msg_id: str,
                     timeout: float = REPLY_TIMEOUT) -> Iterator[tuple[float, dict]]:
    """Yields (arrival time, message) for each iopub message of the request, idle last."""
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        arrived = time.perf_counter()
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        yield arrived, msg
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return


@dataclass
class Running:
    """A started kernel and its client."""

    name: str
    km: KernelManager
    kc: BlockingKernelClient

    @classmethod
    def start(cls, name: str) -> tuple[Running, float]:
        """Starts a kernel; returns it and the seconds from launch to its first
        kernel_info_reply."""
        km = KernelManager(kernel_name=name)
        started = time.perf_counter()
        with open(KERNEL_LOG, "ab") as log:
            km.start_kernel(stdout=log, stderr=log)
        kc = km.client()
        kc.start_channels()
        wait_reply(kc, kc.kernel_info())
        elapsed = time.perf_counter() - started
        # Not timed: iopub may not be subscribed yet (ZeroMQ's slow joiner), and a cell's
        # output published before it would be lost. jupyter_client's own check waits for it.
        kc.wait_for_ready(timeout=60)
        return cls(name, km, kc), elapsed

    def stop(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)

    def execute(self, code: str) -> tuple[float, list[tuple[float, dict]]]:
        """Runs a cell; returns the seconds until both its reply and its idle arrived, and
        its iopub messages with their arrival times."""
        started = time.perf_counter()
        msg_id = self.kc.execute(code, store_history=False)
        iopub = [(t - started, msg) for t, msg in iopub_until_idle(self.kc, msg_id)]
        reply = wait_reply(self.kc, msg_id)
        elapsed = time.perf_counter() - started
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{self.name}: {code!r} failed: {reply['content']}")
        return elapsed, iopub

    def rss(self) -> int:
        process = psutil.Process(self.km.provisioner.process.pid)  # type: ignore[union-attr]
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])

    def execute_all(self, codes: list[str]) -> tuple[float, list[dict]]:
        """Sends every cell at once (as JupyterLab's Run All); returns the seconds until the
        last reply and idle arrived, and the replies' content in the order of ``codes``."""
        started = time.perf_counter()
        msg_ids = [self.kc.execute(code, store_history=False, stop_on_error=False)
                   for code in codes]
        replies: dict[str, dict] = {}
        idle: set[str] = set()
        poller = zmq.Poller()
        for channel in (self.kc.iopub_channel, self.kc.shell_channel):
            poller.register(channel.socket, zmq.POLLIN)
        deadline = time.monotonic() + REPLY_TIMEOUT
        while len(replies) < len(msg_ids) or len(idle) < len(msg_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no reply within {REPLY_TIMEOUT} s")
            ready = dict(poller.poll(100))
            for channel in (self.kc.iopub_channel, self.kc.shell_channel):
                if channel.socket not in ready:
                    continue
                msg = channel.get_msg(timeout=0)
                parent = msg["parent_header"].get("msg_id")
                if parent not in msg_ids:
                    continue
                if channel is self.kc.shell_channel:
                    replies[parent] = msg["content"]
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle.add(parent)
        return time.perf_counter() - started, [replies[msg_id] for msg_id in msg_ids]

    def cpu_seconds(self) -> float:
        process = psutil.Process(self.km.provisioner.process.pid)  # type: ignore[union-attr]
        times = process.cpu_times()
        return times.user + times.system


# --------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------


ANCHOR, CANDIDATE = "anchor", "candidate"
ROLES = (ANCHOR, CANDIDATE)  # measurements are keyed by role: the two may be the same kernel


@dataclass
class Bench:
    names: dict[str, str]  # role -> kernelspec name
    starts: int
    runs: int
    warmup: int
    line_runs: int
    cpu_runs: int = 3
    big_request_mb: int = 200
    _running: dict[str, Running] = field(default_factory=dict)
    rss_after_start: dict[str, int] = field(default_factory=dict)
    lane_reason: str | None | bool = False  # False: not asked yet

    def running(self, role: str) -> Running:
        """A long-lived kernel per role, shared by the benchmarks; its RSS is taken right
        after its first kernel_info and one `pass`, before anything else runs in it."""
        if role not in self._running:
            kernel, _ = Running.start(self.names[role])
            kernel.execute("pass")
            self.rss_after_start[role] = kernel.rss()
            self._running[role] = kernel
        return self._running[role]

    def close(self) -> None:
        for kernel in self._running.values():
            kernel.stop()

    def interleaved(self, rounds: int, measure: Callable[[str], float]) -> dict[str, list[float]]:
        """Calls measure(role) for anchor, candidate, anchor, candidate, ..."""
        samples: dict[str, list[float]] = {role: [] for role in ROLES}
        for _ in range(rounds):
            for role in ROLES:
                samples[role].append(measure(role))
        return samples

    def row(self, metric: str, unit: str, values: dict[str, float], **target) -> Row:
        return Row(metric, unit, self.names[ANCHOR], values[ANCHOR], values[CANDIDATE], **target)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def startup(bench: Bench) -> list[Row]:
    def measure(role: str) -> float:
        kernel, elapsed = Running.start(bench.names[role])
        kernel.stop()
        return elapsed

    samples = bench.interleaved(bench.starts, measure)
    medians = {role: statistics.median(s) for role, s in samples.items()}
    return [bench.row(f"start → first kernel_info_reply (median of {bench.starts})", "s",
                      medians, max_ratio=0.10)]


def pass_round_trip(bench: Bench) -> list[Row]:
    kernels = {role: bench.running(role) for role in ROLES}
    for kernel in kernels.values():
        for _ in range(bench.warmup):
            kernel.execute("pass")
    samples = bench.interleaved(bench.runs, lambda role: kernels[role].execute("pass")[0])
    return [
        bench.row(f"`pass` → reply and idle, median of {bench.runs}", "s",
                  {n: statistics.median(s) for n, s in samples.items()}, max_ratio=0.35),
        bench.row(f"`pass` → reply and idle, p99 of {bench.runs}", "s",
                  {n: percentile(s, 0.99) for n, s in samples.items()}, max_ratio=0.35),
    ]


def print_many_lines(bench: Bench) -> list[Row]:
    expected = "".join(f"{i}\n" for i in range(LINES))
    counts: dict[str, list[float]] = {role: [] for role in ROLES}

    def measure(role: str) -> float:
        name = bench.names[role]
        _, iopub = bench.running(role).execute(PRINT_LINES)
        streams = [(t, m) for t, m in iopub if m["msg_type"] == "stream"]
        text = "".join(m["content"]["text"] for _, m in streams if m["content"]["name"] == "stdout")
        if text != expected:
            raise RuntimeError(f"{name}: the {LINES:,} printed lines did not all arrive in order")
        counts[role].append(len(streams))
        return streams[-1][0]

    samples = bench.interleaved(bench.line_runs, measure)
    return [
        bench.row(f"print {LINES:,} lines → last stream message (median of {bench.line_runs})",
                  "s", {n: statistics.median(s) for n, s in samples.items()}, max_ratio=0.25),
        bench.row(f"print {LINES:,} lines: stream messages (median)", "",
                  {n: statistics.median(c) for n, c in counts.items()}, max_value=20),
    ]


def memory(bench: Bench) -> list[Row]:
    for role in ROLES:
        bench.running(role)
    return [bench.row("RSS after start, kernel_info and `pass`", "bytes",
                      {role: float(bench.rss_after_start[role]) for role in ROLES})]


# --------------------------------------------------------------------------------------
# Lanes: CPU-bound cells side by side, memory per lane, the fresh-lane pool
# --------------------------------------------------------------------------------------

CPU_LOOP = 8_000_000
CPU_CELL = f"total = 0\nfor i in range({CPU_LOOP:_}):\n    total += i"
LANES_MEASURED = 4  # lanes (or subinterpreters) created to measure the memory of one
FRESH_WARMUP, FRESH_CELLS = 100, 500
FRESH_CELL = "import fractions\nvalues = [fractions.Fraction(i, 7) for i in range(200)]"
FRESH_GROWTH_TARGET = 2 * 2**20  # "flat": well under 4 kB a cell

# The same loop as CPU_CELL, in a process of its own that starts it at an agreed moment and
# prints its own time.
PROBE_PROCESS = f"""
import sys, time
time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
started = time.perf_counter()
{CPU_CELL}
print(time.perf_counter() - started)
"""

# RSS added by one subinterpreter (own GIL, as lanes have), bare or with an IPython shell;
# ends with os._exit: teardown is not measured (and IPython's would hang, see DESIGN.md).
SUBINTERPRETER_PROBE = """
import json, os, sys
import _datetime  # before any subinterpreter does (CPython gh-136421)
import _interpreters
import psutil
with_ipython, count = sys.argv[1] == "ipython", int(sys.argv[2])
shell = (
    "from traitlets.config import Config\\n"
    "from IPython.core.interactiveshell import InteractiveShell\\n"
    "config = Config()\\n"
    "config.HistoryManager.enabled = False\\n"
    "InteractiveShell.instance(config=config).run_cell('x = 1', store_history=False)\\n"
)
process = psutil.Process()
ids = [_interpreters.create()]  # the first one also loads what every later one shares
if with_ipython:
    _interpreters.run_string(ids[0], shell)
before = process.memory_info().rss
for _ in range(count):
    ids.append(_interpreters.create())
    if with_ipython:
        _interpreters.run_string(ids[-1], shell)
print(json.dumps((process.memory_info().rss - before) / count), flush=True)
os._exit(0)
"""

# Memory of one fork worker (multiprocessing's default start method on Linux) of a process
# with IPython loaded: its unique set size (the pages it does not share with its parent).
FORK_PROBE = """
import json, multiprocessing, os
import psutil
from traitlets.config import Config
from IPython.core.interactiveshell import InteractiveShell
config = Config()
config.HistoryManager.enabled = False
InteractiveShell.instance(config=config).run_cell("x = 1", store_history=False)

def worker(queue):
    total = sum(range(1_000_000))
    queue.put(psutil.Process().memory_full_info().uss)

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=worker, args=(queue,))
    child.start()
    print(json.dumps(queue.get()), flush=True)
    child.join()
    os._exit(0)
"""


def run_probe(code: str, *args: str) -> float:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=REPLY_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"probe failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return float(done.stdout.strip().splitlines()[-1])


def cpu_loop_seconds(processes: int) -> list[float]:
    """The CPU loop's own time in each of ``processes`` processes started together."""
    start_at = str(time.time() + 0.5)  # every process is up before the loops start
    children = [subprocess.Popen([sys.executable, "-c", PROBE_PROCESS, start_at],
                                 stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(child.communicate(timeout=REPLY_TIMEOUT)[0]) for child in children]


def free_cores(alone: float, together: list[float]) -> float:
    """Cores the machine really gave: a process that took k times longer than the loop
    alone had 1/k of a core."""
    return min(float(len(together)), sum(alone / seconds for seconds in together))


def capacity(bench: Bench) -> list[Row]:
    """The probe on its own, before the lane rows (which probe again in their own rounds)."""
    cores = os.cpu_count() or 1
    alone = min(cpu_loop_seconds(1)[0] for _ in range(2))
    together = cpu_loop_seconds(cores)
    return [Row(f"capacity probe: the CPU loop in {cores} processes at once (slowest)", "s",
                "1 process", alone, max(together),
                note=f"{free_cores(alone, together):.2f} of {cores} cores free")]


def lanes_unavailable(bench: Bench) -> str | None:
    """Why the candidate cannot run named and fresh lanes (None when it can), asked once."""
    if bench.lane_reason is False:
        _, replies = bench.running(CANDIDATE).execute_all(
            ["%%lane bench-check\npass", "%%parallel\npass"])
        failed = [reply for reply in replies if reply["status"] != "ok"]
        bench.lane_reason = None
        if failed:
            reason = f"{failed[0].get('ename')}: {failed[0].get('evalue')}"
            bench.lane_reason = reason if len(reason) <= 60 else reason[:59] + "…"
    return bench.lane_reason  # type: ignore[return-value]


def all_ok(name: str, replies: list[dict]) -> None:
    for reply in replies:
        if reply["status"] != "ok":
            raise RuntimeError(f"{name}: a cell failed: {reply.get('ename')}: {reply.get('evalue')}")


@dataclass
class Parallel:
    """Rounds of ``lanes`` CPU-bound cells sent at once, each round measuring, back to back:
    the anchor running them in turn, the candidate's lanes side by side, and the capacity probe
    (the same loop in one process, then in ``lanes`` processes at once). The probe runs inside
    the same rounds because the cores this machine really gives come and go: a probe taken
    before the measurement judged it against another moment."""

    in_turn: list[float] = field(default_factory=list)
    side_by_side: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # candidate CPU time / wall, per round
    free: list[float] = field(default_factory=list)  # cores the probe found free, per round
    ceiling: list[float] = field(default_factory=list)  # processes at once vs in turn

    def note(self, needed: int) -> tuple[bool, str]:
        """Whether a target that needs ``needed`` cores can be judged, and what the probe saw."""
        free, ceiling = statistics.median(self.free), statistics.median(self.ceiling)
        # The probe is as noisy as what it measures: "shows N cores" is within 10% of N.
        judged = free >= 0.9 * needed
        return judged, (f"probe in the same rounds: {free:.2f} cores free, {needed} processes "
                        f"at once {ceiling:.2f}× faster than in turn; lanes kept "
                        f"{statistics.median(self.busy):.2f} cores busy"
                        + ("" if judged else f"; target needs {needed} free cores"))


def lanes_in_parallel(bench: Bench, lanes: int) -> Parallel:
    anchor, candidate = bench.running(ANCHOR), bench.running(CANDIDATE)
    cells = [f"%%lane cpu-{i}\n{CPU_CELL}" for i in range(lanes)]
    all_ok(candidate.name, candidate.execute_all([f"%%lane cpu-{i}\npass" for i in range(lanes)])[1])
    result = Parallel()
    for _ in range(bench.cpu_runs):
        wall, replies = anchor.execute_all([CPU_CELL] * lanes)
        all_ok(anchor.name, replies)
        result.in_turn.append(wall)
        cpu = candidate.cpu_seconds()
        wall, replies = candidate.execute_all(cells)
        all_ok(candidate.name, replies)
        result.side_by_side.append(wall)
        result.busy.append((candidate.cpu_seconds() - cpu) / wall)
        alone = cpu_loop_seconds(1)[0]
        together = cpu_loop_seconds(lanes)
        result.free.append(free_cores(alone, together))
        result.ceiling.append(lanes * alone / max(together))
    return result


def two_lanes(bench: Bench) -> list[Row]:
    metric = f"2 CPU-bound cells sent at once: 2 lanes vs in turn (median of {bench.cpu_runs})"
    anchor_label = f"{bench.names[ANCHOR]}, in turn"
    reason = lanes_unavailable(bench)
    if reason:
        return [Row.not_available(metric, anchor_label, reason)]
    measured = lanes_in_parallel(bench, 2)
    judged, note = measured.note(2)
    return [Row(metric, "s", anchor_label, statistics.median(measured.in_turn),
                statistics.median(measured.side_by_side), max_ratio=1 / 1.75, judged=judged,
                target_text="≥ 1.75× faster", note=note)]


def n_lanes(bench: Bench) -> list[Row]:
    cores = os.cpu_count() or 1
    metric = f"{cores} CPU-bound cells in {cores} lanes vs 1 cell in 1 lane (median of {bench.cpu_runs})"
    reason = lanes_unavailable(bench)
    if reason:
        return [Row.not_available(metric, "1 lane alone", reason)]
    candidate = bench.running(CANDIDATE)
    alone = []
    for _ in range(bench.cpu_runs):
        wall, replies = candidate.execute_all([f"%%lane cpu-0\n{CPU_CELL}"])
        all_ok(candidate.name, replies)
        alone.append(wall)
    measured = lanes_in_parallel(bench, cores)
    judged, note = measured.note(cores)
    rows = [Row(metric, "s", "1 lane alone", statistics.median(alone),
                statistics.median(measured.side_by_side), max_ratio=1.15, judged=judged,
                note=note)]
    if cores != 2:  # with 2 cores this is the two-lane row again
        rows.append(Row(f"{cores} CPU-bound cells sent at once: {cores} lanes vs in turn", "s",
                        f"{bench.names[ANCHOR]}, in turn", statistics.median(measured.in_turn),
                        statistics.median(measured.side_by_side), max_ratio=1 / (0.875 * cores),
                        judged=judged, target_text=f"≥ {0.875 * cores:.2f}× faster", note=note))
    return rows


def lane_memory(bench: Bench) -> list[Row]:
    bench.running(ANCHOR)
    process_rss = float(bench.rss_after_start[ANCHOR])
    anchor_label = f"a {bench.names[ANCHOR]} process (RSS)"
    per = f"mean of {LANES_MEASURED}"
    rows = []
    metric = f"RSS per extra lane, IPython loaded (parakernel named lanes, {per})"
    reason = lanes_unavailable(bench)
    if reason:
        rows.append(Row.not_available(metric, anchor_label, reason))
    else:
        # A kernel of its own: the lanes other rows made are not counted.
        kernel, _ = Running.start(bench.names[CANDIDATE])
        try:
            kernel.execute("pass")
            all_ok(kernel.name, kernel.execute_all(["%%lane mem-warm\npass"])[1])
            # The first lane makes the kernel warm its fresh-lane pool in the background (one
            # interpreter per core); a `%%parallel` cell per slot, sent at once, returns when
            # every slot is warm, so the pool is not counted as the lanes measured next.
            pool = max(2, os.cpu_count() or 1)
            all_ok(kernel.name, kernel.execute_all(["%%parallel\npass"] * pool)[1])
            before = kernel.rss()
            for i in range(LANES_MEASURED):
                all_ok(kernel.name, kernel.execute_all([f"%%lane mem-{i}\npass"])[1])
            per_lane = (kernel.rss() - before) / LANES_MEASURED
        finally:
            kernel.stop()
        rows.append(Row(metric, "bytes", anchor_label, process_rss, per_lane, max_ratio=0.30))
    for flavour, label in (("bare", "bare"), ("ipython", "with an IPython shell")):
        metric = f"RSS per extra subinterpreter, {label} (_interpreters, {per})"
        try:
            value = run_probe(SUBINTERPRETER_PROBE, flavour, str(LANES_MEASURED))
            rows.append(Row(metric, "bytes", anchor_label, process_rss, value))
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as failure:
            rows.append(Row.not_available(metric, anchor_label, str(failure)[:80]))
    metric = "USS of a fork worker (parent with an IPython shell)"
    try:
        rows.append(Row(metric, "bytes", anchor_label, process_rss, run_probe(FORK_PROBE)))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as failure:
        rows.append(Row.not_available(metric, anchor_label, str(failure)[:80]))
    return rows


def fresh_latency(bench: Bench) -> list[Row]:
    metric = f"fresh-lane dispatch: `%%parallel` `pass` − main `pass` (medians of {bench.runs})"
    reason = lanes_unavailable(bench)
    if reason:
        return [Row.not_available(metric, "main-lane `pass`", reason)]
    kernel = bench.running(CANDIDATE)
    cells = {"main": "pass", "fresh": "%%parallel\npass"}
    for _ in range(bench.warmup):
        for code in cells.values():
            kernel.execute(code)
    samples: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(bench.runs):
        for name, code in cells.items():
            samples[name].append(kernel.execute(code)[0])
    main, fresh = (statistics.median(samples[name]) for name in cells)
    return [Row(metric, "s", "main-lane `pass`", main, fresh - main, max_value=1e-3,
                show_ratio=False, note=f"`%%parallel pass` {format_value(fresh, 's')}")]


def fresh_growth(bench: Bench) -> list[Row]:
    metric = f"RSS growth over {FRESH_CELLS} fresh-lane cells after {FRESH_WARMUP} (warm-up)"
    anchor_label = f"{bench.names[ANCHOR]}, same cells"
    reason = lanes_unavailable(bench)
    if reason:
        return [Row.not_available(metric, anchor_label, reason)]
    growth, trace = {}, ""
    for role, code in ((ANCHOR, FRESH_CELL), (CANDIDATE, "%%parallel\n" + FRESH_CELL)):
        kernel, _ = Running.start(bench.names[role])
        try:
            for _ in range(FRESH_WARMUP):
                kernel.execute(code)
            samples = [kernel.rss()]
            for i in range(1, FRESH_CELLS + 1):
                kernel.execute(code)
                if i % 100 == 0:
                    samples.append(kernel.rss())
        finally:
            kernel.stop()
        growth[role] = float(samples[-1] - samples[0])
        if role == CANDIDATE:
            trace = "every 100: " + " ".join(f"{(s - samples[0]) / 2**20:+.1f}" for s in samples[1:]) + " MiB"
    return [Row(metric, "bytes", anchor_label, growth[ANCHOR], growth[CANDIDATE],
                max_value=FRESH_GROWTH_TARGET, show_ratio=False, note=trace)]


# CPython's own cost of a lane's life, in a plain process: `cycle` creates an own-GIL
# interpreter, runs an IPython shell and the imports in it, destroys it (RSS growth per cycle
# after a warm-up); `stop` creates `count` of them, then destroys them all (RSS each added, and
# what destroying them gave back).
LIFE_IMPORTS = "import json, decimal, asyncio"
INTERPRETER_LIFE_PROBE = """
import json, os, sys
import _datetime  # before any subinterpreter does (CPython gh-136421)
import _interpreters
import psutil
mode, count = sys.argv[1], int(sys.argv[2])
shell = (
    "from traitlets.config import Config\\n"
    "from IPython.core.interactiveshell import InteractiveShell\\n"
    "config = Config()\\n"
    "config.HistoryManager.enabled = False\\n"
    "InteractiveShell.instance(config=config).run_cell(%r, store_history=False)\\n"
) % sys.argv[3]
process = psutil.Process()
def create():
    interpreter = _interpreters.create()
    _interpreters.run_string(interpreter, shell)
    return interpreter
if mode == "cycle":
    for _ in range(5):
        _interpreters.destroy(create())
    before = process.memory_info().rss
    for _ in range(count):
        _interpreters.destroy(create())
    print(json.dumps((process.memory_info().rss - before) / count), flush=True)
else:
    _interpreters.destroy(create())
    before = process.memory_info().rss
    interpreters = [create() for _ in range(count)]
    with_them = process.memory_info().rss
    for interpreter in interpreters:
        _interpreters.destroy(interpreter)
    after = process.memory_info().rss
    print(json.dumps([(with_them - before) / count, with_them - after]), flush=True)
"""
RESTART_WARMUP, RESTART_CYCLES = 5, 40
LIFE_FRESH_CELLS = 1000
LIFE_FRESH_TARGET = 4 * 2**20  # "flat": under 4 kB a cell
LIFE_LANES = 8


def run_life_probe(mode: str, count: int, allocator: str | None = None):
    env = dict(os.environ)
    env.pop("PYTHONMALLOC", None)
    if allocator:
        env["PYTHONMALLOC"] = allocator
    done = subprocess.run([sys.executable, "-c", INTERPRETER_LIFE_PROBE, mode, str(count),
                           LIFE_IMPORTS], capture_output=True, text=True, env=env,
                          timeout=REPLY_TIMEOUT * 3)
    if done.returncode != 0:
        raise RuntimeError(f"probe failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lane_life(bench: Bench) -> list[Row]:
    """What a lane's life leaves behind: RSS per `%lane restart` cycle, over many fresh-lane
    cells that import modules, per named lane and given back when they are stopped; beside
    CPython's own create/destroy of an interpreter doing the same in a plain process (with its
    default allocator, pymalloc, and with mimalloc, the kernel's), and ipykernel for the cells."""
    cpython = "CPython create/destroy"
    restart = f"RSS per `%lane restart` cycle + `{LIFE_IMPORTS}` (after {RESTART_WARMUP})"
    fresh = f"RSS growth over {LIFE_FRESH_CELLS} fresh-lane cells `{LIFE_IMPORTS}`"
    per_lane = f"RSS per named lane + `{LIFE_IMPORTS}` (mean of {LIFE_LANES})"
    given = f"RSS given back by stopping those {LIFE_LANES} lanes"
    reason = lanes_unavailable(bench)
    if reason:
        return [Row.not_available(metric, cpython, reason) for metric in (restart, fresh, per_lane, given)]
    anchors: dict[str, object] = {}
    for allocator in (None, "mimalloc"):
        try:
            anchors[f"cycle {allocator}"] = run_life_probe("cycle", RESTART_CYCLES, allocator)
            anchors[f"stop {allocator}"] = run_life_probe("stop", LIFE_LANES, allocator)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as failure:
            return [Row.not_available(metric, cpython, str(failure)[:80])
                    for metric in (restart, fresh, per_lane, given)]
    kernel, _ = Running.start(bench.names[CANDIDATE])
    try:
        kernel.execute("pass")
        pool = max(2, os.cpu_count() or 1)
        all_ok(kernel.name, kernel.execute_all(["%%parallel\npass"] * pool)[1])
        cell = f"%%lane R\n{LIFE_IMPORTS}"
        for _ in range(RESTART_WARMUP):
            kernel.execute(cell)
            kernel.execute("%lane restart R")
        before = kernel.rss()
        for _ in range(RESTART_CYCLES):
            kernel.execute(cell)
            kernel.execute("%lane restart R")
        kernel.execute(cell)
        per_cycle = (kernel.rss() - before) / RESTART_CYCLES
        kernel.execute("%lane stop R")
        before = kernel.rss()
        for i in range(LIFE_LANES):
            kernel.execute(f"%%lane life-{i}\n{LIFE_IMPORTS}")
        with_lanes = kernel.rss()
        for i in range(LIFE_LANES):
            kernel.execute(f"%lane stop life-{i}")
        time.sleep(2)  # the interpreters end on their own threads after the replies
        kernel.execute("pass")
        given_back = with_lanes - kernel.rss()
        lane_rss = (with_lanes - before) / LIFE_LANES
    finally:
        kernel.stop()
    growth = {}
    for role, code in ((ANCHOR, LIFE_IMPORTS), (CANDIDATE, "%%parallel\n" + LIFE_IMPORTS)):
        kernel, _ = Running.start(bench.names[role])
        try:
            for _ in range(50):
                kernel.execute(code)
            before = kernel.rss()
            for _ in range(LIFE_FRESH_CELLS):
                kernel.execute(code)
            growth[role] = float(kernel.rss() - before)
        finally:
            kernel.stop()
    pymalloc_cycle, mimalloc_cycle = anchors["cycle None"], anchors["cycle mimalloc"]
    (pymalloc_lane, pymalloc_given), (mimalloc_lane, mimalloc_given) = anchors["stop None"], anchors["stop mimalloc"]
    with_mimalloc = "with PYTHONMALLOC=mimalloc: {}"
    return [
        Row(restart, "bytes", f"{cpython} (pymalloc)", pymalloc_cycle, per_cycle, max_ratio=1.0,
            note=with_mimalloc.format(format_value(mimalloc_cycle, "bytes"))),
        Row(fresh, "bytes", f"{bench.names[ANCHOR]}, same cells (main)", growth[ANCHOR],
            growth[CANDIDATE], max_value=LIFE_FRESH_TARGET, show_ratio=False),
        Row(per_lane, "bytes", f"{cpython} (pymalloc)", pymalloc_lane, lane_rss,
            note=with_mimalloc.format(format_value(mimalloc_lane, "bytes"))),
        Row(given, "bytes", f"{cpython} (pymalloc)", pymalloc_given, given_back, show_ratio=False,
            note=f"of {format_value(lane_rss * LIFE_LANES, 'bytes')}; "
                 + with_mimalloc.format(format_value(mimalloc_given, "bytes"))),
    ]


# --------------------------------------------------------------------------------------
# A 200 MB request
# --------------------------------------------------------------------------------------

BIG_REQUEST_TIMEOUT = 900.0  # ipykernel took 110 s on 2 busy cores
# What the kernel may hold, in multiples of the request's size (measured: 7x, 3x, 2x).
BIG_REQUEST_TARGETS = {"peak": 8, "kept": 4, "after del": 3}


def peak_rss(pid: int) -> int:
    """The process's peak resident set (Linux's VmHWM) since it started or since reset."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmHWM in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def big_request(bench: Bench) -> list[Row]:
    """One signed execute_request of `s = '<N MB>'` to a new kernel of each kind: the kernel's
    peak RSS over its RSS before (exact: VmHWM, reset before the request), what it keeps once
    the cell has run, and after `del s`; and the time to the reply."""
    size_mb = bench.big_request_mb
    code = "s = '" + "a" * (size_mb * 10**6) + "'\nlen(s)"
    size = len(code)
    label = f"{size_mb} MB request"
    measured: dict[str, dict[str, float]] = {role: {} for role in ROLES}
    for role in ROLES:
        kernel, _ = Running.start(bench.names[role])
        try:
            kernel.execute("pass")
            pid = kernel.km.provisioner.process.pid  # type: ignore[union-attr]
            process = psutil.Process(pid)
            before = process.memory_info().rss
            try:
                reset_peak_rss(pid)
            except OSError as error:
                return [Row.not_available(f"{label}: peak RSS", bench.names[ANCHOR],
                                          f"no VmHWM reset: {error}")]
            started = time.perf_counter()
            msg_id = kernel.kc.execute(code)
            for _ in iopub_until_idle(kernel.kc, msg_id, BIG_REQUEST_TIMEOUT):
                pass
            reply = wait_reply(kernel.kc, msg_id, BIG_REQUEST_TIMEOUT)
            measured[role]["time"] = time.perf_counter() - started
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"{kernel.name}: the {label} failed: {reply['content']}")
            measured[role]["peak"] = peak_rss(pid) - before
            measured[role]["kept"] = process.memory_info().rss - before
            kernel.execute("del s")
            measured[role]["after del"] = process.memory_info().rss - before
        finally:
            kernel.stop()

    def times_the_request(key: str) -> str:
        return " vs ".join(f"{measured[role][key] / size:.1f}×" for role in (CANDIDATE, ANCHOR))

    rows = []
    for key, metric in (("peak", "peak RSS"), ("kept", "RSS kept after the cell"),
                        ("after del", "RSS kept after `del s`")):
        bound = BIG_REQUEST_TARGETS[key]
        rows.append(bench.row(f"{label}: {metric}", "bytes",
                              {role: measured[role][key] for role in ROLES},
                              max_value=bound * size, target_text=f"≤ {bound}× the request",
                              note=f"{times_the_request(key)} the request"))
    rows.append(bench.row(f"{label} → reply and idle", "s",
                          {role: measured[role]["time"] for role in ROLES}))
    return rows


# The channels and notebooks groups live in files of their own that import this one: as
# `bench`, also when this file runs as the script (`__main__`), so that all see the same Row
# and Bench.
sys.modules.setdefault("bench", sys.modules[__name__])
from channels import channels  # noqa: E402
from notebooks import notebooks  # noqa: E402

BENCHMARKS: dict[str, Callable[[Bench], list[Row]]] = {
    "startup": startup,
    "pass": pass_round_trip,
    "lines": print_many_lines,
    "memory": memory,
    "capacity": capacity,
    "two-lanes": two_lanes,
    "n-lanes": n_lanes,
    "lane-memory": lane_memory,
    "fresh-latency": fresh_latency,
    "fresh-growth": fresh_growth,
    "lane-life": lane_life,
    "channels": channels,
    "big-request": big_request,
    "notebooks": notebooks,
}


# --------------------------------------------------------------------------------------


def describe(name: str) -> str | None:
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return None
    return f"{name}: {spec.display_name} ({' '.join(spec.argv[:3])} ...)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", help="kernelspec measured (default: parakernel)",
                        default=os.environ.get("PARAKERNEL_BENCH_KERNEL", "parakernel"))
    parser.add_argument("--baseline", help="kernelspec it is compared with (default: python3)",
                        default=os.environ.get("PARAKERNEL_BENCH_BASELINE", "python3"))
    parser.add_argument("--starts", type=int, default=5, help="kernel starts per kernel")
    parser.add_argument("--runs", type=int, default=300, help="`pass` executions per kernel")
    parser.add_argument("--warmup", type=int, default=30, help="`pass` executions not counted")
    parser.add_argument("--line-runs", type=int, default=3, help="100,000-line cells per kernel")
    parser.add_argument("--cpu-runs", type=int, default=3,
                        help="rounds of the CPU-bound cells, per kernel")
    parser.add_argument("--big-request-mb", type=int, default=200,
                        help="size of the large execute_request, in MB")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS),
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)

    missing = [name for name in (args.baseline, args.kernel) if describe(name) is None]
    if missing:
        print(f"kernelspec {', '.join(map(repr, missing))} not installed (looked in the Jupyter "
              f"data dirs of {sys.prefix}); run `make setup` first.", file=sys.stderr)
        return 2

    # Both kernels get the same empty IPython profile: no user startup files, no shared history.
    os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="parakernel-bench-ipython-")
    open(KERNEL_LOG, "wb").close()
    print(f"anchor    {describe(args.baseline)}")
    print(f"candidate {describe(args.kernel)}")
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, {platform.platform()}\n")

    bench = Bench({ANCHOR: args.baseline, CANDIDATE: args.kernel},
                  args.starts, args.runs, args.warmup, args.line_runs, args.cpu_runs,
                  args.big_request_mb)
    rows: list[Row] = []
    try:
        for name, benchmark in BENCHMARKS.items():
            if args.only and name not in args.only:
                continue
            started = time.monotonic()
            rows += benchmark(bench)
            print(f"  {name}: {time.monotonic() - started:.1f} s", file=sys.stderr)
    except Exception:
        print(f"kernel output is in {KERNEL_LOG}", file=sys.stderr)
        raise
    finally:
        bench.close()
    print()
    print_table(rows, args.kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
