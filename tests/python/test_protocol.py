"""Black-box protocol tests: the installed kernelspec started by jupyter_client, spoken to
through its client and, for messages no client would send, through a raw ZeroMQ socket.

Order is never made likely with sleeps: a test that needs a cell to be running makes the
cell announce it (a flushed print) or block on something only the test releases (``input()``),
and a test that needs "no reply came" waits for a later request on the same socket, which
the kernel answers after anything it owed to the earlier one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import signal
import sys
import time

import pytest
import zmq

import kernel_helpers
from kernel_helpers import (
    TIMEOUT,
    Kernel,
    Message,
    RawShell,
    is_ipykernel,
    kernel_name_under_test,
    parent_id,
    strip_ansi,
)

# A cell that says it has started, then blocks far longer than any failure guard.
SLEEPING_CELL = "import time\nprint('started', flush=True)\ntime.sleep(600)"


def execute_content(code: str, **overrides) -> dict:
    # stop_on_error false, so that a cell answered with an error does not abort the barrier
    # cell behind it.
    return kernel_helpers.execute_content(code, **{"stop_on_error": False, **overrides})


def assert_keyboard_interrupt(execution) -> None:
    assert execution.status == "error", execution.content
    assert execution.content["ename"] == "KeyboardInterrupt", execution.content
    assert execution.error is not None and execution.error["ename"] == "KeyboardInterrupt"


# ---------------------------------------------------------------------------------------
# Bad input: dropped (or answered with an error where a reply is owed); the kernel goes on.
# ---------------------------------------------------------------------------------------


@pytest.fixture
def raw(fresh_kernel: Kernel):
    shell = RawShell(fresh_kernel)
    yield shell
    shell.close()


def barrier(raw: RawShell) -> list[Message]:
    """Runs an empty cell through the raw socket; returns what arrived before its reply."""
    received = raw.round_trip("execute_request", execute_content("pass", store_history=False))
    return received[:-1]


def assert_dropped(kernel: Kernel, raw: RawShell, msg: Message, flag: str) -> None:
    """``msg`` got no reply and its code (which sets ``flag``) did not run."""
    earlier = barrier(raw)
    replies = [m for m in earlier if parent_id(m) == msg["header"]["msg_id"]]
    assert replies == [], f"a dropped message was answered: {replies}"
    assert kernel.evaluate(f"{flag!r} in globals()") == "False", "a dropped message ran"
    kernel.assert_alive()


def test_bad_signature_is_dropped(fresh_kernel: Kernel, raw: RawShell):
    msg = raw.message("execute_request", execute_content("bad_signature_ran = True"))
    frames = raw.frames(msg)
    forged = hmac.new(b"not-the-connection-key", digestmod=hashlib.sha256)
    for frame in frames[2:6]:
        forged.update(frame)
    frames[1] = forged.hexdigest().encode()  # well-formed, wrong key
    raw.send_frames(frames)
    assert_dropped(fresh_kernel, raw, msg, "bad_signature_ran")


def test_missing_signature_is_dropped(fresh_kernel: Kernel, raw: RawShell):
    msg = raw.message("execute_request", execute_content("unsigned_ran = True"))
    frames = raw.frames(msg)
    frames[1] = b""
    raw.send_frames(frames)
    assert_dropped(fresh_kernel, raw, msg, "unsigned_ran")


def test_replayed_message_is_dropped(fresh_kernel: Kernel, raw: RawShell):
    code = "replayed_runs = globals().get('replayed_runs', 0) + 1"
    msg = raw.message("execute_request", execute_content(code))
    frames = raw.frames(msg)
    raw.send_frames(frames)
    raw.send_frames(frames)  # back to back
    first = barrier(raw)
    raw.send_frames(frames)  # and again once the original has been answered
    second = barrier(raw)
    replies = [m for m in first + second if parent_id(m) == msg["header"]["msg_id"]]
    assert [m["msg_type"] for m in replies] == ["execute_reply"], replies
    assert replies[0]["content"]["status"] == "ok"
    assert fresh_kernel.evaluate("replayed_runs") == "1"
    fresh_kernel.assert_alive()


def signed_parts(raw: RawShell, msg: Message, parts: int) -> list[bytes]:
    """The delimiter, then the first ``parts`` of header, parent, metadata, content, with a
    signature that is right for exactly those: only the frame count is wrong."""
    frames = raw.frames(msg)
    kept = frames[2 : 2 + parts]
    return [frames[0], raw.session.sign(kept), *kept]


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda raw, msg: signed_parts(raw, msg, 3), id="no-content"),
        pytest.param(lambda raw, msg: signed_parts(raw, msg, 1), id="header-only"),
        pytest.param(lambda raw, msg: signed_parts(raw, msg, 0), id="signature-only"),
        pytest.param(lambda raw, msg: raw.frames(msg)[:1], id="delimiter-only"),
        pytest.param(lambda raw, msg: [b"no delimiter", b"at all"], id="no-delimiter"),
    ],
)
def test_too_few_frames_are_dropped(fresh_kernel: Kernel, raw: RawShell, cut):
    msg = raw.message("execute_request", execute_content("truncated_ran = True"))
    raw.send_frames(cut(raw, msg))
    assert_dropped(fresh_kernel, raw, msg, "truncated_ran")


def test_invalid_json_header_is_dropped(fresh_kernel: Kernel, raw: RawShell):
    msg = raw.message("execute_request", execute_content("bad_header_ran = True"))
    frames = raw.frames(msg)
    frames[2] = b'{"msg_id": "broken", "msg_type": "execute_request",'
    frames[1] = raw.session.sign(frames[2:6])  # correctly signed garbage
    raw.send_frames(frames)
    assert_dropped(fresh_kernel, raw, msg, "bad_header_ran")


def test_invalid_json_content_is_dropped_or_refused(fresh_kernel: Kernel, raw: RawShell):
    msg = raw.message("execute_request")
    raw.send_frames(raw.frames(msg, content=b'{"code": "bad_content_ran = True",'))
    replies = [m for m in barrier(raw) if parent_id(m) == msg["header"]["msg_id"]]
    # Dropping it and answering it with an error are both right; running it is not.
    assert all(m["content"].get("status") == "error" for m in replies), replies
    assert fresh_kernel.evaluate("'bad_content_ran' in globals()") == "False"
    fresh_kernel.assert_alive()


def test_wrong_typed_field_gets_error_reply(fresh_kernel: Kernel, raw: RawShell):
    msg = raw.message("execute_request", execute_content(5))
    raw.send_frames(raw.frames(msg))
    received = raw.replies_until(msg["header"]["msg_id"])
    reply = received[-1]
    assert reply["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "error", reply["content"]
    assert isinstance(reply["content"].get("ename"), str) and reply["content"]["ename"]
    barrier(raw)
    fresh_kernel.assert_alive()


@pytest.mark.parakernel_only(
    "ipykernel logs unknown message types and sends no reply; the protocol (DESIGN.md) "
    "wants an error reply for every request"
)
@pytest.mark.parametrize("channel", ["shell", "control"])
def test_unknown_request_type_gets_error_reply(fresh_kernel: Kernel, channel: str):
    msg_id = fresh_kernel.send(channel, "frobnicate_request", {"level": 11})
    reply = fresh_kernel.reply(msg_id, channel, timeout=10)
    assert reply["msg_type"] == "frobnicate_reply", reply["msg_type"]
    assert reply["content"]["status"] == "error", reply["content"]
    fresh_kernel.assert_alive()


# ---------------------------------------------------------------------------------------
# kernel_info, heartbeat, status
# ---------------------------------------------------------------------------------------


def test_kernel_info_reply(kernel: Kernel):
    reply, _ = kernel.request("kernel_info_request")
    content = reply["content"]
    assert content["status"] == "ok"
    assert content["protocol_version"].startswith("5.")
    language = content["language_info"]
    assert language["name"] == "python"
    assert language["file_extension"] == ".py"
    assert language["mimetype"] == "text/x-python"
    # The kernel embeds the Python of the venv the tests run in.
    assert language["version"].split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    assert content["implementation"]
    assert isinstance(content["banner"], str)


def test_heartbeat_echoes(kernel: Kernel):
    info = kernel.km.get_connection_info()
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.linger = 0
    socket.connect(f"{info['transport']}://{info['ip']}:{info['hb_port']}")
    try:
        socket.send(b"ping parakernel")
        assert socket.poll(TIMEOUT * 1000), "no heartbeat echo"
        assert socket.recv() == b"ping parakernel"
    finally:
        socket.close()


REQUESTS = {
    "execute": ("shell", "execute_request", execute_content(
        "print('out')\nfrom IPython.display import display\ndisplay('shown')\n6 * 7")),
    "kernel_info": ("shell", "kernel_info_request", {}),
    "kernel_info-control": ("control", "kernel_info_request", {}),
    "complete": ("shell", "complete_request", {"code": "impo", "cursor_pos": 4}),
    "inspect": ("shell", "inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 0}),
    "is_complete": ("shell", "is_complete_request", {"code": "for x in y:"}),
    "history": ("shell", "history_request",
                {"output": False, "raw": True, "hist_access_type": "tail", "n": 3}),
    "comm_info": ("shell", "comm_info_request", {}),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_busy_idle_bracket_every_request(kernel: Kernel, name: str):
    channel, msg_type, content = REQUESTS[name]
    reply, iopub = kernel.request(msg_type, content, channel)
    assert reply["msg_type"] == msg_type.replace("_request", "_reply")
    if msg_type != "is_complete_request":  # its status says whether the code is complete
        assert reply["content"]["status"] == "ok", reply["content"]
    # Nothing may follow the idle: wait for a later request's idle, then look again.
    kernel.drain_iopub()
    iopub = kernel.messages("iopub", reply["parent_header"]["msg_id"])
    states = [m["content"]["execution_state"] for m in iopub if m["msg_type"] == "status"]
    assert states == ["busy", "idle"], states
    assert iopub[0]["msg_type"] == "status" and iopub[-1]["msg_type"] == "status", [
        m["msg_type"] for m in iopub
    ]
    if name == "execute":
        kinds = [m["msg_type"] for m in iopub[1:-1]]
        assert kinds[0] == "execute_input"
        assert {"stream", "display_data", "execute_result"} <= set(kinds), kinds


@pytest.mark.parametrize("variant", ["sleep", "input"])
def test_kernel_info_on_control_while_cell_runs(fresh_kernel: Kernel, variant: str):
    if variant == "sleep":
        msg_id = fresh_kernel.execute_async(SLEEPING_CELL)
        fresh_kernel.wait_for_stdout(msg_id, "started")
    else:
        # The cell cannot finish before the test answers it.
        msg_id = fresh_kernel.execute_async("input('hold> ')", allow_stdin=True)
        fresh_kernel.input_request(msg_id)
    reply, _ = fresh_kernel.request("kernel_info_request", channel="control", timeout=10)
    assert reply["content"]["status"] == "ok"
    assert fresh_kernel.messages("shell", msg_id) == []
    if variant == "sleep":
        fresh_kernel.interrupt_by_message()
        assert_keyboard_interrupt(fresh_kernel.finish(msg_id))
    else:
        fresh_kernel.kc.input("released")
        fresh_kernel.finish(msg_id).ok()


@pytest.mark.parakernel_only(
    "ipykernel answers shell requests one at a time, so kernel_info on shell waits behind a "
    "running cell; parakernel answers kernel_info on shell and control while lanes are busy"
)
def test_kernel_info_on_shell_while_cell_runs(fresh_kernel: Kernel):
    msg_id = fresh_kernel.execute_async("input('hold> ')", allow_stdin=True)
    fresh_kernel.input_request(msg_id)
    reply, _ = fresh_kernel.request("kernel_info_request", channel="shell", timeout=10)
    assert reply["content"]["status"] == "ok"
    fresh_kernel.kc.input("released")
    fresh_kernel.finish(msg_id).ok()


@pytest.mark.parakernel_only(
    "ipykernel ends a request answered during a running cell with idle, so JupyterLab shows "
    "the kernel idle while the cell runs; parakernel follows that idle with a busy parented "
    "to the running request (DESIGN.md, Status)"
)
@pytest.mark.parametrize("channel", ["control", "shell"])
def test_status_stays_busy_while_a_cell_runs(fresh_kernel: Kernel, channel: str):
    cell = fresh_kernel.execute_async("input('hold> ')", allow_stdin=True)
    fresh_kernel.input_request(cell)
    _, info_iopub = fresh_kernel.request("kernel_info_request", channel=channel, timeout=10)
    info_idle = info_iopub[-1]

    def busy_after_info_idle(msg: Message) -> bool:
        arrivals = fresh_kernel.arrivals("iopub")
        return (msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy"
                and arrivals.index(msg) > arrivals.index(info_idle))

    busy_again = fresh_kernel.wait_for("iopub", cell, busy_after_info_idle, timeout=10)
    assert busy_again["parent_header"]["msg_id"] == cell
    fresh_kernel.kc.input("released")
    fresh_kernel.finish(cell).ok()
    statuses = [m for m in fresh_kernel.arrivals("iopub") if m["msg_type"] == "status"]
    assert statuses[-1]["content"]["execution_state"] == "idle"
    assert statuses[-1]["parent_header"]["msg_id"] == cell


# ---------------------------------------------------------------------------------------
# Interrupt, input, shutdown
# ---------------------------------------------------------------------------------------


INTERRUPTS = {
    "interrupt_request": lambda k: k.interrupt_by_message(),
    # what the kernelspec says: interrupt_mode "message" for parakernel, a signal for ipykernel
    "kernel_manager": lambda k: k.km.interrupt_kernel(),
    "SIGINT": lambda k: k.km.signal_kernel(signal.SIGINT),
}


@pytest.mark.parametrize("how", INTERRUPTS)
def test_interrupt_sleeping_cell(fresh_kernel: Kernel, how: str):
    msg_id = fresh_kernel.execute_async(SLEEPING_CELL)
    fresh_kernel.wait_for_stdout(msg_id, "started")
    INTERRUPTS[how](fresh_kernel)
    assert_keyboard_interrupt(fresh_kernel.finish(msg_id))
    assert fresh_kernel.execute("1 + 1").ok().result["text/plain"] == "2"


def test_interrupt_reply(fresh_kernel: Kernel):
    reply = fresh_kernel.interrupt_by_message()
    assert reply["msg_type"] == "interrupt_reply"
    assert reply["content"]["status"] == "ok"
    fresh_kernel.assert_alive()


def test_interrupt_input(fresh_kernel: Kernel):
    msg_id = fresh_kernel.execute_async("input('never answered> ')", allow_stdin=True)
    fresh_kernel.input_request(msg_id)
    fresh_kernel.interrupt_by_message()
    assert_keyboard_interrupt(fresh_kernel.finish(msg_id))
    assert fresh_kernel.execute("'still here'").ok().result["text/plain"] == "'still here'"


def test_input_round_trip(kernel: Kernel):
    msg_id = kernel.execute_async(
        "name = input('name? ')\nprint('hello', name)", allow_stdin=True
    )
    request = kernel.input_request(msg_id)
    assert request["content"]["prompt"] == "name? "
    assert request["content"]["password"] is False
    kernel.kc.input("parakernel")
    execution = kernel.finish(msg_id).ok()
    assert "hello parakernel" in execution.stdout
    assert kernel.evaluate("name") == "'parakernel'"


def test_getpass_asks_for_a_password(kernel: Kernel):
    msg_id = kernel.execute_async(
        "import getpass\nsecret = getpass.getpass('password: ')\nprint(len(secret))",
        allow_stdin=True,
    )
    request = kernel.input_request(msg_id)
    assert request["content"]["prompt"] == "password: "
    assert request["content"]["password"] is True
    kernel.kc.input("hunter2")
    execution = kernel.finish(msg_id).ok()
    assert execution.stdout.strip() == "7"
    assert "hunter2" not in execution.stdout + execution.stderr


def test_input_without_stdin_is_a_clear_error(kernel: Kernel):
    execution = kernel.execute("input('name? ')", allow_stdin=False)
    assert execution.status == "error"
    assert execution.content["ename"].endswith("Error"), execution.content
    message = f"{execution.content['ename']}: {execution.content['evalue']}"
    assert "input" in message.lower() or "stdin" in message.lower(), message
    kernel.assert_alive()


def test_shutdown_ends_the_process(fresh_kernel: Kernel):
    process = fresh_kernel.km.provisioner.process
    started = time.monotonic()
    msg_id = fresh_kernel.send("control", "shutdown_request", {"restart": False})
    reply = fresh_kernel.reply(msg_id, "control", timeout=5)
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["restart"] is False
    process.wait(timeout=max(0.1, 5 - (time.monotonic() - started)))


def test_restart_answers_restart_and_the_manager_starts_a_clean_kernel(fresh_kernel: Kernel):
    assert fresh_kernel.execute("before_restart = 1").status == "ok"
    old_process = fresh_kernel.km.provisioner.process
    msg_id = fresh_kernel.send("control", "shutdown_request", {"restart": True})
    reply = fresh_kernel.reply(msg_id, "control", timeout=5)
    assert reply["content"] == {"status": "ok", "restart": True}
    old_process.wait(timeout=5)
    # What JupyterLab's "Restart Kernel" does next: jupyter_client starts the kernel again.
    # `now=True`: the kernel has ended already; with now=False jupyter_client would send a
    # shutdown_request of its own, which would wait in its socket for the new kernel.
    fresh_kernel.kc.stop_channels()
    fresh_kernel.km.restart_kernel(now=True)
    fresh_kernel.kc = fresh_kernel.km.client()  # the fixture shuts this one down
    fresh_kernel.kc.start_channels()
    fresh_kernel.kc.wait_for_ready(timeout=60)
    assert fresh_kernel.km.provisioner.process.pid != old_process.pid
    # A helper of its own: the restarted session numbers its msg_ids from 1 again.
    restarted = Kernel(fresh_kernel.km, fresh_kernel.kc)
    execution = restarted.execute("print('before_restart' in globals())")
    assert execution.stdout == "False\n", execution.content


@pytest.mark.parakernel_only(
    "ipykernel's shutdown_request stops its event loops but leaves a cell in time.sleep "
    "running, so the process outlives the request; parakernel interrupts running cells and "
    "exits within a bound"
)
def test_shutdown_while_cell_runs_ends_the_process(fresh_kernel: Kernel):
    process = fresh_kernel.km.provisioner.process
    msg_id = fresh_kernel.execute_async(SLEEPING_CELL)
    fresh_kernel.wait_for_stdout(msg_id, "started")
    started = time.monotonic()
    fresh_kernel.send("control", "shutdown_request", {"restart": False})
    process.wait(timeout=5)
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------------------------
# Execution semantics
# ---------------------------------------------------------------------------------------


def test_stop_on_error_aborts_queued_cells(fresh_kernel: Kernel):
    # The first cell waits for the test, so the two behind it are surely queued when it fails.
    first = fresh_kernel.execute_async(
        "input('go? ')\nraise ValueError('first cell fails')", allow_stdin=True
    )
    second = fresh_kernel.execute_async("ran_second = True")
    third = fresh_kernel.execute_async("ran_third = True")
    fresh_kernel.input_request(first)
    fresh_kernel.kc.input("go")
    failed = fresh_kernel.finish(first)
    assert failed.status == "error" and failed.content["ename"] == "ValueError"
    for msg_id in (second, third):
        reply = fresh_kernel.reply(msg_id)
        assert reply["content"]["status"] == "aborted", reply["content"]
    assert fresh_kernel.evaluate("'ran_second' in globals() or 'ran_third' in globals()") == "False"
    # Only what was queued is aborted: the next cell runs.
    assert fresh_kernel.execute("'runs again'").ok().result["text/plain"] == "'runs again'"


def test_stop_on_error_false_runs_queued_cells(fresh_kernel: Kernel):
    first = fresh_kernel.execute_async(
        "input('go? ')\nraise ValueError('first cell fails')", allow_stdin=True,
        stop_on_error=False,
    )
    second = fresh_kernel.execute_async("ran_second = True")
    fresh_kernel.input_request(first)
    fresh_kernel.kc.input("go")
    assert fresh_kernel.finish(first).status == "error"
    fresh_kernel.finish(second).ok()
    assert fresh_kernel.evaluate("ran_second") == "True"


def test_execution_counts(fresh_kernel: Kernel):
    counts = []
    for code in ("'one'", "1 / 0", "'three'"):
        execution = fresh_kernel.execute(code)
        count = execution.content["execution_count"]
        (execute_input,) = execution.of_type("execute_input")
        assert execute_input["content"]["execution_count"] == count
        assert execute_input["content"]["code"] == code
        if execution.status == "ok":
            (result,) = execution.of_type("execute_result")
            assert result["content"]["execution_count"] == count
        counts.append(count)
    assert counts == [1, 2, 3]


def test_silent_runs_quietly_without_counting(fresh_kernel: Kernel):
    before = fresh_kernel.execute("'before'").content["execution_count"]
    silent = fresh_kernel.execute("silent_ran = True\n6 * 7", silent=True).ok()
    assert silent.of_type("execute_input", "execute_result") == []
    after = fresh_kernel.execute("silent_ran").ok()
    assert after.result["text/plain"] == "True"
    assert after.content["execution_count"] == before + 1


def test_store_history_false_does_not_count(fresh_kernel: Kernel):
    before = fresh_kernel.execute("a = 1").content["execution_count"]
    fresh_kernel.execute("b = 2", store_history=False).ok()
    after = fresh_kernel.execute("c = 3").content["execution_count"]
    assert after == before + 1


def test_history(fresh_kernel: Kernel):
    for code in ("h_one = 1", "h_two = 2", "h_three = 3"):
        fresh_kernel.execute(code).ok()
    fresh_kernel.execute("h_unrecorded = 4", store_history=False).ok()
    fresh_kernel.execute("h_silent = 5", silent=True).ok()

    def history(**request) -> list[tuple[int, str]]:
        reply, _ = fresh_kernel.request(
            "history_request", dict(output=False, raw=True, **request)
        )
        assert reply["content"]["status"] == "ok", reply["content"]
        return [(line, source) for _session, line, source in reply["content"]["history"]]

    assert history(hist_access_type="tail", n=2) == [(2, "h_two = 2"), (3, "h_three = 3")]
    # session 0 is the current session
    assert history(hist_access_type="range", session=0, start=2, stop=3) == [(2, "h_two = 2")]
    found = history(hist_access_type="search", pattern="h_*", n=10)
    assert [source for _line, source in found] == ["h_one = 1", "h_two = 2", "h_three = 3"]


def test_user_expressions(kernel: Kernel):
    execution = kernel.execute(
        "answer = 6 * 7",
        user_expressions={"answer": "answer", "list": "[answer] * 2", "broken": "1 / 0"},
    ).ok()
    expressions = execution.content["user_expressions"]
    assert expressions["answer"]["status"] == "ok"
    assert expressions["answer"]["data"]["text/plain"] == "42"
    assert expressions["list"]["data"]["text/plain"] == "[42, 42]"
    assert expressions["broken"]["status"] == "error"
    assert expressions["broken"]["ename"] == "ZeroDivisionError"


def test_error_has_ipython_traceback(kernel: Kernel):
    execution = kernel.execute("def fails():\n    return 1 / 0\n\nfails()")
    assert execution.status == "error"
    assert execution.content["ename"] == "ZeroDivisionError"
    assert execution.content["evalue"] == "division by zero"
    error = execution.error
    assert (error["ename"], error["evalue"]) == ("ZeroDivisionError", "division by zero")
    traceback = strip_ansi("\n".join(error["traceback"]))
    assert "return 1 / 0" in traceback
    assert "fails()" in traceback
    assert "ZeroDivisionError" in traceback


def test_clear_output(kernel: Kernel):
    execution = kernel.execute(
        "from IPython.display import clear_output\n"
        "print('before', flush=True)\nclear_output(wait=True)\nprint('after')"
    ).ok()
    kinds = [(m["msg_type"], m["content"].get("text", "").strip()) for m in execution.outputs]
    assert kinds == [("stream", "before"), ("clear_output", ""), ("stream", "after")], kinds
    (clear,) = execution.of_type("clear_output")
    assert clear["content"]["wait"] is True


def test_update_display_data(kernel: Kernel):
    first = kernel.execute(
        "from IPython.display import display\n"
        "handle = display('first', display_id='pk-display')\n"
        "handle.update('second')"
    ).ok()
    (shown,) = first.of_type("display_data")
    assert shown["content"]["data"]["text/plain"] == "'first'"
    assert shown["content"]["transient"]["display_id"] == "pk-display"
    (updated,) = first.of_type("update_display_data")
    assert updated["content"]["data"]["text/plain"] == "'second'"
    assert updated["content"]["transient"]["display_id"] == "pk-display"
    # a later cell updates the same display by its id
    later = kernel.execute(
        "from IPython.display import update_display\n"
        "update_display('third', display_id='pk-display')"
    ).ok()
    (updated,) = later.of_type("update_display_data")
    assert updated["content"]["data"]["text/plain"] == "'third'"
    assert updated["content"]["transient"]["display_id"] == "pk-display"


LINES = 100_000


def test_many_lines_arrive_whole_and_coalesced(kernel: Kernel):
    execution = kernel.execute(f"for i in range({LINES}):\n    print(i)", timeout=120).ok()
    assert execution.stdout == "".join(f"{i}\n" for i in range(LINES))
    streams = execution.of_type("stream")
    assert len(streams) <= 50, f"{len(streams)} stream messages for {LINES} lines"


@pytest.mark.parakernel_only(
    "ipykernel buffers stdout and stderr separately and publishes them out of order; "
    "parakernel flushes a stream before any other output of the cell (DESIGN.md)"
)
def test_stdout_and_stderr_keep_their_order(kernel: Kernel):
    execution = kernel.execute(
        "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')"
    ).ok()
    texts = [(m["content"]["name"], m["content"]["text"]) for m in execution.of_type("stream")]
    joined = [(name, line) for name, text in texts for line in text.splitlines()]
    assert joined == [("stdout", "one"), ("stderr", "two"), ("stdout", "three")], texts


def test_help_pager(kernel: Kernel):
    def shown_text(execution) -> str:
        execution.ok()
        pages = [p for p in execution.content.get("payload", []) if p.get("source") == "page"]
        displays = execution.of_type("display_data")
        bundles = [p["data"] for p in pages] + [m["content"]["data"] for m in displays]
        assert bundles, "neither a pager payload nor a display"
        return strip_ansi("\n".join(b.get("text/plain", "") for b in bundles))

    assert "Return the number of items in a container" in shown_text(kernel.execute("len?"))
    kernel.execute("def pk_documented():\n    return 'pk-source-marker'").ok()
    assert "pk-source-marker" in shown_text(kernel.execute("pk_documented??"))


def test_completion_sees_user_names(kernel: Kernel):
    kernel.execute("pk_variable_one = 1\npk_variable_two = 2").ok()
    code = "x = pk_var"
    reply, _ = kernel.request("complete_request", {"code": code, "cursor_pos": len(code)})
    content = reply["content"]
    assert content["status"] == "ok"
    assert {"pk_variable_one", "pk_variable_two"} <= set(content["matches"])
    assert (content["cursor_start"], content["cursor_end"]) == (4, len(code))


def test_inline_matplotlib_plot(kernel: Kernel):
    execution = kernel.execute(
        "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
        "plt.plot([1, 3, 2])\nplt.title('parakernel')\nplt.show()",
        timeout=120,
    ).ok()
    images = [m["content"]["data"] for m in execution.of_type("display_data")
              if "image/png" in m["content"]["data"]]
    assert len(images) == 1, [m["msg_type"] for m in execution.outputs]
    assert base64.b64decode(images[0]["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert images[0]["text/plain"].startswith("<Figure size")


# ---------------------------------------------------------------------------------------
# Comms
# ---------------------------------------------------------------------------------------


def comm_messages(kernel: Kernel, parent: str, msg_type: str) -> list[Message]:
    return [m for m in kernel.messages("iopub", parent) if m["msg_type"] == msg_type]


def test_ipywidgets_slider(fresh_kernel: Kernel):
    created = fresh_kernel.execute(
        "import ipywidgets\nslider = ipywidgets.IntSlider(value=3, description='pk')\n"
        "slider.observe(lambda change: print('value is now', change['new']), names='value')"
    ).ok()
    opens = [m for m in created.of_type("comm_open")
             if m["content"]["target_name"] == "jupyter.widget"]
    slider_opens = [
        m for m in opens if m["content"]["data"]["state"]["_model_name"] == "IntSliderModel"
    ]
    assert len(slider_opens) == 1, [m["content"]["data"]["state"]["_model_name"] for m in opens]
    comm_id = slider_opens[0]["content"]["comm_id"]
    assert slider_opens[0]["content"]["data"]["state"]["value"] == 3
    assert fresh_kernel.evaluate("slider.comm.comm_id") == repr(comm_id)

    reply, _ = fresh_kernel.request("comm_info_request", {"target_name": "jupyter.widget"})
    assert reply["content"]["status"] == "ok"
    # ipykernel lists {"target_name": ...}; parakernel adds the comm's lane.
    expected = {"target_name": "jupyter.widget"}
    if not is_ipykernel(kernel_name_under_test()):
        expected["lane"] = "main"
    assert reply["content"]["comms"][comm_id] == expected

    # The front end moves the slider; the kernel applies it while handling the comm_msg
    # (whose observer output is parented to it) and before the next cell.
    update = {"comm_id": comm_id,
              "data": {"method": "update", "state": {"value": 7}, "buffer_paths": []}}
    msg_id = fresh_kernel.send("shell", "comm_msg", update)
    handled = fresh_kernel.iopub_until_idle(msg_id)
    printed = "".join(m["content"]["text"] for m in handled if m["msg_type"] == "stream")
    assert "value is now 7" in printed
    assert fresh_kernel.evaluate("slider.value") == "7"


ECHO_TARGET = """
import comm

