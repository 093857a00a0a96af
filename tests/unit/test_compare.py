"""`srlm compare`: two hand-made run folders, rows matched by pipeline, B - A paired where protocols match."""

import json

from fake_run import make_run, write_pipeline

from srlm.cli import main


def _stages(run, name):
    return json.loads((run / name / "pipeline.json").read_text())["stages"]


def test_compare_pairs_matching_protocols_and_refuses_the_others(tmp_path, capsys):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    write_pipeline(b, "base_sft", _stages(b, "base_sft"), {f"p{i}": [1, 0] for i in range(8)})  # A: [i % 2, 0]
    write_pipeline(b, "base_rl", _stages(b, "base_rl"), {f"p{i}": [1, 0] for i in range(8)},
                   protocol={"n": 2, "temperature": 1.0})
    assert main(["compare", str(a), str(b), "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "| method | synthetic A | synthetic B | synthetic B − A |" in out
    # per-problem differences: 0.5 on the 4 even problems, 0 on the odd ones -> +25.0, se 9.4
    assert "| base + SFT | 25.0 ± 9.4 | 50.0 ± 0.0 | **+25.0 ± 9.4** |" in out
    assert "| base + SFT + RL | 75.0 ± 9.4 | 75.0 ± 9.4 | +0.0 ± 0.0 |" in out
    assert "| base + RL | 18.8 ± 9.1 | 50.0 ± 0.0 | protocol differs |" in out
    assert "base + RL: evaluation protocols differ (temperature)" in out
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == "method,benchmark,mean_a,se_a,mean_b,se_b,difference,se,n_problems,same_protocol"
    assert lines[2].startswith("base + SFT,synthetic,25.0,") and lines[4].endswith(",,,,0")


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    make_run(tmp_path / "a")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
