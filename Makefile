# fedprune: the two commands are `make demo` and `make test`; both set everything up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STAMP_FILE := $(shell date +%Y%m%d-%H%M%S)

.PHONY: install data demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	bash scripts/get_data.sh $(BIN)/python

demo: data
	$(BIN)/fedprune simulate sim_configs/quickstart.toml --out results/quickstart-$(STAMP_FILE)

test: data
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=25

# unit + integration tests without the slow (Ray, subprocess) runs: under two minutes
test-fast: data
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=300 -m "not slow" tests/unit tests/integration

bench: data
	$(BIN)/python bench/run_all.py

clean:
	rm -rf results .pytest_cache
