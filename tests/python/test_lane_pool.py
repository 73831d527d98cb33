"""The lane pool (issue 8): `parakernel.map` and `parakernel.LanePool` run tasks on fresh lanes,
with functions defined in cells, results in order, exceptions with the lane's traceback, and an
interrupt that cancels what has not started."""

from __future__ import annotations

import textwrap
import time

import pytest

from kernel_helpers import Kernel, strip_ansi
from test_lanes import assert_keyboard_interrupt, describe, lane, ok

pytestmark = [pytest.mark.parakernel_only("the lane pool is parakernel's own"), pytest.mark.needs_lanes]


def test_map_runs_cell_functions_on_lanes_in_order(kernel: Kernel):
    cell = textwrap.dedent("""\
        import parakernel, threading
        class Point:
            def __init__(self, x):
                self.x = x
        offset = 10
        def where(x):
            import _parakernel_shell.lane as lane
            return (x + offset, lane.name, Point(x))   # a closure, a cell's class
        out = parakernel.map(where, range(20), chunksize=1)
        print([x for x, _, _ in out] == [x + 10 for x in range(20)])
        print(sorted({name for _, name, _ in out} - {"main"}) == sorted({name for _, name, _ in out}))
        print(all(type(p).__name__ == "Point" and p.x == i for i, (_, _, p) in enumerate(out)))
        print(parakernel.map(lambda s: s.upper(), ["a", "b"]), parakernel.map(len, []))
        """)
    result = ok(kernel.execute(cell))
    assert result.stdout == "True\nTrue\nTrue\n['A', 'B'] []\n", describe(result)


def test_an_exception_in_a_task_is_raised_with_the_lanes_traceback(kernel: Kernel):
    cell = textwrap.dedent("""\
        import parakernel
        def check(x):
            if x == 7:
                raise ValueError(f"bad item {x}")
            return x
        parakernel.map(check, range(10))
        """)
    result = kernel.execute(cell)
    assert result.status == "error", describe(result)
    assert result.content["ename"] == "ValueError" and result.content["evalue"] == "bad item 7"
    traceback = strip_ansi("\n".join(result.content["traceback"]))
    assert "RemoteTraceback" in traceback and "In lane fresh-" in traceback, traceback
    assert "in check" in traceback and "direct cause" in traceback, traceback
    # The pool's workers have left and its channels are gone; the next map works.
    after = "from parakernel import channels\nprint(parakernel.map(abs, [-1]), [c['name'] for c in channels() if c['name'].startswith('__pool')])"
    assert ok(kernel.execute(after)).stdout == "[1] []\n"


def test_the_executor_works_with_as_completed_and_wait(kernel: Kernel):
    cell = textwrap.dedent("""\
        import parakernel
        from concurrent.futures import as_completed, wait, ALL_COMPLETED
        with parakernel.LanePool(max_workers=2) as pool:
            futures = [pool.submit(pow, 2, n) for n in range(12)]
            print(sorted(f.result() for f in as_completed(futures)) == [2 ** n for n in range(12)])
            done, not_done = wait([pool.submit(divmod, 7, 0)], return_when=ALL_COMPLETED)
            print(type(done.pop().exception()).__name__, len(not_done))
            print(list(pool.map(lambda a, b: a * b, [1, 2, 3], [4, 5, 6])))
        try:
            pool.submit(abs, 1)
        except RuntimeError as error:
            print(error)
        """)
    result = ok(kernel.execute(cell))
    assert result.stdout == "True\nZeroDivisionError 0\n[4, 10, 18]\ncannot schedule new tasks after shutdown\n", describe(result)


def test_many_tasks_show_a_progress_bar_that_ends_as_a_summary(kernel: Kernel):
    result = ok(kernel.execute("import parakernel\nprint(sum(parakernel.map(lambda x: x, range(500))))"))
    assert result.stdout == f"{sum(range(500))}\n"
    first = result.of_type("display_data")
    assert len(first) == 1, describe(result)
    display_id = first[0]["content"]["transient"]["display_id"]
    updates = result.of_type("update_display_data")
    assert updates and all(u["content"]["transient"]["display_id"] == display_id for u in updates)
    summary = updates[-1]["content"]["data"]["text/plain"]
    assert summary.startswith("parakernel.map: 500 tasks on ") and " lanes in " in summary, summary
    few = ok(kernel.execute("print(len(parakernel.map(abs, range(10))))"))
    assert not few.of_type("display_data", "update_display_data") and few.stdout == "10\n"


def test_an_interrupt_cancels_the_tasks_not_started(fresh_kernel: Kernel):
    kernel = fresh_kernel
    caller = kernel.submit(textwrap.dedent("""\
        import parakernel
        from parakernel import channel
        def stuck(x):
            channel("pool-started").send(x)
            channel("pool-never").recv()
        parakernel.map(stuck, range(100), lanes=2, chunksize=1)
        """))
    # Both workers are inside a task: then the interrupt comes.
    ok(kernel.execute(lane("pool-watch", "from parakernel import channel\nseen = [channel('pool-started').recv() for _ in range(2)]")))
    kernel.interrupt_by_message()
    assert_keyboard_interrupt(kernel.finish(caller))
    # Only the two running tasks ever started; the other 98 were cancelled, and the workers
    # left (the pool's channels are discarded when the last one has).
    check = textwrap.dedent("""\
        from parakernel import channels
        print([(c['name'], c['sent']) for c in channels() if c['name'] == 'pool-started'],
              [c['name'] for c in channels() if c['name'].startswith('__pool')])
        """)
    deadline = time.monotonic() + 30
    while (out := ok(kernel.execute(check)).stdout) != "[('pool-started', 2)] []\n" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out == "[('pool-started', 2)] []\n", out
    assert ok(kernel.execute("print(parakernel.map(abs, [-3, 4]))")).stdout == "[3, 4]\n"


