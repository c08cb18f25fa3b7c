# `make test` and `make demo` create and use a virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint bench demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,train]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

# Also the long tests (the CUDA ones skip themselves without a GPU).
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/scheduler_step.py
	$(PY) benchmarks/sampling.py

demo:
	@echo "make demo will install the [demo] extra and start the Gradio demo (spaces/app.py)"
	@echo "on 127.0.0.1:7860 with the models that ship with the package. It is not built yet."

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
