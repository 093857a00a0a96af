"""Run a pipeline or a study: stages in order, one folder and manifest per stage, resumable, shared prefixes.

Layout of a run folder:
    RUN/config.yaml                      the resolved config of the whole run
    RUN/stages/<kind>-<key>/             one stage: manifest.json, config.yaml, metrics.jsonl, checkpoint/
    RUN/<pipeline>/pipeline.json         which stage folders the pipeline went through, and its status
    RUN/<pipeline>/eval/                 <benchmark>/samples.jsonl and summary.json of its final checkpoint
    RUN/<pipeline>/seed<s>/              one run per training seed (pipeline.json, eval/) when it has `seeds`
    RUN/start_<model>/                   a starting model evaluated as it is, for its own report row
    RUN/report.md, report.html (+ csv, tex, png)  the tables and plots of every pipeline

A stage's key hashes its kind, its resolved config and its input checkpoint's key, so a prefix shared by
several pipelines (the SFT stage of `sft` and `sft+rl`) runs once, and re-running skips every stage whose
manifest says done, resumes the one that was interrupted, and stops a pipeline at a collapsed stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from srlm import progress as run_progress
from srlm.config import RunConfig, pipeline_seeds, pipeline_stages, pipeline_start
from srlm.errors import NonFiniteLoss, UserError
from srlm.faults import fault_point
from srlm.memory import peak_memory_gb, reset_peak_memory
from srlm.models import resolve_device
from srlm.train.distributed import init_distributed
from srlm.files import atomic_write_json, atomic_write_text


def _stage_runners():
    """kind -> stage function(cfg, model_dir, out_dir, device, progress) -> summary dict."""
    from srlm.train.grpo import run_grpo
    from srlm.train.distill import run_distill
    from srlm.train.kd import run_kd
    from srlm.train.pretrain import run_pretrain
    from srlm.train.sft import run_sft

    return {"pretrain": run_pretrain, "sft": run_sft, "kd": run_kd, "distill": run_distill, "grpo": run_grpo}


def content_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_manifest(stage_dir: Path) -> dict | None:
    p = Path(stage_dir) / "manifest.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None  # a manifest is written atomically, so this is someone else's damage: redo the stage


def device_description(device: torch.device) -> tuple[str, int]:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), max(1, torch.cuda.device_count())
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", 1


@dataclass
class PipelineResult:
    name: str
    status: str  # done | collapsed | failed
    stages: list[dict]
    final_checkpoint: str | None
    eval_summary: dict | None
    reason: str | None = None
    final_key: str | None = None  # the final checkpoint's key (a KD stage it teaches hashes it)


def start_model(cfg: RunConfig, run_dir: Path, name: str) -> tuple[Path | str, str]:
    """(path or hub id, key) of pipeline `name`'s starting model; writes the tiny model when asked for."""
    start = pipeline_start(cfg, name)
    if start == "tiny":
        from srlm.tiny import TinySpec, is_complete_tiny_model, write_tiny_model

        spec = TinySpec(**cfg.model.tiny.model_dump())
        folder = run_dir / "start-model"
        rank_zero = int(os.environ.get("RANK", "0")) == 0
        if rank_zero and not is_complete_tiny_model(folder, spec):  # absent, another shape, or cut short by a kill
            write_tiny_model(folder, spec)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # under a launcher: rank 0 writes it, the others wait for it
        return folder, "tiny:" + content_key(cfg.model.tiny.model_dump())
    return start, "model:" + start


def in_run(path, run_dir: Path) -> str:
    """`path` relative to the run folder when it lies inside it (a run folder can be moved or copied and
    resumed), else as given (a hub id, a model folder elsewhere)."""
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


# Stage fields that say how a stage is computed, not what: equal results up to float rounding, so they stay
# out of stage keys (a run keeps its finished stages, and resumes, under another launcher or with them added).
EXECUTION_FIELDS = ("compile", "fsdp", "micro_batch_tokens")


def stage_key(kind: str, scfg, input_key: str, teacher_key: str | None = None) -> str:
    """The content key of a stage: its kind, its config (less EXECUTION_FIELDS) and its input's key."""
    keyed = {k: v for k, v in scfg.model_dump().items() if k not in EXECUTION_FIELDS}
    if keyed.get("bf16_autocast", 0) is None:  # unset keeps the keys of configs from before the field
        del keyed["bf16_autocast"]
    if teacher_key is not None:
        keyed["teacher"] = teacher_key
    return content_key({"kind": kind, "config": keyed, "input": input_key})


