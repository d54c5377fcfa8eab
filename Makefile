# The two quickstart commands: `make lab` (Baton's main job on the embedded lab) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: lab test lint install

$(BIN)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

install: $(BIN)/.installed

lab: $(BIN)/.installed
	$(BIN)/baton lab up

test: $(BIN)/.installed
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
