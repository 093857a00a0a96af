"""`srlm grade FILE.jsonl`."""

import json

import pytest

from srlm.cli import main


def _write(tmp_path, lines):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_grade_writes_one_verdict_per_line(tmp_path, capsys):
    path = _write(tmp_path, [
        json.dumps({"response": "\\boxed{5}", "gold": "5"}),
        json.dumps({"response": "#### 7", "gold": 8}),
        "",
        json.dumps({"response": "no idea", "gold": "3"}),
    ])
    assert main(["grade", str(path)]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["correct"] for r in rows] == [True, False, False]
    assert [r["method"] for r in rows] == ["boxed", "gsm8k", "none"]
    assert rows[2]["extracted"] is None
    assert "n=3" in err and "accuracy=0.3333" in err and "extraction_failures=1" in err
    assert "by_method(n@accuracy): boxed=1@1.00 gsm8k=1@0.00 none=1@0.00" in err


def test_grade_custom_fields(tmp_path, capsys):
    path = _write(tmp_path, [json.dumps({"text": "<think>a</think><answer>2</answer>", "answer": "2"})])
    assert main(["grade", str(path), "--response-field", "text", "--gold-field", "answer",
                 "--benchmark", "gsm8k"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row == {"correct": True, "extracted": "2", "method": "answer_tag", "format_ok": True}


@pytest.mark.parametrize("lines,message", [
    (['{"response": "x", "gold": "1"}', "{bad"], ":2: malformed JSON line"),
    (['{"response": "x"}'], ":1: missing field 'gold'"),
    (['[1, 2]'], ":1: expected a JSON object"),
    ([], "no lines to grade (the file is empty)"),
    (['{"response": {"a": 1}, "gold": "1"}'], "field 'response' must be a string"),
])
def test_grade_reports_bad_lines(tmp_path, capsys, lines, message):
    path = _write(tmp_path, lines)
    assert main(["grade", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err and str(path) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_grade_missing_file(tmp_path, capsys):
    assert main(["grade", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_grade_explain_prints_the_steps_and_the_deciding_comparison(tmp_path, capsys):
    path = _write(tmp_path, [
        json.dumps({"response": "<think>r</think> The roots are $\\boxed{3}$ and $\\boxed{5}$.", "gold": "3, 5"}),
        json.dumps({"response": "So he needs 4 books to remove the 15 books.", "gold": "15"}),
        json.dumps({"response": "Final Answer: The final answer is 7.21. I hope it is correct.", "gold": "7.2"}),
    ])
    assert main(["grade", str(path), "--explain"]) == 0
    out = capsys.readouterr().out
    cases = out.split("case ")[1:]
    assert [c.splitlines()[0] for c in cases] == ["1: correct", "2: wrong", "3: wrong"]
    assert "boxes: 2 non-empty, last '5' -> read together as '3, 5'" in cases[0]
    assert "rule that fired: boxed -> '3, 5'" in cases[0] and "verdict: correct" in cases[0]
    assert "last number: '15'; as a committed answer: none" in cases[1]
    assert "comparison: no_answer tier decided not equal" in cases[1]
    assert "a short decimal, fewer than 3 significant digits: exact" in cases[2]
    assert "comparison: structure tier decided not equal" in cases[2]


def test_grade_hostile_lines_get_a_verdict_each_not_a_traceback(tmp_path, capsys):
    """A 5000-digit number and 100k nested brackets (model output is untrusted text)."""
    lines = [json.dumps({"response": f"<answer>{'9' * 5000}</answer>", "gold": "9" * 5000}),
             json.dumps({"response": "\\boxed{" + "(" * 100_000 + ")" * 100_000 + "}", "gold": "1"}),
             json.dumps({"response": "[" * 100_000, "gold": "[" * 100_000})]
    assert main(["grade", str(_write(tmp_path, lines))]) == 0
    out, err = capsys.readouterr()
    verdicts = [json.loads(x) for x in out.splitlines()]
    assert [v["correct"] for v in verdicts] == [True, False, False] and "Traceback" not in err
