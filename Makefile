# The two commands: `make demo` and `make test`. Each sets up what is missing first:
# .venv from a CPython >= 3.12 with a shared libpython, the Python packages, the release
# binary (rpath to libpython) and the kernelspec installed into .venv.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := target/release/parakernel
KERNELSPEC := $(VENV)/share/jupyter/kernels/parakernel/kernel.json
LANES_KERNELSPEC := $(VENV)/share/jupyter/kernels/parakernel-lanes/kernel.json

.PHONY: demo test bench setup rust-test python-test browser libzmq clean-venv

# channels_pipeline's cells meet each other, so it runs as Run All sends it; the in-turn
# comparison pass (one cell after another) would wait at its producer for good. Then
# `parakernel run` runs notebooks headless in one process (two at once, then a 2x2 sweep), into
# .runs/.
demo: setup
	$(PY) tests/run_notebook.py notebooks/demo.ipynb
	$(PY) tests/run_notebook.py --run-all notebooks/parallel_experiments.ipynb
	$(PY) tests/run_notebook.py --run-all --no-compare notebooks/channels_pipeline.ipynb
	$(BIN) run --python $(PY) --output-dir .runs notebooks/channels_pipeline.ipynb notebooks/parallel_experiments.ipynb
	$(BIN) run --python $(PY) --output-dir .runs notebooks/sweep.ipynb --grid lr=0.05,0.2 --grid seed=1,2

test: setup browser
	PYO3_PYTHON=$$(cat $(VENV)/.base-python) cargo test --release --locked
	$(MAKE) fuzz-smoke
	$(PY) -m pytest -v tests/python

bench: setup
	$(PY) bench/bench.py

setup: $(KERNELSPEC) $(LANES_KERNELSPEC)

# The base interpreter is recorded so that cargo builds against the very Python the venv uses.
$(VENV)/.base-python:
	@base=$$(scripts/find-python.sh) && echo "using $$base" && \
	  "$$base" -m venv $(VENV) && echo "$$base" > $@

$(VENV)/.installed: requirements.txt $(VENV)/.base-python
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(BIN): $(VENV)/.base-python Cargo.toml Cargo.lock build.rs $(shell find src -type f) | libzmq
	PYO3_PYTHON=$$(cat $(VENV)/.base-python) cargo build --release --locked

$(KERNELSPEC): $(BIN) $(VENV)/.installed
	$(BIN) install --sys-prefix --python $(PY)

# The second kernelspec: "Python (parakernel, one lane per notebook)".
$(LANES_KERNELSPEC): $(BIN) $(VENV)/.installed
	$(BIN) install --sys-prefix --python $(PY) --lane-per-session

# The sockets are libzmq's (with CurveZMQ through libsodium): Debian's libzmq3-dev, installed
# when pkg-config cannot find it.
libzmq:
	@pkg-config --exists libzmq 2>/dev/null || { \
	  echo "installing Debian's libzmq3-dev for the kernel's sockets"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq pkg-config libzmq3-dev; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq pkg-config libzmq3-dev; fi; }

# JupyterLab tests drive Debian's Chromium; install it when it is missing.
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the JupyterLab tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium; fi; }

clean-venv:
	rm -rf $(VENV)

include fuzz/fuzz.mk
