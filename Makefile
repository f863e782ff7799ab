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

typecheck: install build/types/lakeserve
	MYPYPATH=build/types $(BIN)/mypy -p lakeserve

install: $(STAMP)

$(STAMP): pyproject.toml
	@PYTHON=$(PYTHON) scripts/prereqs.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[dev]'
	touch $@

# mypy cannot follow setuptools' editable import hook; it reads the namespace through links.
build/types/lakeserve:
	mkdir -p $@
	for f in lakeserve/*; do ln -sfn ../../../$$f $@/; done
	for d in pipelines features scoring monitoring jobs; do ln -sfn ../../../$$d $@/$$d; done

clean:
	rm -rf $(VENV) build .lakeserve
