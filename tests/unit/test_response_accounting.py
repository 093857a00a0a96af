"""How evaluation responses ended: truncation, repetition loops, the hf engine's early stop of a loop."""

from __future__ import annotations

import pytest
import torch

from srlm.engines.base import SamplingParams
from srlm.errors import UserError
from srlm.evaluate import response_accounting

LOOP = "Let me check again: 3 + 4 = 7.\n" * 20


def sample(response, tokens, finish_reason="stop"):
    return {"response": response, "tokens": tokens, "finish_reason": finish_reason}


def test_response_accounting():
    samples = [sample("So the answer is 7.", 10), sample("x" + LOOP, 500, "length"),
               sample("y" + LOOP, 120, "repetition"), sample("a long answer " * 50, 300, "length")]
    samples += [sample("7", k) for k in range(1, 17)]  # 20 samples in all
    acc = response_accounting(samples)
    assert acc["truncation_rate"] == 2 / 20  # hit max_new_tokens
    assert acc["repetition_rate"] == 3 / 20  # end in a loop, whatever ended them ("a long answer " too)
    assert acc["repetition_stopped_rate"] == 1 / 20  # cut early by eval.stop_repetition: its own category
    assert acc["tokens_generated"] == 10 + 500 + 120 + 300 + sum(range(1, 17))
    assert acc["mean_response_tokens"] == acc["tokens_generated"] / 20
    assert acc["p95_response_tokens"] == 300  # nearest rank: the 19th of 20 sorted
    assert response_accounting([]) == {"truncation_rate": 0.0, "repetition_rate": 0.0,
                                       "repetition_stopped_rate": 0.0, "tokens_generated": 0,
                                       "mean_response_tokens": 0.0, "p95_response_tokens": 0}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from srlm.models import load_model
    from srlm.tiny import TinySpec, write_tiny_model

    path = write_tiny_model(tmp_path_factory.mktemp("tiny"), TinySpec(hidden=32, layers=1, heads=2, kv_heads=1,
                                                                      intermediate=64))
    return load_model(path, torch.device("cpu"))


def test_hf_engine_stops_a_loop_early(tiny):
    from srlm.engines.hf import HFEngine
    from srlm.repetition import ends_in_loop, tokens_end_in_loop

    model, tok = tiny
    engine = HFEngine(model, tok, batch_size=4)
    prompts = [tok.encode(q) for q in ["What is 2+2?", "Natalia sold clips to 48 of her friends.", "x"]]
    greedy = SamplingParams(max_new_tokens=400, temperature=0)  # the random tiny model loops when greedy
    full = engine.generate(prompts, greedy, seeds=[0, 1, 2])
    cut = engine.generate(prompts, SamplingParams(max_new_tokens=400, temperature=0, stop_repetition=True),
                          seeds=[0, 1, 2])
    for (f,), (c,) in zip(full, cut):
        assert f.finish_reason == "length" and len(f.token_ids) == 400
        assert c.finish_reason == "repetition" and len(c.token_ids) < 400
        assert f.token_ids[:len(c.token_ids)] == c.token_ids  # the same response, ended early
        assert tokens_end_in_loop(c.token_ids) and ends_in_loop(c.text)  # counted by repetition_rate too
        assert not ends_in_loop(tok.decode(c.token_ids[:-32], skip_special_tokens=True))  # caught in time


def test_stop_repetition_needs_an_engine_that_honours_it(tmp_path):
    from srlm.config import EvalConfig
    from srlm.evaluate import evaluate

    class Remote:
        name = "openai"

    with pytest.raises(UserError, match="eval.stop_repetition: the openai engine cannot"):
        evaluate(Remote(), None, EvalConfig(stop_repetition=True), tmp_path, "m")


def test_report_table_of_how_responses_ended():
    from srlm.report_tables import Row, report_markdown, response_table

    s = {"accuracy": 0.5, "accuracy_se": 0.1, "format_rate": 1.0, "extraction_rate": 1.0,
         **response_accounting([sample("x" + LOOP, 500, "length"), sample("7", 10)])}
    rows = [Row("base", "done", {"gsm8k": s}), Row("old run", "done", {"gsm8k": {"accuracy": 0.1}})]
    assert response_table(rows) == [["method", "gsm8k truncated / loop % · mean / p95 tokens"],
                                     ["base", "50 / 50 · 255 / 500"], ["old run", "–"]]
    assert "## How responses ended" in report_markdown("t", rows[:1])


def test_stop_repetition_with_another_engine_fails_at_load():
    from srlm.config import EvalConfig

    with pytest.raises(UserError, match="eval.stop_repetition: only the hf engine"):
        EvalConfig(stop_repetition=True, engine="vllm")


def test_cli_refuses_stop_repetition_with_another_engine(capsys):
    from srlm.cli import main

    assert main(["eval", "--model", "m", "--benchmarks", "gsm8k", "--engine", "openai", "--stop-repetition"]) == 2
    assert "--stop-repetition: only the hf engine" in capsys.readouterr().err
