"""Shared helpers of the Python-driven suites: which kernel is under test, starting it, and
collecting the messages of one request even while other requests are in flight.

The kernel under test is a kernelspec name, taken from ``PARAKERNEL_TEST_KERNEL`` (default
``parakernel``). Every suite runs unchanged against ``python3`` (ipykernel), which is how the
suites themselves are checked while the kernel is being written.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from queue import Empty
from typing import Any, Callable

import zmq
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager, start_new_kernel
from jupyter_client.session import Session

KERNEL_ENV = "PARAKERNEL_TEST_KERNEL"
DEFAULT_KERNEL = "parakernel"

# A failure guard, not a pacing device: a healthy kernel answers long before this.
TIMEOUT = 30.0

Message = dict[str, Any]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def kernel_name_under_test() -> str:
    return os.environ.get(KERNEL_ENV) or DEFAULT_KERNEL


def find_kernel_spec(name: str) -> KernelSpec | None:
    try:
        return KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return None


def is_ipykernel(name: str) -> bool:
    """True when the kernelspec launches ipykernel (the reference the suites are checked on)."""
    spec = find_kernel_spec(name)
    return spec is not None and any("ipykernel" in arg for arg in spec.argv)


# DESIGN.md: subinterpreter lanes need 3.13, or 3.12.4 and newer (CPython gh-119213 crashes
# imports in own-GIL subinterpreters before 3.12.4); below that the kernel refuses them.
LANES_SINCE = (3, 12, 4)


def python_version_of(name: str) -> tuple[int, int, int] | None:
    """The Python version the kernelspec ``name`` runs (its ``--python``), or None when the
    kernelspec names no such environment."""
    spec = find_kernel_spec(name)
    if spec is None or "--python" not in spec.argv:
        return None
    python = spec.argv[spec.argv.index("--python") + 1]
    done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:3])"],
                          capture_output=True, text=True, check=True)
    major, minor, micro = (int(part) for part in done.stdout.split())
    return major, minor, micro


def lanes_refused(name: str) -> str | None:
    """Why the kernel under test is expected to refuse subinterpreter lanes, or None."""
    version = python_version_of(name)
    if version is not None and version < LANES_SINCE:
        return (f"{name} embeds Python {'.'.join(map(str, version))}: lanes need 3.13 or "
                f"{'.'.join(map(str, LANES_SINCE))}+")
    return None


def execute_content(code: str, **overrides: Any) -> dict[str, Any]:
    """An execute_request's content with every field set, as JupyterLab sends it
    (``stop_on_error`` true: a cell without the ``raises-exception`` tag)."""
    content: dict[str, Any] = dict(
        code=code,
        silent=False,
        store_history=True,
        user_expressions={},
        allow_stdin=False,
        stop_on_error=True,
    )
    content.update(overrides)
    return content


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parent_id(msg: Message) -> str | None:
    return (msg.get("parent_header") or {}).get("msg_id")


def is_idle(msg: Message) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


@dataclass
class Execution:
    """One execute_request: its reply and every iopub message parented to it, busy to idle."""

    msg_id: str
    reply: Message
    iopub: list[Message]

    @property
    def content(self) -> dict[str, Any]:
        return self.reply["content"]

    @property
    def status(self) -> str:
        return self.content["status"]

    @property
    def outputs(self) -> list[Message]:
        """What a notebook would show: iopub messages other than status and execute_input."""
        return [m for m in self.iopub if m["msg_type"] not in ("status", "execute_input")]

    def of_type(self, *msg_types: str) -> list[Message]:
        return [m for m in self.iopub if m["msg_type"] in msg_types]

    def stream(self, name: str) -> str:
        return "".join(
            m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == name
        )

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    @property
    def stderr(self) -> str:
        return self.stream("stderr")

    @property
    def result(self) -> dict[str, Any] | None:
        """The data bundle of the execute_result, if there was one."""
        results = self.of_type("execute_result")
        assert len(results) <= 1, f"more than one execute_result: {results}"
        return results[0]["content"]["data"] if results else None

    @property
    def error(self) -> dict[str, Any] | None:
        errors = self.of_type("error")
        assert len(errors) <= 1, f"more than one error message: {errors}"
        return errors[0]["content"] if errors else None

    def ok(self) -> Execution:
        """Asserts the cell succeeded, showing what it printed if not; returns self to chain."""
        assert self.status == "ok", f"cell failed: {self.content}\nstderr: {self.stderr}"
        return self


class Kernel:
    """A running kernel and a blocking client.

    Every message read is filed by channel and by the msg_id of its parent, so a test can
    have several requests in flight and still wait for exactly the messages of one of them.
    Waits are bounded by ``TIMEOUT`` and end as soon as the awaited message is there.
    """

    def __init__(self, km: KernelManager, kc: BlockingKernelClient):
        self.km = km
        self.kc = kc
        channels = ("shell", "control", "iopub", "stdin")
        self._log: dict[str, dict[str | None, list[Message]]] = {
            c: defaultdict(list) for c in channels
        }
        self._arrivals: dict[str, list[Message]] = {c: [] for c in channels}

    @classmethod
    def start(cls, kernel_name: str) -> Kernel:
        km, kc = start_new_kernel(kernel_name=kernel_name, startup_timeout=60)
        kernel = cls(km, kc)
        # start_new_kernel leaves whatever arrived on iopub while it waited for the kernel;
        # those messages answer its own kernel_info requests and are of no interest here.
        kernel.drain_iopub()
        return kernel

    def shutdown(self) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=False)

    @property
    def session(self) -> Session:
        return self.kc.session

    # -- reading ------------------------------------------------------------------------

    def _channel(self, name: str):
        return getattr(self.kc, f"{name}_channel")

    def _read_one(self, channel: str, timeout: float) -> Message | None:
        try:
            msg = self._channel(channel).get_msg(timeout=max(timeout, 0.0))
        except Empty:
            return None
        self._log[channel][parent_id(msg)].append(msg)
        self._arrivals[channel].append(msg)
        return msg

    def wait_for(
        self,
        channel: str,
        parent: str | None,
        predicate: Callable[[Message], bool] = lambda m: True,
        timeout: float = TIMEOUT,
    ) -> Message:
        """The first message on ``channel`` whose parent is ``parent`` and that matches."""
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            seen = self._log[channel][parent]
            for msg in seen[checked:]:
                if predicate(msg):
                    return msg
            checked = len(seen)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no matching {channel} message with parent {parent} within {timeout} s; "
                    f"seen for that parent: {[m['msg_type'] for m in seen]}"
                )
            self._read_one(channel, remaining)

    def messages(self, channel: str, parent: str | None) -> list[Message]:
        """Every message read so far on ``channel`` with that parent, in arrival order."""
        return list(self._log[channel][parent])

    def arrivals(self, channel: str) -> list[Message]:
        """Every message read so far on ``channel``, whatever its parent, in arrival order."""
        return list(self._arrivals[channel])

    def reply(self, msg_id: str, channel: str = "shell", timeout: float = TIMEOUT) -> Message:
        return self.wait_for(channel, msg_id, timeout=timeout)

    def iopub_until_idle(self, msg_id: str, timeout: float = TIMEOUT) -> list[Message]:
        self.wait_for("iopub", msg_id, is_idle, timeout)
        return self.messages("iopub", msg_id)

    def drain_iopub(self) -> None:
        """Reads what is on iopub now. A kernel_info round trip first makes that well defined:
        its idle is published after everything sent before it."""
        msg_id = self.kc.kernel_info()
        self.reply(msg_id)
        self.iopub_until_idle(msg_id)

    # -- requests -----------------------------------------------------------------------

    def send(self, channel: str, msg_type: str, content: dict[str, Any] | None = None) -> str:
        msg = self.session.msg(msg_type, content or {})
        self._channel(channel).send(msg)
        return msg["header"]["msg_id"]

    def request(
        self,
        msg_type: str,
        content: dict[str, Any] | None = None,
        channel: str = "shell",
        timeout: float = TIMEOUT,
    ) -> tuple[Message, list[Message]]:
        """Sends a request and returns its reply and its iopub messages up to idle."""
        msg_id = self.send(channel, msg_type, content)
        reply = self.reply(msg_id, channel, timeout)
        return reply, self.iopub_until_idle(msg_id, timeout)

    def execute_async(self, code: str, **options: Any) -> str:
        """Sends an execute_request and returns its msg_id without waiting."""
        options.setdefault("allow_stdin", False)
        return self.kc.execute(code, **options)

    def submit(
        self,
        code: str,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Sends an execute_request as JupyterLab does and returns its msg_id without waiting:
        every content field set (``options`` override them; ``stop_on_error`` is true, as
        Lab sends it for a cell without the ``raises-exception`` tag) and the cell's metadata,
        ``tags`` included, in the message's metadata (``kc.execute`` sends no metadata)."""
        content = execute_content(code, **options)
        message_metadata = dict(metadata or {})
        if tags is not None:
            message_metadata["tags"] = list(tags)
        msg = self.session.msg("execute_request", content, metadata=message_metadata)
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def finish_all(self, msg_ids: list[str], timeout: float = TIMEOUT) -> list[Execution]:
        """The executions of requests in flight together, in the order of ``msg_ids``; each
        wait is bounded by ``timeout``, and messages of the others are filed meanwhile."""
        return [self.finish(msg_id, timeout) for msg_id in msg_ids]

    def finish(self, msg_id: str, timeout: float = TIMEOUT) -> Execution:
        reply = self.reply(msg_id, "shell", timeout)
        return Execution(msg_id, reply, self.iopub_until_idle(msg_id, timeout))

    def execute(self, code: str, timeout: float = TIMEOUT, **options: Any) -> Execution:
        return self.finish(self.execute_async(code, **options), timeout)

    def evaluate(self, expression: str) -> str:
        """The text/plain repr of an expression, through user_expressions (no output, no count)."""
        reply = self.execute("", silent=True, user_expressions={"value": expression}).content
        value = reply["user_expressions"]["value"]
        assert value["status"] == "ok", value
        return value["data"]["text/plain"]

    def input_request(self, msg_id: str, timeout: float = TIMEOUT) -> Message:
        return self.wait_for("stdin", msg_id, lambda m: m["msg_type"] == "input_request", timeout)

    def answer_input(self, input_request: Message, value: str) -> None:
        """Replies to one ``input_request`` (parented to it, as JupyterLab replies), so that a
        kernel with several lanes waiting for input can tell whose answer it is."""
        msg = self.session.msg("input_reply", {"value": value}, parent=input_request)
        self.kc.stdin_channel.send(msg)

    def interrupt_by_message(self) -> Message:
        """interrupt_request on control, whatever the kernelspec's interrupt_mode says."""
        msg_id = self.send("control", "interrupt_request")
        return self.reply(msg_id, "control")

    def wait_for_stdout(self, msg_id: str, text: str, timeout: float = TIMEOUT) -> Message:
        """Waits until the cell ``msg_id`` has printed ``text``: proof that it is running."""
        seen: list[str] = []

        def printed(msg: Message) -> bool:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                seen.append(msg["content"]["text"])
            return text in "".join(seen)

        return self.wait_for("iopub", msg_id, printed, timeout)

    def assert_alive(self) -> None:
        """The kernel still answers kernel_info on shell (and is still the same process)."""
        assert self.km.is_alive(), "kernel process has exited"
        msg_id = self.kc.kernel_info()
        reply = self.reply(msg_id)
        assert reply["msg_type"] == "kernel_info_reply"
        assert reply["content"]["status"] == "ok"


