"""End to end in JupyterLab 4: a real `jupyter lab` on a free loopback port, driven in headless
Debian Chromium by Playwright (never a downloaded browser). A notebook whose metadata names the
kernel under test is opened, its cells are run with Run All, and the page must show the printed
text, the rendered HTML element and the ZeroDivisionError traceback. The server starts its
kernels over tcp, over ipc (`KernelManager.transport`), and with CurveZMQ
(`KernelManager.transport_encryption="required"`). Screenshots are saved to
target/jupyterlab.png (tcp), target/jupyterlab-ipc.png and target/jupyterlab-curve.png for a
person to look at."""

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


# How the server reaches its kernels: the screenshot's name, and the server's options.
TRANSPORTS = {
    "tcp": ("jupyterlab.png", []),
    "ipc": ("jupyterlab-ipc.png", ["--KernelManager.transport=ipc"]),
    "curve": ("jupyterlab-curve.png", ["--KernelManager.transport_encryption=required"]),
}


@pytest.fixture(scope="module", params=list(TRANSPORTS))
def lab(request, kernel_name: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("jupyterlab-home")
    root = tmp_path_factory.mktemp("jupyterlab-root")
    write_notebook(root / NOTEBOOK, kernel_name, CELLS)
    with running_lab(root, home, kernel_name, extra_args=TRANSPORTS[request.param][1]) as server:
        server.transport = request.param
        yield server


@pytest.fixture(scope="module")
def page(lab: LabServer):
    with browser_page() as page:
        yield page


def test_run_cells_in_jupyterlab(lab: LabServer, page, kernel_name: str):
    from playwright.sync_api import expect

    display_name = find_kernel_spec(kernel_name).display_name
    screenshot = SCREENSHOT.with_name(TRANSPORTS[lab.transport][0])
    failure = screenshot.with_name(screenshot.stem + "-failure.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    failure.unlink(missing_ok=True)
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
        # The kernel really was reached the way this server was told to reach it.
        connections = lab.connection_files()
        assert connections, "no connection file in the server's runtime dir"
        for connection in connections:
            assert connection["transport"] == ("ipc" if lab.transport == "ipc" else "tcp")
            assert ("curve_secretkey" in connection) == (lab.transport == "curve")
    except Exception:
        page.screenshot(path=str(failure))
        print(lab.output())
        raise
    page.screenshot(path=str(screenshot))
