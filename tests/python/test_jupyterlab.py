"""End to end in JupyterLab 4: a real `jupyter lab` on a free loopback port, driven in headless
Debian Chromium by Playwright (never a downloaded browser). A notebook whose metadata names the
kernel under test is opened, its cells are run with Run All, and the page must show the printed
text, the rendered HTML element and the ZeroDivisionError traceback. A screenshot is saved to
target/jupyterlab.png for a person to look at."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import psutil
import pytest

from kernel_helpers import find_kernel_spec

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "target" / "jupyterlab.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
NOTEBOOK = "parakernel-lab.ipynb"
CELLS = [
    "print('hello from ' + 'jupyterlab')",  # the page must show the output, not the source
    "from IPython.display import HTML\ndisplay(HTML('<b id=\"pk-html\">bold</b>'))",
    "1/0",
]
UI_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, kernel_name: str) -> None:
    spec = find_kernel_spec(kernel_name)
    assert spec is not None
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in CELLS],
        metadata={"kernelspec": {"name": kernel_name, "display_name": spec.display_name,
                                 "language": spec.language}},
    )
    nbformat.write(notebook, path)


def isolated_env(home: Path, kernel_name: str) -> dict[str, str]:
    """Jupyter's config, data, runtime and lab settings in ``home``; the kernelspec under
    test stays visible exactly as the tests resolve it."""
    spec = find_kernel_spec(kernel_name)
    kernels_data_dir = Path(spec.resource_dir).parent.parent  # .../share/jupyter
    dirs = {name: home / name for name in ("config", "data", "runtime", "settings", "workspaces")}
    for directory in dirs.values():
        directory.mkdir(parents=True)
    # No news, no update check: nothing reaches for the network or covers the page.
    notification = dirs["settings"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        JUPYTER_PATH=os.pathsep.join(
            p for p in (str(kernels_data_dir), os.environ.get("JUPYTER_PATH")) if p
        ),
    )
    return env


class LabServer:
    def __init__(self, root: Path, home: Path, kernel_name: str):
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (home / "jupyter-lab.log").open("w+")
        jupyter = Path(sys.executable).parent / "jupyter"
        self.process = subprocess.Popen(
            [
                str(jupyter), "lab", "--no-browser",
                f"--IdentityProvider.token={self.token}",
                f"--port={self.port}", "--ServerApp.port_retries=0",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.root_dir={root}",
                # nothing that reaches for the network
                "--LabApp.news_url=",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            env=isolated_env(home, kernel_name),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, method: str = "GET") -> urllib.request.Request:
        return urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.api("/api/status"), timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)  # polling a server that is starting; no ordering depends on it
        raise TimeoutError(f"jupyter lab not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        """Asks the server to shut down (it ends its kernels), then makes sure that it and
        every process it started are gone."""
        started = [self.process.pid]
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
            started += [child.pid for child in children]
        except psutil.NoSuchProcess:
            pass
        try:
            urllib.request.urlopen(self.api("/api/shutdown", "POST"), timeout=10).close()
        except (urllib.error.URLError, ConnectionError):
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in started[1:]:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


@pytest.fixture(scope="module")
def lab(kernel_name: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("jupyterlab-home")
    root = tmp_path_factory.mktemp("jupyterlab-root")
    write_notebook(root / NOTEBOOK, kernel_name)
    server = LabServer(root, home, kernel_name)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page(lab: LabServer):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            yield context.new_page()
        finally:
            browser.close()


def test_run_cells_in_jupyterlab(lab: LabServer, page, kernel_name: str):
    from playwright.sync_api import expect

    display_name = find_kernel_spec(kernel_name).display_name
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.with_name("jupyterlab-failure.png").unlink(missing_ok=True)
    try:
        page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}")
        notebook = page.locator(".jp-NotebookPanel")
        expect(notebook).to_be_visible(timeout=UI_TIMEOUT_MS)

        # The metadata names the kernel, so Lab starts it; should it ask anyway, pick ours.
        kernel_chosen = notebook.locator(".jp-KernelName", has_text=display_name)
        dialog = page.locator(".jp-Dialog")
        expect(kernel_chosen.or_(dialog)).to_be_visible(timeout=UI_TIMEOUT_MS)
        if dialog.is_visible():
            dialog.locator("select").select_option(label=display_name)
            dialog.locator(".jp-mod-accept").click()
        expect(notebook.locator(".jp-KernelName")).to_have_text(display_name, timeout=UI_TIMEOUT_MS)
        # Run All before the kernel is connected runs nothing: wait until the status bar
        # reports the kernel itself idle (the toolbar's indicator is idle even with no kernel).
        kernel_status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem",
                                     has_text=f"{display_name} | ")
        expect(kernel_status).to_have_text(f"{display_name} | Idle", timeout=UI_TIMEOUT_MS)

        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

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
