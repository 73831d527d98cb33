"""Lanes, black box: the installed kernelspec driven by jupyter_client, cells routed by their
first line (``%%lane NAME``, ``%%lane main``, ``%%lane --fresh``, ``%%parallel``) or by the tags
JupyterLab sends in the execute_request's metadata (``lane:NAME``, ``lane=NAME``, ``parallel``).

Concurrency is proven by construction, never by the clock: cells that must run at the same time
each leave a mark (a file) and wait for the others' marks, so they all finish only if they all
ran at once; a deadline inside the cell turns "never met" into an error that says so. A cell
that must be running before the test goes on says so (a flushed print, or its input_request);
a cell that must stay running waits for a file that only the test creates.

Requests of a "Run All" are sent at once, as JupyterLab sends them, and collected per msg_id.
Lanes are parakernel's, so every test here is parakernel-only.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from kernel_helpers import (
    TIMEOUT,
    Execution,
    Kernel,
    Message,
    is_idle,
    parent_id,
    strip_ansi,
)

pytestmark = [pytest.mark.parakernel_only("lanes are parakernel's own"), pytest.mark.needs_lanes]

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / "tests" / "run_notebook.py"
PARALLEL_NOTEBOOK = REPO / "notebooks" / "parallel_experiments.ipynb"

# Deadlines inside cells: failure guards that turn a wait that cannot end into an error, far
# longer than a healthy kernel needs and shorter than the test's own timeout.
MEET_DEADLINE = 20
RELEASE_DEADLINE = 100
# How long a query may wait while its lane is busy: "a moment", with room for a loaded machine.
BUSY_QUERY_BOUND = 5.0
# DESIGN.md: shutdown with busy lanes ends the process within this bound.
SHUTDOWN_BOUND = 5.0

STARTED = "started"

# The interpreter a cell runs in: 0 is the main interpreter. `_interpreters` is CPython's own
# module (3.13), importable in every subinterpreter.
WHERE = (
    "import _interpreters as _pk_interpreters\n"
    "print('interpreter', _pk_interpreters.get_current()[0], flush=True)\n"
)


# ---------------------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------------------


def lane(name: str, body: str) -> str:
    return f"%%lane {name}\n{body}"


def meet(marks: Path, me: str, *others: str, deadline: float = MEET_DEADLINE) -> str:
    """A cell body that leaves the mark ``me`` in ``marks`` and waits for the marks of
    ``others``: cells that wait for each other's marks all finish only if they run at once."""
    return textwrap.dedent(f"""\
        import os as _os, time as _time
        open(_os.path.join({str(marks)!r}, {me!r}), "w").close()
        _deadline = _time.monotonic() + {deadline}
        while not all(_os.path.exists(_os.path.join({str(marks)!r}, _m)) for _m in {list(others)!r}):
            if _time.monotonic() > _deadline:
                raise TimeoutError({me!r} + " waited {deadline} s for " + repr({list(others)!r})
                                   + ": the cells did not run at the same time")
            _time.sleep(0.002)
        print({me!r}, "met", *{list(others)!r}, flush=True)
        """)


def wait_for_file(path: Path, announce: str = STARTED, deadline: float = RELEASE_DEADLINE) -> str:
    """A cell body that says it has started, then waits until the test creates ``path``."""
    return textwrap.dedent(f"""\
        import os as _os, time as _time
        print({announce!r}, flush=True)
        _deadline = _time.monotonic() + {deadline}
        while not _os.path.exists({str(path)!r}):
            if _time.monotonic() > _deadline:
                raise TimeoutError("nobody created {path.name} within {deadline} s")
            _time.sleep(0.002)
        """)


SLEEPING = f"import time\nprint({STARTED!r}, flush=True)\ntime.sleep(600)\n"


def release(path: Path) -> None:
    path.touch()


# ---------------------------------------------------------------------------------------
# Reading results
# ---------------------------------------------------------------------------------------


def describe(execution: Execution) -> str:
    content = execution.content
    error = f"{content.get('ename')}: {content.get('evalue')}" if execution.status == "error" else ""
    return (f"status {execution.status} {error}\n  stdout: {execution.stdout!r}\n"
            f"  stderr: {strip_ansi(execution.stderr)!r}")


def ok(execution: Execution) -> Execution:
    assert execution.status == "ok", describe(execution)
    return execution


def interpreter_of(execution: Execution) -> int:
    found = re.findall(r"^interpreter (\d+)$", execution.stdout, re.M)
    assert len(found) == 1, f"the cell did not say where it ran: {describe(execution)}"
    return int(found[0])


def wait_started(kernel: Kernel, msg_id: str, text: str = STARTED) -> None:
    """Returns once the cell ``msg_id`` has printed ``text`` (it is running); fails at once,
    showing what happened, if the cell ends first."""
    seen: list[str] = []

    def printed_or_ended(msg: Message) -> bool:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            seen.append(msg["content"]["text"])
        return text in "".join(seen) or is_idle(msg)

    kernel.wait_for("iopub", msg_id, printed_or_ended)
    if text not in "".join(seen):
        pytest.fail(f"the cell ended before printing {text!r}: {describe(kernel.finish(msg_id))}")


def assert_keyboard_interrupt(execution: Execution) -> None:
    assert execution.status == "error", describe(execution)
    assert execution.content["ename"] == "KeyboardInterrupt", describe(execution)
    assert execution.error is not None and execution.error["ename"] == "KeyboardInterrupt"


def displayed(execution: Execution) -> list[dict]:
    return [m["content"]["data"] for m in execution.of_type("display_data", "execute_result")]


def query(kernel: Kernel, msg_type: str, timeout: float = TIMEOUT, **content) -> dict:
    msg_id = kernel.send("shell", msg_type, content)
    return kernel.reply(msg_id, timeout=timeout)["content"]


