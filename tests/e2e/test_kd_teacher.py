"""A KD stage whose teacher is another pipeline of the same run: the teacher runs first, its final model
writes the traces (rejection-sampled), and a teacher that gets nothing right fails only its pipeline."""

import json

import pytest

from srlm.cli import main
from test_demo_mini import MINI, ROOT

pytestmark = pytest.mark.e2e


def run_with_teacher(run_dir, teacher_fields: str, student_stage: str, *extra: str) -> int:
    """`srlm run` of the mini demo with three pipelines: base, a teacher (base + SFT) and a student whose
    one stage (`student_stage`, a YAML mapping) learns from that teacher; `teacher_fields` is appended to
    the teacher pipeline's mapping."""
    pipelines = ("pipelines={base: {stages: [{kind: pretrain}]}, "
                 f"teacher: {{extends: base, stages: [{{kind: sft}}]{teacher_fields}}}, "
                 f"student: {{extends: base, stages: [{student_stage}]}}}}")
    return main(["run", str(ROOT / "configs" / "demo.yaml"), f"run_dir={run_dir}", "--no-progress", *MINI,
                 pipelines, *extra])


def test_kd_from_a_teacher_pipeline(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_with_teacher(run_dir, "", "{kind: kd, teacher: teacher, teacher_samples: 2, "
                            "teacher_max_new_tokens: 16, data: {name: synthetic, options: {n: 6}}}",
                            "--only", "student")
    out = capsys.readouterr().out
    assert code == 1, out  # an untrained tiny teacher answers nothing correctly
    student = json.loads((run_dir / "student" / "pipeline.json").read_text())
    assert student["status"] == "failed" and "no correct trace" in student["reason"]
    teacher = json.loads((run_dir / "teacher" / "pipeline.json").read_text())
    assert teacher["status"] == "done"  # run first, because the student needed it
    kd = [json.loads(p.read_text()) for p in run_dir.glob("stages/kd-*/manifest.json")]
    assert len(kd) == 1 and kd[0]["config"]["teacher"].endswith("checkpoint")
    done = (run_dir / "stages" / f"kd-{kd[0]['key']}" / "teacher_traces.jsonl.done").read_text().split()
    assert len(done) == 6  # every problem was tried, none accepted


def test_logit_distillation_stage_from_a_teacher_pipeline(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_with_teacher(run_dir, ", evaluate: false",
                            "{kind: distill, teacher: teacher, steps: 3, batch_size: 4, prompt: tags_brief, "
                            "data: {name: synthetic, options: {n: 12}}}")
    out = capsys.readouterr().out
    assert code == 0, out
    (distill,) = [json.loads(p.read_text()) for p in run_dir.glob("stages/distill-*/manifest.json")]
    assert distill["status"] == "done" and distill["config"]["teacher"].endswith("checkpoint")
    assert (run_dir / "student" / "eval" / "summary.json").exists()
    assert not (run_dir / "teacher" / "eval").exists()
