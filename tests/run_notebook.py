#!/usr/bin/env python3
"""Runs a notebook through a real client and prints each code cell with its outputs.

    .venv/bin/python tests/run_notebook.py notebooks/demo.ipynb [--kernel NAME] [--output FILE]
    .venv/bin/python tests/run_notebook.py --run-all notebooks/parallel_experiments.ipynb

Two clients:

- default: nbclient (behind `jupyter nbconvert --execute` and papermill). It sends no cell tags
  and waits for each cell's reply before sending the next, so every cell runs in turn.
- ``--run-all``: what JupyterLab's Run All does. Every code cell's execute_request is sent at
  once, with the cell's metadata (its tags) in the request's metadata and ``stop_on_error``
  true unless the cell is tagged ``raises-exception``; each cell's outputs are collected by
  the msg_id they are parented to. To hold the run's wall time against the sum of the cells'
  own times fairly, the same requests are first sent in turn (each after the previous one's
  idle, tags included) to another kernel: a cell's own time, from its execute_input (sent
  when it starts running) to its idle, then holds no wait for a core or another lane.
  ``--no-compare`` skips that pass.

The kernel is the kernelspec NAME (default ``parakernel``), whatever the notebook's metadata
says. The outputs are written into the notebook at ``--output FILE`` when given. Exits 0 when
every cell ran, 1 when a cell failed (or was aborted) or the kernel died, 2 when the kernelspec
is missing.
"""

from __future__ import annotations

import argparse
import copy
import os
import queue
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat
import zmq
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

CELL_TIMEOUT = 60  # seconds, per cell
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RULE = "─"


def describe_output(output: dict) -> str:
    """One output as a person reading a terminal wants it: text as is, rich data by name."""
    kind = output["output_type"]
    if kind == "stream":
        text = output["text"]
        return text if output["name"] == "stdout" else f"[stderr] {text}"
    if kind == "error":
        # IPython's traceback already ends with "ename: evalue"; other kernels may send none.
        traceback = _ANSI.sub("", "\n".join(output.get("traceback", [])))
        return f"{traceback or output['ename'] + ': ' + output['evalue']}\n"
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        prefix = f"Out[{output['execution_count']}]: " if kind == "execute_result" else ""
        # Markdown reads well as text; the text/plain of a Markdown object is only its repr.
        shown = "text/markdown" if "text/markdown" in data else "text/plain"
        rich = [f"{mime} ({len(str(value)):,} chars)" for mime, value in data.items()
                if mime not in ("text/plain", shown)]
        text = data.get(shown, "")
        note = f"  [{', '.join(rich)}]" if rich else ""
        return f"{prefix}{text}{note}\n"
    return f"[{kind}]\n"


def print_cell(cell, cell_index: int, execute_reply: dict | None = None, note: str = "",
               **_) -> None:
    count = cell.get("execution_count")
    status = (execute_reply or {}).get("content", {}).get("status", "?")
    tags = cell.get("metadata", {}).get("tags", [])
    where = f", tags {' '.join(tags)}" if tags else ""
    note = f", {note}" if note else ""
    title = f" In [{count}] (cell {cell_index}{where}, {status}{note}) "
    print(f"{RULE * 3}{title}{RULE * max(3, 72 - len(title))}")
    print(cell.source.rstrip())
    if cell.outputs:
        print(RULE * 3)
        print("".join(describe_output(o) for o in cell.outputs), end="")
    sys.stdout.flush()


def kernelspec_missing(kernel_name: str) -> bool:
    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        print(f"kernelspec {kernel_name!r} is not installed (looked in the Jupyter data dirs of "
              f"{sys.prefix}); run `make setup` or pass --kernel", file=sys.stderr)
        return True
    return False


def write_output(notebook, output: Path | None) -> None:
    if output is not None:
        nbformat.write(notebook, output)
        print(f"outputs written to {output}")


# --------------------------------------------------------------------------------------
# nbclient: one cell at a time
# --------------------------------------------------------------------------------------


