"""What channels promise between lanes (issue 8), shown by lanes that must meet: ping-pong,
exactly once and in order with many senders and receivers, and a channel that outlives an
interrupted, restarted, stopped or shut-down lane blocked on it."""

from __future__ import annotations

import textwrap
import time

import pytest

from kernel_helpers import Kernel
from test_lanes import assert_keyboard_interrupt, describe, lane, ok, wait_started

pytestmark = [pytest.mark.parakernel_only("channels are parakernel's own"), pytest.mark.needs_lanes]


def test_ping_pong_a_thousand_times_between_two_lanes(kernel: Kernel):
    ping = kernel.submit(lane("pp-a", textwrap.dedent("""\
        from parakernel import channel
        ping, pong = channel("pp-ping"), channel("pp-pong")
        for i in range(1000):
            ping.send(i)
            assert pong.recv() == i + 1
        print("a done")
        """)))
    pong = kernel.submit(lane("pp-b", textwrap.dedent("""\
        from parakernel import channel
        ping, pong = channel("pp-ping"), channel("pp-pong")
        for _ in range(1000):
            pong.send(ping.recv() + 1)
        print("b done")
        """)))
    a, b = kernel.finish_all([ping, pong])
    assert ok(a).stdout == "a done\n" and ok(b).stdout == "b done\n"


def test_four_senders_two_receivers_every_message_once_and_in_order(kernel: Kernel):
    senders = [
        kernel.submit(lane(f"many-s{s}", f"from parakernel import channel\nfor i in range(5000):\n    channel('many', maxsize=64).send(({s}, i))"))
        for s in range(4)
    ]
    receive = textwrap.dedent("""\
        from parakernel import channel
        got = list(channel("many", maxsize=64))
        channel("many-got").send(got)
        """)
    receivers = [kernel.submit(lane(f"many-r{r}", receive)) for r in range(2)]
    closer = kernel.submit("%wait many-s0 many-s1 many-s2 many-s3\nfrom parakernel import channel\nchannel('many').close()")
    for execution in kernel.finish_all(senders + receivers + [closer]):
        ok(execution)
    check = textwrap.dedent("""\
        lists = [channel("many-got").recv(), channel("many-got").recv()]
        every = sorted(m for got in lists for m in got)
        print(len(every), every == sorted((s, i) for s in range(4) for i in range(5000)))
        # Each receiver saw each sender's messages in the order they were sent.
        print(all([i for s2, i in got if s2 == s] == sorted(i for s2, i in got if s2 == s) for got in lists for s in range(4)))
        """)
    result = ok(kernel.execute(check))
    assert result.stdout.splitlines()[:2] == ["20000 True", "True"], describe(result)


def test_lane_interrupt_wakes_a_blocked_recv(kernel: Kernel):
    blocked = kernel.submit(lane("int-x", "from parakernel import channel\nprint('started', flush=True)\nchannel('int-never').recv()"))
    wait_started(kernel, blocked)
    ok(kernel.execute("%lane interrupt int-x"))
    assert_keyboard_interrupt(kernel.finish(blocked))


def waiting(kernel: Kernel, name: str) -> tuple[int, int]:
    row = ok(kernel.execute(f"from parakernel import channels\nprint([(c['waiting_senders'], c['waiting_receivers']) for c in channels() if c['name'] == {name!r}])"))
    return eval(row.stdout)[0]  # noqa: S307 - our own printed tuple


@pytest.mark.parametrize("verb", ["restart", "stop"])
def test_a_lane_ended_while_blocked_leaves_the_channel_working(fresh_kernel: Kernel, verb: str):
    kernel = fresh_kernel
    receiver = kernel.submit(lane("end-r", "from parakernel import channel\nprint('started', flush=True)\nchannel('end-in').recv()"))
    wait_started(kernel, receiver)
    sender = kernel.submit(lane("end-s", textwrap.dedent("""\
        from parakernel import channel
        out = channel("end-out", maxsize=1)
        out.send("first")
        print("started", flush=True)
        out.send("never delivered")
        """)))
    wait_started(kernel, sender)
    # %channels counts them as waiting (the receiver's wait is counted when it begins).
    deadline = time.monotonic() + 30
    while (waiting(kernel, "end-in"), waiting(kernel, "end-out")) != ((0, 1), (1, 0)):
        assert time.monotonic() < deadline, "the blocked lanes are not counted as waiting"
        time.sleep(0.05)
    ok(kernel.execute(f"%lane {verb} end-r"))
    ok(kernel.execute(f"%lane {verb} end-s"))
    for ended in kernel.finish_all([receiver, sender]):
        assert ended.status == "error", describe(ended)
    deadline = time.monotonic() + 30
    while (waiting(kernel, "end-in"), waiting(kernel, "end-out")) != ((0, 0), (0, 0)):
        assert time.monotonic() < deadline, "a waiter of an ended lane is still counted"
        time.sleep(0.05)
    # The value the stopped send held was never queued: the receiver gets "first" only.
    after = "from parakernel import channel, Empty\nprint(channel('end-out').recv())\ntry:\n    channel('end-out').recv_nowait()\nexcept Empty:\n    print('nothing else')"
    assert ok(kernel.execute(after)).stdout == "first\nnothing else\n"
    # The lane's name serves new cells on the same channel.
    new_receiver = kernel.submit(lane("end-r", "from parakernel import channel\nprint(channel('end-in').recv())"))
    ok(kernel.execute(lane("end-other", "from parakernel import channel\nchannel('end-in').send('for the new lane')")))
    assert ok(kernel.finish(new_receiver)).stdout == "for the new lane\n"


def test_shutdown_wakes_lanes_blocked_on_channels(kernel_name: str):
    kernel = Kernel.start(kernel_name)
    try:
        started = [
            kernel.submit(lane("down-r", "from parakernel import channel\nprint('started', flush=True)\nchannel('down').recv()")),
            kernel.submit(lane("down-s", "from parakernel import channel\nc = channel('down-full', maxsize=1)\nc.send(1)\nprint('started', flush=True)\nc.send(2)")),
            kernel.submit("from parakernel import channel\nprint('started', flush=True)\nchannel('down-main').recv()"),
        ]
        for msg_id in started:
            wait_started(kernel, msg_id)
        process = kernel.km.provisioner.process  # type: ignore[union-attr]
        kernel.send("control", "shutdown_request", {"restart": False})
        # The kernel ends on its own: every blocked lane woke up.
        process.wait(timeout=30)
    finally:
        kernel.shutdown()


def test_the_pipeline_notebook_runs_all(kernel_name: str, tmp_path):
    """notebooks/channels_pipeline.ipynb (make demo runs it) under Run All, written back and
    read as a notebook: every cell ran, and what the pipeline computed is right."""
    import subprocess
    import sys

    import nbformat

    from test_lanes import REPO, RUNNER

    output = tmp_path / "pipeline.ipynb"
    run = subprocess.run(
        [sys.executable, str(RUNNER), "--run-all", "--no-compare", str(REPO / "notebooks" / "channels_pipeline.ipynb"),
         "--kernel", kernel_name, "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    notebook = nbformat.read(output, as_version=4)
    nbformat.validate(notebook)
    text = "\n".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert "48 results; items per worker" in text and "primes below 960,000: 75,618" in text, text
    assert "mean of 1,000,000 samples: 0.49" in text, text
    assert "longest chain below 200,000: 156,159 (382 steps)" in text, text
