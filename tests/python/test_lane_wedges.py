"""Lanes never wedge: a subinterpreter lane blocked in a call that waits (a lock, a queue, a
thread, a child process, a socket, a pipe, select, asyncio) is interrupted as the main lane is;
a lane blocked in C code that no interrupt can reach is set aside by `%lane restart` / `%lane
stop`, so that its name serves new cells at once; the processes cells started end with the
kernel.

No clock decides a result: a cell says it has started (a flushed print), the test interrupts it
and waits, bounded by generous guards, for its KeyboardInterrupt; a call that cannot be
interrupted is released by the test itself (it writes to the pipe the call reads).
"""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from kernel_helpers import Kernel
from test_lanes import assert_keyboard_interrupt, describe, lane, lanes_table, ok, wait_started

pytestmark = [pytest.mark.parakernel_only("lanes are parakernel's own"), pytest.mark.needs_lanes]

# Every call here blocks for good unless interrupted; `started` is printed just before it.
BLOCKING = {
    "event": "import threading\nthreading.Event().wait()",
    "queue": "import queue\nqueue.Queue().get()",
    "simple_queue": "import queue\nqueue.SimpleQueue().get()",
    "lock": "import threading\nl = threading.Lock()\nl.acquire()\nl.acquire()",
    "rlock_other_thread": (
        "import threading\nl = threading.RLock()\nt = threading.Thread(target=l.acquire)\n"
        "t.start(); t.join()\nl.acquire()"
    ),
    "condition": "import threading\nc = threading.Condition()\nwith c:\n    c.wait()",
    "join": (
        "import threading\ne = threading.Event()\n"
        "t = threading.Thread(target=e.wait, args=(60,))\nt.start()\nt.join()"
    ),
    "subprocess": "import subprocess\nsubprocess.run(['sleep', '100'])",
    "select": "import os, select\nr, w = os.pipe()\nselect.select([r], [], [])",
    "accept": (
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\ns.accept()"
    ),
    "recv": "import socket\na, b = socket.socketpair()\na.recv(10)",
    "os_read": "import os\nr, w = os.pipe()\nos.read(r, 10)",
    "asyncio": "import asyncio\nawait asyncio.sleep(100)",
}


def blocking_cell(name: str) -> str:
    return "print('started', flush=True)\n" + BLOCKING[name]


@pytest.mark.parametrize("call", sorted(BLOCKING))
def test_interrupt_request_ends_a_blocking_call_in_a_named_lane(kernel: Kernel, call: str):
    name = f"wedge-{call}".replace("_", "-")
    running = kernel.submit(lane(name, blocking_cell(call)))
    wait_started(kernel, running)
    kernel.interrupt_by_message()
    assert_keyboard_interrupt(kernel.finish(running))
    # The lane is not wedged: its next cell runs, in the same interpreter.
    assert ok(kernel.execute(lane(name, "print(type(l if 'l' in globals() else 1).__name__)"))).stdout


@pytest.mark.parametrize("call", ["event", "subprocess", "recv", "asyncio"])
def test_interrupt_request_ends_a_blocking_call_in_a_fresh_lane(kernel: Kernel, call: str):
    running = kernel.submit("%%parallel\n" + blocking_cell(call))
    wait_started(kernel, running)
    kernel.interrupt_by_message()
    assert_keyboard_interrupt(kernel.finish(running))
    assert ok(kernel.execute("%%parallel\nprint('fresh again')")).stdout == "fresh again\n"


def test_lane_interrupt_ends_a_blocking_call(kernel: Kernel):
    running = kernel.submit(lane("wedge-li", blocking_cell("queue")))
    wait_started(kernel, running)
    ok(kernel.execute("%lane interrupt wedge-li"))
    assert_keyboard_interrupt(kernel.finish(running))


def test_blocking_calls_keep_their_timeouts_and_results(kernel: Kernel):
    """The interruptible calls still return what CPython's return, time-outs included."""
    code = textwrap.dedent("""\
        import asyncio, os, queue, select, socket, subprocess, threading
        assert threading.Event().wait(0.01) is False
        e = threading.Event(); e.set(); assert e.wait() is True
        l = threading.Lock(); assert l.acquire() and not l.acquire(timeout=0.01)
        assert not l.acquire(False); l.release()
        with l: assert l.locked()
        try:
            queue.Queue().get(timeout=0.01)
        except queue.Empty:
            pass
        q = queue.SimpleQueue(); q.put(3); assert q.get() == 3
        r, w = os.pipe(); assert select.select([r], [], [], 0.01) == ([], [], [])
        os.write(w, b'hi'); assert select.select([r], [], []) == ([r], [], []); assert os.read(r, 10) == b'hi'
        os.set_blocking(r, False)
        try:
            os.read(r, 1)
        except BlockingIOError:
            pass
        a, b = socket.socketpair(); b.sendall(b'x' * 3); assert a.recv(10) == b'xxx'
        a.settimeout(0.01)
        try:
            a.recv(1)
        except TimeoutError:
            pass
        a.setblocking(False)
        try:
            a.recv(1)
        except BlockingIOError:
            pass
        assert subprocess.run(['sh', '-c', 'exit 3']).returncode == 3
        assert subprocess.run(['echo', 'out'], capture_output=True, text=True).stdout == 'out\\n'
        t = threading.Thread(target=lambda: None); t.start(); t.join(); assert not t.is_alive()
        assert asyncio.run(asyncio.sleep(0.01, result=5)) == 5
        print('all as in CPython')
        """)
    assert ok(kernel.execute(lane("wedge-semantics", code))).stdout == "all as in CPython\n"


