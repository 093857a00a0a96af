"""Generation engines behind one interface (`base.Engine`), built by name from `ENGINES`.

    engine, tokenizer = build_engine("hf", EngineOptions(model="path/or/hub-id"))
    engine, tokenizer = build_engine("hf", EngineOptions(model=str(path)), loaded=(policy, tok))

Every caller (evaluation, pipelines, GRPO rollouts, distillation traces, benchmarks) builds its engine here.
Each factory imports its engine lazily: `vllm` must not be imported on a machine without it, and the
`openai` engine needs no torch model at all (only the tokenizer, to render prompts and count tokens).
Engines that hold resources beyond the Python objects (vLLM's engine process and KV cache) have `close()`;
`close_engine` calls it where it exists.
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
    # vLLM: memory fraction of the accelerator (None: vLLM's platform default, see engines/vllm.py), KV cache
    # size in GB (None: vLLM's default on GPU, a small cache on CPU where it is host RAM; hf: caps the rows
    # decoded together, None: `batch_size` rows), GPUs per model
    gpu_memory_utilization: float | None = None
    kv_cache_gb: float | None = None
    tensor_parallel_size: int = 1
    in_process: bool = False  # vLLM's model in this process: needed to hand it the trainer's weights
    compute_dtype: str | None = None  # hf: decode in this dtype from copies of the weights (lean forward)


LoadedModel = tuple  # (transformers model, tokenizer) already in memory


def _hf(opts: EngineOptions, loaded: LoadedModel | None):
    """Decodes with the module itself: `loaded` (a policy being trained, a teacher) or `opts.model` loaded."""
    import torch

    from srlm.engines.hf import HFEngine
    from srlm.memory import return_freed_memory_for
    from srlm.models import load_model, resolve_device

    model, tok = loaded or load_model(opts.model, resolve_device(opts.device), dtype=opts.dtype)
    # decoding allocates and frees logits, masks and caches every step: on a real-sized model, without this
    # the heap keeps them (SmolLM2-135M, 64 GSM8K rows in bf16: `srlm eval` peaked at 1.82 GiB against 1.59)
    return_freed_memory_for(model)
    compute = getattr(torch, opts.compute_dtype) if opts.compute_dtype else None
    return HFEngine(model, tok, batch_size=opts.batch_size, progress=opts.progress, kv_cache_gb=opts.kv_cache_gb,
                    compute_dtype=compute), tok


def _vllm(opts: EngineOptions, loaded: LoadedModel | None):
    """Holds its own copy of `opts.model` (a trainer hands it new weights with `load_weights`)."""
    from srlm.engines.vllm import VLLMEngine
    from srlm.models import load_tokenizer

    # the engine first: it says clearly when vLLM or a device it runs on is missing
    engine = VLLMEngine(opts.model, dtype=opts.dtype, seed=opts.seed, max_model_len=opts.max_model_len,
                        gpu_memory_utilization=opts.gpu_memory_utilization, kv_cache_gb=opts.kv_cache_gb,
                        tensor_parallel_size=opts.tensor_parallel_size, in_process=opts.in_process)
    return engine, loaded[1] if loaded else load_tokenizer(opts.tokenizer or opts.model)


def _openai(opts: EngineOptions, loaded: LoadedModel | None):
    from srlm.engines.openai import OpenAIEngine
    from srlm.models import load_tokenizer

    tok = loaded[1] if loaded else load_tokenizer(opts.tokenizer or opts.model)
    return OpenAIEngine(opts.base_url, opts.model, tok, api_key=opts.api_key, concurrency=opts.concurrency), tok


ENGINES: dict[str, Callable[[EngineOptions, LoadedModel | None], tuple]] = {
    "hf": _hf,
    "vllm": _vllm,
    "openai": _openai,
}


def build_engine(name: str, opts: EngineOptions, loaded: LoadedModel | None = None):
    """(engine, tokenizer) for engine `name`. `loaded`: the (model, tokenizer) already in memory for
    `opts.model`, which `hf` decodes with (no second copy) and the others take the tokenizer from."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name](opts, loaded)


def close_engine(engine) -> None:
    """Free what an engine holds beyond its Python objects (vLLM's engine process, its KV cache)."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()
