"""Real-model tests: SmolLM2-135M-Instruct as `make real-model` writes it (git-ignored, cached).

Each test skips with one line when the model could not be obtained (no network for pip on a fresh machine);
`SRLM_REAL_MODEL` points them at another copy of the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = Path(os.environ.get("SRLM_REAL_MODEL", ROOT / "models" / "smollm2-135m-instruct"))
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    from srlm.real_model import is_complete

    if not is_complete(MODEL_DIR):
        pytest.skip(f"no real model at {MODEL_DIR} (run `make real-model`)")
    return MODEL_DIR


@pytest.fixture(scope="session")
def real_model(real_model_dir):
    """(model, tokenizer) in fp32 on CPU, eval mode; tests that change weights load their own copy."""
    import torch

    from srlm.models import load_model

    model, tok = load_model(real_model_dir, torch.device("cpu"), dtype="float32")
    return model.eval(), tok
