"""`srlm eval --prompt lighteval` on the six benchmarks of the shared data folder with the tiny model: each
benchmark gets LightEval's template, GSM8K its seeded, recorded few-shot draw from train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srlm.cli import main

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BENCHES = ["olympiadbench", "math500", "minerva_math", "amc23", "gsm8k", "aime24"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from srlm.tiny import TinySpec, write_tiny_model

    # A long context: two GSM8K examples and a question take ~1,700 tokens of the tiny byte-level tokenizer.
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), TinySpec(hidden=32, layers=1, heads=2, kv_heads=1,
                                                                      intermediate=64, max_positions=4096))


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no benchmark data at {DATA}")
@pytest.mark.e2e
def test_eval_with_lighteval_prompts_on_six_benchmarks(model_dir, tmp_path, capsys):
    def run(out):
        return main(["eval", "--model", str(model_dir), "--data-path", str(DATA), "--out", str(out),
                     "--no-progress", "--benchmarks", ",".join(BENCHES), "--limit", "2", "--max-new-tokens", "4",
                     "--prompt", "lighteval", "--num-fewshot", "2"])

    assert run(tmp_path / "a") == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())["benchmarks"]
    assert {b: summary[b]["prompt_template"] for b in BENCHES} == {
        "olympiadbench": "lighteval_olympiadbench", "math500": "lighteval_math", "minerva_math": "lighteval_math",
        "amc23": "lighteval_math", "gsm8k": "lighteval_gsm8k", "aime24": "lighteval_math"}
    for b in BENCHES:  # how the responses ended, per benchmark
        assert {"truncation_rate", "repetition_rate", "repetition_stopped_rate", "mean_response_tokens",
                "p95_response_tokens"} <= set(summary[b])
    samples = {b: [json.loads(x) for x in (tmp_path / "a" / b / "samples.jsonl").read_text().splitlines()]
               for b in BENCHES}
    assert all(s["prompt"].count("Solve the following math problem") == 1 for s in samples["math500"])
    assert all("So the final answer is" in s["prompt"] for s in samples["olympiadbench"])
    # GSM8K: two solved train problems, then the question; the draw is in each sample and in the summary
    train_ids = {f"gsm8k-train-{i}" for i in range(7473)}
    for s in samples["gsm8k"]:
        assert len(s["fewshot"]) == 2 and set(s["fewshot"]) <= train_ids
        assert s["prompt"].count("Question: ") == 3 and s["prompt"].count("####") == 2
    assert summary["gsm8k"]["stop_strings"] == []  # a chat-template prompt stops at the end of the turn
    assert summary["gsm8k"]["fewshot"]["n"] == 2 and summary["gsm8k"]["fewshot"]["split"] == "train"
    assert all("fewshot" not in s for s in samples["math500"])  # lighteval's math tasks are zero-shot
    # the same draw in another run
    assert run(tmp_path / "b") == 0
    again = [json.loads(x) for x in (tmp_path / "b" / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert [s["fewshot"] for s in again] == [s["fewshot"] for s in samples["gsm8k"]]
