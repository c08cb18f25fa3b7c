# `make test` and `make demo` create and use a virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# PyTorch pinned, with the torchvision of the same release that torch-fidelity (FID's Inception)
# imports: PyPI's torchvision does not load beside this machine's CPU-only torch 2.13.0, so both
# come from PyPI's 2.14.1 (a CUDA build, about 5 GB, that runs on the CPU as well). An unpinned
# torch pulls the newest CUDA build.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install test test-all lint bench demo browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,train,demo]"
	touch $(STAMP)

# The demo alone needs only the [demo] extra.
$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[demo]"
	touch $(DEMO_STAMP)

# tests/test_demo.py drives Debian's Chromium with Playwright. Install it where we can (root
# with apt-get); elsewhere that test skips and says why.
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Chromium (apt-get) for the browser test"; \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1 \
	      || echo "could not install Chromium: the browser test will skip"; \
	  else echo "no Chromium, and no root apt-get to install it: the browser test will skip"; fi; \
	fi

install: $(STAMP)

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

# Also the long tests (the CUDA ones skip themselves without a GPU).
test-all: $(STAMP) browser
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/scheduler_step.py
	$(PY) benchmarks/sampling.py
	$(PY) benchmarks/training.py

# The Gradio demo (spaces/app.py) on http://127.0.0.1:7860 with the shipped models, offline.
demo: $(DEMO_STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) spaces/app.py --host 127.0.0.1 --port 7860

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