def run_stage(kind: str, scfg, input_path, input_key: str, run_dir: Path, device, progress: bool,
              teacher_key: str | None = None) -> dict:
    """Run (or reuse, or resume) one stage; returns its manifest. The manifest's paths are relative to
    `run_dir`. `teacher_key` (a teacher pipeline's final checkpoint key) stands for the teacher's path in
    the stage's key, so the key does not depend on where the run folder is."""
    key = stage_key(kind, scfg, input_key, teacher_key)
    stage_dir = run_dir / "stages" / f"{kind}-{key}"
    manifest = read_manifest(stage_dir)
    if manifest and manifest["status"] in ("done", "collapsed"):
        run_progress.skip(stage_dir.name, kind)
        rel = in_run(stage_dir, run_dir)  # where the folder is now (an older manifest may hold another path)
        return {**manifest, "dir": rel, "output": {**manifest["output"], "checkpoint": str(Path(rel) / "checkpoint")}}
    run_progress.announce(stage_dir.name, kind, kind)
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / "config.yaml", yaml.safe_dump({kind: scfg.model_dump()}, sort_keys=False))
    dev_name, dev_count = device_description(device)
    rel = in_run(stage_dir, run_dir)
    manifest = {"kind": kind, "key": key, "dir": rel, "config": scfg.model_dump(),
                "input": {"checkpoint": in_run(input_path, run_dir), "key": input_key},
                "output": {"checkpoint": str(Path(rel) / "checkpoint"), "key": f"{kind}-{key}"},
                "status": "running", "started": time.time(), "attempts": (manifest or {}).get("attempts", 0) + 1}
    atomic_write_json(stage_dir / "manifest.json", manifest)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    try:
        summary = _stage_runners()[kind](scfg, Path(input_path), stage_dir, device, progress)
        status, reason = summary.get("status", "done"), summary.get("reason")
    except (UserError, NonFiniteLoss) as e:  # the message says it all
        summary, status, reason = {}, "failed", str(e)
        (stage_dir / "error.txt").write_text(traceback.format_exc())
    except Exception as e:  # noqa: BLE001 - a broken stage fails its pipeline, never the whole study
        summary, status, reason = {}, "failed", f"{type(e).__name__}: {e}"
        (stage_dir / "error.txt").write_text(traceback.format_exc())
    wall = time.perf_counter() - t0
    manifest.update({
        "status": status, "reason": reason, "finished": time.time(), "metrics": summary,
        "cost": {"wall_seconds": wall, "device": dev_name, "device_count": dev_count,
                 "device_hours": wall * dev_count / 3600, "tokens": int(summary.get("tokens", 0) or 0),
                 "peak_memory_gb": peak_memory_gb(device)},
    })
    atomic_write_json(stage_dir / "manifest.json", manifest)
    return manifest


def run_pipeline(cfg: RunConfig, name: str, run_dir: Path, device, progress: bool = True,
                 _active: tuple[str, ...] = (), seed: int | None = None) -> PipelineResult:
    """Run pipeline `name` (stages, then evaluation), reusing every stage that is already done. A pipeline
    with seeds runs once per seed into RUN/<name>/seed<s>/ (`seed` picks one of those runs)."""
    if name in _active:
        raise UserError(f"pipelines.{name}: a KD teacher refers back to it: {' -> '.join(_active + (name,))}")
    seeds = pipeline_seeds(cfg, name)
    if seeds is not None and seed is None:
        return _run_seeds(cfg, name, seeds, run_dir, device, progress, _active)
    folder = name if seed is None else f"{name}/seed{seed}"
    path, key = start_model(cfg, run_dir, name)
    stages = []
    for kind, scfg in pipeline_stages(cfg, name, seed):
        teacher = getattr(scfg, "teacher", None)
        teacher_key = None
        if teacher in cfg.pipelines:  # the teacher is another pipeline's final model: make sure it exists
            t_seeds = pipeline_seeds(cfg, teacher)  # a seeded teacher: its run of this seed, else its first
            t_seed = None if t_seeds is None else (seed if seed in t_seeds else t_seeds[0])
            t = run_pipeline(cfg, teacher, run_dir, device, progress, _active + (name,), seed=t_seed)
            if t.status != "done":
                return _finish(run_dir, folder, PipelineResult(
                    name, "failed", stages, None, None, f"teacher pipeline {teacher!r} ended {t.status}"))
            scfg = scfg.model_copy(update={"teacher": t.final_checkpoint})
            teacher_key = t.final_key
        run_progress.in_pipeline(folder)
        m = run_stage(kind, scfg, path, key, run_dir, device, progress, teacher_key)
        stages.append({"kind": kind, "status": m["status"], "reason": m.get("reason"), "dir": m["dir"],
                       "cost": m.get("cost", {}), "warnings": (m.get("metrics") or {}).get("warnings", [])})
        if m["status"] != "done":
            return _finish(run_dir, folder, PipelineResult(name, m["status"], stages, None, None, m.get("reason")))
        path, key = run_dir / m["output"]["checkpoint"], m["output"]["key"]
        fault_point("pipeline:between_stages", pipeline=name, after=kind)
    summary = None
    if cfg.pipelines[name].evaluate:
        run_progress.in_pipeline(folder)
        run_progress.announce(f"eval:{folder}", "evaluation", "eval")
        try:
            summary = evaluate_checkpoint(cfg, path, key, run_dir / folder / "eval", device, progress,
                                          run_dir=run_dir)
        except Exception as e:  # noqa: BLE001 - like a failed stage: this pipeline fails, the run goes on
            reason = str(e) if isinstance(e, (UserError, OSError)) else f"{type(e).__name__}: {e}"
            return _finish(run_dir, folder, PipelineResult(name, "failed", stages, str(path), None,
                                                           f"evaluation: {reason}", key))
    return _finish(run_dir, folder, PipelineResult(name, "done", stages, str(path), summary, None, key))


def _run_seeds(cfg: RunConfig, name: str, seeds: list[int], run_dir: Path, device, progress: bool,
               _active: tuple[str, ...]) -> PipelineResult:
    """One run of `name` per seed, then RUN/<name>/pipeline.json listing them (the report's row)."""
    runs = [run_pipeline(cfg, name, run_dir, device, progress, _active, seed=s) for s in seeds]
    bad = next((r for r in runs if r.status != "done"), None)
    stages = list({st["dir"]: st for r in runs for st in r.stages}.values())  # every seed's, shared ones once
    result = PipelineResult(name, bad.status if bad else "done", stages, None, None, bad.reason if bad else None)
    atomic_write_json(run_dir / name / "pipeline.json", {
        "name": name, "status": result.status, "reason": result.reason, "stages": stages,
        "final_checkpoint": None, "seeds": {str(s): f"seed{s}" for s in seeds}})
    return result


def _finish(run_dir: Path, name: str, result: PipelineResult) -> PipelineResult:
    folder = run_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    final = in_run(result.final_checkpoint, run_dir) if result.final_checkpoint else None
    atomic_write_json(folder / "pipeline.json", {
        "name": name, "status": result.status, "reason": result.reason, "stages": result.stages,
        "final_checkpoint": final})
    return result


def evaluate_checkpoint(cfg: RunConfig, path, key: str, out_dir: Path, device, progress: bool,
                        run_dir: Path | None = None) -> dict:
    """Evaluate `path` unless `out_dir` already holds a complete evaluation of this same checkpoint."""
    from srlm.engines import build_engine, close_engine
    from srlm.evaluate import evaluate, record_model_name

    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir.parent.parent  # RUN/<pipeline>/eval
    stamp = out_dir / "eval_key.txt"  # the key of the checkpoint evaluated here
    if stamp.exists() and stamp.read_text().strip() not in (key, _legacy_eval_key(cfg, key)):
        # another checkpoint's evaluation (the pipeline's stages changed): kept aside, never mixed or deleted
        aside = out_dir.with_name("eval." + re.sub(r"[^A-Za-z0-9._-]+", "_", stamp.read_text().strip())[:60])
        if aside.exists():
            import shutil

            shutil.rmtree(aside)
        out_dir.rename(aside)
        print(f"srlm: {out_dir} held the evaluation of another checkpoint; moved to {aside}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, key + "\n")
    record_model_name(out_dir, in_run(path, run_dir))  # the key says it is this checkpoint, wherever it lies
    # the protocol (everything but speed knobs) is checked by `evaluate`: a change is refused, not mixed
    engine, tok = build_engine(cfg.eval.engine, eval_engine_options(cfg, path, device))
    try:
        return evaluate(engine, tok, cfg.eval, out_dir, model_name=in_run(path, run_dir), progress=progress,
                        engine_name=cfg.eval.engine)
    finally:
        close_engine(engine)  # vLLM's memory back before the next pipeline trains


def _legacy_eval_key(cfg: RunConfig, key: str) -> str:
    """What `eval_key.txt` held before it held the checkpoint key (a hash with the whole eval config)."""
    return content_key({"checkpoint": key, "eval": cfg.eval.model_dump()})


def eval_conflicts(cfg: RunConfig, run_dir: Path, names: list[str]) -> list[str]:
    """For each pipeline of `names` that is evaluated, how its evaluation folder's protocol differs from
    `cfg.eval` (checked before any stage runs: a refusal hours later would waste the stages' time)."""
    from srlm.evaluate import protocol_conflicts

    out = []
    for n in names:
        if cfg.pipelines[n].evaluate:
            for folder in [run_dir / n / "eval", *sorted(run_dir.glob(f"{n}/seed*/eval"))]:
                problems = protocol_conflicts(folder, cfg.eval)
                if problems:
                    out.append(f"{folder} ({'; '.join(problems)})")
    return out


def eval_engine_options(cfg: RunConfig, path, device):
    """The engine options `cfg.eval` describes, for the checkpoint at `path` (for `openai`: the model name
    a server started on that folder serves it under)."""
    import os

    from srlm.engines import EngineOptions

    e = cfg.eval
    return EngineOptions(model=str(path), device=str(device.type), dtype=e.dtype or cfg.model.dtype,
                         batch_size=e.batch_size, seed=e.seed, base_url=e.base_url,
                         api_key=os.environ.get("OPENAI_API_KEY"), concurrency=e.concurrency,
                         gpu_memory_utilization=e.gpu_memory_utilization, kv_cache_gb=e.kv_cache_gb,
                         tensor_parallel_size=e.tensor_parallel_size)


def use_data_path(cfg: RunConfig) -> None:
    """The config's `data_path`, where set, becomes $SRLM_DATA_PATH for the run: the folder every dataset
    without a path of its own loads from. An environment variable, not a config rewrite, so stage keys do
    not change and subprocesses (torchrun workers) inherit it."""
    if cfg.data_path:
        os.environ["SRLM_DATA_PATH"] = str(Path(cfg.data_path).expanduser())


def start_rows(cfg: RunConfig, names: list[str]) -> dict[str, str]:
    """Folder -> starting model, for each starting model of `names` that gets a report row of its own: every
    one no stage-less pipeline evaluates already, except the random tiny model (`evaluate_starts`)."""
    if not cfg.evaluate_starts:
        return {}
    covered = {pipeline_start(cfg, n) for n, p in cfg.pipelines.items() if p.evaluate and not pipeline_stages(cfg, n)}
    out = {}
    for start in dict.fromkeys(pipeline_start(cfg, n) for n in names):
        folder = "start_" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(start).name if Path(start).exists() else start)
        if start != "tiny" and start not in covered and folder not in cfg.pipelines:
            out[folder] = start
    return out


def evaluate_start(cfg: RunConfig, folder: str, start: str, run_dir: Path, device, progress: bool) -> None:
    """Evaluate a starting model as it is into RUN/<folder>/ (a pipeline.json without stages, labelled with
    the model), so the report has its row without an empty pipeline in the config."""
    run_progress.in_pipeline(folder)
    run_progress.announce(f"eval:{folder}", "evaluation of the starting model", "eval")
    status, reason = "done", None
    try:
        evaluate_checkpoint(cfg, start, "model:" + start, run_dir / folder / "eval", device, progress)
    except Exception as e:  # noqa: BLE001 - like a failed stage: its row says why, the run goes on
        status, reason = "failed", f"{type(e).__name__}: {e}"
    atomic_write_json(run_dir / folder / "pipeline.json", {
        "name": folder, "status": status, "reason": reason, "stages": [], "final_checkpoint": start,
        "label": start, "start": start, "start_row": True})


