# Two entry points: `make test` and `make demo`. Both install on first use (scripts/install.sh).
# `make test` leaves out the end-to-end runs marked "slow" (training processes, signals, exports,
# benchmarks); `make test-slow` runs them, `make test-all` runs both. `make test-browser` (opt-in)
# also installs headless Chromium (scripts/setup_browser.sh) and runs the tests marked "browser",
# which the others skip where Chromium is absent. `make test-cuda` runs the tests marked "cuda"
# (on a CUDA device; skipped elsewhere). CI (.ci/run) runs test, test-slow, test-browser.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install test test-slow test-all test-browser test-cuda demo clean-venv

install:
	@bash scripts/install.sh

test: install
	$(PY) -m pytest -n 2 -q -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -n 2 -q -m slow $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-browser: install
	@bash scripts/setup_browser.sh
	$(PY) -m pytest -q -m browser tests $(PYTEST_ARGS)

test-cuda: install
	$(PY) -m pytest -q -m cuda $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo_shapes.py

clean-venv:
	rm -rf $(VENV)
