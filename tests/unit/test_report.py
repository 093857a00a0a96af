"""Report tables: paper shape, best per column in bold, the paper's markers, CSV and LaTeX."""

from srlm.report import Gain, Row, accuracy_table, cost_table, csv_text, gains_table, latex, markdown, report_markdown


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
    csv = csv_text(t)
    assert "34.2 ± 1.0" in csv and "**" not in csv
    tex = latex(t)
    assert r"\textbf{34.2 $\pm$ 1.0}" in tex and r"$\ddagger$" in tex and r"$\dagger$" in tex
    assert tex.startswith(r"\begin{tabular}{lcc}")


def test_report_markdown_lists_problems_and_plots():
    text = report_markdown("r", ROWS, plots=[("Accuracy", "plots/accuracy.png")])
    assert "format rate fell to 0.01" in text and "out of memory" in text
    assert "![Accuracy](plots/accuracy.png)" in text
    assert cost_table(ROWS)[0][0] == "method"


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
    from srlm.reporting import collect_gains, collect_rows

    proto = {"n": 2, "temperature": 0.6}
    _pipeline(tmp_path, "base", ["s/pre"], {"a": [0, 0], "b": [1, 0], "c": [0, 0]}, proto)
    _pipeline(tmp_path, "base_sft", ["s/pre", "s/sft"], {"a": [1, 0], "b": [1, 1], "c": [1, 1]}, proto)
    _pipeline(tmp_path, "other_protocol", ["s/pre", "s/sft2"], {"a": [1, 1], "b": [1, 1], "c": [1, 1]},
              {"n": 2, "temperature": 1.0})
    gains = collect_gains(tmp_path, collect_rows(tmp_path))
    assert [(g.label, g.start) for g in gains] == [("base_sft", "base")]  # other protocol: not comparable
    d = gains[0].benchmarks["synthetic"]  # per-problem differences 0.5, 0.5, 1.0
    assert d["n_problems"] == 3 and abs(d["difference"] - 2 / 3) < 1e-12
