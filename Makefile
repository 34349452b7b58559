# Two commands do all set-up on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two installs: `make demo` needs only edgefleet[all]; every other target also needs the dev
# tools. The dev install covers the demo's, so it marks both done.
STAMP  := $(VENV)/.edgefleet-installed
DEMO_STAMP := $(VENV)/.edgefleet-all-installed
# Tests wait on brokers and child processes more than on the CPU: more workers than cores.
# One test at a time per worker, the longest first (tests/conftest.py).
PYTEST_WORKERS ?= 4
PYTEST_XDIST := -n $(PYTEST_WORKERS) --maxschedchunk=1
PYTEST_ARGS ?=
comma := ,
# The system packages (Mosquitto, gcc, Chromium, ...) are checked first, before the venv, and
# installed with apt as root; without root the check stops with the command to run.
SYSTEM_PACKAGES := PYTHON='$(PYTHON)' VENV='$(VENV)' .ci/system-packages

.PHONY: venv lint typecheck layers test test-fast demo bench clean system-test system-demo

define install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(1)]"
endef

$(STAMP): pyproject.toml
	$(call install,all$(comma)dev)
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	$(call install,all)
	touch $(DEMO_STAMP)

system-test:
	$(SYSTEM_PACKAGES) test

system-demo:
	$(SYSTEM_PACKAGES) demo

# Under `make -j` too, the check runs before a venv is made, so a missing package fails in a
# second rather than after the pip install; `make lint` alone checks nothing.
$(STAMP) $(DEMO_STAMP): | $(if $(filter test test-fast,$(MAKECMDGOALS)),system-test) \
                          $(if $(filter demo,$(MAKECMDGOALS)),system-demo)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy edge cloud firmware_bridge models simulators bench

layers: venv
	$(BIN)/lint-imports

test: system-test lint typecheck layers
	$(BIN)/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The quick loop while developing: everything but the slow end-to-end tests.
test-fast: system-test venv
	$(BIN)/pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

demo: system-demo $(DEMO_STAMP)
	$(BIN)/edgefleet demo

bench: venv
	@set -e; for f in bench/*.py; do \
	  case $$(basename $$f) in _*) continue;; esac; \
	  echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache
