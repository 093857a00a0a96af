"""Stage kind `kd`, the paper's sequence-level knowledge distillation: SFT on teacher traces.

Without `teacher`, the dataset's own traces are the completions (default: CAMEL's GSM8K-distilled R1
traces). With it, the teacher first samples `teacher_samples` responses per problem and only those the
grader marks correct are kept (`generate_traces`: rejection sampling, resumable; also `srlm kd generate`),
then the student is fine-tuned on them with `sft.run_sft`. Logit-level distillation is the kind `distill`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from srlm.data.jsonl import json_objects
from srlm.data.prepare import trace_solution
from srlm.data.prompts import render_prompt, stop_token_ids
from srlm.data.sources import exact_answers, load_stage_records
from srlm.errors import UserError
from srlm.faults import fault_point
from srlm.models import load_model
from srlm.files import atomic_write_text
from srlm.train.sft import run_sft


def run_kd(cfg, model_dir: Path, out_dir: Path, device: torch.device, progress: bool = True) -> dict:
    """The paper's KD: SFT on teacher traces. Without `cfg.teacher`, the dataset's own traces; with it, the
    teacher first samples `teacher_samples` traces per problem and only the correct ones are kept
    (`generate_traces`, resumable), then the student is fine-tuned on them."""
    if not getattr(cfg, "teacher", None):
        return run_sft(cfg, model_dir, out_dir, device, progress, desc="kd")
    traces = Path(out_dir) / "teacher_traces.jsonl"
    counts = generate_traces(cfg.teacher, load_stage_records(cfg.data), traces, device,
                             samples=cfg.teacher_samples, prompt=cfg.prompt,
                             max_new_tokens=cfg.teacher_max_new_tokens, temperature=cfg.teacher_temperature,
                             seed=cfg.seed, progress=progress)
    records = [record for record, _ in json_objects(traces)]
    if not records:
        raise UserError(f"the teacher {cfg.teacher} wrote no correct trace for {cfg.data.name}; "
                        f"a stronger teacher or more teacher_samples is needed")
    summary = run_sft(cfg, model_dir, out_dir, device, progress, records=records, desc="kd")
    summary["teacher"] = counts
    return summary


# ---------------------------------------------------------------------------------------- teacher traces


def _read_done(out: Path) -> set[str]:
    done_file = out.with_name(out.name + ".done")
    if not done_file.exists():
        return set()
    return {ln for ln in done_file.read_text(encoding="utf-8").splitlines() if ln}


def _drop_unfinished(out: Path, done: set[str]) -> None:
    """Remove records of problems not marked done (a run killed between writing them and the marker)."""
    if not out.exists():
        return
    lines = out.read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if ln.strip() and _problem_of(json.loads(ln)) in done] if lines else []
    if len(kept) != len(lines):
        atomic_write_text(out, "".join(ln + "\n" for ln in kept))


def _problem_of(record: dict) -> str:
    return str((record.get("meta") or {}).get("problem_id"))


def generate_traces(teacher_dir: str, records: list[dict], out: Path, device: torch.device, samples: int = 4,
                    prompt: str = "tags", max_new_tokens: int = 1024, temperature: float = 0.7, top_p: float = 1.0,
                    batch_problems: int = 16, seed: int = 0, benchmark: str | None = None,
                    progress: bool = True) -> dict:
    """Rejection sampling: `samples` teacher responses per problem, keep those the grader marks correct,
    append them to `out` as canonical records whose `solution` is the paper-format completion.

    Resumable: after each problem its id goes to `out.done`; a re-run skips done problems and drops
    records of a problem that was cut off half-written. Returns counts and the acceptance rate.
    """
    from srlm.engines import EngineOptions, build_engine
    from srlm.engines.base import SamplingParams, prompt_seeds
    from srlm.grading import grade

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_done(out)
    _drop_unfinished(out, done)
    todo = [r for r in records if str(r["id"]) not in done]
    # problem i samples from its own seed, so a resumed run (fewer problems to do) samples what the
    # uninterrupted one would have
    seed_of = dict(zip((str(r["id"]) for r in records), prompt_seeds(seed, len(records))))
    counts = {"problems": len(records), "skipped_done": len(records) - len(todo), "sampled": 0, "accepted": 0,
              "problems_with_accepted": 0, "reformatted": 0}
    if todo:
        engine, tok = build_engine("hf", EngineOptions(model=str(teacher_dir), batch_size=64),
                                   loaded=load_model(teacher_dir, device, dtype="auto"))
        stops = tuple(stop_token_ids(tok))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="kd", unit="problem")
        with open(out, "a", encoding="utf-8") as f, open(out.with_name(out.name + ".done"), "a") as done_f:
            for start in range(0, len(todo), batch_problems):
                chunk = todo[start:start + batch_problems]
                prompts = [tok.encode(render_prompt(tok, prompt, r["question"]), add_special_tokens=False)
                           for r in chunk]
                sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                          n=samples, stop_token_ids=stops)
                seeds = [seed_of[str(r["id"])] for r in chunk]
                for r, completions in zip(chunk, engine.generate(prompts, sampling, seeds=seeds)):
                    accepted = 0
                    for k, c in enumerate(completions):
                        g = grade(c.text, r["answer"], exact_answers(benchmark))
                        if not g.correct or c.truncated:
                            continue
                        solution, rewritten = trace_solution(c.text, g.extracted)
                        meta = {"problem_id": str(r["id"]), "sample": k, "teacher": str(teacher_dir),
                                "temperature": temperature, "reformatted": rewritten}
                        f.write(json.dumps({"id": f"{r['id']}#{k}", "source": r.get("source"),
                                            "question": r["question"], "answer": r["answer"],
                                            "solution": solution, "meta": meta}) + "\n")
                        accepted += 1
                        counts["reformatted"] += rewritten
                    f.flush()
                    done_f.write(f"{r['id']}\n")
                    done_f.flush()
                    fault_point("traces", after_problem=len(done) + counts["sampled"] // samples + 1)
                    counts["sampled"] += len(completions)
                    counts["accepted"] += accepted
                    counts["problems_with_accepted"] += accepted > 0
                if bar:
                    bar.update(len(chunk))
        if bar:
            bar.close()
    counts["acceptance_rate"] = counts["accepted"] / counts["sampled"] if counts["sampled"] else None
    return counts
