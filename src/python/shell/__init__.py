"""The IPython shell of one parakernel lane.

Shipped inside the parakernel binary and imported as the package `_parakernel_shell` in every
interpreter that runs cells (the main interpreter and each subinterpreter lane; `loader` makes
it importable). Rust calls the entry points below (`start`, `execute`, `comm`, `query`, `stop`,
`other_threads`, `restore`) with JSON strings (and `execute` with the cell's code as a `str` of
its own) and gets JSON strings back; everything a cell publishes goes out through the native
module `_parakernel`, which knows the request the lane is running.

Behaviour follows ipykernel (ipkernel.py, zmqshell.py, displayhook.py, iostream.py) so that
notebooks and libraries see what they see under ipykernel.

The parts, by job:
- `entry`: the entry points Rust calls.
- `lane`: what every part knows of this interpreter's lane (its name, its shell, ...).
- `messages`: JSON as jupyter_client packs it, publishing on iopub, comms.
- `streams`: `sys.stdout`, `sys.stderr`, `sys.stdin`, `input()` and `getpass`.
- `subinterpreter`: what a subinterpreter lane refuses or does differently, with errors that
  say what to do.
- `wakeable`: the blocking calls (locks, queues, joins, select, sockets, pipes, child processes)
  that an interrupt ends in a subinterpreter lane.
- `magics`: parakernel's magics (`%lanes`, `%wait`, `%lane`, `%%parallel`).
- `shell`: the IPython shell classes, which keep one copy of a cell.
- `libraries`: what libraries look at: the signs of a notebook kernel, the CPU clock of `%time`.
- `queries`: completion, inspection, `is_complete`, `comm_info`.
- `fresh`: a fresh lane's warm state, and going back to it after each job.
"""

from .entry import comm, execute, other_threads, query, restore, start, stop

__all__ = ["comm", "execute", "other_threads", "query", "restore", "start", "stop"]
