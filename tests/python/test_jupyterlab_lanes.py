"""Lanes in JupyterLab 4, end to end: notebooks/parallel_experiments.ipynb opened in a real
`jupyter lab` in headless Debian Chromium, run with Run → Run All Cells (JupyterLab sends every
cell at once, with its tags), then checked on the page: every cell has its execution count, the
kernel is idle, the tagged cells ran in their lanes (each sweep cell prints the interpreter it
ran in: the two `lane:sweep-a` cells share one, `lane:sweep-b` has another, the `parallel` cell a
third, none is the main interpreter 0) and every output is under its own cell. A screenshot is
saved to target/jupyterlab-lanes.png for a person to look at."""

from __future__ import annotations

import re

import pytest

from kernel_helpers import find_kernel_spec
from lab_helpers import (
    REPO,
    UI_TIMEOUT_MS,
    LabServer,
    browser_page,
    chromium_missing,
    copy_notebook,
    open_notebook,
    run_all_cells,
    running_lab,
)

NOTEBOOK = REPO / "notebooks" / "parallel_experiments.ipynb"
SCREENSHOT = REPO / "target" / "jupyterlab-lanes.png"
FAILURE_SCREENSHOT = SCREENSHOT.with_name("jupyterlab-lanes-failure.png")
# Every cell in the DOM, rendered: the checks read outputs of cells scrolled out of view.
LAB_SETTINGS = {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"}}
RUN_TIMEOUT_MS = 180_000  # the whole notebook, on a loaded machine; a failure guard

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(chromium_missing(), reason="Debian's chromium is not installed"),
    pytest.mark.parakernel_only("lanes are parakernel's own"),
    pytest.mark.needs_lanes,
]


@pytest.fixture(scope="module")
def lab(kernel_name: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("jupyterlab-lanes-home")
    root = tmp_path_factory.mktemp("jupyterlab-lanes-root")
    copy_notebook(NOTEBOOK, root / NOTEBOOK.name, kernel_name)
    with running_lab(root, home, kernel_name, LAB_SETTINGS) as server:
        yield server


@pytest.fixture(scope="module")
def page(lab: LabServer):
    with browser_page(1280, 1900) as page:
        yield page


def code_cells_of_notebook() -> list[tuple[str, list[str]]]:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    return [(cell.id, list(cell.metadata.get("tags", [])))
            for cell in notebook.cells if cell.cell_type == "code"]


def test_run_all_runs_tagged_cells_in_their_lanes(lab: LabServer, page, kernel_name: str):
    from playwright.sync_api import expect

    display_name = find_kernel_spec(kernel_name).display_name
    expected_cells = code_cells_of_notebook()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    FAILURE_SCREENSHOT.unlink(missing_ok=True)
    try:
        notebook, kernel_status = open_notebook(page, lab, NOTEBOOK.name, kernel_name)
        run_all_cells(page)

        cells = notebook.locator(".jp-Notebook .jp-CodeCell")
        expect(cells).to_have_count(len(expected_cells))
        # Run All marks every cell [*] at once; once the first cell has its count, the run is
        # over when no cell shows [*] and the kernel is idle.
        prompts = cells.locator(".jp-InputPrompt")
        expect(prompts.first).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=UI_TIMEOUT_MS)
        expect(prompts.filter(has_text="[*]")).to_have_count(0, timeout=RUN_TIMEOUT_MS)
        expect(kernel_status).to_have_text(f"{display_name} | Idle", timeout=UI_TIMEOUT_MS)
        shown = [prompts.nth(i).inner_text().strip() for i in range(len(expected_cells))]
        outputs = {cell_id: cells.nth(i).locator(".jp-OutputArea").text_content() or ""
                   for i, (cell_id, _) in enumerate(expected_cells)}
        show_outputs_for_the_screenshot(page, notebook)
        page.screenshot(path=str(SCREENSHOT))

        assert all(re.fullmatch(r"\[\d+\]:", p) for p in shown), f"cells without a count: {shown}"
        counts = [int(re.search(r"\d+", prompt).group()) for prompt in shown]
        assert sorted(counts) == list(range(1, len(counts) + 1)), shown
        assert counts == sorted(counts), f"counts are not in request (cell) order: {shown}"

        errors = notebook.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, [errors.nth(i).text_content() for i in range(errors.count())]
        check_lanes(expected_cells, outputs)
    except Exception:
        page.screenshot(path=str(FAILURE_SCREENSHOT))
        print(lab.output())
        raise


def interpreter_in(text: str, cell_id: str) -> int:
    found = re.findall(r"interpreter (\d+)", text)
    assert len(found) == 1, f"cell {cell_id} did not say once where it ran: {text!r}"
    return int(found[0])


def check_lanes(expected_cells: list[tuple[str, list[str]]], outputs: dict[str, str]) -> None:
    sweep = {"pe-sweep-a1": ("sweep-a", "0.01"), "pe-sweep-a2": ("sweep-a", "0.1"),
             "pe-sweep-b1": ("sweep-b", "0.03"), "pe-sweep-b2": ("sweep-b", "0.3")}
    tags = dict(expected_cells)
    # Each sweep cell shows its own line, and only its own: outputs landed under their cell.
    for cell_id, (lane, lr) in sweep.items():
        assert tags[cell_id] == [f"lane:{lane}"], tags[cell_id]
        lines = re.findall(r"sweep-[ab]: lr=\S+", outputs[cell_id])
        assert lines == [f"{lane}: lr={lr}"], f"{cell_id} shows {lines}: {outputs[cell_id]!r}"
    where = {cell_id: interpreter_in(outputs[cell_id], cell_id)
             for cell_id in (*sweep, "pe-fresh", "pe-setup")}
    assert where["pe-setup"] == 0, where
    assert where["pe-sweep-a1"] == where["pe-sweep-a2"], f"lane:sweep-a changed interpreter: {where}"
    assert where["pe-sweep-b1"] == where["pe-sweep-b2"], f"lane:sweep-b changed interpreter: {where}"
    lanes = {where["pe-sweep-a1"], where["pe-sweep-b1"], where["pe-fresh"]}
    assert 0 not in lanes and len(lanes) == 3, f"tagged cells did not run in lanes of their own: {where}"
    assert "pi is about" in outputs["pe-fresh"] and "sweep" not in outputs["pe-fresh"]
    assert "raises ImportError" in outputs["pe-numpy"] and "numpy" in outputs["pe-numpy"], \
        outputs["pe-numpy"]
    summary = outputs["pe-summary"]
    assert "best: lr=" in summary and "same data in every lane: True" in summary, summary
    assert len(re.findall(r"^sweep-[ab]\s+0\.\d+", summary, re.M)) == 4, summary
    table = outputs["pe-lanes"]
    for name in ("main", "sweep-a", "sweep-b", "numpy-check"):
        assert name in table, f"%lanes does not list {name}: {table!r}"


def show_outputs_for_the_screenshot(page, notebook) -> None:
    """Collapses the code (View → Collapse All Code) so that the shot shows the sweep's
    outputs under their cells, hides the file browser and scrolls to the setup cell."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^View$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Collapse All Code$")).click()
    page.keyboard.press("Control+b")  # hide the file browser: room for the outputs
    notebook.locator(".jp-Notebook .jp-CodeCell").first.evaluate(
        "cell => cell.scrollIntoView({block: 'start'})")
    page.mouse.move(0, 0)
