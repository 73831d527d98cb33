"""Fixtures and rules shared by every Python-driven suite.

- The kernel under test is the kernelspec named by ``PARAKERNEL_TEST_KERNEL`` (default
  ``parakernel``); run with ``.venv/bin/python`` so the venv's kernelspecs are found.
- ``@pytest.mark.parakernel_only("why")`` marks a test of behaviour that parakernel promises
  and ipykernel does not have: it is skipped when the kernel under test is ipykernel, unless
  ``PARAKERNEL_TEST_ALL=1`` (to see such a test fail there, proof that it can fail).
- ``@pytest.mark.needs_lanes`` marks a test of subinterpreter lanes: it is skipped when the
  kernel under test embeds a Python that lanes refuse (older than 3.12.4; DESIGN.md), where
  ``test_python_versions.py`` checks the refusal instead.
- Every test has a timeout (120 s unless marked otherwise): a hung kernel fails the test
  instead of hanging the run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kernel_helpers import (  # noqa: E402
    KERNEL_ENV,
    Kernel,
    find_kernel_spec,
    is_ipykernel,
    kernel_name_under_test,
    lanes_refused,
)

DEFAULT_TIMEOUT = 120

_ipython_dir: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "parakernel_only(reason): behaviour parakernel promises and ipykernel lacks; "
        "skipped when the kernel under test is ipykernel",
    )
    config.addinivalue_line(
        "markers",
        "needs_lanes: skipped when the kernel under test's Python refuses subinterpreter lanes",
    )
    name = kernel_name_under_test()
    if find_kernel_spec(name) is None:
        raise pytest.UsageError(
            f"kernelspec {name!r} not found in {sys.prefix}/share/jupyter/kernels or the other "
            f"Jupyter data dirs. Install it (`make setup`), or set {KERNEL_ENV}=python3 to run "
            f"the suites against ipykernel, and run pytest with .venv/bin/python."
        )
    # Kernels started by the tests inherit this: their IPython profile and history stay out
    # of the user's ~/.ipython, and runs do not see each other's history.
    global _ipython_dir
    _ipython_dir = tempfile.mkdtemp(prefix="parakernel-tests-ipython-")
    os.environ["IPYTHONDIR"] = _ipython_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    if _ipython_dir:
        shutil.rmtree(_ipython_dir, ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    name = kernel_name_under_test()
    spec = find_kernel_spec(name)
    argv = " ".join(spec.argv) if spec else "?"
    return [f"kernel under test: {name} ({argv})"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    name = kernel_name_under_test()
    skip_parakernel_only = is_ipykernel(name) and os.environ.get("PARAKERNEL_TEST_ALL") != "1"
    no_lanes = lanes_refused(name)
    for item in items:
        if no_lanes and item.get_closest_marker("needs_lanes") is not None:
            item.add_marker(pytest.mark.skip(reason=no_lanes))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        marker = item.get_closest_marker("parakernel_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "")
            assert reason, f"{item.nodeid}: parakernel_only needs a reason"
            if skip_parakernel_only:
                why = f"parakernel-only ({name} is ipykernel): {reason}"
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def kernel_name() -> str:
    return kernel_name_under_test()


@pytest.fixture(scope="module")
def kernel(kernel_name: str):
    """One kernel for a whole module, for tests that leave no state the others depend on."""
    k = Kernel.start(kernel_name)
    yield k
    k.shutdown()


@pytest.fixture
def fresh_kernel(kernel_name: str):
    """A kernel of its own, for tests that interrupt, abort, shut down or count."""
    k = Kernel.start(kernel_name)
    yield k
    k.shutdown()