def run(path: Path, kernel_name: str, timeout: int = CELL_TIMEOUT,
        output: Path | None = None) -> int:
    if kernelspec_missing(kernel_name):
        return 2
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=print_cell,
    )
    print(f"running {path} on kernel {kernel_name!r}")
    started = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as failure:
        write_output(notebook, output)
        print(f"\nFAILED: a cell raised {failure.ename}: {failure.evalue}", file=sys.stderr)
        return 1
    except (DeadKernelError, TimeoutError, RuntimeError) as failure:
        print(f"\nFAILED: {type(failure).__name__}: {failure}", file=sys.stderr)
        return 1
    code_cells = sum(1 for cell in notebook.cells if cell.cell_type == "code")
    print(f"{RULE * 75}\nok: {code_cells} code cells in {time.monotonic() - started:.1f} s")
    write_output(notebook, output)
    return 0


# --------------------------------------------------------------------------------------
# Run All: every cell at once, as JupyterLab sends them
# --------------------------------------------------------------------------------------


@dataclass
class CellRun:
    """One code cell in flight: its request and what came back for it."""

    index: int
    cell: nbformat.NotebookNode
    msg_id: str
    reply: dict | None = None
    idle: bool = False
    started: float | None = None  # execute_input arrived: the cell began to run
    ended: float | None = None  # reply and idle both arrived
    clear_on_next_output: bool = False

    @property
    def done(self) -> bool:
        return self.reply is not None and self.idle

    @property
    def status(self) -> str:
        return self.reply["content"]["status"] if self.reply else "no reply"

    @property
    def own_seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


def execute_message(km_client, cell) -> dict:
    """The execute_request JupyterLab sends for a cell (OutputArea.execute, CodeCell.execute)."""
    metadata = dict(cell.metadata)
    tags = metadata.get("tags", [])
    content = {
        "code": cell.source,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,  # nobody is there to answer; input() says so
        "stop_on_error": "raises-exception" not in tags,
    }
    metadata.update(cellId=cell.get("id"), deletedCells=[], recordTiming=False)
    return km_client.session.msg("execute_request", content, metadata=metadata)


def add_output(runs: list[CellRun], run_: CellRun, msg: dict) -> None:
    """Files one iopub message into the cell's outputs, as JupyterLab's output area does."""
    msg_type, content = msg["msg_type"], msg["content"]
    outputs = run_.cell.outputs
    if msg_type == "clear_output":
        if content.get("wait"):
            run_.clear_on_next_output = True
        else:
            outputs.clear()
        return
    if msg_type == "update_display_data":
        display_id = content.get("transient", {}).get("display_id")
        for other in runs:  # a display may be updated from any cell
            for output in other.cell.outputs:
                if output.get("_display_id") == display_id:
                    output["data"] = content["data"]
                    output["metadata"] = content.get("metadata", {})
        return
    if msg_type not in ("stream", "display_data", "execute_result", "error"):
        return
    if run_.clear_on_next_output:
        outputs.clear()
        run_.clear_on_next_output = False
    if msg_type == "stream" and outputs and outputs[-1].output_type == "stream" \
            and outputs[-1].name == content["name"]:
        outputs[-1].text += content["text"]
        return
    output = nbformat.v4.output_from_msg(msg)
    display_id = content.get("transient", {}).get("display_id")
    if display_id:
        output["_display_id"] = display_id  # dropped before the notebook is written
    outputs.append(output)


@contextmanager
def started_kernel(kernel_name: str, cwd: Path):
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(cwd=str(cwd))
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield km, client
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=False)


@dataclass
class Pass:
    """One pass over the notebook's code cells in a kernel of its own."""

    runs: list[CellRun]
    wall: float  # first request sent → last reply and idle
    kernel_cpu: float  # CPU seconds the kernel process used meanwhile
    failure: str | None = None  # why the pass stopped early (kernel died, stuck)

    @property
    def failed(self) -> list[CellRun]:
        return [run_ for run_ in self.runs if run_.status != "ok"
                and "raises-exception" not in run_.cell.metadata.get("tags", [])]

    @property
    def own_sum(self) -> float:
        return sum(run_.own_seconds or 0.0 for run_ in self.runs)


