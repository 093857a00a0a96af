"""Generation through any OpenAI-compatible *completions* server (`vllm serve`, SGLang, TGI, ...).

The model runs elsewhere; this engine turns token-id prompts back into text (the chat template is applied
locally, so the server sees exactly the prompt the other engines see), POSTs one `/v1/completions`
request per prompt with `n` samples, and runs requests concurrently on a thread pool: a serving engine
batches concurrent requests itself, so concurrency is what makes it fast.

Only the standard library is used (urllib): one HTTP call shape does not justify a client dependency.
Transient failures (429, 5xx, refused or reset connections, timeouts) are retried with exponential
back-off; a server that stays unreachable is a `UserError` naming the URL.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from srlm.engines.base import Completion, SamplingParams, prompt_seeds
from srlm.errors import UserError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ServerRefused(UserError):
    """The server answered with a non-retryable HTTP error (bad request, unknown model, auth)."""


class OpenAIEngine:
    """`generate` against `base_url` (e.g. http://127.0.0.1:8000/v1), model `model` at that server."""

    name = "openai"

    def __init__(self, base_url: str, model: str, tokenizer, api_key: str | None = None, concurrency: int = 32,
                 timeout: float = 600.0, max_retries: int = 6, backoff: float = 0.5):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model = model
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_context = self._server_max_len()

    # ------------------------------------------------------------------------------------------ requests

    def _request(self, method: str, path: str, body: dict | None = None, retries: int | None = None) -> dict:
        """One JSON call with retries; raises UserError when the server is unreachable or refuses."""
        retries = self.max_retries if retries is None else retries
        url = f"{self.base_url}{path}"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                if e.code not in RETRY_STATUS:
                    raise ServerRefused(f"server at {url} refused the request: HTTP {e.code}: {detail}") from None
                last = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = str(getattr(e, "reason", e))
        raise UserError(f"cannot reach the OpenAI-compatible server at {url} after {retries + 1} "
                        f"attempts ({last}); is it running? (--base-url)")

    def _server_max_len(self) -> int | None:
        """The served model's context length when the server says it (vLLM's `max_model_len`); also the
        early, clear failure when nothing listens at the URL."""
        try:
            listing = self._request("GET", "/models", retries=2)
        except ServerRefused:  # no listing endpoint: fine, the context is then unknown
            return None
        for m in listing.get("data", []):
            if m.get("id") == self.model or len(listing.get("data", [])) == 1:
                n = m.get("max_model_len")
                return int(n) if n else None
        return None

    # ------------------------------------------------------------------------------------------ generate

    def _stop_texts(self, sampling: SamplingParams) -> list[str]:
        """Stop strings plus the text of stop tokens other than EOS (the server stops at EOS by itself)."""
        out = list(sampling.stop_strings)
        for t in sampling.stop_token_ids:
            if t != self.tokenizer.eos_token_id:
                out.append(self.tokenizer.decode([t], skip_special_tokens=False))
        return [s for s in dict.fromkeys(out) if s]

    def _body(self, prompt: list[int], seed: int | None, sampling: SamplingParams) -> dict:
        body = {
            "model": self.model,
            "prompt": self.tokenizer.decode(prompt, skip_special_tokens=False),
            "n": sampling.n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
            "max_tokens": sampling.max_new_tokens,
        }
        stop = self._stop_texts(sampling)
        if stop:
            body["stop"] = stop
        if seed is not None:  # one seed per prompt: results do not depend on request order
            body["seed"] = seed
        if sampling.min_new_tokens:
            body["min_tokens"] = sampling.min_new_tokens  # a vLLM extension
        return body

    def _one(self, prompt: list[int], seed: int | None, sampling: SamplingParams) -> list[Completion]:
        reply = self._request("POST", "/completions", self._body(prompt, seed, sampling))
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != sampling.n:
            raise UserError(f"server at {self.base_url} returned {len(choices)} choices for n={sampling.n}")
        usage = (reply.get("usage") or {}).get("completion_tokens")
        out = []
        for c in choices:
            text = c.get("text", "")
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            reason = "length" if c.get("finish_reason") == "length" else "stop"
            # `usage` counts all n choices together: it is exact per choice only when n == 1.
            count = int(usage) if usage is not None and sampling.n == 1 else len(ids)
            out.append(Completion(token_ids=ids, text=text, finish_reason=reason, num_tokens=count,
                                  meta={"server_finish_reason": c.get("finish_reason")}))
        return out

    def generate(self, prompts: list[list[int]], sampling: SamplingParams, seeds: Sequence[int] | None = None,
                 on_complete: Callable[[int, list[Completion]], None] | None = None) -> list[list[Completion]]:
        """One request per prompt, `concurrency` at a time; `on_complete(i, completions)` is called (in this
        thread) as each one returns. Seeds: `seeds[i]`, else derived from `sampling.seed`, else none."""
        if seeds is None and sampling.seed is not None:
            seeds = prompt_seeds(sampling.seed, len(prompts))
        out: list[list[Completion] | None] = [None] * len(prompts)
        if not prompts:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts)))
        try:
            futures = {pool.submit(self._one, p, None if seeds is None else seeds[i], sampling): i
                       for i, p in enumerate(prompts)}
            for fut in as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                if on_complete:
                    on_complete(i, out[i])
        except BaseException:  # a failure or an interrupt: send nothing more, do not wait for the rest
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return out  # type: ignore[return-value]
