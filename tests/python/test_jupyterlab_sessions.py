"""One lane per notebook in JupyterLab 4, end to end: two notebooks attached to ONE kernel of
the kernelspec "Python (parakernel, one lane per notebook)", side by side in a real `jupyter lab`
in headless Debian Chromium. Notebook A is opened in Lab (which starts the kernel); notebook B is
attached to A's kernel through the server's sessions API (`POST /api/sessions` with A's kernel
id, as "Use Kernel from Other Session" does) and opened in Lab to the right of A. Each notebook
is then run with Run → Run All Cells: A's first cell sends on a channel and waits for B's, B's
the mirror, so both finish only if the two notebooks' cells run at the same time (in one lane
they would wait for each other for good). Then, on the page: a variable set in A is not defined
in B, both notebooks ran in the same process, each counts its own cells from 1, and `%lanes` in
either notebook lists two session lanes, one per notebook. A screenshot of both notebooks is
saved in the test's tmp_path and copied to /tmp/lab_sessions.png for a person to look at."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from pathlib import Path

import pytest

from kernel_helpers import find_kernel_spec, lanes_refused
from lab_helpers import (
    UI_TIMEOUT_MS,
    LabServer,
    browser_page,
    chromium_missing,
    open_notebook,
    run_all_cells,
    running_lab,
    write_notebook,
)

LANES_KERNEL = "parakernel-lanes"
SHARED_SCREENSHOT = Path("/tmp/lab_sessions.png")
RUN_TIMEOUT_MS = 120_000  # two notebooks meeting on a loaded machine; a failure guard

NOTEBOOK_A = "a.ipynb"
NOTEBOOK_B = "b.ipynb"
CELLS_A = [
    "from parakernel import channel\n"
    "secret = 'set in A'\n"
    "channel('lab-a').send(1)\n"
    "print('A received', channel('lab-b').recv())",
    "import os\nprint('pid', os.getpid(), '| secret in A:', 'secret' in globals())",
    "%lanes",
]
CELLS_B = [
    "from parakernel import channel\n"
    "channel('lab-b').send(2)\n"
    "print('B received', channel('lab-a').recv())",
    "import os\nprint('pid', os.getpid(), '| secret in B:', 'secret' in globals())",
    "%lanes",
]

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(chromium_missing(), reason="Debian's chromium is not installed"),
    pytest.mark.parakernel_only("lanes per session are parakernel's own"),
    pytest.mark.needs_lanes,
]


@pytest.fixture
def lab(tmp_path: Path):
    if find_kernel_spec(LANES_KERNEL) is None:
        pytest.skip(f"the {LANES_KERNEL} kernelspec is not installed (make setup installs it)")
    if refused := lanes_refused(LANES_KERNEL):
        pytest.skip(refused)
    home = tmp_path / "home"
    root = tmp_path / "root"
    home.mkdir()
    root.mkdir()
    write_notebook(root / NOTEBOOK_A, LANES_KERNEL, CELLS_A)
    write_notebook(root / NOTEBOOK_B, LANES_KERNEL, CELLS_B)
    # window.jupyterapp, to open B in a split of the same page (a person drags its tab there);
    # reloading the page to open B would reconnect A as a new client session.
    with running_lab(root, home, LANES_KERNEL, extra_args=["--LabApp.expose_app_in_browser=True"]) as server:
        yield server


@pytest.fixture
def page(lab: LabServer):
    with browser_page(1920, 1080) as page:
        yield page


def api_json(lab: LabServer, path: str, method: str = "GET", body: dict | None = None):
    request = lab.api(path, method)
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def session_of(lab: LabServer, path: str) -> dict:
    sessions = api_json(lab, "/api/sessions")
    found = [session for session in sessions if session["path"] == path]
    assert len(found) == 1, f"sessions of {path}: {sessions}"
    return found[0]


def attach_to_kernel(lab: LabServer, path: str, kernel_id: str) -> dict:
    """A new server session for the notebook at ``path`` on an existing kernel."""
    return api_json(lab, "/api/sessions", "POST",
                    {"path": path, "name": path, "type": "notebook", "kernel": {"id": kernel_id}})


def activate(page, panel, tab) -> None:
    """Makes ``panel`` Lab's current notebook (the one the Run menu acts on), by a click."""
    from playwright.sync_api import expect

    panel.locator(".jp-Notebook .jp-InputPrompt").first.click()
    expect(tab).to_have_class(re.compile(r"\bjp-mod-current\b"), timeout=UI_TIMEOUT_MS)


def output_of(cell) -> str:
    return cell.locator(".jp-OutputArea").inner_text()