def pk_echo_target(channel, open_msg):
    channel.send({'opened_with': open_msg['content']['data']})
    channel.on_msg(lambda msg: channel.send({'echo': msg['content']['data']}))

comm.get_comm_manager().register_target('pk.echo', pk_echo_target)
"""


def test_comm_opened_by_the_client(fresh_kernel: Kernel):
    fresh_kernel.execute(ECHO_TARGET).ok()
    comm_id = "pk-client-comm-1"
    opened = fresh_kernel.send(
        "shell", "comm_open", {"comm_id": comm_id, "target_name": "pk.echo", "data": {"hi": 1}}
    )
    fresh_kernel.iopub_until_idle(opened)
    (greeting,) = comm_messages(fresh_kernel, opened, "comm_msg")
    assert greeting["content"] == {"comm_id": comm_id, "data": {"opened_with": {"hi": 1}}}

    reply, _ = fresh_kernel.request("comm_info_request", {})
    expected = {"target_name": "pk.echo"}
    if not is_ipykernel(kernel_name_under_test()):
        expected["lane"] = "main"
    assert reply["content"]["comms"].get(comm_id) == expected

    sent = fresh_kernel.send("shell", "comm_msg", {"comm_id": comm_id, "data": {"n": 42}})
    fresh_kernel.iopub_until_idle(sent)
    (echo,) = comm_messages(fresh_kernel, sent, "comm_msg")
    assert echo["content"]["data"] == {"echo": {"n": 42}}

    closed = fresh_kernel.send("shell", "comm_close", {"comm_id": comm_id, "data": {}})
    fresh_kernel.iopub_until_idle(closed)
    reply, _ = fresh_kernel.request("comm_info_request", {})
    assert comm_id not in reply["content"]["comms"]
    fresh_kernel.assert_alive()