class RawShell:
    """A DEALER socket of our own on the kernel's shell port, to send frames a well-behaved
    client never would. It signs with the connection key unless told otherwise."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.socket: zmq.Socket = kernel.km.connect_shell()
        self.socket.linger = 0
        self.session = Session(
            key=kernel.km.session.key,
            signature_scheme=kernel.km.session.signature_scheme,
            username="raw-shell",
        )

    def close(self) -> None:
        self.socket.close()

    def message(self, msg_type: str, content: dict[str, Any] | None = None) -> Message:
        return self.session.msg(msg_type, content or {})

    def frames(self, msg: Message, content: bytes | None = None) -> list[bytes]:
        """The signed wire frames of ``msg``; ``content`` replaces the packed content as is
        (and is what gets signed), for content that is not valid JSON."""
        if content is not None:
            msg = dict(msg, content=content)
        return self.session.serialize(msg)

    def send_frames(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def recv(self, timeout: float = TIMEOUT) -> Message | None:
        if not self.socket.poll(timeout * 1000):
            return None
        idents, frames = self.session.feed_identities(self.socket.recv_multipart())
        return self.session.deserialize(frames)

    def replies_until(self, msg_id: str, timeout: float = TIMEOUT) -> list[Message]:
        """Every message received on this socket up to and including the reply to ``msg_id``."""
        deadline = time.monotonic() + timeout
        received = []
        while True:
            msg = self.recv(deadline - time.monotonic())
            if msg is None:
                raise TimeoutError(f"no reply to {msg_id} within {timeout} s; got {received}")
            received.append(msg)
            if parent_id(msg) == msg_id:
                return received

    def round_trip(
        self, msg_type: str = "kernel_info_request", content: dict[str, Any] | None = None
    ) -> list[Message]:
        """Sends a well-formed request and returns what arrived up to its reply. With an
        execute_request this is a barrier: cells run in order, so any reply owed to an earlier
        message on this socket has come by then."""
        msg = self.message(msg_type, content)
        self.send_frames(self.frames(msg))
        return self.replies_until(msg["header"]["msg_id"])
