"""`parakernel run` (issue 9): whole notebooks on lanes, headless, in one process; the files it
writes are read back with nbformat and compared with what nbclient writes on ipykernel."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from kernel_helpers import find_kernel_spec

pytestmark = [pytest.mark.parakernel_only("parakernel run is parakernel's own"), pytest.mark.needs_lanes]

REPO = Path(__file__).resolve().parents[2]
BINARY = REPO / "target" / "release" / "parakernel"
RUN_TIMEOUT = 120


def write(path: Path, *cells: str, metadata: dict | None = None) -> Path:
    notebook = new_notebook(cells=[new_code_cell(source) for source in cells])
    notebook.metadata.update(metadata or {})
    nbformat.write(notebook, path)
    return path


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [str(BINARY), "run", "--python", sys.executable, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def run_until(*args: str | Path, started: tuple[str, ...]) -> tuple[subprocess.Popen, str]:
    """Starts `parakernel run` with `args` and reads its progress lines until each of `started`
    has appeared (then the cells they name are running). Returns the process and what it said."""
    command = [str(BINARY), "run", "--python", sys.executable, *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not all(line in seen for line in started):
        assert time.monotonic() < deadline and process.poll() is None, seen
        seen += process.stderr.readline()
    return process, seen


def outputs(path: Path) -> list[list[tuple]]:
    """Each code cell's count and outputs as a reader sees them (ids and times left out)."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = []
    for cell in notebook.cells:
        shown = [cell.execution_count]
        for output in cell.outputs:
            kind = output.output_type
            if kind == "stream":
                shown.append((kind, output.name, output.text))
            elif kind == "error":
                shown.append((kind, output.ename, output.evalue))
            else:
                shown.append((kind, output.get("execution_count"), dict(output.data)))
        cells.append(shown)
    return cells


def streams_apart(path: Path) -> list[list]:
    """As `outputs`, with each cell's stdout and stderr text joined: how a kernel interleaves
    the two streams depends on when it flushes each (ipykernel buffers them apart)."""
    cells = []
    for cell in outputs(path):
        texts = {name: "".join(o[2] for o in cell[1:] if o[0] == "stream" and o[1] == name) for name in ("stdout", "stderr")}
        cells.append([cell[0], texts, *[o for o in cell[1:] if o[0] != "stream"]])
    return cells


def test_two_notebooks_that_must_meet_run_at_once_each_isolated(tmp_path: Path):
    first = write(tmp_path / "first.ipynb",
                  "from parakernel import channel\nflag = 'first'",
                  "channel('nb-meet-a').send(1)\nprint(channel('nb-meet-b').recv())",
                  "print('flag' in globals())")
    second = write(tmp_path / "second.ipynb",
                   "from parakernel import channel\nchannel('nb-meet-b').send(2)\nprint(channel('nb-meet-a').recv())",
                   "print('flag' in globals())")
    ran = run(first, second, "--jobs", "2")
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert outputs(tmp_path / "first.out.ipynb") == [[1], [2, ("stream", "stdout", "2\n")], [3, ("stream", "stdout", "True\n")]]
    assert outputs(tmp_path / "second.out.ipynb") == [[1, ("stream", "stdout", "1\n")], [2, ("stream", "stdout", "False\n")]]
    # Progress without a terminal: plain lines, then the table.
    assert "[first.ipynb] cell 2/3: channel('nb-meet-a').send(1)" in ran.stderr, ran.stderr
    table = ran.stdout.splitlines()
    assert table[0].split() == ["notebook", "status", "cells", "time", "output"], ran.stdout
    assert any(line.split()[:3] == ["second.ipynb", "ok", "2/2"] for line in table), ran.stdout


CELLS = (
    "print('to stdout')\nimport sys\nprint('to stderr', file=sys.stderr)\nprint('more')",
    "x = 6 * 7\nx",
    "from IPython.display import display, HTML\ndisplay(HTML('<b>bold</b>'))\nhandle = display('first', display_id=True)\nhandle.update('second')",
    "from IPython.display import clear_output\nprint('gone')\nclear_output()\nprint('kept')",
    "1 / 0",
    "print('after the error')",
)


