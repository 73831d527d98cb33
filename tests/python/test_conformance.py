"""Conformance: jupyter_kernel_test's own suite against the kernel under test, every sample
filled in, plus its iopub_welcome test (protocol 5.4+: the XPUB greets each subscriber)."""

from __future__ import annotations

import jupyter_kernel_test
import pytest

from kernel_helpers import is_ipykernel, kernel_name_under_test

KERNEL = kernel_name_under_test()


class TestKernel(jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('to stderr', file=sys.stderr)"

    completion_samples = [
        {"text": "zi", "matches": {"zip"}},
        {"text": "import collections; collections.OrderedD", "matches": {"OrderedDict"}},
        {"text": "[].app", "matches": {"append"}},
    ]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n", "%ls"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2", "for i in range(3):"]
    invalid_code_samples = ["import = 7q", "1 +* 2"]

    code_page_something = "zip?"
    code_generate_error = "raise"

    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        {"code": "'parakernel'.upper()", "result": "'PARAKERNEL'"},
        {
            "code": "from IPython.display import HTML\nHTML('<i>rich</i>')",
            "mime": "text/html",
            "result": "<i>rich</i>",
        },
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\frac{1}{2}'))",
         "mime": "text/latex"},
        {"code": "from IPython.display import Markdown, display; display(Markdown('*md*'))",
         "mime": "text/markdown"},
    ]

    # must match one of code_execute_result, and nothing else this class runs
    code_history_pattern = "1?2*"
    # parakernel numbers its one session 1 in "tail" and accepts that number in "range".
    # ipykernel (the reference these suites are also checked on) names the current session 0
    # in range replies while "tail" gives its absolute number, which jupyter_kernel_test's range
    # check refuses; test_protocol.py::test_history checks range requests on session 0 as well.
    supported_history_operations = (
        ("tail", "search") if is_ipykernel(KERNEL) else ("tail", "range", "search")
    )

    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


@pytest.mark.timeout(30)
class TestIopubWelcome(jupyter_kernel_test.IopubWelcomeTests):
    kernel_name = KERNEL
    support_iopub_welcome = True