def test_a_pool_dropped_without_shutdown_lets_its_workers_go(kernel: Kernel):
    cell = textwrap.dedent("""\
        import gc, parakernel
        pool = parakernel.LanePool(max_workers=2)
        print([pool.submit(abs, -n).result() for n in range(4)])
        del pool
        gc.collect()
        """)
    assert ok(kernel.execute(cell)).stdout == "[0, 1, 2, 3]\n"
    check = "from parakernel import channels\nprint([c['name'] for c in channels() if c['name'].startswith('__pool')])"
    deadline = time.monotonic() + 30
    while (out := ok(kernel.execute(check)).stdout) != "[]\n" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert out == "[]\n", f"the dropped pool's workers never left: {out}"
    # Both fresh lanes serve cells again.
    runs = kernel.finish_all([kernel.submit("%%parallel\nprint('free')") for _ in range(2)])
    assert [ok(run).stdout for run in runs] == ["free\n", "free\n"]


def test_a_task_whose_result_or_error_cannot_travel_still_answers(kernel: Kernel):
    """Found by a hostile pass: these lost their task and the cell never ended."""
    cell = textwrap.dedent("""\
        import parakernel, threading, types, sys
        class Mute(Exception):
            def __str__(self):
                raise ValueError("no str")
        def mute(x):
            raise Mute()
        module = types.ModuleType("only_here")
        exec("def g(x):\\n    return x + 1", module.__dict__)
        sys.modules["only_here"] = module
        for task, items in ((lambda x: threading.Lock(), [1]), (mute, [1]), (module.g, [1])):
            try:
                parakernel.map(task, items)
            except BaseException as error:
                print(type(error).__name__)
        """)
    result = ok(kernel.execute(cell))
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[1] in ("Mute", "RuntimeError"), describe(result)
    assert lines[0] in ("TypeError", "PicklingError") and lines[2] in ("ModuleNotFoundError", "PicklingError", "AttributeError"), lines


def test_a_pool_not_kept_in_a_variable_still_finishes_its_work(kernel: Kernel):
    cell = textwrap.dedent("""\
        import gc, parakernel
        print(list(parakernel.LanePool().map(abs, [-1, -2, -3])))
        future = parakernel.LanePool().submit(pow, 2, 10)
        gc.collect()
        print(future.result(timeout=60))
        """)
    assert ok(kernel.execute(cell)).stdout == "[1, 2, 3]\n1024\n"


def test_submitted_futures_that_never_started_can_be_cancelled(kernel: Kernel):
    cell = textwrap.dedent("""\
        import concurrent.futures, parakernel
        from parakernel import channel
        pool = parakernel.LanePool(max_workers=1)
        def gated():
            channel("cancel-started").send(1)
            return channel("cancel-gate").recv()
        first = pool.submit(gated)
        channel("cancel-started").recv()     # the one worker is busy with `first`
        second = pool.submit(abs, -2)
        print(second.cancel(), second.cancelled())
        third = pool.submit(abs, -3)
        channel("cancel-gate").send("go")
        pool.shutdown(wait=True, cancel_futures=True)
        print(first.result(), third.done())
        try:
            second.result()
        except concurrent.futures.CancelledError:
            print("cancelled")
        """)
    result = ok(kernel.execute(cell))
    assert result.stdout == "True True\ngo True\ncancelled\n", describe(result)


def test_restarting_the_lane_that_owns_a_pool_frees_its_workers(fresh_kernel: Kernel):
    kernel = fresh_kernel
    owner = textwrap.dedent("""\
        import parakernel
        pool = parakernel.LanePool()
        print([f.result() for f in [pool.submit(abs, -i) for i in range(4)]])
        """)
    assert ok(kernel.execute(lane("pool-owner", owner))).stdout == "[0, 1, 2, 3]\n"
    ok(kernel.execute("%lane restart pool-owner"))
    # The fresh lanes serve cells again: both of these must meet.
    cells = [
        kernel.submit("%%parallel\nfrom parakernel import channel\nchannel('owner-a').send(1)\nprint(channel('owner-b').recv())"),
        kernel.submit("%%parallel\nfrom parakernel import channel\nchannel('owner-b').send(2)\nprint(channel('owner-a').recv())"),
    ]
    a, b = kernel.finish_all(cells)
    assert (ok(a).stdout, ok(b).stdout) == ("2\n", "1\n")


def test_a_pool_inside_a_task_is_refused_with_a_reason(kernel: Kernel):
    cell = "import parakernel\nparakernel.map(lambda x: parakernel.map(abs, [-x]), [1])"
    result = kernel.execute(cell)
    assert result.status == "error", describe(result)
    assert result.content["ename"] == "RuntimeError" and "inside a task of another pool" in result.content["evalue"]
