"""Channels between lanes, first step (issue 8): values sent from one interpreter are owned Rust
data in between and rebuilt in the receiving one. Some tests reach the native
functions (`_parakernel.channel_send` / `channel_recv`) below the `parakernel` module.
"""

from __future__ import annotations

import textwrap

import pytest

from kernel_helpers import Kernel
from test_lanes import assert_keyboard_interrupt, describe, lane, ok, wait_started

pytestmark = [pytest.mark.parakernel_only("channels are parakernel's own"), pytest.mark.needs_lanes]

VALUES = textwrap.dedent("""\
    import array
    class Local:
        pass
    values = [
        None, True, False, 0, -1, 2**63 - 1, -2**63, 2**200, -(3**150), 1.5, float('inf'), -0.0,
        complex(1, -2), "", "héllo ✓", b"", b"\\x00\\xff", (1, "a", (None,)), [1, [2, [3]]],
        {"k": [1, 2], 3: (4,), None: b"x"}, bytearray(b"abc"), array.array("d", [1.0, 2.5]),
        frozenset({1, 2}), range(3),
    ]
    """)


def test_every_value_kind_crosses_between_lanes_intact(kernel: Kernel):
    send = VALUES + textwrap.dedent("""\
        import _parakernel
        for v in values:
            assert _parakernel.channel_send("kinds", 0, v, 0) == "sent", v
        print("sent", len(values))
        """)
    assert ok(kernel.execute(lane("ch-a", send))).stdout == "sent 24\n"
    receive = VALUES + textwrap.dedent("""\
        import _parakernel, math
        got = []
        while True:
            status, v = _parakernel.channel_recv("kinds", 0)
            if status != "received":
                break
            got.append(v)
        assert status == "empty", status
        for sent, back in zip(values, got, strict=True):
            if isinstance(sent, (bytearray, array.array)):
                assert isinstance(back, memoryview) and back.readonly, back
                assert back.tolist() == memoryview(sent).tolist(), (sent, back)
                assert back.format == memoryview(sent).format
            elif isinstance(sent, float) and math.isinf(sent):
                assert back == sent
            else:
                assert back == sent and type(back) is type(sent), (sent, back)
        assert math.copysign(1, got[11]) == -1.0
        print("all", len(got), "intact")
        """)
    result = ok(kernel.execute(lane("ch-b", receive)))
    assert result.stdout == "all 24 intact\n", describe(result)


def test_a_class_the_receiver_cannot_import_is_a_clear_error(kernel: Kernel):
    send = "class Only:\n    pass\nimport _parakernel\n_parakernel.channel_send('classes', 0, Only(), 0)"
    ok(kernel.execute(lane("ch-c", send)))
    receive = kernel.execute(lane("ch-d", "import _parakernel\n_parakernel.channel_recv('classes', 0)"))
    assert receive.status == "error", describe(receive)
    assert receive.content["ename"] == "ImportError"
    assert "__main__.Only" in receive.content["evalue"] and '"ch-c"' in receive.content["evalue"]


def test_a_self_containing_list_and_a_maxsize_mismatch_are_refused_with_a_message(kernel: Kernel):
    cell = textwrap.dedent("""\
        import _parakernel
        loop = []
        loop.append(loop)
        try:
            _parakernel.channel_send("loops", 0, loop, 0)
        except ValueError as error:
            print("refused:", "nested" in str(error))
        assert _parakernel.channel_send("bounded-1", 1, 1, 0) == "sent"
        assert _parakernel.channel_send("bounded-1", 1, 2, 0) == "full"
        try:
            _parakernel.channel_send("bounded-1", 5, 3, 0)
        except ValueError as error:
            print("mismatch:", "maxsize 1" in str(error))
        """)
    assert ok(kernel.execute(lane("ch-e", cell))).stdout == "refused: True\nmismatch: True\n"


def test_a_blocked_recv_gets_what_another_lane_sends(fresh_kernel: Kernel):
    waiting = fresh_kernel.submit(lane("ch-recv", textwrap.dedent("""\
        import _parakernel
        print("started", flush=True)
        status, value = _parakernel.channel_recv("meet", None)
        print(status, value)
        """)))
    wait_started(fresh_kernel, waiting)
    ok(fresh_kernel.execute(lane("ch-send", "import _parakernel\nprint(_parakernel.channel_send('meet', 0, {'x': [1, 2]}, None))")))
    assert ok(fresh_kernel.finish(waiting)).stdout == "started\nreceived {'x': [1, 2]}\n"


