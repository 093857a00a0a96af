"""Report tables: paper shape, best per column in bold, the paper's markers, CSV and LaTeX."""

import io

import pytest

from srlm.report_tables import (
    Gain, Row, StageCost, accuracy_records, accuracy_table, cost_table, csv_records, format_table, gains_table, latex,
    marks_legend, markdown, pipeline_cost_table, report_markdown, start_groups,
)


def _bench(acc, se=0.01, no_answer=False):
    return {"accuracy": acc, "accuracy_se": se, "no_answer": no_answer, "format_rate": 1.0, "extraction_rate": 1.0}


ROWS = [
    Row("base", "done", {"gsm8k": _bench(0.0, no_answer=True), "math500": _bench(0.0, no_answer=True)}),
    Row("base + SFT", "done", {"gsm8k": _bench(0.216), "math500": _bench(0.092)}),
    Row("base + RL", "done", {"gsm8k": _bench(0.342), "math500": _bench(0.236)}),
    Row("base + SFT + RL", "collapsed", {}, reason="format rate fell to 0.01"),
    Row("broken", "failed", {}, reason="RuntimeError: out of memory"),
]


def test_accuracy_table_shape_and_markers():
    t = accuracy_table(ROWS)
    assert t[0] == ["method", "gsm8k", "math500"]
    assert t[1][1:] == ["†", "†"]
    assert t[2][1:] == ["21.6 ± 1.0", "9.2 ± 1.0"]
    assert t[3][1:] == ["**34.2 ± 1.0**", "**23.6 ± 1.0**"]  # best per column in bold
    assert t[4][1:] == ["‡", "‡"]
    assert t[5][1:] == ["failed", "failed"]


def test_renderings():
    t = accuracy_table(ROWS)
    md = markdown(t)
    assert md.splitlines()[0] == "| method | gsm8k | math500 |" and md.splitlines()[1] == "|---|---|---|"
    tex = latex(t)
    assert r"\textbf{34.2 $\pm$ 1.0}" in tex and r"$\ddagger$" in tex and r"$\dagger$" in tex
    assert tex.startswith(r"\begin{tabular}{lcc}")


def test_report_markdown_lists_problems_and_plots():
    text = report_markdown("r", ROWS, plots=[("Accuracy", "plots/accuracy.png")])
    assert "format rate fell to 0.01" in text and "out of memory" in text
    assert "![Accuracy](plots/accuracy.png)" in text


def test_bold_rule_is_stated_and_marks_legend_only_for_marks_that_appear():
    text = report_markdown("r", ROWS)
    assert "Bold: the highest accuracy in each column" in text
    assert "† no answer" in text and "‡ the RL stage collapsed" in text
    plain = [ROWS[1], ROWS[2]]
    assert marks_legend(accuracy_table(plain)) == ""
    text = report_markdown("r", plain)
    assert "†" not in text and "‡" not in text
    assert marks_legend(accuracy_table([ROWS[0], ROWS[1]])).startswith("† no answer")  # ‡ absent: no legend


def test_format_table_says_n_a_where_the_prompt_asks_for_no_format():
    asks = {**_bench(0.5), "format_rate": 0.9, "extraction_rate": 0.95, "truncation_rate": 0.1,
            "tokens_generated": 3000, "wall_seconds": 2.0}
    free = {**asks, "format_rate": None}
    old = {"accuracy": 0.5, "accuracy_se": 0.1, "extraction_rate": 1.0}  # a summary from before the field
    t = format_table([Row("a", "done", {"b": asks}), Row("c", "done", {"b": free}), Row("d", "done", {"b": old})])
    assert t[0] == ["method", "b format / extracted", "eval tokens/s"]
    assert t[1][1:] == ["90 / 95", "1,500"]
    assert t[2][1:] == ["n/a / 95", "1,500"]
    assert t[3][1:] == ["n/a / 100", "–"]


def test_csv_has_numeric_columns_that_pandas_reads_as_numbers():
    pd = pytest.importorskip("pandas", reason="pandas not installed (pip install -e .[dev])")
    rows = ROWS + [Row("free", "done", {"gsm8k": {**_bench(0.25), "format_rate": None, "truncation_rate": 0.5,
                                                  "tokens_generated": 100, "wall_seconds": 4.0}})]
    df = pd.read_csv(io.StringIO(csv_records(accuracy_records(rows))))
    for col in ("mean", "se", "format_rate", "extraction_rate", "truncation_rate", "tokens_per_s"):
        assert pd.api.types.is_float_dtype(df[col]), col
    got = df[(df.method == "base + SFT") & (df.benchmark == "gsm8k")].iloc[0]
    assert got["mean"] == pytest.approx(21.6) and got["se"] == pytest.approx(1.0) and got["status"] == "done"
    free = df[df.method == "free"].iloc[0]
    assert pd.isna(free["format_rate"]) and free["truncation_rate"] == 50 and free["tokens_per_s"] == 25
    assert df[df.method == "broken"]["mean"].isna().all()  # a failed row: missing, not a string


