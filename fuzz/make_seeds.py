#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/: real Jupyter messages in the input format of
fuzz_targets/wire_message.rs ([mode, tweak, frames joined by 0xFF]) and connection files.

Run from anywhere: python3 fuzz/make_seeds.py. Only the standard library is used."""

import hashlib
import hmac
import json
from pathlib import Path

KEY = b"fuzz-key"  # the key in wire_message.rs
SIGNED, OWN, TAMPERED, REPLAYED, UNSIGNED = range(5)
SEEDS = Path(__file__).resolve().parent / "seeds"


def frames(msg_type, content, identities=(b"client",), parent=None, metadata=None, buffers=()):
    header = {
        "msg_id": f"{msg_type}-1",
        "msg_type": msg_type,
        "session": "s1",
        "username": "u",
        "date": "2025-01-01T00:00:00.000000Z",
        "version": "5.5",
    }
    parts = [json.dumps(part, separators=(",", ":")).encode() for part in (header, parent or {}, metadata or {}, content)]
    signature = hmac.new(KEY, b"".join(parts), hashlib.sha256).hexdigest().encode()
    return [*identities, b"<IDS|MSG>", signature, *parts, *buffers]


def seed(mode, message, tweak=0):
    body = b"\xff".join(message)
    assert all(b"\xff" not in frame for frame in message)
    return bytes([mode, tweak]) + body


def messages():
    execute = {"code": "x = 1\nprint(x)", "silent": False, "store_history": True,
               "user_expressions": {"y": "x + 1"}, "allow_stdin": True, "stop_on_error": True}
    subshell_parent = {"msg_id": "p", "msg_type": "execute_request", "session": "s0",
                       "username": "u", "date": "", "version": "5.5", "subshell_id": "sub-1"}
    comm_data = {"comm_id": "c1", "data": {"method": "update", "state": {"value": 0.5}, "buffer_paths": [["b"]]}}
    return {
        "execute_request": seed(SIGNED, frames("execute_request", execute)),
        "kernel_info_request": seed(SIGNED, frames("kernel_info_request", {})),
        "comm_msg_buffers": seed(SIGNED, frames("comm_msg", comm_data, buffers=(b"\x00\x01\x02", b"<IDS|MSG>"))),
        "shutdown_request": seed(SIGNED, frames("shutdown_request", {"restart": True})),
        "identities": seed(SIGNED, frames("complete_request", {"code": "imp", "cursor_pos": 3},
                                          identities=(b"router-a", b"\x00k\x8b\x45", b"client"))),
        "inspect_request": seed(SIGNED, frames("inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 1})),
        "is_complete_request": seed(SIGNED, frames("is_complete_request", {"code": "for i in x:"})),
        "history_request": seed(SIGNED, frames("history_request", {"output": False, "raw": True,
                                                                   "hist_access_type": "tail", "n": 10})),
        "comm_info_request": seed(SIGNED, frames("comm_info_request", {"target_name": "jupyter.widget"})),
        "comm_open": seed(SIGNED, frames("comm_open", {"comm_id": "c1", "target_name": "t", "data": {}})),
        "comm_close": seed(SIGNED, frames("comm_close", {"comm_id": "c1", "data": {}})),
        "interrupt_request": seed(SIGNED, frames("interrupt_request", {}, identities=())),
        "input_reply": seed(SIGNED, frames("input_reply", {"value": "42"})),
        "own_signature_subshell": seed(OWN, frames("execute_request", {"code": "1"}, parent=subshell_parent,
                                                   metadata={"cellId": "abc", "deletedCells": []})),
        "tampered": seed(TAMPERED, frames("execute_request", {"code": "1"}), tweak=7),
        "replayed": seed(REPLAYED, frames("execute_request", {"code": "1"}), tweak=1),
        "unsigned": seed(UNSIGNED, frames("kernel_info_request", {}, identities=(b"a", b"b"))),
    }


def connection_files():
    full = {"shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003, "control_port": 5004,
            "hb_port": 5005, "ip": "127.0.0.1", "key": "a0436f6c-1916-498b-8eb9-e81ab9368e84",
            "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "parakernel"}
    minimal = {key: full[key] for key in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port", "ip")}
    other_scheme = {**full, "signature_scheme": "hmac-md5"}
    return {name: json.dumps(value, indent=1).encode()
            for name, value in (("jupyter_client", full), ("minimal", minimal), ("other_scheme", other_scheme))}


def write(target, seeds):
    directory = SEEDS / target
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


if __name__ == "__main__":
    write("wire_message", messages())
    write("connection_file", connection_files())
