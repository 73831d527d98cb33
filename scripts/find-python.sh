#!/usr/bin/env bash
# Prints the path of a CPython >= 3.12 built with a shared libpython, found as DESIGN.md says:
# $PARAKERNEL_PYTHON, then python3.14/3.13/3.12 on PATH, then pyenv's versions, newest first.
set -u

usable() {
    "$1" - <<'PY' 2>/dev/null
import sys, sysconfig
ok = sys.version_info >= (3, 12) and sysconfig.get_config_var("Py_ENABLE_SHARED") == 1
sys.exit(0 if ok else 1)
PY
}

if [ -n "${PARAKERNEL_PYTHON:-}" ]; then
    if usable "$PARAKERNEL_PYTHON"; then
        "$PARAKERNEL_PYTHON" -c 'import sys; print(sys.executable)'
        exit 0
    fi
    echo "find-python: PARAKERNEL_PYTHON=$PARAKERNEL_PYTHON is not a CPython >= 3.12 with a shared libpython" >&2
    exit 1
fi

candidates=()
for name in python3.14 python3.13 python3.12; do
    command -v "$name" >/dev/null 2>&1 && candidates+=("$(command -v "$name")")
done
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    while IFS= read -r dir; do
        for exe in "$dir"/bin/python3.1[2-9]; do [ -x "$exe" ] && candidates+=("$exe"); done
    done < <(ls -d "$root"/versions/3.* 2>/dev/null | sort -V -r)
fi

for exe in "${candidates[@]}"; do
    if usable "$exe"; then
        "$exe" -c 'import sys; print(sys.executable)'
        exit 0
    fi
done
echo "find-python: no CPython >= 3.12 built with --enable-shared was found." >&2
echo "  Install one (e.g. 'env PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.13') or set PARAKERNEL_PYTHON." >&2
exit 1
