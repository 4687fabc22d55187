# Two entry points: `make test` and `make demo`. Both install on first use (scripts/install.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install test demo clean-venv

install:
	@bash scripts/install.sh

test: install
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

demo: install
	$(PY) tools/demo_shapes.py

clean-venv:
	rm -rf $(VENV)
