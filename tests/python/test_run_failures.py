"""`parakernel run` when things go wrong (issue 9's hostile pass): one notebook's error on the
shared main lane, notebooks without code, a cell that outlives its --timeout's interrupt,
SIGTERM, outputs that would collide, main-lane notebooks one after another."""

from __future__ import annotations

import signal
from pathlib import Path

import nbformat
import pytest

from test_run import RUN_TIMEOUT, outputs, run, run_until, write

pytestmark = [pytest.mark.parakernel_only("parakernel run is parakernel's own"), pytest.mark.needs_lanes]


def test_an_error_on_the_main_lane_aborts_only_its_own_notebooks_cells(tmp_path: Path):
    # nb1's main-lane cell fails only once nb2's own-lane cell says so, and nb2 sent its
    # main-lane cell before that one: it is queued on the main lane behind nb1's when nb1 fails.
    first = write(tmp_path / "first.ipynb",
                  "%%lane main\nimport parakernel\nparakernel.channel('failures-go').recv()\nraise ValueError('nb1 boom')",
                  "%%lane main\nprint('nb1 after')")
    second = write(tmp_path / "second.ipynb",
                   "%%lane main\nprint('nb2 main cell ran')",
                   "import parakernel\nparakernel.channel('failures-go').send(1)")
    ran = run(first, second, "--jobs", "2", "--timeout", "60")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert outputs(tmp_path / "second.out.ipynb")[0] == [1, ("stream", "stdout", "nb2 main cell ran\n")]
    assert outputs(tmp_path / "first.out.ipynb")[1] == [None], "nb1's own next cell is aborted"

    assert any(line.split()[:3] == ["second.ipynb", "ok", "2/2"] for line in ran.stdout.splitlines()), ran.stdout
    assert any(line.split()[:3] == ["first.ipynb", "failed", "1/2"] for line in ran.stdout.splitlines()), ran.stdout


def test_a_notebook_without_code_cells_is_written_at_once(tmp_path: Path):
    empty = tmp_path / "empty.ipynb"
    empty.write_text('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}')
    prose = tmp_path / "prose.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# only words")]), prose)
    ran = run(empty, prose, write(tmp_path / "code.ipynb", "print('code')"))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for name in ("empty", "prose"):
        nbformat.validate(nbformat.read(tmp_path / f"{name}.out.ipynb", as_version=4))
    assert outputs(tmp_path / "code.out.ipynb") == [[1, ("stream", "stdout", "code\n")]]


@pytest.mark.parametrize("magic", ["", "%%parallel\n"], ids=["own-lane", "fresh-lane"])
def test_a_cell_that_outlives_its_timeouts_interrupt_has_its_lanes_stopped(tmp_path: Path, magic: str):
    stubborn = write(tmp_path / "stubborn.ipynb",
                     magic + "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except KeyboardInterrupt:\n        print('caught')",
                     "%wait\nprint('not reached')")
    ran = run(stubborn, "--timeout", "1")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    cells = outputs(tmp_path / "stubborn.out.ipynb")
    kinds = [output[:2] for output in cells[0][1:]]
    assert ("error", "CellTimeoutError") in kinds and ("error", "LaneSetAside") in kinds, cells
    if not magic:
        assert cells[1] == [None], cells  # queued behind it on the notebook's lane: aborted
    assert "stopping its lanes" in ran.stderr, ran.stderr


def test_sigterm_writes_what_ran_and_exits_143(tmp_path: Path):
    slow = write(tmp_path / "slow.ipynb", "print('first')", "import time\ntime.sleep(600)", "print('never')")
    process, seen = run_until(slow, started=("[slow.ipynb] cell 2/3",))
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 143, out + seen + err
    cells = outputs(tmp_path / "slow.out.ipynb")
    assert cells[0] == [1, ("stream", "stdout", "first\n")] and cells[2] == [None], cells
    assert "interrupted" in out, out


def test_outputs_that_would_collide_or_overwrite_an_input_are_refused_before_anything_runs(tmp_path: Path):
    notebook = write(tmp_path / "nb.ipynb", "open('ran', 'w').write('yes')")
    other = write(tmp_path / "nb.out.ipynb", "print('mine')")
    for args in ([notebook, tmp_path / "." / "nb.ipynb"], [notebook, "--output-dir", tmp_path], [notebook, "--grid", "x=1,1"],
                 [notebook, other], [notebook, "--grid", "x=" + "a" * 230]):
        refused = run(*args)
        assert refused.returncode != 0 and "parakernel:" in refused.stderr, (args, refused.stderr)
        assert not (tmp_path / "ran").exists() and list(tmp_path.glob("*.out*.ipynb")) == [other], args


def test_main_lane_notebooks_start_with_an_empty_namespace(tmp_path: Path):
    first = write(tmp_path / "m1.ipynb", "secret = 42")
    second = write(tmp_path / "m2.ipynb", "print('secret' in globals(), len(In) < 3)")
    ran = run("--main", first, "--main", second)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert outputs(tmp_path / "m2.out.ipynb") == [[1, ("stream", "stdout", "False True\n")]]
