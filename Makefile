# The README's two commands: `make quickstart` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Collections come from $LACONIC_DATA (a folder of BEIR collections); without it the quickstart downloads
# SciFact from BEIR's public archive.
# A local wheel folder (the CPU torch build on our machines) when there is one.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PYTEST_ARGS ?= --durations=25

.PHONY: quickstart test test-unit lint format bench clean-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "laconic_ray needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install $(FIND_LINKS) -e '.[dev]'
	@touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/laconic quickstart

test: $(STAMP)
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
