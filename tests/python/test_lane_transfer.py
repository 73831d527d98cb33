"""`%%lane NAME --in a,b --out c` and `%%parallel --in/--out` (issue 8): values copied from the
main lane into the lane before the cell, and back after it, by the channel value rules; what
cannot cross is an error under the cell that names it."""

from __future__ import annotations

import pytest

from kernel_helpers import Kernel
from test_lanes import describe, ok

pytestmark = [pytest.mark.parakernel_only("--in/--out are parakernel's own"), pytest.mark.needs_lanes]


def test_in_and_out_copy_values_between_main_and_a_lane(kernel: Kernel):
    ok(kernel.execute("data = [1, 2, 3]\nscale = {'k': 2**100}\nimport array\nraw = array.array('d', [0.5, 1.5])"))
    # Sent in one go (Run All): the lane cell waits for the main lane's cell before it.
    first = kernel.submit("data = data + [4]")
    cell = kernel.submit("%%lane tr-a --in data,scale,raw --out total,copy,view\ntotal = sum(data) * scale['k']\ncopy = scale\nview = raw")
    assert ok(kernel.finish(first))
    assert ok(kernel.finish(cell))
    result = ok(kernel.execute("%wait tr-a\nprint(total == 10 * 2**100, copy == scale, copy is not scale, view.tolist(), view.readonly)"))
    assert result.stdout == "True True True [0.5, 1.5] True\n", describe(result)
    # A fresh lane too, and the lane's own copy is its own.
    ok(kernel.execute("%%parallel --in data --out n\nn = len(data)\ndata.append(0)"))
    assert ok(kernel.execute("%wait\nprint(n, data)")).stdout == "4 [1, 2, 3, 4]\n"


@pytest.mark.parametrize(
    ("cell", "ename", "words"),
    [
        ("%%lane tr-b --in nowhere\n1", "NameError", "name 'nowhere' is not defined in the main lane"),
        ("%%lane tr-b --out never\nx = 1", "NameError", "--out never: the cell did not set 'never'"),
        ("%%lane tr-b --in lock\n1", "TypeError", "--in lock: the value in the main lane cannot be copied"),
        ("%%lane tr-b --out Local\nclass Local:\n    pass", "ImportError", 'sent from lane "tr-b"'),
        ("%%lane main --in data\n1", "LaneError", "a cell that runs in the main lane has them already"),
        ("%%lane tr-b --in 2x\n1", "LaneError", "is not a Python variable name"),
    ],
)
def test_what_cannot_cross_is_an_error_under_the_cell(kernel: Kernel, cell: str, ename: str, words: str):
    ok(kernel.execute("import threading\nlock = threading.Lock()\ndata = 1"))
    result = kernel.execute(cell)
    assert result.status == "error", describe(result)
    assert result.content["ename"] == ename and words in result.content["evalue"], result.content["evalue"]
    assert result.of_type("error"), "the error is shown under the cell"
