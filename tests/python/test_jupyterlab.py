"""End to end in JupyterLab 4: a real `jupyter lab` on a free loopback port, driven in headless
Debian Chromium by Playwright (never a downloaded browser). A notebook whose metadata names the
kernel under test is opened, its cells are run with Run All, and the page must show the printed
text, the rendered HTML element and the ZeroDivisionError traceback. A screenshot is saved to
target/jupyterlab.png for a person to look at."""

from __future__ import annotations

import pytest

from kernel_helpers import find_kernel_spec
from lab_helpers import (
    REPO,
    UI_TIMEOUT_MS,
    LabServer,
    browser_page,
    chromium_missing,
    open_notebook,
    run_all_cells,
    running_lab,
    write_notebook,
)

SCREENSHOT = REPO / "target" / "jupyterlab.png"
NOTEBOOK = "parakernel-lab.ipynb"
CELLS = [
    "print('hello from ' + 'jupyterlab')",  # the page must show the output, not the source
    "from IPython.display import HTML\ndisplay(HTML('<b id=\"pk-html\">bold</b>'))",
    "1/0",
]

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(chromium_missing(), reason="Debian's chromium is not installed"),
]


@pytest.fixture(scope="module")
def lab(kernel_name: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("jupyterlab-home")
    root = tmp_path_factory.mktemp("jupyterlab-root")
    write_notebook(root / NOTEBOOK, kernel_name, CELLS)
    with running_lab(root, home, kernel_name) as server:
        yield server


@pytest.fixture(scope="module")
def page(lab: LabServer):
    with browser_page() as page:
        yield page


def test_run_cells_in_jupyterlab(lab: LabServer, page, kernel_name: str):
    from playwright.sync_api import expect

    display_name = find_kernel_spec(kernel_name).display_name
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.with_name("jupyterlab-failure.png").unlink(missing_ok=True)
    try:
        notebook, kernel_status = open_notebook(page, lab, NOTEBOOK, kernel_name)
        run_all_cells(page)

        cells = notebook.locator(".jp-Notebook .jp-CodeCell")
        expect(cells).to_have_count(len(CELLS))
        printed, html, error = (cells.nth(i).locator(".jp-OutputArea-output") for i in range(3))
        expect(printed).to_have_text("hello from jupyterlab", timeout=UI_TIMEOUT_MS)
        bold = html.locator("b#pk-html")
        expect(bold).to_have_text("bold", timeout=UI_TIMEOUT_MS)
        expect(error).to_contain_text("ZeroDivisionError", timeout=UI_TIMEOUT_MS)
        expect(error).to_contain_text("division by zero")
        expect(error).to_have_attribute("data-mime-type", "application/vnd.jupyter.stderr")
        for i in range(3):
            expect(cells.nth(i).locator(".jp-InputPrompt")).to_have_text(f"[{i + 1}]:")
        expect(kernel_status).to_have_text(f"{display_name} | Idle", timeout=UI_TIMEOUT_MS)
    except Exception:
        page.screenshot(path=str(SCREENSHOT.with_name("jupyterlab-failure.png")))
        print(lab.output())
        raise
    page.screenshot(path=str(SCREENSHOT))
