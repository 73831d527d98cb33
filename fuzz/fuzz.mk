# `make fuzz-smoke`: about a minute of coverage-guided fuzzing of everything that turns
# untrusted bytes into a message (see fuzz/fuzz_targets/). Included by the main Makefile;
# also runs alone from the repository root: make -f fuzz/fuzz.mk fuzz-smoke.
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/, copied into the
# git-ignored fuzz/corpus/<target>/, which keeps what earlier runs found). A crash fails the
# target and leaves the input in fuzz/artifacts/<target>/; reproduce it with
#   PYO3_PYTHON=$(cat .venv/.base-python) cargo +nightly fuzz run -a <target> <that file>
# Longer runs: make fuzz-smoke FUZZ_SECONDS_MESSAGE=3600.

VENV ?= .venv
FUZZ_SECONDS_MESSAGE ?= 35
FUZZ_SECONDS_CONNECTION ?= 10
FUZZ_SECONDS_GATE ?= 15
# -a: overflow checks and debug assertions in the code under test.
FUZZ_RUN = PYO3_PYTHON=$$(cat $(VENV)/.base-python) cargo +nightly fuzz run -a

.PHONY: fuzz-smoke fuzz-tools

fuzz-smoke: fuzz-tools $(VENV)/.base-python
	@for target in wire_message connection_file zmtp_gate; do \
	  mkdir -p fuzz/corpus/$$target && cp fuzz/seeds/$$target/* fuzz/corpus/$$target/ || exit 1; \
	done
	$(FUZZ_RUN) wire_message fuzz/corpus/wire_message -- \
	  -dict=fuzz/wire_message.dict -max_total_time=$(FUZZ_SECONDS_MESSAGE) -rss_limit_mb=2048
	$(FUZZ_RUN) connection_file fuzz/corpus/connection_file -- \
	  -dict=fuzz/connection_file.dict -max_total_time=$(FUZZ_SECONDS_CONNECTION) -rss_limit_mb=2048
	$(FUZZ_RUN) zmtp_gate fuzz/corpus/zmtp_gate -- \
	  -max_total_time=$(FUZZ_SECONDS_GATE) -rss_limit_mb=2048

# cargo-fuzz needs a nightly toolchain (for the sanitizer and coverage flags).
fuzz-tools:
	@cargo +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
