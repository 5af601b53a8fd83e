# The README's two commands. Each creates .venv when missing and installs everything into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# dictionary-learning 0.1.0 pins nnsight<0.4; its dictionary classes need only torch + einops.
	$(BIN)/python -m pip install -q --no-deps dictionary-learning==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/featurecircuits demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
