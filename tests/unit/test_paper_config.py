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
    assert cfg.eval.prompt == "lighteval" and not cfg.eval.benchmark_prompts  # section 3.4: LightEval
    assert cfg.grpo.rewards == ["format", "accuracy"] and cfg.grpo.aggregation == "seq_mean"
    assert not cfg.model.trust_remote_code


# Appendix C.1 of the paper ("Implementation Settings"), sentence by sentence, with the numbers it states.
# The sentences are checked against the paper's text below, so a number here cannot drift from the paper.
PAPER = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "seed-paper.md"
C1 = {
    "For full fine-tuning, we set the learning rate to 4.0e-05 and train for 4 epochs with a maximum "
    "sequence length of 8192.": {"sft_lr": 4.0e-5, "sft_epochs": 4, "sft_max_length": 8192},
    "For LoRA-based training, we increase the learning rate to 1.0e-04.": {"lora_lr": 1.0e-4},
    "GRPO-based RL training, we set the learning rate to 1.0e-06, with 16 generations per training step and a "
    "maximum completion time of 2048.": {"grpo_lr": 1.0e-6, "group_size": 16, "completion_length": 2048},
}
STATED = {k: v for numbers in C1.values() for k, v in numbers.items()}


def test_the_appendix_numbers_are_the_papers():
    import re

    import pytest

    if not PAPER.exists():
        pytest.skip(f"the paper's text is not at {PAPER}")
    text = " ".join(PAPER.read_text(encoding="utf-8").split())
    for sentence, numbers in C1.items():
        assert sentence in text, sentence
        found = [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e-\d+)?", sentence)]
        assert sorted(found) == sorted(float(v) for v in numbers.values())


def test_study_uses_the_appendix_training_settings():
    cfg = load_config(STUDY)
    full_sft = [s for _, s in pipeline_stages(cfg, "base_sft")][0]
    assert (full_sft.lr, full_sft.epochs, full_sft.max_length) == (
        STATED["sft_lr"], STATED["sft_epochs"], STATED["sft_max_length"])
    grpo = [s for kind, s in pipeline_stages(cfg, "base_sft_rl") if kind == "grpo"][0]
    assert (grpo.lr, grpo.group_size, grpo.max_new_tokens) == (
        STATED["grpo_lr"], STATED["group_size"], STATED["completion_length"])
    for name in cfg.pipelines:
        for kind, stage in pipeline_stages(cfg, name):
            if kind == "grpo":
                assert (stage.lr, stage.group_size, stage.max_new_tokens) == (
                    STATED["grpo_lr"], STATED["group_size"], STATED["completion_length"]), name
                continue
            # SFT, and KD (the paper's KD is SFT on teacher traces; C.1 gives it no other settings)
            assert stage.lr == (STATED["lora_lr"] if stage.lora.enabled else STATED["sft_lr"]), name
            assert (stage.epochs, stage.max_length) == (STATED["sft_epochs"], STATED["sft_max_length"]), name


def test_the_studys_key_settings_say_where_they_come_from():
    """Learning rates, lengths, G and sampling: each line cites the paper or says it is srlm's choice."""
    lines = STUDY.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sft:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("pipelines:"))
    values = [line for line in lines[start:end] if line.startswith("  ") and ":" in line.split("#")[0]]
    for key in ("lr:", "epochs:", "max_length:", "group_size:", "max_new_tokens:", "temperature:", "top_p:"):
        for line in values:
            if line.strip().startswith(key):
                assert "# paper" in line or "# srlm" in line, line


def test_baseline_evaluates_table_1s_two_rows_with_the_studys_protocol():
    baseline = load_config(STUDY.parent / "baseline.yaml")
    study = load_config(STUDY)
    rows = {p.label: (pipeline_start(baseline, name), pipeline_stages(baseline, name))
            for name, p in baseline.pipelines.items()}
    assert rows == {"Qwen2.5-0.5B": ("Qwen/Qwen2.5-0.5B", []),
                    "Qwen2.5-0.5B-Instruct": ("Qwen/Qwen2.5-0.5B-Instruct", [])}
    assert baseline.eval.engine == "vllm" and baseline.eval.gpu_memory_utilization == 0.95  # section 3.4
    assert baseline.model.dtype == "bfloat16" and baseline.device == "cuda"
    keep = ("benchmarks", "prompt", "benchmark_prompts", "num_fewshot", "n", "temperature", "top_p",
            "max_new_tokens", "stop_repetition", "seed", "engine")
    assert {k: getattr(baseline.eval, k) for k in keep} == {k: getattr(study.eval, k) for k in keep}
