"""Answers to the queries a client sends beside cells: completion, inspection, `is_complete`
and `comm_info`, from the lane's shell (`entry.query` calls them, on whatever thread asks)."""

from . import lane


def complete(code, cursor_pos):
    # ipykernel's experimental (Jedi-backed) completion, its default.
    from IPython.core.completer import provisionalcompleter, rectify_completions

    if cursor_pos is None:
        cursor_pos = len(code)
    with provisionalcompleter():
        completer = lane.shell.Completer
        completions = list(rectify_completions(code, completer.completions(code, cursor_pos)))
    types = [
        {
            "start": c.start,
            "end": c.end,
            "text": c.text,
            "type": c.type,
            "signature": c.signature,
        }
        for c in completions
    ]
    if completions:
        start, end = completions[0].start, completions[0].end
    else:
        start = end = cursor_pos
    return {
        "matches": [c.text for c in completions],
        "cursor_end": end,
        "cursor_start": start,
        "metadata": {"_jupyter_types_experimental": types},
        "status": "ok",
    }


def inspect(code, cursor_pos, detail_level):
    from IPython.utils.tokenutil import token_at_cursor

    name = token_at_cursor(code, cursor_pos)
    reply = {"status": "ok", "data": {}, "metadata": {}}
    try:
        bundle = lane.shell.object_inspect_mime(name, detail_level=detail_level)
        reply["data"].update(bundle)
        if not lane.shell.enable_html_pager:
            reply["data"].pop("text/html", None)
        reply["found"] = True
    except KeyError:
        reply["found"] = False
    return reply


def is_complete(code):
    status, indent_spaces = lane.shell.input_transformer_manager.check_complete(code)
    reply = {"status": status}
    if status == "incomplete":
        reply["indent"] = " " * indent_spaces
    return reply


def comm_info(target_name):
    comms = {}
    if lane.comm_manager is not None:
        for comm_id, comm in list(lane.comm_manager.comms.items()):
            if target_name is None or comm.target_name == target_name:
                comms[comm_id] = {"target_name": comm.target_name}
    return {"status": "ok", "comms": comms}