def _stage(d, seconds, tokens=100):
    return {"kind": d.split("/")[-1], "status": "done", "reason": None, "dir": d,
            "cost": {"wall_seconds": seconds, "device_hours": seconds / 3600, "tokens": tokens, "device": "cpu",
                     "peak_memory_gb": 1.0}}


def test_cost_per_stage_counts_a_shared_stage_once_and_pipelines_total_their_own():
    from srlm.report_folder import collect_stages

    rows = [Row("base", "done", stages=[_stage("s/pretrain", 100)]),
            Row("base + SFT", "done", stages=[_stage("s/pretrain", 100), _stage("s/sft", 10)]),
            Row("base + SFT + RL", "done", stages=[_stage("s/pretrain", 100), _stage("s/sft", 10),
                                                   _stage("s/grpo", 50, tokens=1000)])]
    stages = collect_stages(rows)
    t = cost_table(stages)
    assert [r[0] for r in t[1:]] == ["base (pretrain)", "base + SFT (sft)", "base + SFT + RL (grpo)"]
    assert [r[3] for r in t[1:]] == ["100", "10", "50"] and [r[-1] for r in t[1:]] == ["3", "2", "1"]
    assert t[3][7] == "20"  # tokens/s
    p = pipeline_cost_table(rows, stages)
    assert [r[3] for r in p[1:]] == ["100", "110", "160", "160"]  # the whole run counts each stage once
    assert p[-1][0] == "whole run" and p[-1][2] == "3"
    text = report_markdown("r", rows, stages=stages)
    assert "counts each shared stage once" in text and "## Compute cost per stage" in text


def test_rows_group_by_starting_model():
    def row(label, dirs, start="tiny"):
        return Row(label, "done", stages=[_stage(d, 1) for d in dirs], start=start)

    rows = [row("tiny base", ["p"]), row("tiny instruct", ["p", "i"]), row("base + SFT", ["p", "s"]),
            row("base + SFT + RL", ["p", "s", "g"]), row("instruct + SFT", ["p", "i", "s2"]),
            row("instruct + RL", ["p", "i", "g2"]), row("Qwen", [], start="Q"), row("Qwen + SFT", ["q"], start="Q"),
            row("other", ["o"], start="Other")]
    groups = {name: [r.label for r in members] for name, members in start_groups(rows)}
    assert groups == {"tiny base": ["tiny base", "base + SFT", "base + SFT + RL"],
                      "tiny instruct": ["tiny instruct", "instruct + SFT", "instruct + RL"],
                      "Qwen": ["Qwen", "Qwen + SFT"], "Other": ["other"]}


def test_moving_average_skips_missing_values():
    from srlm.report_folder import moving_average

    assert moving_average([1, 3, float("nan"), 5], 2) == [1, 2, 3, 5]


def test_gains_table_bolds_changes_beyond_two_standard_errors():
    gains = [
        Gain("base + SFT + RL", "base + SFT", {"gsm8k": {"difference": 0.045, "se": 0.009, "n_problems": 9},
                                             "math500": {"difference": 0.01, "se": 0.02, "n_problems": 9}}),
        Gain("base + KD + RL", "base + KD", {"gsm8k": {"difference": -0.05, "se": 0.02, "n_problems": 9}}),
    ]
    t = gains_table(gains)
    assert t[0] == ["method", "started from", "gsm8k", "math500"]
    assert t[1] == ["base + SFT + RL", "base + SFT", "**+4.5 ± 0.9**", "+1.0 ± 2.0"]
    assert t[2] == ["base + KD + RL", "base + KD", "**-5.0 ± 2.0**", "–"]  # a significant loss is shown too
    text = report_markdown("r", ROWS, gains=gains)
    assert "## What each stage adds" in text and "| base + SFT + RL | base + SFT | **+4.5 ± 0.9** |" in text
    assert "What each stage adds" not in report_markdown("r", ROWS)


