"""configs/real/smollm2_gsm8k.yaml: the study in miniature on SmolLM2 loads and keeps the issue's protocol."""

from pathlib import Path

from srlm.config import load_config, stage_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "real" / "smollm2_gsm8k.yaml"


def test_real_study_config_rows_and_protocol():
    cfg = load_config(CONFIG, [])
    assert cfg.model.name_or_path == "models/smollm2-135m-instruct"
    assert set(cfg.pipelines) == {"instruct", "instruct_sft", "instruct_sft_lora", "instruct_sft_rl", "instruct_rl"}
    (bench,) = cfg.eval.benchmarks
    assert bench.name == "gsm8k" and bench.split == "test" and bench.limit >= 300  # one fixed subset
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.prompt) == (0.6, 0.95, "tags")  # the paper's sampling
    lora = stage_config(cfg, cfg.pipelines["instruct_sft_lora"].stages[0], "pipelines.instruct_sft_lora.stages[0]")
    assert lora.lora.enabled and cfg.grpo.rewards == ["format", "accuracy"]
    assert cfg.pipelines["instruct_sft_rl"].extends == "instruct_sft"