def test_a_bounded_send_waits_for_a_receive_in_another_lane(fresh_kernel: Kernel):
    sending = fresh_kernel.submit(lane("ch-bounded", textwrap.dedent("""\
        import _parakernel
        assert _parakernel.channel_send("one-slot", 1, "first", None) == "sent"
        print("started", flush=True)
        print(_parakernel.channel_send("one-slot", 1, "second", None))
        """)))
    wait_started(fresh_kernel, sending)
    got = ok(fresh_kernel.execute("import _parakernel\nprint(_parakernel.channel_recv('one-slot', None))"))
    assert got.stdout == "('received', 'first')\n"
    assert ok(fresh_kernel.finish(sending)).stdout == "started\nsent\n"
    assert ok(fresh_kernel.execute("print(_parakernel.channel_recv('one-slot', 0))")).stdout == "('received', 'second')\n"


@pytest.mark.parametrize("where", ["main", "ch-interrupted"])
def test_an_interrupt_wakes_a_blocked_recv_and_the_channel_goes_on(fresh_kernel: Kernel, where: str):
    blocked = fresh_kernel.submit(lane(where, textwrap.dedent("""\
        import _parakernel
        print("started", flush=True)
        _parakernel.channel_recv("nothing-comes", None)
        """)))
    wait_started(fresh_kernel, blocked)
    fresh_kernel.interrupt_by_message()
    assert_keyboard_interrupt(fresh_kernel.finish(blocked))
    after = "import _parakernel\nprint(_parakernel.channel_send('nothing-comes', 0, 5, 0), _parakernel.channel_recv('nothing-comes', 0))"
    assert ok(fresh_kernel.execute(lane(where, after))).stdout == "sent ('received', 5)\n"


def test_a_recv_with_a_timeout_on_an_empty_channel_says_empty(kernel: Kernel):
    cell = "import _parakernel\nprint(_parakernel.channel_recv('stays-empty', 0.01), _parakernel.channel_recv('stays-empty', 0))"
    assert ok(kernel.execute(lane("ch-timeout", cell))).stdout == "('empty', None) ('empty', None)\n"


def test_the_parakernel_module_in_every_lane(fresh_kernel: Kernel):
    """`from parakernel import ...` in the main lane, a named lane and a fresh lane; the API's
    exceptions, close-then-drain, iteration and the stats."""
    producer = textwrap.dedent("""\
        from parakernel import channel, Full, ChannelClosed
        jobs = channel("api-jobs", maxsize=2)
        jobs.send(1); jobs.send_nowait(2)
        try:
            jobs.send_nowait(3)
        except Full as error:
            print("full:", "maxsize 2" in str(error))
        try:
            jobs.send(3, timeout=0.01)
        except Full:
            print("still full")
        print(len(jobs), repr(jobs))
        """)
    assert ok(fresh_kernel.execute(lane("api-a", producer))).stdout == "full: True\nstill full\n2 channel('api-jobs', maxsize=2)\n"
    consumer = textwrap.dedent("""\
        from parakernel import channel, channels, Empty, ChannelClosed
        jobs = channel("api-jobs")
        print(jobs.recv(), jobs.recv_nowait())
        try:
            jobs.recv_nowait()
        except Empty:
            print("empty")
        jobs.send("a"); jobs.send("b"); jobs.close()
        try:
            jobs.send("c")
        except ChannelClosed:
            print("closed to senders")
        print(list(jobs))
        (row,) = [row for row in channels() if row["name"] == "api-jobs"]
        print(row["sent"], row["received"], row["closed"], row["depth"])
        """)
    assert ok(fresh_kernel.execute("%%parallel\n" + consumer)).stdout == (
        "1 2\nempty\nclosed to senders\n['a', 'b']\n4 4 True 0\n")
    mismatch = fresh_kernel.execute("from parakernel import channel\nchannel('api-jobs', maxsize=5)")
    assert mismatch.status == "error" and "maxsize 2" in mismatch.content["evalue"], describe(mismatch)


