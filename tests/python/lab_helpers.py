"""What the JupyterLab suites share: a real `jupyter lab` on a free loopback port with its
config, data, runtime and settings in a directory of its own, and headless Debian Chromium
driven by Playwright (never a downloaded browser), plus the few page actions the suites do
(open a notebook with the kernel under test, Run All Cells)."""

from __future__ import annotations

import contextlib
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
from typing import Iterator

import nbformat
import psutil

from kernel_helpers import find_kernel_spec

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
UI_TIMEOUT_MS = 60_000


def chromium_missing() -> bool:
    return not Path(CHROMIUM).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernelspec_metadata(kernel_name: str) -> dict:
    spec = find_kernel_spec(kernel_name)
    assert spec is not None
    return {"name": kernel_name, "display_name": spec.display_name, "language": spec.language}


def write_notebook(path: Path, kernel_name: str, sources: list[str]) -> None:
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in sources],
        metadata={"kernelspec": kernelspec_metadata(kernel_name)},
    )
    nbformat.write(notebook, path)


def copy_notebook(source: Path, path: Path, kernel_name: str) -> nbformat.NotebookNode:
    """Copies a notebook, outputs cleared and its metadata naming the kernel under test."""
    notebook = nbformat.read(source, as_version=4)
    notebook.metadata["kernelspec"] = kernelspec_metadata(kernel_name)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(notebook, path)
    return notebook


def isolated_env(home: Path, kernel_name: str,
                 settings: dict[str, dict] | None = None) -> dict[str, str]:
    """Jupyter's config, data, runtime and lab settings in ``home``; the kernelspec under
    test stays visible exactly as the tests resolve it. ``settings`` maps a Lab plugin id
    (e.g. ``@jupyterlab/notebook-extension:tracker``) to settings of its own."""
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
    for plugin, values in (settings or {}).items():
        package, name = plugin.split(":")
        directory = dirs["settings"] / package
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
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
    def __init__(self, root: Path, home: Path, kernel_name: str,
                 settings: dict[str, dict] | None = None, extra_args: list[str] | None = None):
        self.root = root
        self.home = home
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
                *(extra_args or []),
            ],
            env=isolated_env(home, kernel_name, settings),
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

    def connection_files(self) -> list[dict]:
        """The connection files of the kernels this server started (in its runtime dir)."""
        found = []
        for path in self.home.rglob("kernel-*.json"):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                pass
        return found

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


@contextlib.contextmanager
def running_lab(root: Path, home: Path, kernel_name: str,
                settings: dict[str, dict] | None = None,
                extra_args: list[str] | None = None) -> Iterator[LabServer]:
    server = LabServer(root, home, kernel_name, settings, extra_args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 860) -> Iterator:
    """A page in headless Debian Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            yield context.new_page()
        finally:
            browser.close()


def open_notebook(page, lab: LabServer, notebook: str, kernel_name: str):
    """Opens ``notebook`` and waits until its kernel (the one under test) is connected and idle.
    Returns the notebook panel and the status bar's kernel status item."""
    from playwright.sync_api import expect

    display_name = find_kernel_spec(kernel_name).display_name
    page.goto(f"{lab.url}/lab/tree/{notebook}?token={lab.token}")
    panel = page.locator(".jp-NotebookPanel")
    expect(panel).to_be_visible(timeout=UI_TIMEOUT_MS)

    # The metadata names the kernel, so Lab starts it; should it ask anyway, pick ours.
    kernel_chosen = panel.locator(".jp-KernelName", has_text=display_name)
    dialog = page.locator(".jp-Dialog")
    expect(kernel_chosen.or_(dialog)).to_be_visible(timeout=UI_TIMEOUT_MS)
    if dialog.is_visible():
        dialog.locator("select").select_option(label=display_name)
        dialog.locator(".jp-mod-accept").click()
    expect(panel.locator(".jp-KernelName")).to_have_text(display_name, timeout=UI_TIMEOUT_MS)
    # Run All before the kernel is connected runs nothing: wait until the status bar
    # reports the kernel itself idle (the toolbar's indicator is idle even with no kernel).
    kernel_status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem",
                                 has_text=f"{display_name} | ")
    expect(kernel_status).to_have_text(f"{display_name} | Idle", timeout=UI_TIMEOUT_MS)
    return panel, kernel_status


def run_all_cells(page) -> None:
    """Run → Run All Cells, from the menu bar as a person does it."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
