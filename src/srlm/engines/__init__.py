"""Generation engines behind one interface (`base.Engine`), built by name from `ENGINES`.

    engine, tokenizer = build_engine("hf", EngineOptions(model="path/or/hub-id"))

Each factory imports its engine lazily: `vllm` must not be imported on a machine without it, and the
`openai` engine needs no torch model at all (only the tokenizer, to render prompts and count tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from srlm.errors import UserError


@dataclass(frozen=True)
class EngineOptions:
    """Everything any engine may need; each factory reads the fields that concern it."""

    model: str  # folder or hub id (the server's model name for `openai`)
    tokenizer: str | None = None  # where the tokenizer comes from, when not `model`
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 64
    seed: int = 0
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    concurrency: int = 32
    max_model_len: int | None = None
    progress: bool = False


def _hf(opts: EngineOptions):
    from srlm.engines.hf import HFEngine
    from srlm.models import load_model, resolve_device

    model, tok = load_model(opts.model, resolve_device(opts.device), dtype=opts.dtype)
    return HFEngine(model, tok, batch_size=opts.batch_size, progress=opts.progress), tok


def _vllm(opts: EngineOptions):
    from srlm.engines.vllm import VLLMEngine, require_vllm
    from srlm.models import load_tokenizer

    require_vllm()  # before loading anything: the clear error first
    tok = load_tokenizer(opts.tokenizer or opts.model)
    return VLLMEngine(opts.model, dtype=opts.dtype, seed=opts.seed, max_model_len=opts.max_model_len), tok


def _openai(opts: EngineOptions):
    from srlm.engines.openai import OpenAIEngine
    from srlm.models import load_tokenizer

    tok = load_tokenizer(opts.tokenizer or opts.model)
    return OpenAIEngine(opts.base_url, opts.model, tok, api_key=opts.api_key, concurrency=opts.concurrency), tok


ENGINES: dict[str, Callable[[EngineOptions], tuple]] = {
    "hf": _hf,
    "vllm": _vllm,
    "openai": _openai,
}


def build_engine(name: str, opts: EngineOptions):
    """(engine, tokenizer) for engine `name`."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name](opts)