def test_the_channels_magic_shows_every_channel(fresh_kernel: Kernel):
    ok(fresh_kernel.execute(lane("ch-magic", "from parakernel import channel\nchannel('shown', 3).send(b'x')")))
    shown = ok(fresh_kernel.execute("%channels"))
    (bundle,) = [m["content"]["data"] for m in shown.of_type("display_data")]
    text = bundle["text/plain"]
    assert text.splitlines()[0].split()[:3] == ["channel", "depth", "maxsize"], text
    (line,) = [line for line in text.splitlines() if line.startswith("shown")]
    assert line.split()[:5] == ["shown", "1", "3", "1", "0"], text
    assert "<td>shown</td>" in bundle["text/html"]


def test_odd_buffers_and_numpy_scalars_cross_as_what_they_are(kernel: Kernel):
    """Buffers a receiver could not rebuild as a memoryview are pickled instead, and numpy's 0-d
    scalars cross as numbers (found by a hostile pass: they were lost, or arrived as 0-d views)."""
    cell = textwrap.dedent("""\
        import array, ctypes
        import numpy as np
        from parakernel import channel
        odd = channel("odd-values")
        values = [array.array("w", "héllo"), np.array([1.5, 2], dtype=">f8"), np.zeros((0, 3)),
                  np.float64(1.5), np.int64(7), np.bool_(True), {np.float32(2.5): "key"}]
        for value in values:
            odd.send(value)
        got = [odd.recv() for _ in values]
        print(type(got[0]).__name__, got[0].tounicode())
        print(type(got[1]).__name__, got[1].tolist(), got[2].shape)
        print([(type(v).__name__, v) for v in got[3:6]], got[6])
        """)
    result = ok(kernel.execute(cell))
    assert result.stdout.splitlines() == [
        "array héllo",
        "ndarray [1.5, 2.0] (0, 3)",
        "[('float', 1.5), ('int', 7), ('bool', True)] {2.5: 'key'}",
    ], describe(result)


def test_mistakes_in_arguments_say_what_to_do(kernel: Kernel):
    cell = textwrap.dedent("""\
        from parakernel import channel
        for call in (lambda: channel("m", maxsize=True), lambda: channel("m", maxsize=2**70),
                     lambda: channel("x" * 10_000), lambda: channel("m").recv(timeout="1")):
            try:
                call()
            except (TypeError, ValueError) as error:
                print(type(error).__name__, str(error)[:70], len(str(error)) < 200)
        """)
    out = ok(kernel.execute(cell)).stdout.splitlines()
    assert out[0].startswith("ValueError maxsize must be None, 0 (unbounded) or a positive int"), out
    assert out[1].startswith("ValueError maxsize must be"), out
    assert out[2].startswith("ValueError \"xxxx") and out[2].endswith("True"), out
    assert out[3] == "TypeError timeout must be None or a number of seconds, not str True", out


def test_the_first_bound_asked_for_wins_whoever_opened_first_and_unlink_frees_the_name(kernel: Kernel):
    # The receiver opens "bound-late" first (Run All may start it first); the producer's bound holds.
    receiver = kernel.submit(lane("bound-r", "from parakernel import channel\nprint(sum(channel('bound-late')))"))
    producer = textwrap.dedent("""\
        from parakernel import channel, Full
        jobs = channel("bound-late", maxsize=2)
        for n in range(100):
            jobs.send(n)
        jobs.close()
        print(repr(jobs), bool(channel("bound-empty")))
        """)
    sent = kernel.submit(lane("bound-p", producer))
    a, b = kernel.finish_all([receiver, sent])
    assert ok(a).stdout == f"{sum(range(100))}\n" and ok(b).stdout == "channel('bound-late', maxsize=2) True\n"
    again = textwrap.dedent("""\
        from parakernel import channel, ChannelClosed
        old = channel("bound-late")
        try:
            old.send(1)
        except ChannelClosed:
            print("closed")
        old.unlink()
        new = channel("bound-late", maxsize=5)
        new.send("fresh")
        print(len(new), new.recv(), repr(new))
        """)
    assert ok(kernel.execute(again)).stdout == "closed\n1 fresh channel('bound-late', maxsize=5)\n"


def test_names_with_lone_surrogates_are_refused_not_merged(kernel: Kernel):
    cell = textwrap.dedent("""\
        from parakernel import channel, shared_buffer
        for make in (lambda: channel("\\ud800"), lambda: shared_buffer("\\udc00", 8)):
            try:
                make()
            except ValueError as error:
                print(error)
        """)
    out = ok(kernel.execute(cell)).stdout.splitlines()
    assert out == ["name must be text without lone surrogates"] * 2, out
