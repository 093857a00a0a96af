"""The small interface every generation engine implements.

`generate(prompts, sampling)` takes token-id prompts and returns, for each prompt, `sampling.n`
completions with their token ids, decoded text and why they ended. Engines: `hf` (transformers, CPU/GPU),
`vllm` (GPU). Training stages and evaluation only ever see this interface.
"""

from __future__ import annotations

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
    seed: int | None = None


@dataclass
class Completion:
    token_ids: list[int]  # everything generated, the final stop token included
    text: str  # decoded without special tokens (EOS / end-of-turn markers)
    finish_reason: str  # "stop" (a stop token or string) or "length" (hit max_new_tokens)
    meta: dict = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[list[Completion]]:
        """For each prompt (token ids), `sampling.n` completions, in prompt order."""
        ...
