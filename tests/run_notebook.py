#!/usr/bin/env python3
"""Runs a notebook through a real client (nbclient) and prints each code cell with its outputs.

    .venv/bin/python tests/run_notebook.py notebooks/demo.ipynb [--kernel NAME]

The kernel is the kernelspec NAME (default ``parakernel``), whatever the notebook's metadata
says. Exits 0 when every cell ran, 1 when a cell failed or the kernel died, 2 when the
kernelspec is missing.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

CELL_TIMEOUT = 60  # seconds, per cell
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RULE = "─"


def describe_output(output: dict) -> str:
    """One output as a person reading a terminal wants it: text as is, rich data by name."""
    kind = output["output_type"]
    if kind == "stream":
        text = output["text"]
        return text if output["name"] == "stdout" else f"[stderr] {text}"
    if kind == "error":
        # IPython's traceback already ends with "ename: evalue"; other kernels may send none.
        traceback = _ANSI.sub("", "\n".join(output.get("traceback", [])))
        return f"{traceback or output['ename'] + ': ' + output['evalue']}\n"
    if kind in ("execute_result", "display_data"):
        data = output.get("data", {})
        prefix = f"Out[{output['execution_count']}]: " if kind == "execute_result" else ""
        # Markdown reads well as text; the text/plain of a Markdown object is only its repr.
        shown = "text/markdown" if "text/markdown" in data else "text/plain"
        rich = [f"{mime} ({len(str(value)):,} chars)" for mime, value in data.items()
                if mime not in ("text/plain", shown)]
        text = data.get(shown, "")
        note = f"  [{', '.join(rich)}]" if rich else ""
        return f"{prefix}{text}{note}\n"
    return f"[{kind}]\n"


def print_cell(cell, cell_index: int, execute_reply: dict | None = None, **_) -> None:
    count = cell.get("execution_count")
    status = (execute_reply or {}).get("content", {}).get("status", "?")
    title = f" In [{count}] (cell {cell_index}, {status}) "
    print(f"{RULE * 3}{title}{RULE * max(3, 72 - len(title))}")
    print(cell.source.rstrip())
    if cell.outputs:
        print(RULE * 3)
        print("".join(describe_output(o) for o in cell.outputs), end="")
    sys.stdout.flush()


def run(path: Path, kernel_name: str, timeout: int = CELL_TIMEOUT) -> int:
    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        print(f"kernelspec {kernel_name!r} is not installed (looked in the Jupyter data dirs of "
              f"{sys.prefix}); run `make setup` or pass --kernel", file=sys.stderr)
        return 2
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=kernel_name,
        timeout=timeout,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_executed=print_cell,
    )
    print(f"running {path} on kernel {kernel_name!r}")
    started = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as failure:
        print(f"\nFAILED: a cell raised {failure.ename}: {failure.evalue}", file=sys.stderr)
        return 1
    except (DeadKernelError, TimeoutError, RuntimeError) as failure:
        print(f"\nFAILED: {type(failure).__name__}: {failure}", file=sys.stderr)
        return 1
    code_cells = sum(1 for cell in notebook.cells if cell.cell_type == "code")
    print(f"{RULE * 75}\nok: {code_cells} code cells in {time.monotonic() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--kernel", default="parakernel",
                        help="kernelspec name (default: parakernel)")
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT, help="seconds per cell")
    args = parser.parse_args(argv)
    return run(args.notebook, args.kernel, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
