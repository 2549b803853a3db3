# Two commands do all the set-up: `make run` (the server) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?=

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/vilokanam serve $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.installed
	$(BIN)/ruff check vilokanam tests bench
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(BIN)/ruff check vilokanam tests bench
	$(BIN)/ruff format --check vilokanam tests bench

bench: $(VENV)/.installed
	$(BIN)/python bench/transcode.py
	$(BIN)/python bench/billing.py
	$(BIN)/python bench/billing_origin.py
	$(BIN)/python bench/origin.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