class TableParser(html.parser.HTMLParser):
    """The rows of the HTML tables in a document, each a list of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def lanes_table(kernel: Kernel) -> tuple[dict[str, dict[str, str]], str]:
    """Runs ``%lanes`` in the main lane; returns its HTML table as {lane name: {column: text}}
    and its text/plain."""
    execution = ok(kernel.execute("%lanes"))
    bundles = [data for data in displayed(execution) if "text/html" in data]
    assert len(bundles) == 1, f"%lanes showed no single HTML table: {execution.outputs}"
    (bundle,) = bundles
    parser = TableParser()
    parser.feed(bundle["text/html"])
    rows = [row for row in parser.rows if row]
    assert len(rows) >= 2, f"no table rows in {bundle['text/html']!r}"
    header = [cell.lower() for cell in rows[0]]
    table = {}
    for row in rows[1:]:
        cells = dict(zip(header, row))
        table[row[0]] = cells
    return table, bundle.get("text/plain", "")


def column(row: dict[str, str], *words: str, unless: str | None = None) -> str:
    """The value of the first column whose header has all ``words`` (and not ``unless``)."""
    for header, value in row.items():
        if all(word in header for word in words) and not (unless and unless in header):
            return value
    raise AssertionError(f"no column with {words} in the %lanes table: {list(row)}")


# ---------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------


def test_lane_magic_runs_the_cell_in_a_named_lane(kernel: Kernel):
    main = interpreter_of(ok(kernel.execute(WHERE)))
    first = ok(kernel.execute(lane("route-a", WHERE + "route_value = 41")))
    again = ok(kernel.execute(lane("route-a", WHERE + "print(route_value + 1)")))
    other = ok(kernel.execute(lane("route_b", WHERE)))
    assert main == 0
    assert interpreter_of(first) != main, "%%lane ran the cell in the main interpreter"
    assert interpreter_of(again) == interpreter_of(first), "a named lane changed interpreter"
    assert "42" in again.stdout
    assert interpreter_of(other) not in (main, interpreter_of(first))


def test_tags_route_cells_as_jupyterlab_sends_them(kernel: Kernel):
    colon = ok(kernel.finish(kernel.submit(WHERE + "tagged = 'colon'", tags=["lane:tag-a"])))
    equals = ok(kernel.finish(kernel.submit(WHERE + "print(tagged)", tags=["x", "lane=tag-a"])))
    fresh = ok(kernel.finish(kernel.submit(WHERE + "print('tagged' in globals())",
                                           tags=["parallel"])))
    main = ok(kernel.finish(kernel.submit(WHERE, tags=["lane:main"])))
    untagged = ok(kernel.finish(kernel.submit(WHERE, tags=["unrelated", "raises-exception"])))
    assert interpreter_of(colon) != 0
    assert interpreter_of(equals) == interpreter_of(colon), "lane:NAME and lane=NAME differ"
    assert "colon" in equals.stdout
    assert interpreter_of(fresh) not in (0, interpreter_of(colon)), "a parallel cell ran in a named lane or main"
    assert "False" in fresh.stdout
    assert interpreter_of(main) == 0 and interpreter_of(untagged) == 0


def test_the_magic_line_wins_over_tags(kernel: Kernel):
    tagged = ok(kernel.finish(kernel.submit(WHERE, tags=["lane:wins-tag"])))
    magic = ok(kernel.finish(kernel.submit(lane("wins-magic", WHERE), tags=["lane:wins-tag"])))
    to_main = ok(kernel.finish(kernel.submit(lane("main", WHERE), tags=["lane:wins-tag"])))
    assert interpreter_of(magic) not in (0, interpreter_of(tagged))
    assert interpreter_of(to_main) == 0


def test_main_lane_by_default_and_by_name(kernel: Kernel):
    ok(kernel.execute("main_value = 'from main'"))
    by_name = ok(kernel.execute(lane("main", WHERE + "print(main_value)")))
    fresh_magic = ok(kernel.execute("%%lane --fresh\n" + WHERE + "print('main_value' in globals())"))
    assert interpreter_of(by_name) == 0 and "from main" in by_name.stdout
    assert interpreter_of(fresh_magic) != 0 and "False" in fresh_magic.stdout


def test_a_name_of_64_characters_is_a_lane(kernel: Kernel):
    name = "L" * 31 + "_" + "9" * 31 + "-"
    assert len(name) == 64
    assert interpreter_of(ok(kernel.execute(lane(name, WHERE)))) != 0


NAME_RULE = ("letters", "digits")
OPTION_RULE = ("%%lane NAME",)


@pytest.mark.parametrize(
    "first_line, tags, says",
    [
        pytest.param("%%lane a/b", None, NAME_RULE, id="slash"),
        pytest.param("%%lane " + "x" * 65, None, NAME_RULE, id="65-characters"),
        pytest.param("%%lane café", None, NAME_RULE, id="not-ascii"),
        pytest.param("%%lane", None, OPTION_RULE, id="no-name"),
        pytest.param("%%lane --fast", None, OPTION_RULE, id="unknown-option"),
        pytest.param("%%lane a b", None, OPTION_RULE, id="two-names"),
        pytest.param("%%parallel now", None, ("%%parallel",), id="parallel-argument"),
        pytest.param("", ["lane:"], NAME_RULE, id="empty-tag-name"),
        pytest.param("", ["lane=a b"], NAME_RULE, id="tag-name-with-space"),
        pytest.param("", ["lane:a", "parallel"], ("lane:NAME",), id="two-lanes-in-tags"),
    ],
)
def test_bad_lane_name_or_option_is_refused(kernel: Kernel, tmp_path: Path, first_line, tags, says):
    flag = tmp_path / "ran"
    body = f"open({str(flag)!r}, 'w').close()\n"
    code = f"{first_line}\n{body}" if first_line else body
    execution = kernel.finish(kernel.submit(code, tags=tags))
    assert execution.status == "error", describe(execution)
    assert execution.error is not None, f"no error output for the cell: {execution.outputs}"
    message = execution.content["evalue"]
    assert execution.error["evalue"] == message
    for words in says:
        assert words in message, f"the error does not say what is allowed ({words!r}): {message!r}"
    assert not flag.exists(), "the refused cell ran"
    ok(kernel.execute("pass"))


# ---------------------------------------------------------------------------------------
# Concurrency, by construction
# ---------------------------------------------------------------------------------------


def test_two_named_lanes_run_at_once(fresh_kernel: Kernel, tmp_path: Path):
    a = fresh_kernel.submit(lane("meet-a", meet(tmp_path, "a", "b")))
    b = fresh_kernel.submit(lane("meet-b", meet(tmp_path, "b", "a")))
    for execution in fresh_kernel.finish_all([a, b]):
        ok(execution)


def test_two_tagged_lanes_run_at_once(fresh_kernel: Kernel, tmp_path: Path):
    a = fresh_kernel.submit(meet(tmp_path, "a", "b"), tags=["lane:tag-meet-a"])
    b = fresh_kernel.submit(meet(tmp_path, "b", "a"), tags=["lane=tag-meet-b"])
    for execution in fresh_kernel.finish_all([a, b]):
        ok(execution)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the fresh-lane pool has one lane per core")
def test_two_fresh_lanes_run_at_once(fresh_kernel: Kernel, tmp_path: Path):
    a = fresh_kernel.submit("%%parallel\n" + meet(tmp_path, "a", "b"))
    b = fresh_kernel.submit(meet(tmp_path, "b", "a"), tags=["parallel"])
    for execution in fresh_kernel.finish_all([a, b]):
        ok(execution)


def test_a_lane_runs_beside_the_main_lane(fresh_kernel: Kernel, tmp_path: Path):
    main = fresh_kernel.submit(meet(tmp_path, "main", "lane"))
    other = fresh_kernel.submit(lane("beside-main", meet(tmp_path, "lane", "main")))
    for execution in fresh_kernel.finish_all([main, other]):
        ok(execution)


def test_run_all_of_a_tagged_notebook(fresh_kernel: Kernel, tmp_path: Path):
    """JupyterLab's Run All: every request at once, tags in the metadata, stop_on_error."""
    cells = [
        ([], "print('setup in main')"),
        (["lane:ra-a"], WHERE + meet(tmp_path, "a", "b", "fresh") + "state = 'kept in a'"),
        (["lane:ra-b"], WHERE + meet(tmp_path, "b", "a", "fresh") + "state = 'kept in b'"),
        (["lane:ra-a"], WHERE + "print(state)"),
        (["lane=ra-b"], WHERE + "print(state)"),
        (["parallel"], WHERE + meet(tmp_path, "fresh", "a", "b")),
        ([], WHERE + "%wait\nprint('all lanes done')"),
    ]
    msg_ids = [fresh_kernel.submit(code, tags=tags) for tags, code in cells]
    setup, a1, b1, a2, b2, fresh, summary = (ok(e) for e in fresh_kernel.finish_all(msg_ids))
    assert [e.content["execution_count"] for e in (setup, a1, b1, a2, b2, fresh, summary)] == \
        list(range(1, len(cells) + 1)), "execution counts are not in request order"
    assert "kept in a" in a2.stdout and "kept in b" in b2.stdout
    where = {name: interpreter_of(e) for name, e in
             [("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2), ("fresh", fresh), ("summary", summary)]}
    assert where["a1"] == where["a2"] and where["b1"] == where["b2"], where
    assert len({where["a1"], where["b1"], where["fresh"], 0}) == 4, where
    assert where["summary"] == 0
    assert "all lanes done" in summary.stdout
    assert_status_rules(fresh_kernel, msg_ids)


def test_execution_counts_follow_request_order(fresh_kernel: Kernel, tmp_path: Path):
    go = tmp_path / "go"
    slow = fresh_kernel.submit(lane("count-slow", wait_for_file(go)))
    others = [
        fresh_kernel.submit(lane("count-quick", "pass")),
        fresh_kernel.submit("pass"),
        fresh_kernel.submit("%%parallel\npass"),
        fresh_kernel.submit("pass", tags=["lane:count-quick"]),
    ]
    try:
        # They finish while the first cell still waits: lanes do not wait for each other.
        quick = fresh_kernel.finish_all(others)
    finally:
        release(go)
    executions = [ok(fresh_kernel.finish(slow)), *(ok(e) for e in quick)]
    counts = [e.content["execution_count"] for e in executions]
    assert counts == [1, 2, 3, 4, 5], counts
    for execution, count in zip(executions, counts):
        (execute_input,) = execution.of_type("execute_input")
        assert execute_input["content"]["execution_count"] == count


def assert_status_rules(kernel: Kernel, msg_ids: list[str]) -> None:
    """Every request is bracketed by busy and idle parented to it with all of its output in
    between, and an idle is followed by a busy parented to a request still running."""
    kernel.drain_iopub()  # anything published late is read now, and would show up below
    arrivals = kernel.arrivals("iopub")
    first_busy: dict[str, int] = {}
    idle_at: dict[str, int] = {}
    for index, msg in enumerate(arrivals):
        parent = parent_id(msg)
        if parent not in msg_ids or msg["msg_type"] != "status":
            continue
        if msg["content"]["execution_state"] == "busy":
            first_busy.setdefault(parent, index)
        elif is_idle(msg):
            assert parent not in idle_at, f"two idles for {parent}"
            idle_at[parent] = index
    for msg_id in msg_ids:
        assert msg_id in first_busy and msg_id in idle_at, f"no busy/idle pair for {msg_id}"
        own = [(i, m) for i, m in enumerate(arrivals) if parent_id(m) == msg_id]
        assert own[0][0] == first_busy[msg_id], f"{own[0][1]['msg_type']} before busy"
        late = [m["msg_type"] for i, m in own if i > idle_at[msg_id]]
        assert not late, f"published after its idle: {late}"
    for msg_id in msg_ids:
        at = idle_at[msg_id]
        running = {q for q in msg_ids if first_busy[q] < at < idle_at[q]}
        if not running:
            continue
        following = next((m for m in arrivals[at + 1:] if m["msg_type"] == "status"), None)
        assert following is not None and following["content"]["execution_state"] == "busy" \
            and parent_id(following) in running, \
            f"after an idle while others run, the next status is {following and following['content']}"


def test_status_stays_busy_while_any_lane_runs(fresh_kernel: Kernel, tmp_path: Path):
    go = tmp_path / "go"
    msg_ids = [
        fresh_kernel.submit(lane("status-slow", wait_for_file(go))),
        fresh_kernel.submit("print('main')"),
        fresh_kernel.submit(lane("status-quick", "print('quick')")),
    ]
    try:
        fresh_kernel.finish_all(msg_ids[1:])
    finally:
        release(go)
    for execution in fresh_kernel.finish_all(msg_ids):
        ok(execution)
    assert_status_rules(fresh_kernel, msg_ids)
    last = [m for m in fresh_kernel.arrivals("iopub") if m["msg_type"] == "status"][-1]
    assert last["content"]["execution_state"] == "idle"


# ---------------------------------------------------------------------------------------
# Ordering and isolation
# ---------------------------------------------------------------------------------------


def test_cells_of_one_lane_run_one_at_a_time_in_request_order(fresh_kernel: Kernel, tmp_path: Path):
    go, second_started = tmp_path / "go", tmp_path / "second-started"
    first = fresh_kernel.submit(lane("order", wait_for_file(go) + "order = [0]"))
    rest = [fresh_kernel.submit(lane("order", (f"open({str(second_started)!r}, 'w').close()\n"
                                               if i == 1 else "") + f"order.append({i})"))
            for i in range(1, 5)]
    last = fresh_kernel.submit(lane("order", "print(order)"))
    # Another lane looks while the first cell waits: the second has not started, then it lets
    # the first go on.
    probe = fresh_kernel.submit(lane("order-probe", textwrap.dedent(f"""\
        import os
        print('second started early:', os.path.exists({str(second_started)!r}))
        open({str(go)!r}, 'w').close()
        """)))
    try:
        probed = ok(fresh_kernel.finish(probe))
    finally:
        release(go)
    assert "second started early: False" in probed.stdout
    for execution in fresh_kernel.finish_all([first, *rest]):
        ok(execution)
    assert "[0, 1, 2, 3, 4]" in ok(fresh_kernel.finish(last)).stdout


def test_named_lanes_keep_their_globals_apart(kernel: Kernel):
    for where in ("iso-a", "iso-b", "main"):
        ok(kernel.execute(lane(where, f"shared_name = {where!r}")))
    for where in ("iso-a", "iso-b", "main"):
        assert ok(kernel.execute(lane(where, "print(shared_name)"))).stdout == f"{where}\n"


def test_lanes_have_their_own_sys_modules(kernel: Kernel):
    ok(kernel.execute(lane("mods-a", textwrap.dedent("""\
        import json, sys, types
        sys.modules['pk_probe'] = types.ModuleType('pk_probe')
        sys.modules['pk_probe'].owner = 'mods-a'
        json.pk_marker = 'mods-a'
        """))))
    check = "import json, sys\nprint('pk_probe' in sys.modules, hasattr(json, 'pk_marker'))"
    assert ok(kernel.execute(lane("mods-b", check))).stdout == "False False\n"
    assert ok(kernel.execute(check)).stdout == "False False\n"
    owner = ok(kernel.execute(lane("mods-a", "import pk_probe, json\nprint(pk_probe.owner, json.pk_marker)")))
    assert owner.stdout == "mods-a mods-a\n"


def test_fresh_lanes_keep_nothing_from_one_cell_to_the_next(kernel: Kernel):
    leave = "import sys, types\nleft_behind = 1\nsys.modules['pk_fresh_probe'] = types.ModuleType('x')\n"
    look = "import sys\nprint('left_behind' in globals(), 'pk_fresh_probe' in sys.modules)\n"
    rounds = (os.cpu_count() or 1) + 1  # more than the pool has lanes: every one is reused
    for _ in range(rounds):
        ok(kernel.execute("%%parallel\n" + WHERE + leave))
    for _ in range(rounds):
        looked = ok(kernel.execute("%%parallel\n" + WHERE + look))
        assert interpreter_of(looked) != 0
        assert "False False" in looked.stdout, "a fresh lane kept a global or a module"
    tagged = ok(kernel.finish(kernel.submit(look, tags=["parallel"])))
    assert "False False" in tagged.stdout


def test_output_of_a_fresh_lanes_restore_lands_under_the_cell(kernel: Kernel):
    """The restore after a fresh-lane cell drops the cell's globals; what their `__del__`
    prints is the cell's output and comes before its idle."""
    cell = textwrap.dedent("""\
        class Loud:
            def __del__(self):
                print("deleted", flush=True)
        kept = Loud()
        print("ran")
        """)
    for _ in range((os.cpu_count() or 1) + 1):
        assert ok(kernel.execute("%%parallel\n" + cell)).stdout == "ran\ndeleted\n"


def test_fresh_lanes_undo_settings_submodules_environment_and_directory(kernel: Kernel, tmp_path: Path):
    """What a cell changes besides its globals and modules: IPython settings (%xmode,
    %precision, %config), a submodule bound on a package that stays loaded, the process's
    environment and working directory (shared with every lane: put back after the cell)."""
    cwd = ok(kernel.execute("import os\nprint(os.getcwd())")).stdout.strip()
    change = textwrap.dedent(f"""\
        %xmode Minimal
        %precision 1
        %config InteractiveShell.ast_node_interactivity = 'none'
        import os, sys, json.tool  # json is loaded in a warm lane, json.tool is not
        json.tool.left_behind = True
        os.environ['PK_FRESH_PROBE'] = '1'
        os.chdir({str(tmp_path)!r})
        sys.unraisablehook = print
        """)
    look = textwrap.dedent("""\
        import os, sys, json
        print(get_ipython().InteractiveTB.mode, get_ipython().display_formatter.formatters['text/plain'].float_precision or '-',
              get_ipython().ast_node_interactivity, hasattr(json, 'tool'), os.environ.get('PK_FRESH_PROBE'),
              os.getcwd(), sys.unraisablehook is print)
        from json import tool
        print(hasattr(tool, 'left_behind'))
        """)
    rounds = (os.cpu_count() or 1) + 1
    warm = ok(kernel.execute("%%parallel\n" + look)).stdout
    for _ in range(rounds):
        ok(kernel.execute("%%parallel\n" + change))
    for _ in range(rounds):
        assert ok(kernel.execute("%%parallel\n" + look)).stdout == warm
    assert warm.split()[2:] == ["last_expr", "False", "None", cwd, "False", "False"], warm
    # The main lane's directory and environment are as they were.
    assert ok(kernel.execute("import os\nprint(os.getcwd(), os.environ.get('PK_FRESH_PROBE'))")).stdout == f"{cwd} None\n"


# ---------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------


def test_interleaved_output_lands_under_its_own_cell(fresh_kernel: Kernel, tmp_path: Path):
    """Two lanes take turns printing (each waits for the other's mark), and also write to
    stderr, display, print from a thread they started, return a result or raise: every
    message is parented to its own cell and published before that cell's idle."""

    def turns(me: str, other: str, first: bool) -> str:
        return textwrap.dedent(f"""\
            import os, sys, threading, time
            from IPython.display import HTML, display
            def wait(mark):
                deadline = time.monotonic() + {MEET_DEADLINE}
                while not os.path.exists(os.path.join({str(tmp_path)!r}, mark)):
                    if time.monotonic() > deadline:
                        raise TimeoutError(mark + " never came: the lanes did not take turns")
                    time.sleep(0.002)
            for i in range(3):
                if not {first}:
                    wait(f"{other}{{i}}")
                print(f"{me}{{i}}", flush=True)
                open(os.path.join({str(tmp_path)!r}, f"{me}{{i}}"), "w").close()
                if {first}:
                    wait(f"{other}{{i}}")
            print("{me}-err", file=sys.stderr, flush=True)
            display(HTML("<i>{me}</i>"))
            thread = threading.Thread(target=lambda: print("{me}-thread", flush=True))
            thread.start()
            thread.join()
            """)

    a = fresh_kernel.submit(lane("talk-a", turns("a", "b", True) + "'result-a'"),
                            stop_on_error=False)
    b = fresh_kernel.submit(lane("talk-b", turns("b", "a", False) + "raise ValueError('b fails')"),
                            stop_on_error=False)
    main = fresh_kernel.submit("for i in range(3):\n    print(f'm{i}', flush=True)", stop_on_error=False)
    a_run, b_run, main_run = fresh_kernel.finish_all([a, b, main])
    ok(a_run)
    assert a_run.stdout == "a0\na1\na2\na-thread\n"
    assert a_run.stderr == "a-err\n"
    assert [d.get("text/html") for d in displayed(a_run)] == ["<i>a</i>", None]
    assert a_run.result is not None and a_run.result["text/plain"] == "'result-a'"
    assert a_run.error is None
    assert b_run.status == "error" and b_run.content["ename"] == "ValueError", describe(b_run)
    assert b_run.stdout == "b0\nb1\nb2\nb-thread\n"
    assert b_run.stderr == "b-err\n"
    assert [d.get("text/html") for d in displayed(b_run)] == ["<i>b</i>"]
    assert b_run.error is not None and b_run.error["evalue"] == "b fails"
    assert ok(main_run).stdout == "m0\nm1\nm2\n"
    assert_status_rules(fresh_kernel, [a, b, main])


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_stop_on_error_aborts_only_the_same_lanes_queue(fresh_kernel: Kernel, tmp_path: Path):
    a_ran = tmp_path / "a2-ran"
    msg_ids = [
        fresh_kernel.submit(lane("soe-a", meet(tmp_path, "a", "b") + "1/0")),
        fresh_kernel.submit(lane("soe-a", f"open({str(a_ran)!r}, 'w').close()")),
        fresh_kernel.submit(lane("soe-b", meet(tmp_path, "b", "a"))),
        fresh_kernel.submit(lane("soe-b", "print('b2 ran')")),
        fresh_kernel.submit("print('main ran')"),
    ]
    a1, a2, b1, b2, main = fresh_kernel.finish_all(msg_ids)
    assert a1.status == "error" and a1.content["ename"] == "ZeroDivisionError", describe(a1)
    assert a2.status == "aborted", describe(a2)
    assert not a2.outputs, a2.outputs
    assert not a_ran.exists(), "an aborted cell ran"
    ok(b1)
    assert "b2 ran" in ok(b2).stdout
    assert "main ran" in ok(main).stdout
    # The lane itself goes on with the next request.
    assert "again" in ok(fresh_kernel.execute(lane("soe-a", "print('again')"))).stdout


def test_numpy_in_a_lane_is_an_import_error_that_says_where_it_works(kernel: Kernel):
    failed = kernel.execute(lane("np-lane", "import numpy"))
    assert failed.status == "error", describe(failed)
    message = failed.content["evalue"]
    assert failed.content["ename"].endswith("Error") and "numpy" in message, describe(failed)
    assert "main lane" in message.lower(), f"does not say it works in the main lane: {message!r}"
    assert re.search(r"%%lane main|tag", message), f"does not say how to move the cell: {message!r}"
    caught = ok(kernel.execute(lane("np-lane", textwrap.dedent("""\
        try:
            import numpy
        except ImportError as error:
            print('caught ImportError')
        import json, re, decimal, sqlite3, hashlib, ctypes, asyncio, datetime
        print('lane goes on')
        """))))
    assert caught.stdout == "caught ImportError\nlane goes on\n"
    fresh = kernel.execute("%%parallel\nimport numpy")
    assert fresh.status == "error" and "numpy" in fresh.content["evalue"], describe(fresh)
    # A refusing package that is not installed stays "not found", as probes for optional
    # dependencies expect (sklearn is not in the test environment; numpy is).
    probe = ok(kernel.execute(lane("np-lane", textwrap.dedent("""\
        import importlib.util
        print(importlib.util.find_spec('sklearn'), importlib.util.find_spec('numpy') is not None)
        try:
            import sklearn
        except ModuleNotFoundError:
            print('not found')
        """))))
    assert probe.stdout == "None True\nnot found\n", describe(probe)
    assert ok(kernel.execute("import numpy\nprint(numpy.arange(3).sum())")).stdout == "3\n"
    kernel.assert_alive()


# ---------------------------------------------------------------------------------------
# input()
# ---------------------------------------------------------------------------------------


def test_input_in_two_lanes_goes_to_each_cell(fresh_kernel: Kernel):
    ask = "value = input({prompt!r})\nprint('{who} got', value)"
    a = fresh_kernel.submit(lane("ask-a", ask.format(prompt="a? ", who="a")), allow_stdin=True)
    b = fresh_kernel.submit(lane("ask-b", ask.format(prompt="b? ", who="b")), allow_stdin=True)
    a_request = fresh_kernel.input_request(a)
    b_request = fresh_kernel.input_request(b)  # both wait at once
    assert a_request["content"]["prompt"] == "a? " and b_request["content"]["prompt"] == "b? "
    fresh_kernel.answer_input(b_request, "B")
    fresh_kernel.answer_input(a_request, "A")
    a_run, b_run = fresh_kernel.finish_all([a, b])
    assert "a got A" in ok(a_run).stdout
    assert "b got B" in ok(b_run).stdout


def test_input_in_a_lane_goes_to_the_client_that_sent_the_cell(fresh_kernel: Kernel):
    # A second client with a session (and so socket identities) of its own; km.client()
    # would share the first client's session.
    other = BlockingKernelClient()
    other.load_connection_info(fresh_kernel.km.get_connection_info())
    assert other.session.session != fresh_kernel.session.session
    other.start_channels()
    try:
        other.wait_for_ready(timeout=TIMEOUT)
        msg_id = other.execute(lane("ask-other", "print('other got', input('other? '))"),
                               allow_stdin=True)
        request = other.get_stdin_msg(timeout=TIMEOUT)
        assert request["msg_type"] == "input_request" and parent_id(request) == msg_id
        other.input("O")
        reply = other.get_shell_msg(timeout=TIMEOUT)
        while parent_id(reply) != msg_id:
            reply = other.get_shell_msg(timeout=TIMEOUT)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        other.stop_channels()
    assert not fresh_kernel.kc.stdin_channel.msg_ready(), "the input_request went to another client"
    fresh_kernel.assert_alive()


def test_input_in_a_lane_without_stdin_is_refused(kernel: Kernel):
    execution = kernel.execute(lane("no-stdin", "input('never asked? ')"), allow_stdin=False)
    assert execution.status == "error", describe(execution)
    assert execution.content["ename"] == "StdinNotImplementedError", describe(execution)
    assert not kernel.messages("stdin", execution.msg_id)


def test_os_exit_in_a_lane_is_refused_and_the_kernel_goes_on(fresh_kernel: Kernel):
    # In a lane, os._exit would end the whole process (every lane, the main lane) with no reply.
    fresh_kernel.execute(lane("exiter", "kept = 'still here'")).ok()
    for code in (lane("exiter", "import os\nos._exit(3)"), "%%parallel\nimport os\nos._exit(0)"):
        execution = fresh_kernel.execute(code)
        assert execution.status == "error", describe(execution)
        assert execution.content["ename"] == "RuntimeError", describe(execution)
        assert "would end the whole kernel process" in execution.content["evalue"], describe(execution)
    assert fresh_kernel.execute(lane("exiter", "print(kept)")).ok().stdout == "still here\n"
    fresh_kernel.assert_alive()


# ---------------------------------------------------------------------------------------
# Interrupt and lane control
# ---------------------------------------------------------------------------------------


def test_interrupt_reaches_every_running_lane(fresh_kernel: Kernel):
    sleeper = fresh_kernel.submit(lane("int-sleep", "marker = 'kept'\n" + SLEEPING))
    looper = fresh_kernel.submit(lane("int-loop", f"print({STARTED!r}, flush=True)\nwhile True:\n    pass"))
    asker = fresh_kernel.submit(lane("int-input", "input('never answered? ')"), allow_stdin=True)
    fresh = fresh_kernel.submit("%%parallel\n" + SLEEPING)
    main = fresh_kernel.submit(SLEEPING)
    for msg_id in (sleeper, looper, fresh, main):
        wait_started(fresh_kernel, msg_id)
    fresh_kernel.input_request(asker)
    fresh_kernel.interrupt_by_message()
    for execution in fresh_kernel.finish_all([sleeper, looper, asker, fresh, main]):
        assert_keyboard_interrupt(execution)
    assert ok(fresh_kernel.execute(lane("int-sleep", "print(marker)"))).stdout == "kept\n"
    ok(fresh_kernel.execute(lane("int-loop", "pass")))
    fresh_kernel.assert_alive()


def test_interrupt_while_a_new_lane_starts_is_not_lost(fresh_kernel: Kernel):
    """The interrupt is sent right behind the cell that makes a new lane, so it arrives while
    the lane's interpreter is still starting (or, on a fast machine, once the loop runs):
    either way the cell ends with KeyboardInterrupt instead of looping forever."""
    looper = fresh_kernel.submit(lane("int-boot", "while True:\n    pass"))
    # Shell and control are separate sockets: the interrupt goes once the kernel has taken
    # the cell (its execute_input is published when the cell is handed to its lane).
    fresh_kernel.wait_for("iopub", looper, lambda m: m["msg_type"] == "execute_input")
    fresh_kernel.interrupt_by_message()
    assert_keyboard_interrupt(fresh_kernel.finish(looper))
    assert ok(fresh_kernel.execute(lane("int-boot", "print('next cell runs')"))).stdout == "next cell runs\n"


def test_interrupt_ends_a_wait(fresh_kernel: Kernel):
    sleeper = fresh_kernel.submit(lane("wait-int", SLEEPING))
    wait_started(fresh_kernel, sleeper)
    waiter = fresh_kernel.submit(f"print({STARTED!r}, flush=True)\n%wait")
    wait_started(fresh_kernel, waiter)
    fresh_kernel.interrupt_by_message()
    sleeping, waiting = fresh_kernel.finish_all([sleeper, waiter])
    assert_keyboard_interrupt(sleeping)
    assert_keyboard_interrupt(waiting)


def test_lane_interrupt_interrupts_only_that_lane(fresh_kernel: Kernel, tmp_path: Path):
    go = tmp_path / "go"
    target = fresh_kernel.submit(lane("li-x", SLEEPING))
    bystander = fresh_kernel.submit(lane("li-y", wait_for_file(go) + "print('y done')"))
    try:
        wait_started(fresh_kernel, target)
        wait_started(fresh_kernel, bystander)
        ok(fresh_kernel.execute("%lane interrupt li-x"))
        assert_keyboard_interrupt(fresh_kernel.finish(target))
        # Only now may the other lane end, and it ends well: it was not interrupted.
    finally:
        release(go)
    assert "y done" in ok(fresh_kernel.finish(bystander)).stdout


def test_lanes_table_shows_every_lane(fresh_kernel: Kernel, tmp_path: Path):
    go = tmp_path / "go"
    for i in range(3):
        ok(fresh_kernel.execute(lane("tbl-idle", f"x = {i}")))
    busy = fresh_kernel.submit(lane("tbl-busy", wait_for_file(go)))
    try:
        wait_started(fresh_kernel, busy)
        busy_count = fresh_kernel.messages("iopub", busy)
        table, text = lanes_table(fresh_kernel)
    finally:
        release(go)
    ok(fresh_kernel.finish(busy))
    assert {"main", "tbl-idle", "tbl-busy"} <= set(table), f"lanes in %lanes: {list(table)}"
    for name in ("main", "tbl-idle", "tbl-busy"):
        assert name in text, f"{name} missing from the text/plain table: {text!r}"
    idle, running = table["tbl-idle"], table["tbl-busy"]
    assert "idle" in column(idle, "state").lower(), idle
    assert re.search(r"running|busy", column(running, "state"), re.I), running
    assert column(idle, "cells", "run", unless="running") == "3", idle
    (execute_input,) = [m for m in busy_count if m["msg_type"] == "execute_input"]
    running_cell = column(running, "running", unless="state")
    assert str(execute_input["content"]["execution_count"]) in running_cell, running
    assert column(idle, "cpu"), idle


def test_lane_restart_gives_a_clean_interpreter(fresh_kernel: Kernel):
    ok(fresh_kernel.execute(lane("rs", "import sys, types\nkept = 1\n"
                                       "sys.modules['pk_probe'] = types.ModuleType('pk_probe')")))
    ok(fresh_kernel.execute("%lane restart rs"))
    after = ok(fresh_kernel.execute(lane("rs", WHERE + "import sys\n"
                                                  "print('kept' in globals(), 'pk_probe' in sys.modules)")))
    assert "False False" in after.stdout
    assert interpreter_of(after) != 0


def test_lane_restart_interrupts_the_running_cell_and_aborts_the_queue(fresh_kernel: Kernel, tmp_path: Path):
    queued_ran = tmp_path / "queued-ran"
    running = fresh_kernel.submit(lane("rs2", "kept = 1\n" + SLEEPING))
    queued = fresh_kernel.submit(lane("rs2", f"open({str(queued_ran)!r}, 'w').close()"))
    wait_started(fresh_kernel, running)
    ok(fresh_kernel.execute("%lane restart rs2"))
    interrupted, aborted = fresh_kernel.finish_all([running, queued])
    assert interrupted.status == "error", describe(interrupted)
    assert aborted.status == "aborted", describe(aborted)
    assert not queued_ran.exists()
    assert ok(fresh_kernel.execute(lane("rs2", "print('kept' in globals())"))).stdout == "False\n"


def test_lane_stop_ends_the_lane_until_a_cell_names_it_again(fresh_kernel: Kernel):
    ok(fresh_kernel.execute(lane("st", "kept = 1")))
    assert "st" in lanes_table(fresh_kernel)[0]
    ok(fresh_kernel.execute("%lane stop st"))
    assert "st" not in lanes_table(fresh_kernel)[0], "a stopped lane is still listed"
    assert ok(fresh_kernel.execute(lane("st", "print('kept' in globals())"))).stdout == "False\n"


def test_wait_blocks_until_the_other_lanes_are_done(fresh_kernel: Kernel, tmp_path: Path):
    """The lanes finish only after the main cell is inside its %wait (they wait for its mark),
    so a %wait that did not wait would see them unfinished."""
    entered = tmp_path / "main-in-wait"
    done = [tmp_path / "w1-done", tmp_path / "w2-done"]
    workers = [
        fresh_kernel.submit(lane(f"w{i}", textwrap.dedent(f"""\
            import os, time
            while not os.path.exists({str(entered)!r}):
                time.sleep(0.002)
            for _ in range(200_000):  # some work after the main cell entered %wait
                pass
            open({str(done[i - 1])!r}, 'w').close()
            """))) for i in (1, 2)
    ]
    waiter = fresh_kernel.submit(textwrap.dedent(f"""\
        import os
        open({str(entered)!r}, 'w').close()
        %wait
        print([os.path.exists(p) for p in {[str(p) for p in done]!r}])
        """))
    try:
        waited = ok(fresh_kernel.finish(waiter))
    finally:
        release(entered)
    assert waited.stdout == "[True, True]\n"
    for execution in fresh_kernel.finish_all(workers):
        ok(execution)
    arrivals = fresh_kernel.arrivals("iopub")
    idle = {parent_id(m): i for i, m in enumerate(arrivals) if is_idle(m)}
    assert all(idle[w] < idle[waiter] for w in workers), "%wait ended before the lanes' idle"


def test_wait_for_named_lanes_only(fresh_kernel: Kernel, tmp_path: Path):
    go = tmp_path / "go"
    quick = fresh_kernel.submit(lane("wn-quick", "import time\nfor _ in range(100_000): pass"))
    stuck = fresh_kernel.submit(lane("wn-stuck", wait_for_file(go)))
    try:
        wait_started(fresh_kernel, stuck)
        waited = fresh_kernel.execute("%wait wn-quick\nprint('waited')", timeout=MEET_DEADLINE)
        assert "waited" in ok(waited).stdout
        ok(fresh_kernel.finish(quick))
    finally:
        release(go)
    ok(fresh_kernel.finish(stuck))


# ---------------------------------------------------------------------------------------
# Completion and inspection
# ---------------------------------------------------------------------------------------


def test_completion_uses_the_lanes_namespace(kernel: Kernel):
    ok(kernel.execute(lane("cmp", "lane_only_variable_xyz = 1")))
    # Positions count code points of the whole cell as sent, magic line included.
    code = "%%lane cmp\n# café\nvalue = lane_only_var\nprint(value)"
    cursor = code.index("lane_only_var") + len("lane_only_var")
    reply = query(kernel, "complete_request", code=code, cursor_pos=cursor)
    assert reply["status"] == "ok", reply
    assert "lane_only_variable_xyz" in reply["matches"], reply["matches"][:20]
    assert (reply["cursor_start"], reply["cursor_end"]) == (cursor - len("lane_only_var"), cursor)
    in_main = query(kernel, "complete_request", code="lane_only_var", cursor_pos=len("lane_only_var"))
    assert "lane_only_variable_xyz" not in in_main["matches"]


def test_inspection_uses_the_lanes_namespace(kernel: Kernel):
    ok(kernel.execute(lane("insp", "lane_inspected_value = 12345")))
    code = "%%lane insp\nlane_inspected_value"
    reply = query(kernel, "inspect_request", code=code, cursor_pos=len(code), detail_level=0)
    assert reply["status"] == "ok" and reply["found"], reply
    assert "int" in strip_ansi(reply["data"]["text/plain"]), reply["data"]
    in_main = query(kernel, "inspect_request", code="lane_inspected_value",
                    cursor_pos=len("lane_inspected_value"), detail_level=0)
    assert not in_main["found"]


def test_completion_is_answered_while_the_lane_is_busy(fresh_kernel: Kernel, tmp_path: Path):
    go = tmp_path / "go"
    ok(fresh_kernel.execute(lane("cmp-busy", "busy_lane_variable = 1")))
    busy = fresh_kernel.submit(lane("cmp-busy", wait_for_file(go)))
    try:
        wait_started(fresh_kernel, busy)
        code = "%%lane cmp-busy\nbusy_lane_var"
        # The lane is blocked until the test releases it: an answer that waited for the lane
        # could not come within the bound.
        reply = query(fresh_kernel, "complete_request", timeout=BUSY_QUERY_BOUND,
                      code=code, cursor_pos=len(code))
        assert reply["status"] == "ok", reply
        inspected = query(fresh_kernel, "inspect_request", timeout=BUSY_QUERY_BOUND,
                          code=code, cursor_pos=len(code), detail_level=0)
        assert inspected["status"] == "ok", inspected
    finally:
        release(go)
    ok(fresh_kernel.finish(busy))


def test_interrupt_is_not_held_up_by_a_completion_in_the_same_lane(fresh_kernel: Kernel, tmp_path: Path):
    """A completion that takes long (here: an object whose __dir__ waits for a file that the
    test creates only after the interrupt) must not hold up an interrupt of the same lane."""
    go, asked = tmp_path / "go", tmp_path / "asked"
    ok(fresh_kernel.execute(lane("cmp-int", textwrap.dedent(f"""\
        import os as _os, time as _time
        class Slow:
            def __dir__(self):
                open({str(asked)!r}, "w").close()
                _deadline = _time.monotonic() + {RELEASE_DEADLINE}
                while not _os.path.exists({str(go)!r}) and _time.monotonic() < _deadline:
                    _time.sleep(0.005)
                return ["finally_here"]
        slow = Slow()
        """))))
    looper = fresh_kernel.submit(lane("cmp-int", f"print({STARTED!r}, flush=True)\nwhile True:\n    pass"))
    try:
        wait_started(fresh_kernel, looper)
        code = "%%lane cmp-int\nslow."
        fresh_kernel.send("shell", "complete_request", {"code": code, "cursor_pos": len(code)})
        deadline = time.monotonic() + TIMEOUT
        while not asked.exists():  # the completion is inside __dir__ now
            assert time.monotonic() < deadline, "the completion never called __dir__"
            time.sleep(0.005)
        fresh_kernel.interrupt_by_message()
        assert_keyboard_interrupt(fresh_kernel.finish(looper))
    finally:
        release(go)
    fresh_kernel.assert_alive()


def test_kernel_info_is_answered_while_every_lane_is_busy(fresh_kernel: Kernel, tmp_path: Path):
    go = tmp_path / "go"
    cells = [lane("ki-a", wait_for_file(go)), lane("ki-b", wait_for_file(go)),
             "%%parallel\n" + wait_for_file(go), wait_for_file(go)]
    msg_ids = [fresh_kernel.submit(code) for code in cells]
    try:
        for msg_id in msg_ids:
            wait_started(fresh_kernel, msg_id)
        for channel in ("shell", "control"):
            reply, _ = fresh_kernel.request("kernel_info_request", channel=channel,
                                            timeout=BUSY_QUERY_BOUND)
            assert reply["content"]["status"] == "ok"
    finally:
        release(go)
    for execution in fresh_kernel.finish_all(msg_ids):
        ok(execution)


# ---------------------------------------------------------------------------------------
# Shutdown
# ---------------------------------------------------------------------------------------


def shutdown_within_bound(kernel: Kernel) -> float:
    """Sends shutdown_request on control; returns the seconds until the process was gone."""
    process = kernel.km.provisioner.process  # type: ignore[union-attr]
    started = time.monotonic()
    msg_id = kernel.send("control", "shutdown_request", {"restart": False})
    try:
        reply = kernel.reply(msg_id, "control", timeout=SHUTDOWN_BOUND)
        assert reply["content"]["status"] == "ok"
        process.wait(timeout=max(0.0, started + SHUTDOWN_BOUND - time.monotonic()))
        return time.monotonic() - started
    except subprocess.TimeoutExpired:
        pytest.fail(f"the kernel was still running {SHUTDOWN_BOUND} s after shutdown_request")
    finally:
        kernel.kc.stop_channels()
        if process.poll() is None:
            process.kill()
            process.wait()
        kernel.km.cleanup_resources()


@pytest.mark.parametrize("stuck_in_c", [False, True], ids=["busy-lanes", "lane-stuck-in-c"])
def test_shutdown_with_busy_lanes_ends_the_process(kernel_name: str, stuck_in_c: bool):
    kernel = Kernel.start(kernel_name)
    cells = [lane("sd-sleep", SLEEPING),
             lane("sd-loop", f"print({STARTED!r}, flush=True)\nwhile True:\n    pass"),
             "%%parallel\n" + SLEEPING,
             SLEEPING]
    if stuck_in_c:
        # libc's sleep(100) inside C: nothing in Python can interrupt it.
        cells.append(lane("sd-stuck", f"import ctypes\nprint({STARTED!r}, flush=True)\n"
                                      "ctypes.CDLL(None).sleep(100)"))
    try:
        msg_ids = [kernel.submit(code) for code in cells]
        for msg_id in msg_ids:
            wait_started(kernel, msg_id)
        shutdown_within_bound(kernel)
    finally:
        if kernel.km.is_alive():
            kernel.kc.stop_channels()
            kernel.km.shutdown_kernel(now=True)


# ---------------------------------------------------------------------------------------
# The parallel notebook, through the Run All runner and through nbclient
# ---------------------------------------------------------------------------------------


def notebook_lane_lines(notebook) -> list[tuple[list[str], str]]:
    """(tags, stdout) of each code cell; no cell may show an error or stderr."""
    rows = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            assert out.output_type != "error", f"cell {cell.id}: {out}"
            assert out.get("name") != "stderr", f"cell {cell.id}: {out}"
        text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
        rows.append((list(cell.metadata.get("tags", [])), text))
    return rows


def test_parallel_notebook_is_stored_clean_with_its_tags():
    notebook = nbformat.read(PARALLEL_NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "parakernel"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    tags = [tag for cell in code for tag in cell.metadata.get("tags", [])]
    assert tags.count("lane:sweep-a") == 2 and tags.count("lane:sweep-b") == 2
    assert "parallel" in tags
    assert any(cell.source.startswith("%wait") for cell in code)


def test_parallel_notebook_with_run_all(kernel_name: str, tmp_path: Path):
    output = tmp_path / "ran.ipynb"
    run = subprocess.run(
        [sys.executable, str(RUNNER), "--run-all", str(PARALLEL_NOTEBOOK),
         "--kernel", kernel_name, "--output", str(output)],
        capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert re.search(r"wall .* s", run.stdout), run.stdout
    notebook = nbformat.read(output, as_version=4)
    counts = [c.execution_count for c in notebook.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    interpreters: dict[str, set[int]] = {}
    for tags, text in notebook_lane_lines(notebook):
        lane_tags = [t for t in tags if t.startswith("lane:") or t == "parallel"]
        found = re.findall(r"interpreter (\d+)", text)
        if lane_tags and found:
            interpreters.setdefault(lane_tags[0], set()).update(int(i) for i in found)
    named = {t: ids for t, ids in interpreters.items() if t.startswith("lane:")}
    assert len(named) >= 2, interpreters
    for tag, ids in interpreters.items():
        assert 0 not in ids, f"cells tagged {tag} ran in the main interpreter"
    for tag, ids in named.items():
        assert len(ids) == 1, f"cells tagged {tag} ran in several interpreters: {ids}"
    assert len(set().union(*named.values())) == len(named), f"two lanes shared an interpreter: {named}"


def test_parallel_notebook_under_nbclient(kernel_name: str, tmp_path: Path):
    """nbclient sends no tags and one cell at a time: everything runs in order in main."""
    output = tmp_path / "ran.ipynb"
    run = subprocess.run(
        [sys.executable, str(RUNNER), str(PARALLEL_NOTEBOOK), "--kernel", kernel_name,
         "--output", str(output)],
        capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    notebook = nbformat.read(output, as_version=4)
    rows = notebook_lane_lines(notebook)  # and no cell shows an error
    where = [int(i) for _, text in rows for i in re.findall(r"interpreter (\d+)", text)]
    assert len(where) >= 6 and set(where) == {0}, f"not every cell ran in main: {rows}"
    (summary,) = [cell for cell in notebook.cells if cell.id == "pe-summary"]
    text = json.dumps(summary.outputs)
    assert "best: lr=" in text and "same data in every lane: True" in text, text


def test_run_all_runner_reports_a_failing_lane(kernel_name: str, tmp_path: Path):
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print('main ran')"),
        nbformat.v4.new_code_cell("1 / 0", metadata={"tags": ["lane:fails"]}),
        nbformat.v4.new_code_cell("print('queued behind the error')", metadata={"tags": ["lane:fails"]}),
        nbformat.v4.new_code_cell("print('other lane ran')", metadata={"tags": ["lane:goes-on"]}),
    ])
    path = tmp_path / "failing.ipynb"
    nbformat.write(notebook, path)
    run = subprocess.run([sys.executable, str(RUNNER), "--run-all", str(path), "--kernel", kernel_name,
                          "--output", str(tmp_path / "out.ipynb")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "ZeroDivisionError" in run.stdout and "other lane ran" in run.stdout, run.stdout
    assert "queued behind the error" not in run.stdout.replace("print('queued behind the error')", "")
    assert re.search(r"FAILED: Run All: cell 2 aborted", run.stderr), run.stderr
    ran = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert ran.cells[3].outputs[0]["text"] == "other lane ran\n"
