"""The paper's study config: every row of Tables 2 and 3 as a pipeline with the right stages."""

from pathlib import Path

from srlm.config import load_config, pipeline_stages, pipeline_start

STUDY = Path(__file__).resolve().parents[2] / "configs" / "paper" / "study.yaml"

# row label -> (start model, [(stage kind, lora)])
ROWS = {}
for start, prefix in (("Qwen/Qwen2.5-0.5B", "0.5B"), ("Qwen/Qwen2.5-0.5B-Instruct", "0.5B-Instruct")):
    for name, stages in {
        "KD": [("kd", False)], "KD (LoRA)": [("kd", True)], "SFT": [("sft", False)], "SFT (LoRA)": [("sft", True)],
        "RL": [("grpo", False)], "KD + RL": [("kd", False), ("grpo", False)],
        "KD (LoRA) + RL": [("kd", True), ("grpo", False)], "SFT + RL": [("sft", False), ("grpo", False)],
        "SFT (LoRA) + RL": [("sft", True), ("grpo", False)],
    }.items():
        ROWS[f"{prefix} + {name}"] = (start, stages)
ROWS["Qwen2.5-0.5B"] = ("Qwen/Qwen2.5-0.5B", [])
ROWS["Qwen2.5-0.5B-Instruct"] = ("Qwen/Qwen2.5-0.5B-Instruct", [])


def test_study_has_every_row_of_tables_2_and_3():
    cfg = load_config(STUDY)
    found = {}
    for name, p in cfg.pipelines.items():
        stages = [(kind, s.lora.enabled) for kind, s in pipeline_stages(cfg, name)]
        found[p.label] = (pipeline_start(cfg, name), stages)
    assert found == ROWS


def test_study_uses_the_papers_evaluation_protocol():
    cfg = load_config(STUDY)
    assert [b.name for b in cfg.eval.benchmarks] == ["olympiadbench", "math500", "minerva_math", "amc23", "gsm8k"]
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.max_new_tokens) == (0.6, 0.95, 32768)
    assert cfg.grpo.rewards == ["format", "accuracy"] and cfg.grpo.aggregation == "seq_mean"
    assert not cfg.model.trust_remote_code
