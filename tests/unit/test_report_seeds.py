"""Rows over several training seeds, on a hand-made run folder: mean ± SE over problems with the seed SD,
per-seed paired gains, numeric CSV columns; and the config side (which stages a seed enters)."""

import pytest
from fake_run import make_seed_run

from srlm.report_tables import accuracy_table, gains_table
from srlm.report_folder import collect_gains, collect_rows, combine_seeds, write_report


def test_seed_rows_show_the_mean_the_problem_se_and_the_seed_sd(tmp_path):
    run = make_seed_run(tmp_path / "run")
    rows = collect_rows(run)
    assert [r.label for r in rows] == ["tiny base", "base + SFT", "base + SFT + RL"]
    s = rows[1].benchmarks["synthetic"]
    assert s["accuracy"] == pytest.approx(0.5) and s["n_seeds"] == 2
    assert s["seed_sd"] == pytest.approx(0.125 * 2 ** 0.5)  # stdev of 37.5 % and 62.5 %
    # seed-averaged per-problem accuracy: a 1, b 0.75, c 0.25, d 0 -> SE over the 4 problems
    assert s["accuracy_se"] == pytest.approx((sum((x - 0.5) ** 2 for x in (1, .75, .25, 0)) / 3 / 4) ** 0.5)
    t = accuracy_table(rows)
    assert t[1][1] == "0.0 ± 0.0"  # one run: as before
    assert t[2][1] == "50.0 ± 22.8 (SD 17.7, 2 seeds)"
    assert t[3][1] == "**68.8 ± 18.8 (SD 26.5, 2 seeds)**"


def test_seed_gains_pair_each_seed_with_its_own_start(tmp_path):
    run = make_seed_run(tmp_path / "run")
    rows = collect_rows(run)
    gains = {g.label: g for g in collect_gains(run, rows)}
    rl = gains["base + SFT + RL"].benchmarks["synthetic"]
    assert gains["base + SFT + RL"].start == "base + SFT"
    assert [(x["seed"], x["difference"]) for x in rl["per_seed"]] == [(0, 0.125), (1, 0.25)]
    assert rl["difference"] == pytest.approx(0.1875)
    sft = gains["base + SFT"].benchmarks["synthetic"]  # both seeds start from the one shared base
    assert [x["difference"] for x in sft["per_seed"]] == [0.375, 0.625]
    assert gains_table(list(gains.values()))[2][2] == "**+18.8 ± 6.2** (+12.5, +25.0)"  # 18.8 > 2 x 6.2


def test_seed_report_files(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas not installed (pip install -e .[dev])")
    run = make_seed_run(tmp_path / "run")
    write_report(run, ("md", "csv"))
    text = (run / "report.md").read_text()
    assert "standard deviation of the per-seed accuracies" in text and "per-seed gains follow" in text
    acc = pd.read_csv(run / "accuracy.csv")
    assert acc["seed_sd"].isna().tolist() == [True, False, False] and acc["n_seeds"].tolist() == [1, 2, 2]
    gains = pd.read_csv(run / "gains.csv")
    rl = gains[gains.method == "base + SFT + RL"]
    assert rl["seed"].isna().tolist() == [True, False, False] and rl["difference"].tolist() == [18.75, 12.5, 25.0]
    cost = pd.read_csv(run / "cost.csv")  # the shared pre-training once, each seed's stages once
    assert cost["stage"].tolist() == ["tiny base (pretrain)", "base + SFT seed 0 (sft)", "base + SFT seed 1 (sft)",
                                      "base + SFT + RL seed 0 (grpo)", "base + SFT + RL seed 1 (grpo)"]


def test_combine_seeds_marks_format_n_a_when_any_seed_has_none():
    by_seed = {0: {"accuracy": 0.2, "format_rate": None, "truncation_rate": 0.1, "tokens_generated": 10,
                   "wall_seconds": 1.0},
               1: {"accuracy": 0.4, "format_rate": None, "truncation_rate": 0.3, "tokens_generated": 30,
                   "wall_seconds": 1.0}}
    s = combine_seeds(by_seed, {0: {"a": 0.2}, 1: {"a": 0.4}})
    assert s["format_rate"] is None and s["truncation_rate"] == pytest.approx(0.2)
    assert s["tokens_generated"] == 40 and s["accuracy"] == pytest.approx(0.3)


def test_seeds_enter_only_the_stages_of_seeded_pipelines():
    from srlm.config import load_config, pipeline_seeds, pipeline_stages
    from srlm.errors import UserError

    pipes = ("pipelines={base: {stages: [{kind: pretrain}]}, sft: {extends: base, seeds: [0, 1], "
             "stages: [{kind: sft, seed: 5}]}, rl: {extends: sft, stages: [{kind: grpo}]}}")
    cfg = load_config(None, [pipes])
    assert pipeline_seeds(cfg, "base") is None and pipeline_seeds(cfg, "rl") == [0, 1]
    assert [c.seed for _, c in pipeline_stages(cfg, "rl", seed=1)] == [0, 1, 1]  # pretrain shared, unseeded
    assert [c.seed for _, c in pipeline_stages(cfg, "rl")] == [0, 5, 0]
    whole = load_config(None, [pipes, "seeds=[3, 4]"])
    assert pipeline_seeds(whole, "base") == [3, 4]
    assert [c.seed for _, c in pipeline_stages(whole, "rl", seed=4)] == [4, 4, 4]
    with pytest.raises(UserError, match="seeds"):
        load_config(None, ["seeds=[1, 1]"])


def test_a_seed_row_is_incomplete_when_any_seed_evaluation_is():
    full = {"accuracy": 0.5, "no_answer": False, "complete": True}
    per_problem = {0: {"p0": 1.0}, 1: {"p0": 0.0}}
    assert combine_seeds({0: full, 1: full}, per_problem)["complete"] is True
    assert combine_seeds({0: full, 1: {**full, "complete": False}}, per_problem)["complete"] is False
    assert combine_seeds({0: {"accuracy": 0.5}, 1: full}, per_problem)["complete"] is True  # older summary