def test_outputs_match_nbclient_on_ipykernel(tmp_path: Path):
    if find_kernel_spec("python3") is None:
        pytest.skip("ipykernel's python3 kernelspec is not installed")
    from nbclient import NotebookClient

    source = write(tmp_path / "same.ipynb", *CELLS)
    reference = nbformat.read(source, as_version=4)
    client = NotebookClient(reference, kernel_name="python3", allow_errors=True, timeout=60)
    client.execute()
    nbformat.write(reference, tmp_path / "reference.ipynb")
    ran = run(source, "--allow-errors", "--output-dir", tmp_path / "out")
    assert ran.returncode == 0, ran.stderr + ran.stdout
    mine, theirs = streams_apart(tmp_path / "out" / "same.ipynb"), streams_apart(tmp_path / "reference.ipynb")
    for index, (got, want) in enumerate(zip(mine, theirs, strict=True)):
        if len(want) > 2 and isinstance(want[-1], tuple) and want[-1][0] == "error":
            # Tracebacks differ in file names; the error itself must match.
            assert got[:-1] == want[:-1] and got[-1][:2] == want[-1][:2], (index, got, want)
        else:
            assert got == want, (index, got, want)
    timing = nbformat.read(tmp_path / "out" / "same.ipynb", as_version=4).cells[0].metadata.execution
    assert {"iopub.status.busy", "iopub.execute_input", "shell.execute_reply", "iopub.status.idle"} <= set(timing)
    # The file is laid out as nbformat.write lays it out (sorted keys, indent 1, lines split):
    # writing it again with nbformat changes nothing.
    written = (tmp_path / "out" / "same.ipynb").read_text(encoding="utf-8")
    assert nbformat.writes(nbformat.reads(written, as_version=nbformat.NO_CONVERT)) + "\n" == written


def test_parameters_in_a_notebook_older_than_cell_ids_keep_it_valid(tmp_path: Path):
    cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": []}
    old = {"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": [
        {**cell, "metadata": {"tags": ["parameters"]}, "source": "lr = 0.5"},
        {**cell, "source": "print(lr)\nprint('0%\\r100%')"},
    ]}
    (tmp_path / "old.ipynb").write_text(json.dumps(old), encoding="utf-8")
    ran = run(tmp_path / "old.ipynb", "-p", "lr", "0.1")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    text = (tmp_path / "old.out.ipynb").read_text(encoding="utf-8")
    written = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
    nbformat.validate(written)
    assert written.nbformat_minor == 4 and all("id" not in cell for cell in written.cells), written.cells
    assert nbformat.writes(written) + "\n" == text
    assert written.cells[2].outputs[0].text == "0.1\n0%\r100%\n"


def test_an_error_stops_its_notebook_only_and_the_exit_code_says_so(tmp_path: Path):
    failing = write(tmp_path / "failing.ipynb", "print('before')", "raise ValueError('broken')", "print('never')")
    fine = write(tmp_path / "fine.ipynb", "print('fine')")
    ran = run(failing, fine)
    assert ran.returncode == 1, ran.stdout
    failed = outputs(tmp_path / "failing.out.ipynb")
    assert failed[1][1][:3] == ("error", "ValueError", "broken") and failed[2] == [None], failed
    assert outputs(tmp_path / "fine.out.ipynb") == [[1, ("stream", "stdout", "fine\n")]]
    assert "failing.ipynb: failed (ValueError: broken)" in ran.stdout, ran.stdout
    allowed = run(failing, "--allow-errors", "--inplace")
    assert allowed.returncode == 0, allowed.stdout
    assert outputs(failing)[2] == [3, ("stream", "stdout", "never\n")]


def test_a_cell_over_the_timeout_is_interrupted_and_recorded(tmp_path: Path):
    slow = write(tmp_path / "slow.ipynb", "import time\ntime.sleep(600)", "print('not reached')")
    fine = write(tmp_path / "quick.ipynb", "print('quick')")
    ran = run(slow, fine, "--timeout", "1")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    cells = outputs(tmp_path / "slow.out.ipynb")
    kinds = [output[:2] for output in cells[0][1:]]
    assert ("error", "CellTimeoutError") in kinds, cells
    assert cells[1] == [None], cells
    assert outputs(tmp_path / "quick.out.ipynb") == [[1, ("stream", "stdout", "quick\n")]]
    assert "timed out" in ran.stdout, ran.stdout


def test_numpy_needs_the_main_lane_and_says_so(tmp_path: Path):
    lane = write(tmp_path / "arrays.ipynb", "import numpy as np\nprint(np.arange(3).sum())")
    refused = run(lane)
    assert refused.returncode == 1
    assert "parakernel run --main arrays.ipynb" in refused.stdout, refused.stdout
    ran = run("--main", lane)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert outputs(tmp_path / "arrays.out.ipynb") == [[1, ("stream", "stdout", "3\n")]]
    marked = write(tmp_path / "marked.ipynb", "import numpy\nprint('ok')", metadata={"parakernel": {"lane": "main"}})
    assert run(marked).returncode == 0


