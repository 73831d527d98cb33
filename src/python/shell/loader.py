"""Makes the shell's parts, shipped inside the parakernel binary, importable in this interpreter
as `_parakernel_shell` and `_parakernel_shell.<part>`, and the `parakernel` module cells import.

The kernel runs this file first, as `_parakernel_shell.loader`, then hands it each part's source
(`add`); a finder first on `sys.meta_path` serves them from there. Nothing is read from disk and
nothing is installed. Each part is compiled under the file name `<parakernel shell/PART.py>`,
and its lines go into linecache under that name, so tracebacks through the shell show them.
"""

import linecache
import sys
from importlib.machinery import ModuleSpec

PACKAGE = "_parakernel_shell"
# Parts that are modules of their own for cells to import (`import parakernel`), not parts of
# the shell package.
PUBLIC = frozenset({"parakernel"})


class ShellFinder:
    """Finder and loader of the shell's parts."""

    def __init__(self):
        # Module name -> (file name, source).
        self._parts = {}

    def add(self, part, source):
        if part in PUBLIC:
            name = part
        else:
            name = PACKAGE if part == "__init__" else f"{PACKAGE}.{part}"
        filename = f"<parakernel shell/{part}.py>"
        self._parts[name] = (filename, source)
        # No modification time: linecache.checkcache keeps the entry (as IPython's cells).
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)

    def find_spec(self, fullname, path=None, target=None):
        part = self._parts.get(fullname)
        if part is None:
            return None
        spec = ModuleSpec(fullname, self, origin=part[0], is_package=fullname == PACKAGE)
        # `__file__` names the part as its tracebacks do (inspect.getsource works too).
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        filename, source = self._parts[module.__spec__.name]
        exec(compile(source, filename, "exec"), module.__dict__)

    def is_package(self, fullname):
        return fullname == PACKAGE

    def get_source(self, fullname):
        return self._parts[fullname][1]

    def invalidate_caches(self):
        pass


finder = ShellFinder()
add = finder.add
sys.meta_path.insert(0, finder)
