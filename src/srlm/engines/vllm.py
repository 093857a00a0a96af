"""Generation with vLLM (GPU only; `pip install 'srlm[vllm]'`): paged attention and continuous batching.

This is how the paper evaluated (LightEval with vLLM). vLLM is imported only when this engine is built, so
srlm installs and runs everywhere without it; asking for it without vLLM or without CUDA is a `UserError`
that says what is missing. Prompts are passed as token ids, so the text the model sees is exactly what
the other engines see, and each prompt gets its own seed (see `base.prompt_seeds`) so results do not depend on how
vLLM schedules them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from srlm.engines.base import Completion, SamplingParams, prompt_seeds
from srlm.errors import UserError


def require_vllm():
    """The vllm module, or a UserError saying why it cannot be used here."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("the vllm engine needs a CUDA GPU and none is available; use --engine hf (CPU/GPU) "
                        "or --engine openai with a running server")
    try:
        import vllm
    except ImportError:
        raise UserError("the vllm engine needs vLLM: pip install 'srlm[vllm]' (or use --engine hf)") from None
    return vllm


class VLLMEngine:
    """`generate` on a vLLM `LLM` loaded from a model folder or hub id.

    Prompts go to vLLM in chunks of `chunk` so `on_complete` (evaluation's append to disk) runs every few
    hundred prompts: vLLM schedules each chunk continuously, and an interrupt loses at most one chunk.
    """

    name = "vllm"

    def __init__(self, model: str, dtype: str = "auto", seed: int = 0, max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1, chunk: int = 512,
                 in_process: bool = False, **llm_kwargs):
        """`in_process=True` keeps vLLM's model in this Python process (no engine subprocess), which is what
        `load_weights` needs during RL: the trainer's tensors are handed over without serialisation."""
        vllm = require_vllm()
        if in_process:
            # Read by vLLM when the engine is built: run the model in this process, not a child.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self._vllm = vllm
        self.chunk = chunk
        self.llm = vllm.LLM(model=str(model), dtype="bfloat16" if dtype == "auto" else dtype, seed=seed,
                            max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                            tensor_parallel_size=tensor_parallel_size, **llm_kwargs)
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)

    def load_weights(self, named_tensors: list[tuple[str, "torch.Tensor"]]) -> None:
        """Replace the served weights with the policy's (names as in a transformers checkpoint, e.g. from
        `srlm.models.hf_weights`); called after every RL update. Cached prefixes computed with the old
        weights are dropped."""
        weights = list(named_tensors)
        self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def _params(self, sampling: SamplingParams, seed: int | None):
        return self._vllm.SamplingParams(
            n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_new_tokens, min_tokens=sampling.min_new_tokens,
            stop=list(sampling.stop_strings) or None, stop_token_ids=list(sampling.stop_token_ids) or None,
            include_stop_str_in_output=True,  # like the hf engine: a stop string stays in the text
            seed=seed, skip_special_tokens=True,
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
                                    finish_reason="length" if o.finish_reason == "length" else "stop")
                         for o in sorted(out.outputs, key=lambda o: o.index)]
                result.append(group)
                if on_complete:
                    on_complete(i, group)
        return result
