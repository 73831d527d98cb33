"""One lane per notebook (issue 9): the kernelspec "Python (parakernel, one lane per notebook)"
gives every client session attached to one kernel process a lane of its own, so two notebooks
run at once, each isolated; `%%lane main` still reaches the main lane."""

from __future__ import annotations

import textwrap

import pytest

from kernel_helpers import Kernel, find_kernel_spec
from test_lanes import assert_keyboard_interrupt, describe, ok, wait_started

pytestmark = [pytest.mark.parakernel_only("lanes per session are parakernel's own"), pytest.mark.needs_lanes]

LANES_KERNEL = "parakernel-lanes"


@pytest.fixture
def two_notebooks():
    if find_kernel_spec(LANES_KERNEL) is None:
        pytest.skip(f"the {LANES_KERNEL} kernelspec is not installed (make setup installs it)")
    first = Kernel.start(LANES_KERNEL)
    client = first.km.blocking_client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    second = Kernel(first.km, client)
    assert first.session.session != second.session.session
    try:
        yield first, second
    finally:
        second.kc.stop_channels()
        first.shutdown()


def test_two_notebooks_on_one_kernel_run_at_once_each_isolated(two_notebooks):
    first, second = two_notebooks
    # Each cell waits for the other: they finish only if both run at the same time.
    a = first.submit(textwrap.dedent("""\
        from parakernel import channel
        secret = "first"
        channel("meet-a").send("from the first")
        print(channel("meet-b").recv())
        """))
    b = second.submit(textwrap.dedent("""\
        from parakernel import channel
        channel("meet-b").send("from the second")
        print(channel("meet-a").recv(), "secret" in globals())
        """))
    assert ok(first.finish(a)).stdout == "from the second\n"
    assert ok(second.finish(b)).stdout == "from the first False\n"
    # The main lane is shared, on purpose; each notebook's own lane keeps its globals.
    ok(first.execute("%%lane main\nshared = 42"))
    assert ok(second.execute("%%lane main\nprint(shared)")).stdout == "42\n"
    assert ok(first.execute("print(secret)")).stdout == "first\n"
    table = ok(second.execute("%lanes")).of_type("display_data")[0]["content"]["data"]["text/plain"]
    assert "session" in table.splitlines()[0], table
    assert second.session.session in table and first.session.session[:8] in table, table


def test_an_interrupt_from_one_notebook_reaches_its_own_lane_only(two_notebooks):
    first, second = two_notebooks
    stuck = first.submit("import time\nprint('started', flush=True)\ntime.sleep(600)")
    wait_started(first, stuck)
    working = second.submit(textwrap.dedent("""\
        from parakernel import channel
        print('started', flush=True)
        print(channel("interrupt-go").recv())
        """))
    wait_started(second, working)
    first.interrupt_by_message()
    assert_keyboard_interrupt(first.finish(stuck))
    # The second notebook's cell was not interrupted: it still waits, and goes on.
    ok(first.execute("%%lane main\nfrom parakernel import channel\nchannel('interrupt-go').send('not interrupted')"))
    result = second.finish(working)
    assert ok(result).stdout == "started\nnot interrupted\n", describe(result)


def test_in_and_out_copy_from_and_to_the_notebooks_own_lane(two_notebooks):
    first, second = two_notebooks
    ok(first.execute("data = [1, 2, 3]"))
    ok(second.execute("data = 'the second notebook'"))
    ok(first.execute("%%lane pl-worker --in data --out total\ntotal = sum(data)"))
    result = ok(first.execute("%wait pl-worker\nprint(total)"))
    assert result.stdout == "6\n", describe(result)
    # Not the main lane's, nor the other notebook's.
    assert ok(first.execute("%%lane main\nprint('total' in globals())")).stdout == "False\n"
    assert ok(second.execute("print('total' in globals(), data)")).stdout == "False the second notebook\n"
