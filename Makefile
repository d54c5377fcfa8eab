# The two quickstart commands: `make drill` (Baton's main job on the embedded lab) and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: drill lab test lint install

$(BIN)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

install: $(BIN)/.installed

drill: $(BIN)/.installed
	$(BIN)/baton drill --lab

lab: $(BIN)/.installed
	$(BIN)/baton lab up

test: $(BIN)/.installed
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .
