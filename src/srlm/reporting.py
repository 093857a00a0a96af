"""Collect a run folder's results and write its report files (the I/O around the pure `report` module)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from srlm.report import Gain, Row, accuracy_table, cost_table, csv_text, gains_table, latex, report_markdown
from srlm.stats import paired_difference
from srlm.train.loop import atomic_write_text, read_metrics

RL_CURVES = [("reward", "reward"), ("accuracy", "accuracy"), ("kl", "KL to reference"),
             ("completion_len_mean", "completion length (tokens)")]


def collect_rows(run_dir: Path) -> list[Row]:
    """One Row per pipeline folder, in the order of the run's config (then any others)."""
    run_dir = Path(run_dir)
    cfg = {}
    if (run_dir / "config.yaml").exists():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    pipelines = cfg.get("pipelines", {}) or {}
    names = [n for n in pipelines if (run_dir / n / "pipeline.json").exists()]
    names += sorted(p.parent.name for p in run_dir.glob("*/pipeline.json") if p.parent.name not in names)
    rows = []
    for name in names:
        info = json.loads((run_dir / name / "pipeline.json").read_text())
        summary_path = run_dir / name / "eval" / "summary.json"
        benches = json.loads(summary_path.read_text())["benchmarks"] if summary_path.exists() else {}
        cost = {"wall_seconds": 0.0, "device_hours": 0.0, "tokens": 0, "peak_memory_gb": 0.0, "device": "–"}
        for st in info["stages"]:
            c = st.get("cost", {})
            cost["wall_seconds"] += c.get("wall_seconds", 0.0)
            cost["device_hours"] += c.get("device_hours", 0.0)
            cost["tokens"] += c.get("tokens", 0)
            cost["peak_memory_gb"] = max(cost["peak_memory_gb"], c.get("peak_memory_gb", 0.0))
            cost["device"] = c.get("device", cost["device"])
        label = (pipelines.get(name) or {}).get("label") or name
        rows.append(Row(label, info["status"], benches, cost, info["stages"], info.get("reason"), folder=name))
    return rows


def per_problem_accuracy(bench_dir: Path) -> dict[str, float]:
    """Problem id -> fraction of its samples graded correct, from an evaluation's samples."""
    from srlm.evaluate import all_samples

    counts: dict[str, list[int]] = {}
    for s in all_samples(bench_dir):
        c = counts.setdefault(s["id"], [0, 0])
        c[0] += bool(s["correct"])
        c[1] += 1
    return {pid: right / n for pid, (right, n) in counts.items()}


def collect_gains(run_dir: Path, rows: list[Row]) -> list[Gain]:
    """For each row whose last stage started from another row's checkpoint (base + SFT + RL from base + SFT),
    the accuracy change per benchmark, paired over the problems both were scored on.

    Pairs only evaluations with the same protocol (prompt, samples, temperature, ...): a difference between
    protocols is not the stage's doing.
    """
    run_dir = Path(run_dir)
    by_stages = {tuple(st["dir"] for st in r.stages): r for r in rows if r.status == "done" and r.stages}
    accuracy: dict[Path, dict[str, float]] = {}  # a start row is compared with every row that extends it

    def per_problem(bench_dir: Path) -> dict[str, float]:
        if bench_dir not in accuracy:
            accuracy[bench_dir] = per_problem_accuracy(bench_dir)
        return accuracy[bench_dir]

    gains = []
    for r in rows:
        start = by_stages.get(tuple(st["dir"] for st in r.stages[:-1]))
        if r.status != "done" or start is None or not r.benchmarks:
            continue
        here, there = run_dir / r.folder / "eval", run_dir / start.folder / "eval"
        protocol = _protocol(here)
        if protocol is None or protocol != _protocol(there):
            continue
        benches = {b: paired_difference(per_problem(here / b), per_problem(there / b))
                   for b in r.benchmarks if b in start.benchmarks}
        benches = {b: d for b, d in benches.items() if d["n_problems"] > 1}
        if benches:
            gains.append(Gain(r.label, start.label, benches))
    return gains


def _protocol(eval_dir: Path) -> dict | None:
    path = eval_dir / "eval_settings.json"
    return json.loads(path.read_text()).get("protocol") if path.exists() else None


def _stage_label(rows: list[Row], stage_dir: str) -> str:
    """Name a stage after the shortest pipeline that ends with it (its owner), e.g. `base + SFT`."""
    owners = [r for r in rows if r.stages and r.stages[-1]["dir"] == stage_dir]
    users = owners or [r for r in rows if any(st["dir"] == stage_dir for st in r.stages)]
    kind = Path(stage_dir).name.split("-")[0]
    return f"{users[0].label} ({kind})" if users else Path(stage_dir).name


def plot_files(run_dir: Path, rows: list[Row]) -> list[tuple[str, str]]:
    """Write the report's PNGs; returns (caption, relative path) pairs. Needs matplotlib (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    plots: list[tuple[str, str]] = []
    stage_dirs = list(dict.fromkeys(st["dir"] for r in rows for st in r.stages))
    rl = [d for d in stage_dirs if Path(d).name.startswith("grpo")]
    sup = [d for d in stage_dirs if not Path(d).name.startswith("grpo")]
    if rl:
        fig, axes = plt.subplots(2, 2, figsize=(11, 7))
        for d in rl:
            m = read_metrics(Path(d) / "metrics.jsonl")
            for ax, (key, title) in zip(axes.flat, RL_CURVES):
                ax.plot([x["step"] for x in m], [x.get(key, float("nan")) for x in m], label=_stage_label(rows, d))
                ax.set_title(title)
                ax.set_xlabel("step")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "rl_curves.png", dpi=110)
        plt.close(fig)
        plots.append(("RL curves: reward, accuracy, KL, completion length", "plots/rl_curves.png"))
    if sup:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for d in sup:
            m = read_metrics(Path(d) / "metrics.jsonl")
            ax.plot([x["step"] for x in m], [x["loss"] for x in m], label=_stage_label(rows, d))
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "loss_curves.png", dpi=110)
        plt.close(fig)
        plots.append(("Loss curves of the supervised stages", "plots/loss_curves.png"))
    scored = [r for r in rows if r.benchmarks and r.status == "done"]
    if scored:
        benches = list(dict.fromkeys(b for r in scored for b in r.benchmarks))
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(scored) * len(benches) ** 0.5), 4.5))
        width = 0.8 / len(benches)
        for j, b in enumerate(benches):
            xs = [i + j * width for i in range(len(scored))]
            ys = [100 * r.benchmarks[b]["accuracy"] if b in r.benchmarks else 0 for r in scored]
            es = [100 * r.benchmarks[b].get("accuracy_se", 0) if b in r.benchmarks else 0 for r in scored]
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=b)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(scored))])
        ax.set_xticklabels([r.label for r in scored], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=110)
        plt.close(fig)
        plots.append(("Accuracy per method and benchmark (± standard error)", "plots/accuracy.png"))
    return plots


def write_report(run_dir: Path, formats: tuple[str, ...] = ("md", "csv", "tex", "png")) -> Path:
    """Write `report.md` (and csv/tex tables, png plots) into `run_dir`; returns the report's path."""
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir)
    gains = collect_gains(run_dir, rows)
    tables = {"accuracy": accuracy_table(rows), "cost": cost_table(rows)}
    if gains:
        tables["gains"] = gains_table(gains)
    if "csv" in formats:
        for name, t in tables.items():
            atomic_write_text(run_dir / f"{name}.csv", csv_text(t))
    if "tex" in formats:
        for name, t in tables.items():
            atomic_write_text(run_dir / f"{name}.tex", latex(t))
    plots = plot_files(run_dir, rows) if "png" in formats else []
    path = run_dir / "report.md"
    atomic_write_text(path, report_markdown(f"srlm report: {run_dir.name}", rows, plots, gains))
    return path
