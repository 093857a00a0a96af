"""The overall progress line: stage k of n, elapsed, an estimate from the stages that ran (fake clock)."""

from srlm.progress import RunProgress, duration


def test_progress_line_counts_units_once_and_estimates_per_kind_once_each_kind_ran():
    now, lines = [0.0], []
    p = RunProgress({"pretrain": 1, "sft": 2, "eval": 2}, clock=lambda: now[0], write=lines.append)
    p.skip("pretrain-a", "pretrain")  # done in an earlier run: counted, not timed
    p.pipeline = "base_sft"
    p.announce("sft-b", "sft", "sft")
    now[0] = 60.0
    p.announce("sft-b", "sft", "sft")  # the same stage reached again through another pipeline: no new line
    p.announce("eval:base_sft", "evaluation", "eval")  # no evaluation timed yet: no estimate
    now[0] = 70.0
    p.pipeline = "other"
    p.announce("sft-c", "sft", "sft")  # left: this sft (60 s) and one evaluation (10 s)
    now[0] = 100.0
    p.announce("eval:other", "evaluation", "eval")  # sft: (60 + 30) / 2 known; left: this evaluation
    now[0] = 112.0
    p.finish()
    assert lines == ["[stage 2 of 5] base_sft: sft | 0s elapsed",
                     "[stage 3 of 5] base_sft: evaluation | 1m00s elapsed",
                     "[stage 4 of 5] other: sft | 1m10s elapsed | about 1m10s left",
                     "[stage 5 of 5] other: evaluation | 1m40s elapsed | about 10s left",
                     "[done] 5 stages in 1m52s"]


def test_duration():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_demo_config_counts_every_distinct_stage_and_evaluation():
    from pathlib import Path

    from srlm.config import load_config
    from srlm.pipeline import count_units

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    # 14 stage folders (shared prefixes once) and 14 evaluations
    assert count_units(cfg, list(cfg.pipelines)) == {"pretrain": 1, "sft": 5, "kd": 2, "grpo": 6, "eval": 14}
    assert count_units(cfg, ["base_kd"]) == {"pretrain": 1, "sft": 1, "grpo": 1, "kd": 1, "eval": 2}  # + teacher
