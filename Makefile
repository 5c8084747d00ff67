# orthanc-hardening. On a fresh Debian machine (bookworm or trixie, as root) two commands are enough:
#   make run    install what is missing, create dev certificates/keys/accounts, start a hardened Orthanc
#   make test   install what is missing, run the whole test suite on every supported Orthanc:
#               Debian bookworm (1.10.1), trixie (1.12.7) and forky (1.13.0); the host's own release
#               natively, the others in root filesystems built by scripts/in-target.sh

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PYTHON      := $(VENV)/bin/python
SHIM_DIR    := build/libssl-shim
SHIM        := $(SHIM_DIR)/libssl.so
SHIM_SRC    := tools/libssl-shim/shim.c
PYTEST_OPTS := -p no:cacheprovider -ra --timeout=300
PYTEST_ARGS ?=
HARDENING_HOME ?= var
TARGETS     := bookworm trixie forky

.PHONY: help deps shim run test test-host $(addprefix test-,$(TARGETS)) unit integration posture lint bench \
	bench-quick bench-targets clean

help:
	@echo "make run          install what is missing, then start a hardened Orthanc (Ctrl-C stops it)"
	@echo "make test         install what is missing, then run the whole test suite on bookworm, trixie and forky"
	@echo "make test-host    the whole suite on this machine's Orthanc only (the quick local loop)"
	@echo "make test-forky   the whole suite on one target (test-bookworm, test-trixie, test-forky)"
	@echo "make deps         only install (Debian packages, $(VENV), $(SHIM))"
	@echo "make posture      offline posture report of the configuration 'make run' uses"
	@echo "make lint         ruff + mypy"
	@echo "make bench        benchmarks: plain vs hardened Orthanc, on this machine and on forky"

deps:
	@bash scripts/install-deps.sh

# The libssl shim Debian's Orthanc needs for HTTPS (see tools/libssl-shim/README.md).
shim: $(SHIM)

$(SHIM): $(SHIM_SRC)
	@mkdir -p $(SHIM_DIR)
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o $@.tmp $< -Wl,--no-as-needed -l:libssl.so.3 -l:libcrypto.so.3
	@nm -D $@.tmp | grep -q ' T SSL_get_peer_certificate$$' || { echo "$@ lacks SSL_get_peer_certificate"; rm -f $@.tmp; exit 1; }
	@mv -f $@.tmp $@

run: deps
	@bash scripts/run.sh

# Every target runs, even after one failed; the summary names each one's result.
test:
	@failed=""; \
	for target in $(TARGETS); do \
		start=$$(date +%s); \
		echo "== make test: $$target =="; \
		if bash scripts/in-target.sh $$target $(MAKE) --no-print-directory test-host PYTEST_ARGS="$(PYTEST_ARGS)"; then \
			result=passed; else result=FAILED; failed="$$failed $$target"; fi; \
		echo "== $$target: $$result in $$(( $$(date +%s) - start )) s =="; \
	done; \
	if [ -n "$$failed" ]; then echo "make test: failed on$$failed"; exit 1; fi; \
	echo "make test: passed on $(TARGETS)"

test-host: deps
	$(PYTHON) -m pytest tests $(PYTEST_OPTS) $(PYTEST_ARGS)

$(addprefix test-,$(TARGETS)):
	bash scripts/in-target.sh $(@:test-%=%) $(MAKE) --no-print-directory test-host PYTEST_ARGS="$(PYTEST_ARGS)"

unit: deps
	$(PYTHON) -m pytest tests/unit $(PYTEST_OPTS) $(PYTEST_ARGS)

integration: deps
	$(PYTHON) -m pytest tests/integration $(PYTEST_OPTS) $(PYTEST_ARGS)

posture: deps
	HARDENING_HOME="$$(cd $(HARDENING_HOME) && pwd)" PYTHONPATH=plugin $(PYTHON) -m orthanc_hardening posture \
		--ld-library-path $(SHIM_DIR) $(HARDENING_HOME)/config

lint: deps
	$(VENV)/bin/ruff check plugin tests bench docker
	$(VENV)/bin/mypy

# Host (bookworm) then forky through its target, each against plain Orthanc of its own version.
# BENCH_ARGS: e.g. "--instances 100 --repeat 3 --baseline main" (see bench/run.py --help).
bench: deps
	$(PYTHON) bench/run.py --json bench/results.json $(BENCH_ARGS)
	bash scripts/in-target.sh forky $(MAKE) --no-print-directory deps
	bash scripts/in-target.sh forky .venv/bin/python bench/run.py --json bench/results-forky.json $(BENCH_ARGS)

bench-quick: deps
	$(PYTHON) bench/run.py --quick

clean:
	rm -rf build
