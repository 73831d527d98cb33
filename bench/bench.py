#!/usr/bin/env python3
"""`make bench`: parakernel side by side with its anchor kernel, driven by the same
jupyter_client code in one run, printed as ratios (parakernel / anchor).

    .venv/bin/python bench/bench.py [--kernel parakernel] [--baseline python3]

The kernels are kernelspec names; PARAKERNEL_BENCH_KERNEL and PARAKERNEL_BENCH_BASELINE set
the defaults (bench the anchor against itself to check this script: both = python3). Runs are
interleaved (anchor, parakernel, anchor, parakernel, ...) so that machine noise hits both.
Benchmarks are not tests: a missed target is reported, not failed.

A benchmark is a function from a `Bench` (the two kernels, settings, shared started clients)
to `Row`s; add one to BENCHMARKS to add rows (for example lanes against multiprocessing, with
their own anchor per row).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import psutil
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
    """One line of the table: a metric measured on an anchor and on parakernel."""

    metric: str
    unit: str  # "s", "bytes" or "" (a count)
    anchor: str  # what parakernel is compared with on this row
    anchor_value: float
    value: float
    max_ratio: float | None = None  # target for value / anchor_value
    max_value: float | None = None  # target for value itself

    @property
    def ratio(self) -> float:
        return self.value / self.anchor_value if self.anchor_value else float("inf")

    @property
    def met(self) -> bool | None:
        checks = []
        if self.max_ratio is not None:
            checks.append(self.ratio <= self.max_ratio)
        if self.max_value is not None:
            checks.append(self.value <= self.max_value)
        return all(checks) if checks else None

    @property
    def target(self) -> str:
        parts = []
        if self.max_ratio is not None:
            parts.append(f"≤ {self.max_ratio:.2f}×")
        if self.max_value is not None:
            parts.append(f"≤ {format_value(self.max_value, self.unit)}")
        return ", ".join(parts)


def format_value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.3f} s"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:g}"


def print_table(rows: list[Row], candidate: str) -> None:
    headers = ["metric", "anchor", "anchor value", candidate, "ratio", "target", ""]
    lines = [
        [
            row.metric,
            row.anchor,
            format_value(row.anchor_value, row.unit),
            format_value(row.value, row.unit),
            f"{row.ratio:.2f}×",
            row.target,
            {True: "met", False: "MISSED", None: ""}[row.met],
        ]
        for row in rows
    ]
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


def wait_reply(kc: BlockingKernelClient, msg_id: str) -> dict:
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:
        msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_until_idle(kc: BlockingKernelClient, msg_id: str) -> Iterator[tuple[float, dict]]:
    """Yields (arrival time, message) for each iopub message of the request, idle last."""
    deadline = time.monotonic() + REPLY_TIMEOUT
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
    _running: dict[str, Running] = field(default_factory=dict)
    rss_after_start: dict[str, int] = field(default_factory=dict)

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


BENCHMARKS: dict[str, Callable[[Bench], list[Row]]] = {
    "startup": startup,
    "pass": pass_round_trip,
    "lines": print_many_lines,
    "memory": memory,
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
                  args.starts, args.runs, args.warmup, args.line_runs)
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