def test_two_notebooks_on_one_kernel_meet_each_in_its_own_lane(lab: LabServer, page, tmp_path: Path):
    from playwright.sync_api import expect

    display_name = find_kernel_spec(LANES_KERNEL).display_name
    screenshot = tmp_path / "lab_sessions.png"
    failure = tmp_path / "lab_sessions-failure.png"
    try:
        # A: opened in Lab, which starts a parakernel-lanes kernel for it.
        open_notebook(page, lab, NOTEBOOK_A, LANES_KERNEL)
        kernel = session_of(lab, NOTEBOOK_A)["kernel"]
        assert kernel["name"] == LANES_KERNEL, kernel
        # B: attached to A's kernel through the sessions API, then opened to the right of A.
        attached = attach_to_kernel(lab, NOTEBOOK_B, kernel["id"])
        assert attached["kernel"]["id"] == kernel["id"], attached
        page.evaluate("""path => window.jupyterapp.commands.execute(
            'docmanager:open', {path, options: {mode: 'split-right'}})""", NOTEBOOK_B)
        tabs = {path: page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=path)
                for path in (NOTEBOOK_A, NOTEBOOK_B)}
        panels = {path: page.locator(f"#{tabs[path].get_attribute('data-id')}")
                  for path in tabs}
        page.keyboard.press("Control+b")  # hide the file browser: room for both notebooks
        kernel_status = page.locator("#jp-main-statusbar .jp-StatusBar-TextItem",
                                     has_text=f"{display_name} | ")
        for path, panel in panels.items():
            expect(panel).to_be_visible(timeout=UI_TIMEOUT_MS)
            # The status bar speaks for the current notebook (the toolbars are too narrow to
            # show the kernel's name): each is connected to the kernel, idle.
            activate(page, panel, tabs[path])
            expect(kernel_status).to_have_text(f"{display_name} | Idle", timeout=UI_TIMEOUT_MS)
        # Still one kernel, now with two sessions: B's open did not start another.
        sessions = api_json(lab, "/api/sessions")
        assert sorted(s["path"] for s in sessions) == [NOTEBOOK_A, NOTEBOOK_B], sessions
        assert {s["kernel"]["id"] for s in sessions} == {kernel["id"]}, sessions
        assert [k["id"] for k in api_json(lab, "/api/kernels")] == [kernel["id"]]

        cells = {path: panel.locator(".jp-Notebook .jp-CodeCell") for path, panel in panels.items()}
        expect(cells[NOTEBOOK_A]).to_have_count(len(CELLS_A))
        expect(cells[NOTEBOOK_B]).to_have_count(len(CELLS_B))
        a, b = cells[NOTEBOOK_A], cells[NOTEBOOK_B]
        # A first: its first cell waits for B's message, so A is still running when B starts.
        activate(page, panels[NOTEBOOK_A], tabs[NOTEBOOK_A])
        run_all_cells(page)
        expect(a.first.locator(".jp-InputPrompt")).to_have_text("[*]:", timeout=UI_TIMEOUT_MS)
        activate(page, panels[NOTEBOOK_B], tabs[NOTEBOOK_B])
        run_all_cells(page)

        # Both meet: each shows what the other sent, and runs on to its last cell.
        expect(a.first.locator(".jp-OutputArea")).to_have_text("A received 2", timeout=RUN_TIMEOUT_MS)
        expect(b.first.locator(".jp-OutputArea")).to_have_text("B received 1", timeout=RUN_TIMEOUT_MS)
        for path, count in ((NOTEBOOK_A, len(CELLS_A)), (NOTEBOOK_B, len(CELLS_B))):
            prompts = cells[path].locator(".jp-InputPrompt")
            # Each notebook counts its own cells, from 1, in order.
            for i in range(count):
                expect(prompts.nth(i)).to_have_text(f"[{i + 1}]:", timeout=RUN_TIMEOUT_MS)
        expect(kernel_status).to_have_text(f"{display_name} | Idle", timeout=UI_TIMEOUT_MS)
        for i in (1, 2):
            expect(a.nth(i).locator(".jp-OutputArea-output")).not_to_have_count(0, timeout=UI_TIMEOUT_MS)
            expect(b.nth(i).locator(".jp-OutputArea-output")).not_to_have_count(0, timeout=UI_TIMEOUT_MS)

        # Isolation: A's variable is A's alone; both ran in the one kernel process.
        in_a, in_b = output_of(a.nth(1)), output_of(b.nth(1))
        assert re.fullmatch(r"pid \d+ \| secret in A: True", in_a.strip()), in_a
        assert re.fullmatch(r"pid \d+ \| secret in B: False", in_b.strip()), in_b
        assert in_a.split()[1] == in_b.split()[1], f"two processes: {in_a!r} {in_b!r}"

        # %lanes, in either notebook: two session lanes, one per notebook (client session).
        for path, cell in ((NOTEBOOK_A, a.nth(2)), (NOTEBOOK_B, b.nth(2))):
            check_lanes_table(path, cell)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert errors.count() == 0, [errors.nth(i).text_content() for i in range(errors.count())]

        page.mouse.move(0, 0)
        page.screenshot(path=str(screenshot))
        shutil.copyfile(screenshot, SHARED_SCREENSHOT)
    except Exception:
        page.screenshot(path=str(failure))
        shutil.copyfile(failure, SHARED_SCREENSHOT.with_name("lab_sessions-failure.png"))
        print(lab.output())
        raise


def check_lanes_table(path: str, cell) -> list[list[str]]:
    table = cell.locator(".jp-OutputArea-output table")
    titles = [t.strip() for t in table.locator("thead th").all_inner_texts()]
    assert titles[0] == "lane", f"{path}: %lanes titles {titles}"
    assert "session" in titles, f"{path}: %lanes has no session column: {titles}"
    rows = [[td.strip() for td in row.locator("td").all_inner_texts()]
            for row in table.locator("tbody tr").all()]
    session_column = titles.index("session")
    sessions = [row for row in rows if row[session_column]]
    assert len(sessions) == 2, f"{path}: %lanes should list two session lanes: {rows}"
    names = [row[0] for row in sessions]
    assert all(name.startswith("session-") for name in names), f"{path}: {rows}"
    assert len(set(names)) == 2 and len({row[session_column] for row in sessions}) == 2, rows
    return rows
