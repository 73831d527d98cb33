"""JSON as jupyter_client packs messages, and publishing on iopub for the lane's current request
(display hook, display publisher and comms all publish through `publish`)."""

import base64
import datetime
import json
import math
import numbers
from collections.abc import Iterable

import _parakernel

from . import lane

# True while a fresh lane warms up: nothing of its warm-up cells goes out.
muted = False


def _json_default(obj):
    # jupyter_client.jsonutil.json_default: what a Session would accept.
    if isinstance(obj, datetime.datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=datetime.timezone.utc)
        return obj.isoformat().replace("+00:00", "Z")
    if isinstance(obj, datetime.date):
        return obj.isoformat()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, Iterable) and not isinstance(obj, (str, dict)):
        return list(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    raise TypeError(f"{obj!r} is not JSON serializable")


def _json_clean(obj):
    # The fallback jupyter_client uses when plain packing fails (NaN, inf, odd keys).
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return repr(value) if math.isnan(value) or math.isinf(value) else value
    if isinstance(obj, dict):
        return {str(key): _json_clean(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_json_clean(value) for value in obj]
    return _json_clean(_json_default(obj))


def dumps(obj):
    try:
        return json.dumps(obj, default=_json_default, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_json_clean(obj), ensure_ascii=False, allow_nan=False)


def publish(msg_type, content, metadata=None, buffers=None):
    if muted:
        return
    if buffers:
        buffers = [b if isinstance(b, bytes) else memoryview(b).tobytes() for b in buffers]
    _parakernel.publish(msg_type, dumps(content), dumps(metadata or {}), buffers or None)


def install_comms():
    """Point the `comm` package at this lane, so ipywidgets and friends work."""
    try:
        import comm
        from comm.base_comm import BaseComm, CommManager
    except ImportError:
        return

    class ParakernelComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            content = dict(data={} if data is None else data, comm_id=self.comm_id, **keys)
            publish(msg_type, content, metadata, buffers)

    lane.comm_manager = CommManager()
    comm.create_comm = lambda *args, **kwargs: ParakernelComm(*args, **kwargs)
    comm.get_comm_manager = lambda: lane.comm_manager