def execute_cells(kernel_name: str, cwd: Path, cells: list[tuple[int, nbformat.NotebookNode]],
                  at_once: bool, timeout: int) -> Pass:
    """Sends the cells' execute_requests, every one at once (Run All) or each after the
    previous one's reply and idle (in turn; then it stops at a failed cell as Run All's
    stop_on_error would), and files what comes back by parent msg_id."""
    import psutil

    for _, cell in cells:
        cell.outputs = []
        cell.execution_count = None
    with started_kernel(kernel_name, cwd) as (km, client):
        process = psutil.Process(km.provisioner.process.pid)  # type: ignore[union-attr]
        cpu_before = sum(process.cpu_times()[:2])
        poller = zmq.Poller()
        for channel in (client.iopub_channel, client.shell_channel):
            poller.register(channel.socket, zmq.POLLIN)
        runs: list[CellRun] = []
        by_id: dict[str, CellRun] = {}

        def send(index: int, cell) -> None:
            msg = execute_message(client, cell)
            client.shell_channel.send(msg)
            runs.append(CellRun(index, cell, msg["header"]["msg_id"]))
            by_id[runs[-1].msg_id] = runs[-1]

        def receive_until_done() -> str | None:
            # Nothing for `timeout` seconds means a stuck kernel, however long the run takes.
            last_heard = time.monotonic()
            while not all(run_.done for run_ in runs):
                if not km.is_alive():
                    return "the kernel died"
                if time.monotonic() - last_heard > timeout:
                    waiting = [run_.index for run_ in runs if not run_.done]
                    return f"nothing from the kernel for {timeout} s; cells {waiting} not done"
                # Wait on both sockets at once, so that a message is timed when it arrives.
                ready = dict(poller.poll(100))
                for channel in (client.iopub_channel, client.shell_channel):
                    if channel.socket not in ready:
                        continue
                    try:
                        msg = channel.get_msg(timeout=0)
                    except queue.Empty:
                        continue
                    last_heard = now = time.monotonic()
                    run_ = by_id.get(msg["parent_header"].get("msg_id"))
                    if run_ is not None:
                        file_message(runs, run_, msg, channel is client.shell_channel, now)
            return None

        started = time.monotonic()
        failure = None
        if at_once:
            for index, cell in cells:
                send(index, cell)
            failure = receive_until_done()
        else:
            for index, cell in cells:
                send(index, cell)
                failure = receive_until_done()
                if failure or runs[-1].status != "ok":
                    break
        wall = time.monotonic() - started
        kernel_cpu = sum(process.cpu_times()[:2]) - cpu_before
    for run_ in runs:
        for out in run_.cell.outputs:
            out.pop("_display_id", None)
    return Pass(runs, wall, kernel_cpu, failure)


def file_message(runs: list[CellRun], run_: CellRun, msg: dict, is_reply: bool, now: float) -> None:
    if is_reply:
        run_.reply = msg
        count = msg["content"].get("execution_count")
        if count is not None and run_.cell.execution_count is None and \
                msg["content"]["status"] != "aborted":
            run_.cell.execution_count = count
    elif msg["msg_type"] == "status":
        run_.idle = run_.idle or msg["content"]["execution_state"] == "idle"
    elif msg["msg_type"] == "execute_input":
        run_.started = now
        run_.cell.execution_count = msg["content"]["execution_count"]
    else:
        add_output(runs, run_, msg)
    if run_.done and run_.ended is None:
        run_.ended = now


