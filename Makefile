# Set-up is part of every target: a fresh clone needs only Python >= 3.10 and pip.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch for machines without a GPU; GPU users install their CUDA build first (README).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.srlm-installed

.PHONY: setup demo demo-quick test test-unit clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/srlm demo

demo-quick: setup
	$(VENV)/bin/srlm demo --quick

test: setup
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests/unit

clean:
	rm -rf $(VENV) runs
