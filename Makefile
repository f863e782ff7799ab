# The two commands of the README, and what they need. Each target does its own set-up:
# a virtual environment in .venv with every Python package (uv, cached between runs), and the
# Maven/Ivy jars, which lakeserve resolves on first use into ~/.cache/lakeserve.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck install clean

demo: install                    ## the main job, end to end, on the embedded defaults
	$(BIN)/lakeserve demo

test: install lint typecheck     ## ruff, mypy and the whole test suite against the real components
	@scripts/prereqs.sh --test
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

typecheck: install               ## mypy and pyright, from the plain editable install (lakeserve/* links)
	$(BIN)/mypy -p lakeserve
	$(BIN)/pyright

install: $(STAMP)

$(STAMP): pyproject.toml
	@PYTHON=$(PYTHON) scripts/prereqs.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) build .lakeserve