def count_units(cfg: RunConfig, names: list[str]) -> dict[str, int]:
    """Kind -> how many of its units running `names` takes (`eval` for evaluations): a stage shared by
    several pipelines (same start, same stage configs before it) counts once, and a KD teacher pipeline
    counts with its pupil."""
    prefixes, evals, todo, seen = set(), 0, list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for seed in pipeline_seeds(cfg, name) or [None]:
            chain: tuple = (pipeline_start(cfg, name),)
            for kind, scfg in pipeline_stages(cfg, name, seed):
                chain += ((kind, scfg.model_dump_json()),)
                prefixes.add(chain)
                if getattr(scfg, "teacher", None) in cfg.pipelines:
                    todo.append(scfg.teacher)
            evals += bool(cfg.pipelines[name].evaluate)
    plan = Counter(chain[-1][0] for chain in prefixes)
    plan["eval"] = evals + len(start_rows(cfg, names))
    return dict(plan)


def check_engines_available(cfg: RunConfig, names: list[str]) -> None:
    """vLLM asked for (eval.engine, or a GRPO stage's engine) where it cannot run: one line before any stage
    runs, not after hours of training."""
    evaluates = any(cfg.pipelines[n].evaluate for n in names)
    stages = [scfg for n in names for _, scfg in pipeline_stages(cfg, n)]
    if (cfg.eval.engine == "vllm" and evaluates) or any(getattr(s, "engine", None) == "vllm" for s in stages):
        from srlm.engines.vllm import require_vllm

        require_vllm()


# Environment switches that change how a run computes (not logging sinks): recorded beside config.yaml
# (SRLM_COMPILE / SRLM_FSDP / ACCELERATE_USE_FSDP also set their stage fields: config.ENVIRONMENT_FIELDS).
ENVIRONMENT_SWITCHES = ("SRLM_COMPILE", "SRLM_FSDP", "ACCELERATE_USE_FSDP", "SRLM_DATA_PATH", "WORLD_SIZE",
                        "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def run_environment() -> dict:
    """What besides config.yaml decided this run's computation: switches set in the environment, versions."""
    import transformers

    from srlm import __version__

    return {"switches": {k: os.environ[k] for k in ENVIRONMENT_SWITCHES if k in os.environ},
            "srlm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads()}


def run_all(cfg: RunConfig, progress: bool = True, only: list[str] | None = None) -> list[PipelineResult]:
    """Every pipeline of the run (or those in `only`), then the report. A failure stops only its pipeline."""
    from srlm.runlock import locked

    run_dir = Path(cfg.run_dir)
    names = only or list(cfg.pipelines)
    if not names:
        raise UserError("the config defines no pipelines: add a `pipelines:` section")
    for n in names:
        if n not in cfg.pipelines:
            raise UserError(f"no pipeline {n!r}; pipelines: {', '.join(cfg.pipelines)}")
    check_engines_available(cfg, names)
    # one process per run folder; under torchrun / accelerate launch every rank runs this, rank 0 holds it
    with locked(run_dir) if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        conflicts = eval_conflicts(cfg, run_dir, names)
        if conflicts:
            raise UserError(f"eval: the run folder holds evaluations with another protocol: {', '.join(conflicts)}; "
                            f"restore those settings, or use another run_dir (eval.batch_size may change)")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)  # under a launcher only rank 0's lock has made it
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            atomic_write_json(run_dir / "environment.json", run_environment())
        except PermissionError:
            raise UserError(f"{run_dir}: read-only (cannot write config.yaml there)") from None
        return _run_all(cfg, run_dir, names, progress)


def _run_all(cfg: RunConfig, run_dir: Path, names: list[str], progress: bool) -> list[PipelineResult]:
    from srlm.models import allow_remote_code

    allow_remote_code(cfg.model.trust_remote_code)
    device = resolve_device(cfg.device)
    init_distributed(device)  # under a launcher: the process group of the whole run (nccl on GPU, else gloo)
    use_data_path(cfg)
    torch.manual_seed(0)
    results = []
    token = run_progress.TRACKER.set(run_progress.RunProgress(count_units(cfg, names)))
    try:
        for folder, start in start_rows(cfg, names).items():
            evaluate_start(cfg, folder, start, run_dir, device, progress)
        for n in names:
            results.append(run_pipeline(cfg, n, run_dir, device, progress))  # done stages are reused, not rerun
        run_progress.TRACKER.get().finish()
    finally:
        run_progress.TRACKER.reset(token)
    from srlm.report_folder import write_report

    write_report(run_dir)
    return results
