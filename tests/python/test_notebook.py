"""notebooks/demo.ipynb executed by nbclient (the client behind `jupyter nbconvert --execute`
and papermill) on the kernel under test, its outputs checked cell by cell; and
tests/run_notebook.py, the runner behind `make demo`, checked as a command."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "notebooks" / "demo.ipynb"
RUNNER = REPO / "tests" / "run_notebook.py"


@pytest.fixture(scope="module")
def cells(kernel_name: str) -> dict[str, nbformat.NotebookNode]:
    notebook = nbformat.read(DEMO, as_version=4)
    NotebookClient(notebook, kernel_name=kernel_name, timeout=60,
                   resources={"metadata": {"path": str(DEMO.parent)}}).execute()
    return {cell.id: cell for cell in notebook.cells}


def only_output(cell, output_type: str, **fields) -> nbformat.NotebookNode:
    assert len(cell.outputs) == 1, cell.outputs
    (output,) = cell.outputs
    assert output.output_type == output_type, output
    for name, value in fields.items():
        assert output[name] == value, output
    return output


def stdout(cell) -> str:
    assert all(o.output_type == "stream" and o.name == "stdout" for o in cell.outputs), cell.outputs
    return "".join(o.text for o in cell.outputs)


def test_demo_metadata_names_parakernel():
    notebook = nbformat.read(DEMO, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "parakernel"
    assert notebook.metadata.kernelspec.display_name == "Python (parakernel)"
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs for c in code_cells), "the demo is stored without outputs"


def test_every_code_cell_ran_in_order(cells):
    counts = [c.execution_count for c in cells.values() if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    for cell in cells.values():
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            assert not (output.output_type == "stream" and output.name == "stderr"), output


def test_print(cells):
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    # the kernel runs the venv the tests run in
    assert stdout(cells["demo-1"]) == f"Hello from parakernel!\nPython {version} at {sys.prefix}\n"


def test_rich_html_result(cells):
    result = only_output(cells["demo-2"], "execute_result", execution_count=2)
    assert result.data["text/plain"] == "Palette(#264653, #2a9d8f, #e9c46a, #f4a261, #e76f51)"
    html = result.data["text/html"]
    assert html.startswith('<div class="palette">')
    assert html.count("<span") == 5 and "background:#e76f51" in html


def test_display_updated_in_place(cells):
    # Four updates and a last one: one output remains, showing the last.
    display = only_output(cells["demo-3"], "display_data")
    assert display.data["text/markdown"] == "Done: **9,592** primes below 100,000"


def test_time_magic(cells):
    text = stdout(cells["demo-4"])
    assert text.startswith("CPU times: ") and "\nWall time: " in text


def test_shell_command(cells):
    # IPython runs `!` commands on a pty, which ends lines with \r\n
    assert stdout(cells["demo-5"]).replace("\r\n", "\n") == "Hello from the shell\n"


def test_execute_result(cells):
    result = only_output(cells["demo-6"], "execute_result", execution_count=6)
    assert result.data == {"text/plain": "3.1416"}


def test_inline_plot(cells):
    plot = only_output(cells["demo-7"], "display_data")
    assert plot.data["text/plain"] == "<Figure size 600x250 with 1 Axes>"
    png = base64.b64decode(plot.data["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def run_runner(notebook: Path, kernel_name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUNNER), str(notebook), "--kernel", kernel_name],
        capture_output=True, text=True, timeout=300,
    )


def test_runner_prints_cells_and_outputs(kernel_name: str):
    run = run_runner(DEMO, kernel_name)
    assert run.returncode == 0, run.stdout + run.stderr
    for expected in ("Hello from parakernel!", "Out[6]: 3.1416", "Hello from the shell",
                     "Done: **9,592** primes", "Wall time:", "image/png", "ok: 7 code cells"):
        assert expected in run.stdout, f"{expected!r} missing from:\n{run.stdout}"


def test_runner_fails_on_a_failing_cell(kernel_name: str, tmp_path: Path):
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print('before the error')"),
        nbformat.v4.new_code_cell("1 / 0"),
        nbformat.v4.new_code_cell("print('never printed')"),
    ])
    path = tmp_path / "failing.ipynb"
    nbformat.write(notebook, path)
    run = run_runner(path, kernel_name)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "before the error" in run.stdout
    assert "ZeroDivisionError: division by zero" in run.stdout
    assert "never printed" not in run.stdout.replace("print('never printed')", "")
    assert "FAILED" in run.stderr


def test_runner_reports_a_missing_kernelspec():
    run = run_runner(DEMO, "no-such-kernel-parakernel-test")
    assert run.returncode == 2
    assert "no-such-kernel-parakernel-test" in run.stderr