def test_an_interrupted_subprocess_run_leaves_no_process(kernel: Kernel, tmp_path: Path):
    marker = tmp_path / "child-pid"
    code = textwrap.dedent(f"""\
        import subprocess
        p = subprocess.Popen(['sleep', '1001'])
        open({str(marker)!r}, 'w').write(str(p.pid))
        print('started', flush=True)
        with p:
            p.wait()
        """)
    running = kernel.submit(lane("wedge-child", code))
    wait_started(kernel, running)
    kernel.interrupt_by_message()
    assert_keyboard_interrupt(kernel.finish(running))
    pid = int(marker.read_text())
    # Popen's context manager waited for it; CPython's own behaviour for an interrupted wait.
    ok(kernel.execute(lane("wedge-child", "p.kill(); p.wait(); print(p.returncode)")))
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]


# A call CPython cannot interrupt in a subinterpreter: C code (libc's read through ctypes) that
# never returns to Python until the test writes to its pipe.
STUCK_IN_C = textwrap.dedent("""\
    import ctypes, os
    fd = os.open({fifo!r}, os.O_RDWR)
    buffer = ctypes.create_string_buffer(1)
    print('started', flush=True)
    ctypes.CDLL(None).read(fd, buffer, 1)
    print('came back', flush=True)
    """)


def stuck_in_c(fifo: Path) -> str:
    os.mkfifo(fifo)
    return STUCK_IN_C.format(fifo=str(fifo))


def release(fifo: Path) -> None:
    with open(fifo, "wb") as pipe:
        pipe.write(b"x")


@pytest.mark.parametrize("verb", ["restart", "stop"])
def test_a_lane_stuck_in_c_is_set_aside_and_its_name_works(fresh_kernel: Kernel, tmp_path: Path, verb: str):
    fifo = tmp_path / "fifo"
    stuck = fresh_kernel.submit(lane("stuck", "kept = 1\n" + stuck_in_c(fifo)))
    wait_started(fresh_kernel, stuck)
    ok(fresh_kernel.execute(f"%lane {verb} stuck"))
    # The name serves a new interpreter at once, while the old one is still in C.
    again = ok(fresh_kernel.execute(lane("stuck", "print('kept' in globals())")))
    assert again.stdout == "False\n", describe(again)
    # The stuck cell is answered (it cannot be interrupted) with an error that says why.
    answered = fresh_kernel.finish(stuck)
    assert answered.status == "error", describe(answered)
    assert answered.content["ename"] == "LaneSetAside", describe(answered)
    assert f"was {verb}ed" in answered.content["evalue"] or "stopped" in answered.content["evalue"]
    table, text = lanes_table(fresh_kernel)
    assert "stuck (set aside)" in table, text
    assert "read" in table["stuck (set aside)"].get("running", "") or "In [" in text, text
    # Once the call returns, the old interpreter ends and leaves the table.
    release(fifo)
    deadline = time.monotonic() + 60
    while "stuck (set aside)" in lanes_table(fresh_kernel)[0]:
        assert time.monotonic() < deadline, "the set-aside interpreter never left %lanes"
        fresh_kernel.execute("import time; time.sleep(0.05)")
    fresh_kernel.assert_alive()


def test_shutdown_ends_the_processes_of_a_stuck_lane(kernel_name: str, tmp_path: Path):
    fifo = tmp_path / "fifo"
    marker = tmp_path / "child-pid"
    kernel = Kernel.start(kernel_name)
    try:
        code = (f"import subprocess\np = subprocess.Popen(['sleep', '1002'])\n"
                f"open({str(marker)!r}, 'w').write(str(p.pid))\n" + stuck_in_c(fifo))
        stuck = kernel.submit(lane("stuck-child", code))
        wait_started(kernel, stuck)
        pid = int(marker.read_text())
        assert Path(f"/proc/{pid}").exists()
    finally:
        kernel.shutdown()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state == "Z":
            break
        assert time.monotonic() < deadline, f"the cell's process {pid} outlived the kernel"
        time.sleep(0.05)


def test_the_kernels_own_lane_names_are_reserved(kernel: Kernel):
    refused = kernel.execute("%%lane fresh-0\nprint('ran')")
    assert refused.status == "error", describe(refused)
    assert "fresh lanes" in refused.content["evalue"] and "my-fresh-0" in refused.content["evalue"]
    assert refused.stdout == ""
