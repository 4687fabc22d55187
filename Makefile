# Two entry points: `make test` and `make demo`. Both install on first use (scripts/install.sh).
# `make test-browser` (opt-in) also installs headless Chromium (scripts/setup_browser.sh) and runs
# the tests marked "browser", which `make test` skips where Chromium is absent.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install test test-browser demo clean-venv

install:
	@bash scripts/install.sh

test: install
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-browser: install
	@bash scripts/setup_browser.sh
	$(PY) -m pytest -q -m browser tests $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo_shapes.py

clean-venv:
	rm -rf $(VENV)
