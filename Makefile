# Two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tuner demo

# Real tools the tests use (promtool, wrk, systemd-analyze) come from Debian's packages.
tools:
	@./.ci/tools

test: $(VENV)/.installed-test tools
	$(BIN)/ruff check tuner tests bench
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(VENV)/.installed-test tools
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info