def _pipeline(run_dir, name, stage_dirs, correct_by_problem, protocol):
    import json

    folder = run_dir / name
    (folder / "eval" / "synthetic").mkdir(parents=True)
    stages = [{"kind": "sft", "status": "done", "reason": None, "dir": d, "cost": {}} for d in stage_dirs]
    (folder / "pipeline.json").write_text(json.dumps({"name": name, "status": "done", "stages": stages}))
    summary = {"benchmarks": {"synthetic": {"accuracy": 0.5, "accuracy_se": 0.1, "format_rate": 1.0,
                                            "extraction_rate": 1.0}}}
    (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    (folder / "eval" / "eval_settings.json").write_text(json.dumps({"protocol": protocol}))
    lines = [json.dumps({"id": pid, "sample": j, "correct": c}) for pid, cs in correct_by_problem.items()
             for j, c in enumerate(cs)]
    (folder / "eval" / "synthetic" / "samples.jsonl").write_text("\n".join(lines) + "\n")


def test_collect_gains_pairs_each_row_with_the_row_it_extends(tmp_path):
    from srlm.report_folder import collect_gains, collect_rows

    proto = {"n": 2, "temperature": 0.6}
    _pipeline(tmp_path, "base", ["s/pre"], {"a": [0, 0], "b": [1, 0], "c": [0, 0]}, proto)
    _pipeline(tmp_path, "base_sft", ["s/pre", "s/sft"], {"a": [1, 0], "b": [1, 1], "c": [1, 1]}, proto)
    _pipeline(tmp_path, "other_protocol", ["s/pre", "s/sft2"], {"a": [1, 1], "b": [1, 1], "c": [1, 1]},
              {"n": 2, "temperature": 1.0})
    gains = collect_gains(tmp_path, collect_rows(tmp_path))
    assert [(g.label, g.start) for g in gains] == [("base_sft", "base")]  # other protocol: not comparable
    d = gains[0].benchmarks["synthetic"]  # per-problem differences 0.5, 0.5, 1.0
    assert d["n_problems"] == 3 and abs(d["difference"] - 2 / 3) < 1e-12


def test_eval_speed_is_not_reported_for_an_evaluation_found_complete_on_resume():
    resumed = {**_bench(0.5), "tokens_generated": 50_000, "wall_seconds": 0.004}  # only re-read its samples
    assert format_table([Row("a", "done", {"b": resumed})])[1][-1] == "–"


def test_an_incomplete_evaluation_is_marked_in_its_cell_with_a_legend_and_in_the_csv():
    """A summary with `complete: false` (a problem lacks samples, e.g. damaged lines were skipped): § in
    its cell (never bold: its accuracy is over fewer problems), the legend line, `complete` 0 in the CSV."""
    part = {**_bench(0.5), "complete": False, "n_problems": 40, "n_records": 60}
    rows = [Row("full", "done", {"gsm8k": {**_bench(0.3), "complete": True}}), Row("part", "done", {"gsm8k": part}),
            Row("older", "done", {"gsm8k": _bench(0.2)}),  # a summary from before the field: complete
            Row("none", "done", {"gsm8k": {**part, "no_answer": True}})]
    t = accuracy_table(rows)
    assert [r[1] for r in t[1:]] == ["**30.0 ± 1.0**", "50.0 ± 1.0 §", "20.0 ± 1.0", "† §"]
    legend = marks_legend(t)
    assert "§ the evaluation is incomplete: fewer problems were scored than the benchmark has" in legend
    assert legend.startswith("† no answer")
    assert "§ the evaluation is incomplete" in report_markdown("r", rows)
    assert marks_legend(accuracy_table([rows[0], rows[2]])) == "" and "§" not in report_markdown("r", rows[:1])
    assert r"50.0 $\pm$ 1.0 \S{}" in latex(t)
    assert [r["complete"] for r in accuracy_records(rows)] == [1, 0, 1, 0]
    assert "complete" in csv_records(accuracy_records(rows)).splitlines()[0].split(",")
    failed = accuracy_records([rows[0], Row("broken", "failed", {}, reason="x")])[1]
    assert failed["complete"] is None  # no evaluation: nothing to say


def test_srlm_run_prints_the_legend_of_the_marks_in_its_accuracy_table(monkeypatch, capsys, tmp_path):
    import srlm.pipeline
    import srlm.report_folder
    from srlm.commands.run import execute
    from srlm.config import load_config

    part = {**_bench(0.5), "complete": False}
    monkeypatch.setattr(srlm.pipeline, "run_all", lambda cfg, progress, only: [])
    monkeypatch.setattr(srlm.report_folder, "collect_rows", lambda run_dir: [Row("part", "done", {"gsm8k": part})])
    assert execute(load_config(None, [f"run_dir={tmp_path}"])) == 0
    out = capsys.readouterr().out
    assert "| part | 50.0 ± 1.0 § |" in out and "§ the evaluation is incomplete" in out
    monkeypatch.setattr(srlm.report_folder, "collect_rows", lambda run_dir: [Row("all", "done", {"gsm8k": _bench(0.5)})])
    assert execute(load_config(None, [f"run_dir={tmp_path}"])) == 0
    assert "§" not in capsys.readouterr().out


def test_srlm_eval_marks_an_incomplete_summary_in_its_table_with_the_legend():
    from srlm.commands.eval import summary_table

    full = {**_bench(0.5), "n_problems": 50, "pass_at_k": {}, "format_rate": 1.0, "extraction_failure_rate": 0.0,
            "truncation_rate": 0.0, "mean_response_tokens": 10.0}
    table = summary_table({"benchmarks": {"a": full, "b": {**full, "complete": False}}})
    a, b = table.splitlines()[1:3]
    assert "§" not in a and "50.0 ± 1.0 §" in b
    assert table.splitlines()[-1].startswith("§ the evaluation is incomplete")
    assert "§" not in summary_table({"benchmarks": {"a": full}})
