# tutord: the two set-up commands are `make demo` and `make test`; both create .venv if needed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_HOME ?= demo-home

.PHONY: demo test lint format clean

# Created once; re-installed whenever pyproject.toml changes.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO_HOME)
	$(BIN)/tutord --home $(DEMO_HOME) init
	$(BIN)/tutord --home $(DEMO_HOME) ingest examples/interactions.jsonl examples/openai-log.jsonl.gz --source examples
	$(BIN)/tutord --home $(DEMO_HOME) status

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 2 --durations=10

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_HOME) .pytest_cache .ruff_cache .hypothesis
