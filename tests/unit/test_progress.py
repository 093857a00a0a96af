"""The overall progress line: stage k of n, elapsed, an estimate from the stages that ran (fake clock)."""

from srlm.progress import RunProgress, duration


def test_progress_line_counts_units_once_and_estimates_from_the_units_that_ran():
    now, lines = [0.0], []
    p = RunProgress(total=4, clock=lambda: now[0], write=lines.append)
    p.skip("pretrain-a")  # done in an earlier run: counted, not timed
    p.pipeline = "base_sft"
    p.announce("sft-b", "sft")
    now[0] = 60.0
    p.announce("sft-b", "sft")  # the same stage reached again through another pipeline: no new line
    p.pipeline = "base_sft_rl"
    p.announce("grpo-c", "grpo")
    now[0] = 200.0
    p.announce("eval:base_sft_rl", "evaluation")
    now[0] = 210.0
    p.finish()
    assert lines == ["[stage 2 of 4] base_sft: sft | 0s elapsed",
                     "[stage 3 of 4] base_sft_rl: grpo | 1m00s elapsed | about 2m00s left",
                     "[stage 4 of 4] base_sft_rl: evaluation | 3m20s elapsed | about 1m40s left",
                     "[done] 4 stages in 3m30s"]


def test_duration():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_demo_config_counts_every_distinct_stage_and_evaluation():
    from pathlib import Path

    from srlm.config import load_config
    from srlm.pipeline import count_units

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    assert count_units(cfg, list(cfg.pipelines)) == 14 + 14  # 14 stage folders (shared prefixes once), 14 evals
    assert count_units(cfg, ["base_kd"]) == 4 + 2  # pretrain, sft, grpo of the teacher, kd; both evaluated
