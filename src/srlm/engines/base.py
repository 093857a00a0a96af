"""The small interface every generation engine implements.

`generate(prompts, sampling)` takes token-id prompts and returns, for each prompt, `sampling.n`
completions with their token ids, decoded text and why they ended. Engines: `hf` (transformers, CPU/GPU),
`vllm` (GPU or CPU), `openai` (any OpenAI-compatible completions server). Training stages and evaluation only ever
see this interface; `srlm.engines.ENGINES` builds one by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()  # generation ends after the first one appears (kept in the text)
    # End a sequence once its tokens end in a repetition loop (`srlm.repetition`), finish_reason
    # "repetition". Only engines with `stops_repetition = True` honour it.
    stop_repetition: bool = False
    seed: int | None = None


@dataclass
class Completion:
    token_ids: list[int]  # everything generated, the final stop token included
    text: str  # decoded without special tokens (EOS / end-of-turn markers)
    finish_reason: str  # "stop" (a stop token or string), "length" (hit max_new_tokens) or "repetition"
    meta: dict = field(default_factory=dict)
    # Tokens the engine generated, when it knows better than len(token_ids): a remote server reports its
    # count in `usage`, while `token_ids` there is a local re-tokenisation of the text.
    num_tokens: int | None = None
    # The log-probability the engine gave each sampled token (after temperature), where it reports them
    # (vllm): GRPO measures the engine-vs-trainer mismatch with them and corrects for it on request.
    logprobs: list[float] | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def tokens_generated(self) -> int:
        return self.num_tokens if self.num_tokens is not None else len(self.token_ids)


def prompt_seeds(seed: int, count: int) -> list[int]:
    """One seed per prompt of a call, derived by hashing (`seed`, index): calls with nearby seeds (RL steps
    use seed, seed + 1, ...) never give two prompts the same random stream, as `seed + index` would."""
    return [int.from_bytes(hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=7).digest(), "big")
            for i in range(count)]


class Engine(Protocol):
    """What evaluation and RL call. `max_context` is the model's longest sequence (prompt + response) in
    tokens, or None when the engine cannot tell; evaluation caps `max_new_tokens` with it."""

    name: str
    max_context: int | None

    def generate(self, prompts: list[list[int]], sampling: SamplingParams, seeds: Sequence[int] | None = None,
                 on_complete: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """For each prompt (token ids), `sampling.n` completions, in prompt order.

        `seeds[i]` seeds prompt i's samples (default: `prompt_seeds(sampling.seed, len(prompts))`), so a
        prompt's samples do not depend on the other prompts of the call. `on_complete(i, completions)` is
        called as soon as prompt i's samples are all done, so callers can save them before the call ends.
        """
        ...
