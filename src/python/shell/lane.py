"""What every part of the shell knows of this interpreter's lane; `entry.start` sets it once."""

import sys

# The lane's name ("main", a lane name, or "fresh-N") and whether it is a fresh lane (each cell in
# a new contextvars.Context, warm state restored after each job).
name = "main"
fresh = False
# The lane's IPython shell and comm manager, once start() made them.
shell = None
comm_manager = None
# Set by `entry.start` when the shell is made on demand (the main lane of `parakernel run`):
# then `shell` is absent until the first `lane.shell`, which makes it (`__getattr__`).
make_shell = None


def __getattr__(attribute):
    """`lane.shell` of a lane whose shell is made on demand, the first time: makes it."""
    global make_shell
    if attribute == "shell" and make_shell is not None:
        make, make_shell = make_shell, None
        make()
        return shell
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")

# How to move a cell to the main lane, for every error that says "this works only there".
TO_MAIN = (
    "make `%%lane main` the cell's first line (or remove the cell's `lane:`/`parallel` tag)"
)


class Kernel:
    """What `get_ipython().kernel` offers to libraries: ipywidgets' `Output` widget asks it for
    the request being run (`get_parent()`) to capture that request's output; others use its
    comm manager and shell."""

    def __init__(self):
        self.parent = {}

    def get_parent(self, channel=None):
        return self.parent

    @property
    def _parent_header(self):
        return self.parent

    # Libraries that register comm targets the old way (ipywidgets 7's register_comm_target,
    # `get_ipython().kernel.comm_manager.register_target(...)`) or reach the shell through the
    # kernel.
    @property
    def comm_manager(self):
        return comm_manager

    @property
    def shell(self):
        return sys.modules[__name__].shell


kernel = Kernel()
