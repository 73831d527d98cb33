"""What the kernel does with the Python it embeds: subinterpreter lanes run on 3.13 (and
3.12.4+), and are refused below 3.12.4 with a message that says why and what to install, while
the main lane goes on (DESIGN.md, "Python environment"). Runs on either kind of Python, and checks
the behaviour that Python should have."""

from __future__ import annotations

import pytest

from kernel_helpers import Kernel, lanes_refused, python_version_of, strip_ansi

pytestmark = pytest.mark.parakernel_only("lanes are parakernel's own")

ROUTES = ["%%lane versions\nprint('ran in a lane')", "%%parallel\nprint('ran in a lane')"]


@pytest.mark.parametrize("code", ROUTES, ids=["named", "fresh"])
def test_lanes_run_or_are_refused_as_the_python_version_says(fresh_kernel: Kernel, kernel_name: str, code: str):
    refused = lanes_refused(kernel_name)
    execution = fresh_kernel.execute(code)
    if refused is None:
        assert execution.status == "ok", execution.content
        assert execution.stdout == "ran in a lane\n"
    else:
        version = ".".join(map(str, python_version_of(kernel_name)))
        assert execution.status == "error"
        assert execution.stdout == ""
        message = strip_ansi(execution.content["evalue"])
        for says in (version, "3.13", "3.12.4", "main lane", "gh-119213"):
            assert says in message, f"{says!r} missing from: {message}"
        assert execution.error is not None and execution.error["evalue"] == execution.content["evalue"]
    # Either way the main lane goes on.
    assert fresh_kernel.execute("print(6 * 7)").stdout == "42\n"
