"""parakernel's magics, registered in every lane's shell: `%lanes` (and its table), `%wait`,
`%lane interrupt|restart|stop`, and `%%lane` / `%%parallel` where they cannot act (anywhere but
a cell's first line, which the kernel reads itself). They ask the kernel through lane calls."""

import json

import _parakernel

from . import lane


class LaneError(RuntimeError):
    """The kernel refused a lane request (%lanes, %wait, %lane ...), e.g. an unknown lane."""


_FIRST_LINE_ONLY = (
    "%%lane and %%parallel choose a cell's lane, and only as the first line of a cell that the "
    "kernel runs (it removes that line before the cell runs); this code already runs in lane "
    "{lane!r}. Put `%%lane NAME`, `%%lane main` or `%%parallel` on the cell's first line, or "
    "tag the cell `lane:NAME` or `parallel`."
)

_LANE_USAGE = (
    "usage: %lane interrupt NAME | %lane restart NAME | %lane stop NAME "
    "(to run a cell in a lane, make `%%lane NAME` its first line)"
)


def _call(op, **args):
    """Ask the kernel; blocks (interruptibly) until it answers. Raises LaneError if it refuses."""
    ok, text = _parakernel.call(op, json.dumps(args))
    if not ok:
        raise LaneError(text)
    return json.loads(text)


def _format_seconds(seconds):
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:02.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min"


_LANES_COLUMNS = (
    ("name", "lane"),
    ("kind", "kind"),
    ("state", "state"),
    ("running", "running"),
    ("queued", "queued"),
    ("cells_run", "cells run"),
    ("cpu", "CPU time"),
)


_CHANNELS_COLUMNS = (
    ("name", "channel"),
    ("depth", "depth"),
    ("maxsize", "maxsize"),
    ("sent", "sent"),
    ("received", "received"),
    ("waiting_senders", "waiting senders"),
    ("waiting_receivers", "waiting receivers"),
    ("closed", "closed"),
)


def _table(rows, columns, empty):
    """A table of `rows` (dicts) as text/plain and text/html, one column per (key, title)."""
    import html

    cells = [["" if row.get(key) is None else str(row.get(key)) for key, _ in columns] for row in rows]
    titles = [title for _, title in columns]
    widths = [max([len(title)] + [len(line[i]) for line in cells]) for i, title in enumerate(titles)]
    lines = ["  ".join(title.ljust(width) for title, width in zip(titles, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for line in cells:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    if not cells:
        lines.append(empty)
    head = "".join(f"<th>{html.escape(title)}</th>" for title in titles)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>" for line in cells
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return "\n".join(lines), table


def _lanes_table(rows):
    """The %lanes table as text/plain and text/html."""
    rows = [dict(row, cpu=_format_seconds(row.get("cpu"))) for row in rows]
    # One lane per session: which client session (notebook) each lane serves.
    columns = _LANES_COLUMNS + ((("session", "session"),) if any(row.get("session") for row in rows) else ())
    return _table(rows, columns, "(no lanes)")


def _channels_table(rows):
    """The %channels table as text/plain and text/html."""
    rows = [dict(row, maxsize=row["maxsize"] or "unbounded", closed="yes" if row["closed"] else "") for row in rows]
    return _table(rows, _CHANNELS_COLUMNS, "(no channels)")


# %channels shows this many channels; parakernel.channels() has them all.
_SHOWN_CHANNELS = 200

_BUFFERS_COLUMNS = (("name", "shared buffer"), ("size", "size (bytes)"), ("holders", "held by (views)"))


def register_magics(shell):
    from IPython.core.error import UsageError
    from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class

    @magics_class
    class LaneMagics(Magics):
        @line_magic
        def lanes(self, line):
            """Show the kernel's lanes: state, running cell, cells run, CPU time."""
            if line.strip():
                raise UsageError("%lanes takes no arguments")
            from IPython.display import display

            text, table = _lanes_table(_call("lanes"))
            display({"text/plain": text, "text/html": table}, raw=True)

        @line_magic
        def channels(self, line):
            """Show the channels between lanes (depth, bound, counters, waiting lanes, closed) and the
            living shared buffers."""
            if line.strip():
                raise UsageError("%channels takes no arguments")
            from IPython.display import display

            rows = json.loads(_parakernel.channels())
            text, table = _channels_table(rows[:_SHOWN_CHANNELS])
            if len(rows) > _SHOWN_CHANNELS:
                more = f"... and {len(rows) - _SHOWN_CHANNELS} more channels (parakernel.channels() lists them all)"
                text, table = f"{text}\n{more}", f"{table}<p>{more}</p>"
            buffers = json.loads(_parakernel.shared_buffers())
            if buffers:
                more_text, more_table = _table(buffers, _BUFFERS_COLUMNS, "")
                text, table = f"{text}\n\n{more_text}", table + more_table
            display({"text/plain": text, "text/html": table}, raw=True)

        @line_magic
        def wait(self, line):
            """%wait [NAME ...]: block until the lanes (default: all others) have run every cell
            requested before this one."""
            _call("wait", lanes=line.split())

        @line_cell_magic
        def lane(self, line, cell=None):
            """%lane interrupt|restart|stop NAME. (`%%lane NAME` as a cell's first line runs
            the cell in lane NAME.)"""
            if cell is not None:
                raise UsageError(_FIRST_LINE_ONLY.format(lane=lane.name))
            words = line.split()
            if len(words) != 2 or words[0] not in ("interrupt", "restart", "stop"):
                raise UsageError(_LANE_USAGE)
            _call(words[0], lane=words[1])

        @cell_magic
        def parallel(self, line, cell):
            """`%%parallel` as a cell's first line runs the cell in a fresh lane."""
            raise UsageError(_FIRST_LINE_ONLY.format(lane=lane.name))

    shell.register_magics(LaneMagics)

