"""Channels between lanes, first step (issue 8): values sent from one interpreter are owned Rust
data in between and rebuilt in the receiving one. The native functions are reached as
`_parakernel.channel_try_send` / `channel_try_recv` until the `parakernel` module wraps them.
"""

from __future__ import annotations

import textwrap

import pytest

from kernel_helpers import Kernel
from test_lanes import describe, lane, ok

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
            assert _parakernel.channel_try_send("kinds", 0, v) == "sent", v
        print("sent", len(values))
        """)
    assert ok(kernel.execute(lane("ch-a", send))).stdout == "sent 24\n"
    receive = VALUES + textwrap.dedent("""\
        import _parakernel, math
        got = []
        while True:
            status, v = _parakernel.channel_try_recv("kinds")
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
    send = "class Only:\n    pass\nimport _parakernel\n_parakernel.channel_try_send('classes', 0, Only())"
    ok(kernel.execute(lane("ch-c", send)))
    receive = kernel.execute(lane("ch-d", "import _parakernel\n_parakernel.channel_try_recv('classes')"))
    assert receive.status == "error", describe(receive)
    assert receive.content["ename"] == "ImportError"
    assert "__main__.Only" in receive.content["evalue"] and '"ch-c"' in receive.content["evalue"]


def test_a_self_containing_list_and_a_maxsize_mismatch_are_refused_with_a_message(kernel: Kernel):
    cell = textwrap.dedent("""\
        import _parakernel
        loop = []
        loop.append(loop)
        try:
            _parakernel.channel_try_send("loops", 0, loop)
        except ValueError as error:
            print("refused:", "nested" in str(error))
        assert _parakernel.channel_try_send("bounded-1", 1, 1) == "sent"
        assert _parakernel.channel_try_send("bounded-1", 1, 2) == "full"
        try:
            _parakernel.channel_try_send("bounded-1", 5, 3)
        except ValueError as error:
            print("mismatch:", "maxsize 1" in str(error))
        """)
    assert ok(kernel.execute(lane("ch-e", cell))).stdout == "refused: True\nmismatch: True\n"
