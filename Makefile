# postroom: two set-up commands, `make run` and `make test`, on a machine with Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
QUICKSTART ?= .quickstart

.PHONY: run test venv lint bench-ingest clean

$(BIN)/postroom: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,postgres]'
	touch $@

venv: $(BIN)/postroom

run: $(BIN)/postroom
	$(BIN)/postroom init --dev --dir $(QUICKSTART)
	exec $(BIN)/postroom serve --config $(QUICKSTART)/postroom.toml

test: $(BIN)/postroom
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/postroom
	$(BIN)/mypy daemon/postroom

bench-ingest: $(BIN)/postroom
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) $(QUICKSTART) .pytest_cache
