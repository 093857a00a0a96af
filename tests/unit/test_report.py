"""Report tables: paper shape, best per column in bold, the paper's markers, CSV and LaTeX."""

from srlm.report import Row, accuracy_table, cost_table, csv_text, latex, markdown, report_markdown


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
