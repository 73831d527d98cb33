"""The kernel reached the ways jupyter_client offers: `KernelManager(transport="ipc")` (socket
files private to the user, removed at exit) and CurveZMQ with `transport_encryption="required"`
or `"auto"` (every socket a CURVE server; a client without the keys is refused). Plain tcp
without keys is what every other suite uses."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pytest
import zmq
from jupyter_client.manager import KernelManager

from kernel_helpers import TIMEOUT, Kernel, find_kernel_spec, kernel_name_under_test

PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
# How long a refused client is given to get an answer it must not get. A kernel that accepted it
# answers kernel_info in milliseconds; the test then fails.
REFUSED_WAIT_MS = 3000


def start(tmp_path: Path, **manager_options) -> Kernel:
    km = KernelManager(
        kernel_name=kernel_name_under_test(),
        connection_file=str(tmp_path / f"kernel-{uuid.uuid4().hex[:8]}.json"),
        **manager_options,
    )
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    kernel = Kernel(km, kc)
    kernel.drain_iopub()
    return kernel


def stop(kernel: Kernel) -> None:
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)


def test_ipc_socket_files_are_private_and_removed_at_exit(tmp_path):
    kernel = start(tmp_path, transport="ipc")
    km = kernel.km
    try:
        assert json.loads(Path(km.connection_file).read_text())["transport"] == "ipc"
        files = [Path(f"{km.ip}-{getattr(km, name)}") for name in PORT_NAMES]
        for path in files:
            mode = path.stat().st_mode
            assert stat.S_ISSOCK(mode), path
            assert stat.S_IMODE(mode) == 0o600, f"{path}: {oct(stat.S_IMODE(mode))}"
        result = kernel.execute("import os; print(os.getpid())").ok()
        assert result.stdout.strip() == str(km.provisioner.process.pid)
        assert kernel.kc.is_alive(), "heartbeat over ipc"
        # stdin works over ipc too.
        msg_id = kernel.execute_async("input('name? ')", allow_stdin=True)
        kernel.input_request(msg_id)
        kernel.kc.input("ipc")
        assert kernel.finish(msg_id).ok().result["text/plain"] == "'ipc'"
    finally:
        kernel.kc.stop_channels()
        km.shutdown_kernel(now=False)
    # shutdown_kernel also runs jupyter_client's cleanup_ipc_files, so this shows only that none
    # is left; the next test shows that the kernel removes them itself.
    for path in files:
        assert not path.exists(), f"{path} left behind"


def test_ipc_files_are_removed_by_the_kernel_itself(tmp_path):
    kernel = start(tmp_path, transport="ipc")
    km = kernel.km
    files = [Path(f"{km.ip}-{getattr(km, name)}") for name in PORT_NAMES]
    # Shut the kernel down by message and wait for the process, without jupyter_client's
    # cleanup_ipc_files.
    kernel.kc.shutdown()
    process = km.provisioner.process
    process.wait(timeout=TIMEOUT)
    left = [str(path) for path in files if path.exists()]
    kernel.kc.stop_channels()
    km.cleanup_resources()
    assert not left, f"the kernel left its socket files: {left}"


def curve_kernel_supported() -> bool:
    spec = find_kernel_spec(kernel_name_under_test())
    return zmq.has("curve") and spec is not None and "curve" in str(spec.metadata.get("supported_encryption", ""))


needs_curve = pytest.mark.skipif(not curve_kernel_supported(),
                                 reason="kernelspec does not declare CurveZMQ, or pyzmq lacks it")


def kernel_info_answered(address: str, key: bytes, curve_server_key: bytes | None,
                         client_keys: tuple[bytes, bytes] | None = None) -> bool:
    """Sends a signed kernel_info_request from a DEALER of our own; True if it is answered."""
    from jupyter_client.session import Session

    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    if curve_server_key is not None:
        public, secret = client_keys or zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = curve_server_key
    sock.connect(address)
    session = Session(key=key, signature_scheme="hmac-sha256")
    session.send(sock, session.msg("kernel_info_request", {}))
    answered = bool(sock.poll(REFUSED_WAIT_MS))
    sock.close()
    return answered


@needs_curve
@pytest.mark.parametrize("policy", ["required", "auto"])
def test_curve_serves_clients_with_the_keys_and_refuses_others(tmp_path, policy):
    kernel = start(tmp_path, transport_encryption=policy)
    km = kernel.km
    try:
        info = json.loads(Path(km.connection_file).read_text())
        public = info["curve_publickey"].encode()
        assert info["curve_secretkey"], "jupyter_client provisioned no keys"
        # jupyter_client's own client (it uses the keys from the connection file) is served on
        # every socket: shell, iopub, stdin, control and heartbeat.
        token = uuid.uuid4().hex
        assert token in kernel.execute(f"print({token!r})").ok().stdout
        reply = kernel.kc.control_channel
        msg = kernel.kc.session.msg("kernel_info_request", {})
        reply.send(msg)
        assert kernel.reply(msg["header"]["msg_id"], "control")["content"]["status"] == "ok"
        msg_id = kernel.execute_async("input('key? ')", allow_stdin=True)
        kernel.input_request(msg_id)
        kernel.kc.input("curve")
        assert kernel.finish(msg_id).ok().result["text/plain"] == "'curve'"
        assert kernel.kc.is_alive()

        key = km.session.key
        shell = f"tcp://{km.ip}:{km.shell_port}"
        # A client that knows the server key is served (this is the positive control) ...
        assert kernel_info_answered(shell, key, public)
        # ... one without CurveZMQ, or with the wrong server key, never is.
        assert not kernel_info_answered(shell, key, None)
        assert not kernel_info_answered(shell, key, zmq.curve_keypair()[0])

        # A subscriber without the keys sees nothing of what the real client sees.
        spy = zmq.Context.instance().socket(zmq.SUB)
        spy.linger = 0
        spy.setsockopt(zmq.SUBSCRIBE, b"")
        spy.connect(f"tcp://{km.ip}:{km.iopub_port}")
        kernel.execute("print('secret output')").ok()
        assert not spy.poll(REFUSED_WAIT_MS), "a subscriber without keys received iopub"
        spy.close()
    finally:
        stop(kernel)


def test_without_keys_the_connection_file_has_none(tmp_path):
    kernel = start(tmp_path)
    try:
        info = json.loads(Path(kernel.km.connection_file).read_text())
        assert "curve_secretkey" not in info
        assert kernel_info_answered(f"tcp://{kernel.km.ip}:{kernel.km.shell_port}", kernel.km.session.key, None)
    finally:
        stop(kernel)


def test_kernelspec_declares_curve():
    spec = find_kernel_spec(kernel_name_under_test())
    if "ipykernel" in " ".join(spec.argv) and os.environ.get("PARAKERNEL_TEST_ALL") != "1":
        pytest.skip("ipykernel's own kernelspec does not declare it")
    assert spec.metadata.get("supported_encryption") == "curve"
