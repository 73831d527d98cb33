"""Libraries in lanes see what they see under ipykernel: a notebook kernel (tqdm's notebook bar,
the usual "am I in a notebook?" checks), daemon threads they can start (tqdm's monitor), and
`%time`/`%%time` that report the CPU of the lane that ran the cell, not the whole process's.

CPU is checked by construction, not by the clock: while the timed cell waits (sleeping, which
costs no CPU), another lane spins until its own thread has spent a full second of CPU after the
timed cell began. The whole process's CPU over the timed cell is then at least that second; the
timed lane's own is a few polls.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from kernel_helpers import Kernel
from test_lanes import describe, lane, ok

pytestmark = [pytest.mark.parakernel_only("lanes are parakernel's own"), pytest.mark.needs_lanes]

pytest.importorskip("tqdm", reason="tqdm is installed from requirements.txt")

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Guards inside cells against a wait that cannot end (far longer than a healthy run needs).
DEADLINE = 60

PLACES = {
    "main lane": lambda body: body,
    "named lane": lambda body: lane("libraries", body),
    "fresh lane": lambda body: f"%%parallel\n{body}",
}


def widget_bar(execution) -> None:
    """Asserts the cell drew tqdm's notebook bar (a widget: its display_data and comm_opens)
    and no text bar on stderr."""
    shown = [m["content"]["data"] for m in execution.of_type("display_data")]
    assert any(WIDGET_VIEW in data for data in shown), f"no widget displayed: {describe(execution)}"
    models = {m["content"]["data"]["state"].get("_model_name") for m in execution.of_type("comm_open")}
    assert "FloatProgressModel" in models, f"no progress widget opened: {models}"
    assert "3/3" not in execution.stderr, f"a text bar was drawn: {describe(execution)}"


@pytest.mark.parametrize("place", PLACES)
def test_tqdm_auto_picks_the_notebook_bar(kernel: Kernel, place: str):
    cell = PLACES[place]("from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass\n")
    execution = ok(kernel.execute(cell))
    widget_bar(execution)
    assert execution.stderr == "", describe(execution)


@pytest.mark.parametrize("place", PLACES)
def test_tqdm_notebook_gives_its_widget_bar(kernel: Kernel, place: str):
    cell = PLACES[place]("from tqdm.notebook import tqdm\nfor _ in tqdm(range(3)):\n    pass\n")
    execution = ok(kernel.execute(cell))
    widget_bar(execution)
    assert execution.stderr == "", describe(execution)


DETECTIONS = textwrap.dedent("""\
    import sys
    from IPython import get_ipython
    ip = get_ipython()
    checks = {
        "class name": type(ip).__name__ == "ZMQInteractiveShell",
        "IPKernelApp in config": "IPKernelApp" in ip.config,
        "kernel": getattr(ip, "kernel", None) is not None,
        "kernel.comm_manager": getattr(ip.kernel, "comm_manager", None) is not None,
        "ipykernel.zmqshell loaded": "ipykernel.zmqshell" in sys.modules,
        "class module": type(ip).__module__.startswith("ipykernel."),
    }
    from ipykernel.zmqshell import ZMQInteractiveShell
    checks["isinstance"] = isinstance(ip, ZMQInteractiveShell)
    print(sorted(name for name, passed in checks.items() if not passed))
    # Only the shell's own module stands in: the ipykernel package itself is not claimed.
    print("ipykernel" in sys.modules)
    """)


@pytest.mark.parametrize("place", PLACES)
def test_the_usual_notebook_checks_pass(kernel: Kernel, place: str):
    execution = ok(kernel.execute(PLACES[place](DETECTIONS)))
    assert execution.stdout == "[]\nFalse\n", describe(execution)


def test_the_real_ipykernel_still_imports_in_the_main_lane(kernel: Kernel):
    pytest.importorskip("ipykernel")
    execution = ok(kernel.execute(
        "import ipykernel, ipykernel.comm\nprint(ipykernel.__file__.endswith('__init__.py'))"
    ))
    assert execution.stdout == "True\n", describe(execution)


@pytest.mark.parametrize("place", ["named lane", "fresh lane"])
def test_plain_tqdm_in_a_lane_warns_of_nothing(kernel: Kernel, place: str):
    cell = PLACES[place](textwrap.dedent("""\
        from tqdm import tqdm
        for _ in tqdm(range(3)):
            pass
        print(tqdm.monitor_interval)
        """))
    execution = ok(kernel.execute(cell))
    assert "3/3" in execution.stderr, describe(execution)
    assert "Warning" not in execution.stderr and "monitor" not in execution.stderr, describe(execution)
    # tqdm turns its monitor off (monitor_interval = 0) when the thread cannot start.
    assert execution.stdout == "10\n", describe(execution)


def test_a_daemon_thread_in_a_lane_reads_daemon_and_ends_with_the_lane(fresh_kernel: Kernel):
    started = ok(fresh_kernel.execute(lane("daemons", textwrap.dedent("""\
        import threading
        forever = threading.Thread(target=threading.Event().wait, daemon=True)
        asked = threading.Thread(target=threading.Event().wait)
        asked.daemon = True
        forever.start(); asked.start()
        child = []
        inheriting = threading.Thread(target=lambda: child.append(threading.Thread(target=print)))
        inheriting.daemon = True
        inheriting.start(); inheriting.join()
        print(forever.daemon, asked.daemon, child[0].daemon, forever.is_alive())
        """))))
    assert started.stdout == "True True True True\n", describe(started)
    # Threads that never end on their own do not keep the lane from restarting.
    ok(fresh_kernel.execute("%lane restart daemons"))
    after = ok(fresh_kernel.execute(lane("daemons", "import threading\nprint(threading.active_count())")))
    assert after.stdout == "1\n", describe(after)


CPU = re.compile(r"CPU times: user (\S+ \S+), sys: (\S+ \S+), total: (\S+ \S+)")
UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def cpu_seconds(stdout: str) -> float:
    """The total CPU %time / %%time printed."""
    found = CPU.search(stdout)
    assert found, f"no CPU times in {stdout!r}"
    value, unit = found.group(3).split()
    return float(value) * UNITS[unit]


def spinner(marks: Path) -> str:
    """Lane A's cell: says it runs, then once the timed cell has begun (its mark `timing`)
    spins until its own thread has spent 1 s of CPU, leaves the mark `spun`, and spins on until
    the test leaves `release`."""
    return lane("spinner", textwrap.dedent(f"""\
        import os, time
        marks = {str(marks)!r}
        deadline = time.monotonic() + {DEADLINE}
        def there(name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no mark {{name}}")
            return os.path.exists(os.path.join(marks, name))
        print("spinning", flush=True)
        while not there("timing"):
            pass
        start = time.thread_time()
        while time.thread_time() - start < 1.0:
            pass
        open(os.path.join(marks, "spun"), "w").close()
        while not there("release"):
            pass
        """))


def timed_wait(marks: Path, magic: str) -> str:
    """A timed cell body that leaves the mark `timing` and sleeps until the spinner has spun."""
    wait = (
        f"open({str(marks)!r} + '/timing', 'w').close(); "
        f"[time.sleep(0.05) for _ in range({DEADLINE * 20}) "
        f"if not os.path.exists({str(marks)!r} + '/spun')]"
    )
    if magic == "%%time":
        return f"%%time\nimport os, time\n{wait}\n"
    return f"import os, time\n%time {wait}\n"


@pytest.mark.parametrize("where", ["named lane", "main lane"])
@pytest.mark.parametrize("magic", ["%%time", "%time"])
def test_time_reports_the_lanes_cpu_while_another_lane_spins(
    fresh_kernel: Kernel, tmp_path: Path, where: str, magic: str
):
    spinning = fresh_kernel.execute_async(spinner(tmp_path))
    fresh_kernel.wait_for_stdout(spinning, "spinning")
    body = timed_wait(tmp_path, magic)
    timed = ok(fresh_kernel.execute(lane("timed", body) if where == "named lane" else body))
    assert (tmp_path / "spun").exists(), describe(timed)
    (tmp_path / "release").touch()
    ok(fresh_kernel.finish(spinning))
    # The spinner spent 1 s of CPU inside the timed cell; the timed cell itself slept.
    assert cpu_seconds(timed.stdout) < 0.5, describe(timed)


@pytest.mark.parametrize("place", ["named lane", "main lane"])
def test_time_still_counts_the_lanes_own_cpu(kernel: Kernel, place: str):
    body = "%%time\nimport time\nstart = time.thread_time()\nwhile time.thread_time() - start < 0.3:\n    pass\n"
    timed = ok(kernel.execute(PLACES[place](body)))
    assert cpu_seconds(timed.stdout) >= 0.29, describe(timed)
