"""Comms in lanes: a widget made in a lane lives there. The frontend's messages to it reach
that lane (not the main lane, which would answer "No such comm"), `comm_info` lists it with its
lane, and a lane that is restarted takes its comms with it (the frontend is told they closed).

The test plays JupyterLab's part: it reads the comm_open the widget published and sends the
comm_msg a slider sends when the user drags it.
"""

from __future__ import annotations

import textwrap

import pytest

from kernel_helpers import Kernel
from test_lanes import describe, lane, ok

pytestmark = [pytest.mark.parakernel_only("lanes are parakernel's own"), pytest.mark.needs_lanes]

SLIDER = textwrap.dedent("""\
    import ipywidgets
    seen = []
    slider = ipywidgets.IntSlider(value=1)
    slider.observe(lambda change: seen.append(change["new"]), names="value")
    slider
    """)


def comm_of(execution, model: str = "IntSliderModel") -> str:
    """The comm id of the widget model the cell made (a slider also makes its layout and style)."""
    opens = [m["content"] for m in execution.of_type("comm_open")
             if m["content"]["data"]["state"].get("_model_name") == model]
    assert len(opens) == 1, f"no single {model} comm_open: {describe(execution)}"
    return opens[0]["comm_id"]


def drag(kernel: Kernel, comm_id: str, value: int) -> list:
    """Sends what a slider sends when dragged; returns what the kernel published for it."""
    reply_id = kernel.send("shell", "comm_msg", {
        "comm_id": comm_id,
        "data": {"method": "update", "state": {"value": value}, "buffer_paths": []},
    })
    return kernel.iopub_until_idle(reply_id)


def comm_info(kernel: Kernel, target: str | None = None) -> dict:
    content = {} if target is None else {"target_name": target}
    msg_id = kernel.send("shell", "comm_info_request", content)
    reply = kernel.reply(msg_id)
    kernel.iopub_until_idle(msg_id)
    assert reply["content"]["status"] == "ok", reply
    return reply["content"]["comms"]


def test_a_widget_made_in_a_lane_gets_its_messages_there(fresh_kernel: Kernel):
    made = ok(fresh_kernel.execute(lane("widgets", SLIDER)))
    comm_id = comm_of(made)
    published = drag(fresh_kernel, comm_id, 7)
    errors = [m["content"] for m in published if m["msg_type"] in ("error", "stream")]
    assert not errors, f"the lane's comm did not take the message: {errors}"
    after = ok(fresh_kernel.execute(lane("widgets", "print(seen, slider.value)")))
    assert after.stdout == "[7] 7\n", describe(after)
    # The main lane has no such widget: the message did not go there.
    assert "seen" not in ok(fresh_kernel.execute("print(dir())")).stdout


def test_comm_info_lists_comms_of_every_lane_with_their_lane(fresh_kernel: Kernel):
    in_lane = comm_of(ok(fresh_kernel.execute(lane("widgets", SLIDER))))
    in_main = comm_of(ok(fresh_kernel.execute(SLIDER)))
    comms = comm_info(fresh_kernel, "jupyter.widget")
    assert comms[in_lane] == {"target_name": "jupyter.widget", "lane": "widgets"}, comms
    assert comms[in_main] == {"target_name": "jupyter.widget", "lane": "main"}, comms
    assert all(c["target_name"] == "jupyter.widget" for c in comms.values())
    assert {c["lane"] for c in comms.values()} == {"widgets", "main"}


def test_a_restarted_lane_closes_its_comms(fresh_kernel: Kernel):
    comm_id = comm_of(ok(fresh_kernel.execute(lane("widgets", SLIDER))))
    restart = ok(fresh_kernel.execute("%lane restart widgets"))
    fresh_kernel.drain_iopub()
    closes = [m for m in fresh_kernel.arrivals("iopub")
              if m["msg_type"] == "comm_close" and m["content"]["comm_id"] == comm_id]
    assert len(closes) == 1, f"no comm_close for the restarted lane's widget: {describe(restart)}"
    assert comm_id not in comm_info(fresh_kernel)