def run_all(path: Path, kernel_name: str, timeout: int = CELL_TIMEOUT,
            output: Path | None = None, compare: bool = True) -> int:
    """Run All; with ``compare``, first the same cells in turn in another kernel, which gives
    each cell's own time while nothing else runs: the honest sum to hold the wall time
    against."""
    if kernelspec_missing(kernel_name):
        return 2
    notebook = nbformat.read(path, as_version=4)
    cwd = path.parent.resolve()
    cells = [(i, cell) for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and cell.source.strip()]
    alone: dict[int, float | None] = {}
    in_turn = None
    if compare:
        print(f"running {path} on kernel {kernel_name!r}: first in turn, one cell at a time, "
              f"for each cell's own time")
        in_turn = execute_cells(kernel_name, cwd, [(i, copy.deepcopy(c)) for i, c in cells],
                                at_once=False, timeout=timeout)
        alone = {run_.index: run_.own_seconds for run_ in in_turn.runs}
    print(f"running {path} on kernel {kernel_name!r}: Run All, {len(cells)} cells sent at once")
    run = execute_cells(kernel_name, cwd, cells, at_once=True, timeout=timeout)
    for run_ in run.runs:
        seconds = alone.get(run_.index)
        print_cell(run_.cell, run_.index, run_.reply,
                   note=f"{seconds:.2f} s alone" if seconds is not None else "")
    print(RULE * 75)
    print_timing(run, in_turn)
    write_output(notebook, output)

    failures = [f"{kind}: {p.failure}" for kind, p in (("in turn", in_turn), ("Run All", run))
                if p is not None and p.failure]
    failures += [f"{kind}: cell {r.index} {r.status} {error_of(r)}"
                 for kind, p in (("in turn", in_turn), ("Run All", run)) if p is not None
                 for r in p.failed]
    if failures:
        for failure in failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"ok: {len(run.runs)} code cells in {run.wall:.1f} s")
    return 0


def error_of(run_: CellRun) -> str:
    reply = run_.reply["content"] if run_.reply else {}
    return f"{reply.get('ename')}: {reply.get('evalue')}" if run_.status == "error" else ""


def most_at_once(runs: list[CellRun]) -> int:
    events = []
    for run_ in runs:
        if run_.started is not None and run_.ended is not None:
            events += [(run_.started, 1), (run_.ended, -1)]
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak


def print_timing(run: Pass, in_turn: Pass | None) -> None:
    """The Run All's wall time against the cells' own times, measured where they mean
    something: one cell at a time, in turn. (Under Run All a cell's own time also holds its
    waits for a free core and for other lanes (%wait), so their sum would overstate.)"""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"Run All: {run.wall:.2f} s wall (first request sent → last cell idle); "
          f"at most {most_at_once(run.runs)} cells ran at once on {cores} cores; the kernel used "
          f"{run.kernel_cpu:.2f} s CPU ({run.kernel_cpu / run.wall:.2f} cores busy on average)")
    if in_turn is None:
        print(f"cells' own times under Run All (execute_input → idle): {run.own_sum:.2f} s in "
              f"sum; they include waiting for a core and for other lanes, so run with the "
              f"in-turn comparison (the default) for a fair sum")
        return
    if in_turn.failure or len(in_turn.runs) < len(run.runs) or in_turn.failed:
        last = in_turn.runs[-1] if in_turn.runs else None
        where = f"cell {last.index} ({last.status})" if last else "the start"
        print(f"in turn: stopped at {where}{'; ' + in_turn.failure if in_turn.failure else ''}: "
              f"no fair sum of the cells' own times to compare with")
        return
    print(f"in turn: the cells' own times (execute_input → idle, one cell at a time) add up to "
          f"{in_turn.own_sum:.2f} s ({in_turn.wall:.2f} s wall, {in_turn.kernel_cpu:.2f} s CPU)")
    speedup = in_turn.own_sum / run.wall
    than = f"{speedup:.2f}× faster" if speedup >= 1 else f"{1 / speedup:.2f}× slower"
    print(f"Run All took {run.wall / in_turn.own_sum:.2f}× the sum of the cells' own times: "
          f"{than} than running them in turn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--kernel", default="parakernel",
                        help="kernelspec name (default: parakernel)")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT,
                        help="seconds per cell (with --run-all: seconds without a message)")
    parser.add_argument("--run-all", action="store_true",
                        help="send every cell at once with its tags, as JupyterLab's Run All")
    parser.add_argument("--no-compare", action="store_true",
                        help="with --run-all: skip the first pass in turn (no fair comparison)")
    parser.add_argument("--output", type=Path, help="write the executed notebook here")
    args = parser.parse_args(argv)
    if args.run_all:
        return run_all(args.notebook, args.kernel, args.timeout, args.output,
                       compare=not args.no_compare)
    return run(args.notebook, args.kernel, args.timeout, args.output)


if __name__ == "__main__":
    sys.exit(main())