def test_parameters_and_a_grid_as_papermill_gives_them_with_records(tmp_path: Path):
    parameters = new_code_cell("lr = 0.5\nseed = 0\noptimizer = 'sgd'")
    parameters.metadata["tags"] = ["parameters"]
    notebook = new_notebook(cells=[
        parameters,
        new_code_cell("import parakernel\nparakernel.record('score', round(lr * 10 + seed, 3))\nprint(optimizer, lr, seed)"),
    ])
    nbformat.write(notebook, tmp_path / "sweep.ipynb")
    (tmp_path / "params.yaml").write_text("optimizer: adam\nextra: [1, 2]\n")
    ran = run(tmp_path / "sweep.ipynb", "--grid", "lr=0.01,0.1", "--grid", "seed=1,2", "-f", tmp_path / "params.yaml",
              "-p", "seed", "9", "--output-dir", tmp_path / "out")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    runs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert runs == [f"sweep[lr={lr},seed={seed}].ipynb" for lr in ("0.01", "0.1") for seed in (1, 2)], runs
    written = nbformat.read(tmp_path / "out" / "sweep[lr=0.1,seed=2].ipynb", as_version=4)
    injected = written.cells[1]
    assert injected.metadata.tags == ["injected-parameters"], injected
    # The grid wins over -p, which wins over the file, as papermill's order goes.
    assert injected.source == '# Parameters\nextra = [1, 2]\noptimizer = "adam"\nlr = 0.1\nseed = 2\n', injected.source
    assert written.cells[2].outputs[-1].text == "adam 0.1 2\n"
    table = ran.stdout
    assert "parameters" in table.splitlines()[0] and "recorded" in table.splitlines()[0], table
    assert "score=3.0" in table and "score=1.1" in table, table


def test_ctrl_c_interrupts_every_running_cell_writes_what_ran_and_exits_130(tmp_path: Path):
    import signal

    slow = write(tmp_path / "slow.ipynb", "print('first')", "import time\nprint('sleeping', flush=True)\ntime.sleep(600)", "print('never')")
    main = write(tmp_path / "mainlane.ipynb", "import time\nprint('on main', flush=True)\ntime.sleep(600)", "print('never')")
    later = write(tmp_path / "later.ipynb", "print('later')")
    # Both long cells have started (the runner says so on stderr): then Ctrl-C.
    process, seen = run_until("--jobs", "2", slow, "--main", main, later, started=("[slow.ipynb] cell 2/3", "[mainlane.ipynb] cell 1/2"))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 130, out + seen + err
    cells = outputs(tmp_path / "slow.out.ipynb")
    assert cells[0] == [1, ("stream", "stdout", "first\n")], cells
    assert cells[1][-1][:2] == ("error", "KeyboardInterrupt") and cells[2] == [None], cells
    main_cells = outputs(tmp_path / "mainlane.out.ipynb")
    assert main_cells[0][-1][:2] == ("error", "KeyboardInterrupt"), main_cells
    # The quick notebook ran before: it is written as it ran.
    assert outputs(tmp_path / "later.out.ipynb") == [[1, ("stream", "stdout", "later\n")]]
    assert "interrupted" in out, out


def test_lanes_a_notebook_names_are_its_own_in_every_run_of_a_grid(tmp_path: Path):
    """Two runs of one notebook both tag `lane:worker`: each run has its own worker (they meet
    through channels, so a shared worker would never finish both cells), `%wait worker` means the
    run's own, and a `parallel` cell starts a fresh lane on demand."""
    parameters = new_code_cell("seed = 0")
    parameters.metadata["tags"] = ["parameters"]
    worker = new_code_cell(
        "import sys, parakernel\n"
        "sys.pk_seen = getattr(sys, 'pk_seen', []) + [seed]\n"
        "parakernel.channel(f'grid-meet-{seed}').send(seed)\n"
        "print(sys.pk_seen, parakernel.channel(f'grid-meet-{3 - seed}').recv())")
    worker.metadata["tags"] = ["lane:worker"]
    fresh = new_code_cell("print(sum(range(10)))")
    fresh.metadata["tags"] = ["parallel"]
    notebook = new_notebook(cells=[
        parameters,
        new_code_cell("%%lane worker --in seed\npass"),
        worker,
        fresh,
        new_code_cell("%wait worker\nprint('waited', seed)"),
    ])
    nbformat.write(notebook, tmp_path / "twice.ipynb")
    ran = run(tmp_path / "twice.ipynb", "--grid", "seed=1,2", "--jobs", "2", "--timeout", "60", "--output-dir", tmp_path / "out")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for seed in (1, 2):
        cells = outputs(tmp_path / "out" / f"twice[seed={seed}].ipynb")
        assert cells[3][1:] == [("stream", "stdout", f"[{seed}] {3 - seed}\n")], cells
        assert cells[4][1:] == [("stream", "stdout", "45\n")], cells
        assert cells[5][1:] == [("stream", "stdout", f"waited {seed}\n")], cells
