"""The notebooks group of `make bench` (issue 9): whole notebooks run headless by
`parakernel run` against papermill on ipykernel, in the same run, printed as ratios. Called
from bench.py (`--only notebooks` runs it alone).

- Two sets of notebooks, written into a temporary directory with nbformat: 8 CPU-bound ones
  (a pure-Python loop of ~1 s, so that lanes can run them) and 40 tiny ones (one `print`
  cell each).
- parakernel: one `parakernel run --jobs 1` and one `--jobs 2` process for the whole set (the
  binary of the candidate kernelspec, `--python` this venv's python), twice each, the median
  shown (with two runs, their mean).
- papermill: the `papermill` command line (`python -m papermill IN OUT -k python3`, papermill's
  defaults otherwise), one process per notebook as a user would run it: one after another (in
  sequence), and two papermill processes at once (two at a time: the next starts as soon as
  one ends). Run once each: they are the slow part. The 40 tiny notebooks in sequence are
  measured on the first PAPERMILL_TINY_IN_SEQUENCE and scaled to 40 (the row says so); two at a
  time runs all 40.
- Wall time of each, from the first process started to the last one ended (process starts
  included on both sides). Targets from the issue: 8 CPU-bound ≤ 0.25× papermill in sequence
  (judged on parakernel --jobs 2; --jobs 1 shown beside), 40 tiny ≤ 0.05× (the same pairing).
- Peak RSS of the whole process tree: every ~50 ms the RSS of each process started (parakernel
  run, or each papermill process) and all its children (papermill's kernels) is summed; the
  highest sum is the peak. Pages shared between processes (libpython, ...) count once per
  process, as `ps` counts them. Target: two at a time ≤ 0.3× papermill two at a time.
- The capacity probe (bench.py's: the CPU loop alone, then in one process per core at once)
  before and after the CPU-bound runs, shown beside them: --jobs 2 can only be 2× faster than
  --jobs 1 when two cores are free.

Every run's outputs are read back with nbformat and checked (each notebook printed what it
should); a run that fails or prints something else makes its rows "n/a (why)".
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbformat.v4 import new_code_cell, new_notebook

from bench import CANDIDATE, Bench, Row, cpu_loop_seconds, format_value, free_cores

CPU_NOTEBOOKS = 8
CPU_LOOP = 15_000_000  # ~1 s of pure Python on this machine (10M: 0.66 s)
TINY_NOTEBOOKS = 40
PAPERMILL_TINY_IN_SEQUENCE = 20  # measured, then scaled to TINY_NOTEBOOKS
PARAKERNEL_RUNS = 2
SAMPLE_EVERY = 0.05  # seconds between RSS samples
RUN_TIMEOUT = 600.0  # a failure guard only
# What the runs print (papermill's and parakernel's progress, a failure's traceback) goes here.
RUNS_LOG = Path(tempfile.gettempdir()) / "parakernel-bench-notebooks.log"
PAPERMILL_KERNEL = "python3"

CPU_CELLS = [
    "def spin(n):\n    total = 0\n    for i in range(n):\n        total += i * i % 7\n    return total",
    f"result = spin({CPU_LOOP:_})",
    "print(result)",
]
# What spin(CPU_LOOP) prints, without the second of computing it: i * i % 7 repeats every 7.
_PERIOD = [i * i % 7 for i in range(7)]
CPU_EXPECTED = f"{CPU_LOOP // 7 * sum(_PERIOD) + sum(_PERIOD[:CPU_LOOP % 7])}\n"


def tiny_cells(i: int) -> list[str]:
    return [f"print('tiny notebook {i}')"]


# --------------------------------------------------------------------------------------
# Peak RSS of process trees
# --------------------------------------------------------------------------------------


class PeakRSS:
    """A thread that sums, every SAMPLE_EVERY seconds, the RSS of the processes added to it
    and of all their children, and keeps the highest sum."""

    def __init__(self) -> None:
        self.roots: list[psutil.Process] = []
        self.peak = 0
        self.samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, pid: int) -> None:
        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        with self._lock:
            self.roots.append(process)
        self.sample()

    def sample(self) -> None:
        with self._lock:
            roots = [root for root in self.roots if root.is_running()]
            self.roots = roots
        seen: set[int] = set()
        total = 0
        for root in roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                if process.pid in seen:
                    continue
                seen.add(process.pid)
                try:
                    total += process.memory_info().rss
                except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                    pass
        with self._lock:
            self.peak = max(self.peak, total)
            self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Run:
    """One measured run: wall seconds, peak RSS of its process trees, and why it failed
    (None when every notebook ran and printed what it should)."""

    wall: float
    peak: int
    failure: str | None = None


def short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_outputs(outputs: list[Path], expected: list[str]) -> str | None:
    """Why the notebooks written are not what they should be (None when they are): each one's
    stdout, all cells joined, is its expected text."""
    for path, text in zip(outputs, expected):
        if not path.exists():
            return f"{path.name} not written"
        notebook = nbformat.read(path, as_version=4)
        printed = "".join(output.get("text", "") for cell in notebook.cells
                          for output in cell.get("outputs", [])
                          if output.output_type == "stream" and output.name == "stdout")
        errors = [output for cell in notebook.cells for output in cell.get("outputs", [])
                  if output.output_type == "error"]
        if errors:
            return f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
        if printed != text:
            return f"{path.name} printed {printed!r}, not {text!r}"
    return None


def run_processes(commands: list[list[str]], at_once: int, log: Path) -> tuple[float, int, str | None]:
    """Runs the commands, at most ``at_once`` at a time (the next starts as soon as one ends);
    returns the wall seconds, the peak RSS of their process trees, and the first failure."""
    pending = list(commands)
    running: list[subprocess.Popen] = []
    failure = None
    with open(log, "ab") as out, PeakRSS() as peak:
        started = time.perf_counter()
        deadline = time.monotonic() + RUN_TIMEOUT
        while pending or running:
            while pending and len(running) < at_once:
                child = subprocess.Popen(pending.pop(0), stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL)
                running.append(child)
                peak.add(child.pid)
            for child in list(running):
                code = child.poll()
                if code is None:
                    continue
                running.remove(child)
                if code != 0 and failure is None:
                    failure = f"exit code {code} (output in {log})"
            if time.monotonic() > deadline:
                for child in running:
                    child.kill()
                    child.wait()
                return time.perf_counter() - started, peak.peak, f"timed out after {RUN_TIMEOUT} s"
            time.sleep(0.01)
        wall = time.perf_counter() - started
    return wall, peak.peak, failure


def parakernel_binary(bench: Bench) -> tuple[str | None, str | None]:
    """The candidate kernelspec's binary, if it has `run` (else None and why)."""
    try:
        argv = KernelSpecManager().get_kernel_spec(bench.names[CANDIDATE]).argv
    except NoSuchKernel:
        return None, f"no kernelspec {bench.names[CANDIDATE]}"
    binary = argv[0]
    try:
        done = subprocess.run([binary, "run", "--help"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, short(f"{binary} run: {error}")
    if done.returncode != 0:
        return None, f"{Path(binary).name} has no `run`"
    return binary, None


def run_parakernel(binary: str, notebooks: list[Path], expected: list[str], jobs: int,
                   out_dir: Path, log: Path) -> Run:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    command = [binary, "run", "--python", sys.executable, "--jobs", str(jobs),
               "--output-dir", str(out_dir), *map(str, notebooks)]
    wall, peak, failure = run_processes([command], 1, log)
    failure = failure or check_outputs([out_dir / nb.name for nb in notebooks], expected)
    return Run(wall, peak, failure)


def run_papermill(notebooks: list[Path], expected: list[str], at_once: int, out_dir: Path,
                  log: Path) -> Run:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    commands = [[sys.executable, "-m", "papermill", str(nb), str(out_dir / nb.name),
                 "-k", PAPERMILL_KERNEL, "--no-progress-bar"] for nb in notebooks]
    wall, peak, failure = run_processes(commands, at_once, log)
    failure = failure or check_outputs([out_dir / nb.name for nb in notebooks], expected)
    return Run(wall, peak, failure)


def write_notebooks(directory: Path, prefix: str, cells: list[list[str]]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sources in enumerate(cells):
        path = directory / f"{prefix}-{i:02d}.ipynb"
        notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
        notebook.metadata["kernelspec"] = {"name": PAPERMILL_KERNEL, "display_name": "Python 3",
                                           "language": "python"}
        nbformat.write(notebook, path)
        paths.append(path)
    return paths


def probe() -> float:
    """Cores free now (bench.py's capacity probe)."""
    cores = os.cpu_count() or 1
    alone = cpu_loop_seconds(1)[0]
    return free_cores(alone, cpu_loop_seconds(cores))


# --------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One set of notebooks through both runners."""

    jobs1: list[Run]
    jobs2: list[Run]
    in_sequence: Run  # papermill, scaled to the whole set when measured on part of it
    two_at_a_time: Run
    measured_in_sequence: int  # notebooks papermill ran one after another
    notebooks: int

    def failure(self) -> str | None:
        for label, runs in (("parakernel run --jobs 1", self.jobs1),
                            ("parakernel run --jobs 2", self.jobs2),
                            ("papermill in sequence", [self.in_sequence]),
                            ("papermill two at a time", [self.two_at_a_time])):
            for run in runs:
                if run.failure:
                    return short(f"{label}: {run.failure}", 90)
        return None


def measure_set(binary: str, notebooks: list[Path], expected: list[str], work: Path,
                in_sequence: int) -> Measured:
    """parakernel --jobs 1 and --jobs 2, papermill in sequence, both again, papermill two at
    a time: the slow papermill runs between the parakernel ones, so that noise hits both."""
    log = RUNS_LOG
    jobs1: list[Run] = []
    jobs2: list[Run] = []
    papermill: list[Run] = []
    part = notebooks[:in_sequence]
    for round_ in range(PARAKERNEL_RUNS):
        jobs1.append(run_parakernel(binary, notebooks, expected, 1, work / "pk1", log))
        jobs2.append(run_parakernel(binary, notebooks, expected, 2, work / "pk2", log))
        if round_ == 0:
            papermill.append(run_papermill(part, expected[:in_sequence], 1, work / "pm1", log))
    papermill.append(run_papermill(notebooks, expected, 2, work / "pm2", log))
    seq = papermill[0]
    seq = Run(seq.wall * len(notebooks) / len(part), seq.peak, seq.failure)
    return Measured(jobs1, jobs2, seq, papermill[1], len(part), len(notebooks))


def median_wall(runs: list[Run]) -> float:
    return statistics.median(run.wall for run in runs)


def median_peak(runs: list[Run]) -> float:
    return statistics.median(run.peak for run in runs)


def set_rows(label: str, measured: Measured, max_ratio: float, note: str) -> list[Row]:
    seq_anchor, two_anchor = "papermill, in sequence", "papermill, two at a time"
    total = measured.notebooks
    scaled = ""
    if measured.measured_in_sequence != total:
        scaled = (f"papermill in sequence measured on {measured.measured_in_sequence} "
                  f"notebooks, scaled ×{total / measured.measured_in_sequence:g}")
    runs = f"median of {PARAKERNEL_RUNS}"

    def joined(*parts: str) -> str:
        return "; ".join(p for p in parts if p)

    j1, j2 = median_wall(measured.jobs1), median_wall(measured.jobs2)
    per = (f"per notebook: parakernel --jobs 1 {format_value(j1 / total, 's')}, papermill "
           f"{format_value(measured.in_sequence.wall / total, 's')}")
    rows = [
        Row(f"{label}: wall, parakernel run --jobs 2 ({runs})", "s", seq_anchor,
            measured.in_sequence.wall, j2, max_ratio=max_ratio,
            note=joined(f"{j2 / measured.in_sequence.wall:.3f}×", scaled, note)),
        Row(f"{label}: wall, parakernel run --jobs 1 ({runs})", "s", seq_anchor,
            measured.in_sequence.wall, j1, note=joined(per, scaled)),
        Row(f"{label}: wall, parakernel run --jobs 2 ({runs})", "s", two_anchor,
            measured.two_at_a_time.wall, j2,
            note=f"--jobs 2 is {j1 / j2:.2f}× faster than --jobs 1"),
        Row(f"{label}: peak RSS of the process tree, --jobs 2", "bytes", two_anchor,
            float(measured.two_at_a_time.peak), median_peak(measured.jobs2),
            max_ratio=0.3),
        Row(f"{label}: peak RSS of the process tree, --jobs 1", "bytes", seq_anchor,
            float(measured.in_sequence.peak), median_peak(measured.jobs1)),
    ]
    return rows


def notebooks(bench: Bench) -> list[Row]:
    cpu_label = f"{CPU_NOTEBOOKS} CPU-bound notebooks (~1 s each)"
    tiny_label = f"{TINY_NOTEBOOKS} tiny notebooks (one `print`)"
    binary, reason = parakernel_binary(bench)
    if reason is None:
        try:
            import papermill  # noqa: F401
        except ImportError:
            reason = "papermill not installed (requirements.txt)"
    if reason:
        return [Row.not_available(f"{label}: wall and peak RSS", "papermill", reason)
                for label in (cpu_label, tiny_label)]
    assert binary is not None
    work = Path(tempfile.mkdtemp(prefix="parakernel-bench-notebooks-"))
    RUNS_LOG.write_bytes(b"")
    cores = os.cpu_count() or 1
    try:
        cpu_notebooks = write_notebooks(work / "cpu", "cpu", [CPU_CELLS] * CPU_NOTEBOOKS)
        tiny_notebooks = write_notebooks(work / "tiny", "tiny",
                                         [tiny_cells(i) for i in range(TINY_NOTEBOOKS)])
        alone = min(cpu_loop_seconds(1)[0] for _ in range(2))
        together = cpu_loop_seconds(cores)
        before = free_cores(alone, together)
        cpu = measure_set(binary, cpu_notebooks, [CPU_EXPECTED] * CPU_NOTEBOOKS, work / "cpu-runs",
                          CPU_NOTEBOOKS)
        after = probe()
        tiny = measure_set(binary, tiny_notebooks,
                           [f"tiny notebook {i}\n" for i in range(TINY_NOTEBOOKS)],
                           work / "tiny-runs", PAPERMILL_TINY_IN_SEQUENCE)
        rows = [Row(f"capacity probe: the CPU loop in {cores} processes at once (slowest)", "s",
                    "1 process", alone, max(together),
                    note=f"{before:.2f} of {cores} cores free before the CPU-bound runs, "
                         f"{after:.2f} after")]
        probe_note = f"capacity probe: {before:.2f} / {after:.2f} of {cores} cores free"
        for label, measured, target, note in ((cpu_label, cpu, 0.25, probe_note),
                                              (tiny_label, tiny, 0.05, "")):
            failure = measured.failure()
            if failure:
                rows.append(Row.not_available(f"{label}: wall and peak RSS", "papermill", failure))
                continue
            rows += set_rows(label, measured, target, note)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
