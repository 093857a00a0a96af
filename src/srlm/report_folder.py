"""Collect a run folder's results and write its report files (the I/O around the pure `report_tables`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from srlm.faults import fault_point
from srlm.grading.audit import merge_audits
from srlm.report_tables import (
    Comparison, Gain, Row, StageCost, accuracy_records, accuracy_table, cost_records, cost_table, csv_records,
    gains_records, gains_table, latex, pipeline_cost_records, pipeline_cost_table, report_markdown, start_groups,
)
from srlm.stats import paired_difference
from srlm.files import atomic_write_text, read_metrics

# GRPO metrics plotted, with the panel titles: the accuracy and format rate are those of the step's
# rollouts (training prompts, sampled at the training temperature), not of an evaluation.
RL_CURVES = [("reward", "reward"), ("accuracy", "rollout accuracy"), ("format_rate", "rollout format rate"),
             ("kl", "KL to reference"), ("completion_len_mean", "completion length (tokens)"),
             ("truncation_rate", "rollout truncation rate")]


def collect_rows(run_dir: Path) -> list[Row]:
    """One Row per pipeline folder, in the order of the run's config (then any others)."""
    run_dir = Path(run_dir)
    cfg = {}
    if (run_dir / "config.yaml").exists():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    pipelines = cfg.get("pipelines", {}) or {}
    names = [n for n in pipelines if (run_dir / n / "pipeline.json").exists()]
    others = sorted(p.parent.name for p in run_dir.glob("*/pipeline.json") if p.parent.name not in names)
    starts = [n for n in others if json.loads((run_dir / n / "pipeline.json").read_text()).get("start_row")]
    names = starts + names + [n for n in others if n not in starts]  # starting models first
    rows = []
    for name in names:
        info = json.loads((run_dir / name / "pipeline.json").read_text())
        summary_path = run_dir / name / "eval" / "summary.json"
        benches = json.loads(summary_path.read_text())["benchmarks"] if summary_path.exists() else {}
        label = (pipelines.get(name) or {}).get("label") or info.get("label") or name
        start = _start_of(pipelines, name, (cfg.get("model") or {}).get("name_or_path", ""))
        seed_runs = {}
        for seed, sub in (info.get("seeds") or {}).items():
            run_info = run_dir / name / sub / "pipeline.json"
            if run_info.exists():
                seed_runs[int(seed)] = {"folder": f"{name}/{sub}",
                                        "stages": json.loads(run_info.read_text())["stages"]}
        if seed_runs:
            benches = _seed_benchmarks(run_dir, seed_runs)
        rows.append(Row(label, info["status"], benches, stages=info["stages"], reason=info.get("reason"),
                        folder=name, start=info.get("start") or start, seed_runs=seed_runs))
    return rows


def _seed_benchmarks(run_dir: Path, seed_runs: dict[int, dict]) -> dict[str, dict]:
    """Benchmark -> the summary over a row's seeds (`combine_seeds`), for benchmarks every seed scored."""
    summaries = {}
    for seed, r in seed_runs.items():
        path = run_dir / r["folder"] / "eval" / "summary.json"
        summaries[seed] = json.loads(path.read_text())["benchmarks"] if path.exists() else {}
    benches = [b for b in dict.fromkeys(b for x in summaries.values() for b in x)
               if all(b in x for x in summaries.values())]
    return {b: combine_seeds({s: x[b] for s, x in summaries.items()},
                             {s: per_problem_accuracy(run_dir / seed_runs[s]["folder"] / "eval" / b)
                              for s in summaries}) for b in benches}


def combine_seeds(by_seed: dict[int, dict], per_problem: dict[int, dict[str, float]]) -> dict:
    """One benchmark's summary over several training seeds (pure): accuracy is the mean over seeds; its
    standard error is over problems, of each problem's accuracy averaged over the seeds (the problems all
    seeds scored); `seed_sd` is the standard deviation of the per-seed accuracies (n - 1). Rates are means
    over seeds (None where any seed has none), tokens and wall time sums."""
    import statistics

    from srlm.stats import mean_and_se

    seeds = list(by_seed)
    accs = [by_seed[s]["accuracy"] for s in seeds]
    common = [p for p in per_problem[seeds[0]] if all(p in per_problem[s] for s in seeds)]
    _, se = mean_and_se([sum(per_problem[s][p] for s in seeds) / len(seeds) for p in common])
    out = {"accuracy": sum(accs) / len(accs), "accuracy_se": se,
           "seed_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "n_seeds": len(seeds),
           "per_seed": {str(s): a for s, a in zip(seeds, accs)}, "n_problems": len(common),
           "n_samples": by_seed[seeds[0]].get("n_samples"),
           "no_answer": all(x.get("no_answer") for x in by_seed.values()),
           "complete": all(x.get("complete", True) is not False for x in by_seed.values())}
    for key in ("format_rate", "extraction_rate", "truncation_rate", "repetition_rate", "mean_response_tokens"):
        vals = [x.get(key) for x in by_seed.values()]
        if any(key in x for x in by_seed.values()):
            out[key] = None if any(v is None for v in vals) else sum(vals) / len(vals)
    audit = merge_audits([x.get("grader_audit") for x in by_seed.values()])
    if audit is not None:
        out["grader_audit"] = audit
    if all("p95_response_tokens" in x for x in by_seed.values()):
        out["p95_response_tokens"] = max(x["p95_response_tokens"] for x in by_seed.values())
    for key in ("tokens_generated", "wall_seconds"):
        out[key] = sum(x.get(key) or 0 for x in by_seed.values())
    return out


def _start_of(pipelines: dict, name: str, default: str) -> str:
    """A pipeline's starting model from the run's config: its own `start`, else its ancestor's, else the
    config's model (the same walk as `config.pipeline_start`, on the saved YAML)."""
    seen = set()
    while name in pipelines and name not in seen:
        seen.add(name)
        p = pipelines[name] or {}
        if p.get("start"):
            return p["start"]
        name = p.get("extends")
    return default


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
    protocols is not the stage's doing. A row over several seeds pairs each seed's run with the run it
    started from (that seed's, or a start shared by every seed): the gain is the mean over seeds of the
    per-problem differences, with the per-seed gains beside it.
    """
    run_dir = Path(run_dir)
    # (starting model, stage folders) -> (row, its run's folder); a run without stages is its starting model
    by_stages = {(r.start, tuple(st["dir"] for st in stages)): (r, folder)
                 for r in rows if r.status == "done" for _, folder, stages in r.runs()}
    accuracy: dict[Path, dict[str, float]] = {}  # a start row is compared with every row that extends it

    def per_problem(bench_dir: Path) -> dict[str, float]:
        if bench_dir not in accuracy:
            accuracy[bench_dir] = per_problem_accuracy(bench_dir)
        return accuracy[bench_dir]

    gains = []
    for r in rows:
        if r.status != "done" or not r.benchmarks:
            continue
        pairs = []  # (seed, this run's eval folder, its start's eval folder)
        for seed, folder, stages in r.runs():
            found = by_stages.get((r.start, tuple(st["dir"] for st in stages[:-1]))) if stages else None
            if found is None:
                break
            pairs.append((seed, run_dir / folder / "eval", run_dir / found[1] / "eval", found[0]))
        else:
            starts = {id(p[3]) for p in pairs}
            if not pairs or len(starts) != 1 or any(
                    _protocol(here) is None or _protocol(here) != _protocol(there) for _, here, there, _ in pairs):
                continue
            start = pairs[0][3]
            benches = {}
            for b in (b for b in r.benchmarks if b in start.benchmarks):
                d = _paired_over_seeds([(seed, per_problem(here / b), per_problem(there / b))
                                        for seed, here, there, _ in pairs])
                if d["n_problems"] > 1:
                    benches[b] = d
            if benches:
                gains.append(Gain(r.label, start.label, benches))
    return gains


def _paired_over_seeds(pairs: list[tuple[int | None, dict[str, float], dict[str, float]]]) -> dict:
    """`stats.paired_difference` of one run, or over several seeds' runs: per problem, the difference
    averaged over the seeds, then mean and standard error over problems; `per_seed` lists each seed's own."""
    if len(pairs) == 1 and pairs[0][0] is None:
        return paired_difference(pairs[0][1], pairs[0][2])
    common = [p for p in pairs[0][1] if all(p in a and p in b for _, a, b in pairs)]
    mean_diff = {p: sum(a[p] - b[p] for _, a, b in pairs) / len(pairs) for p in common}
    d = paired_difference(mean_diff, {p: 0.0 for p in common})
    d["per_seed"] = [{"seed": seed, **paired_difference(a, b)} for seed, a, b in pairs]
    return d


def compare_runs(run_a: Path, run_b: Path) -> tuple[list[Comparison], list[str]]:
    """The rows of two run folders matched by pipeline name (A's order, then B's others), with B - A paired
    per benchmark where both evaluations used the same protocol; also one note per protocol mismatch."""
    rows_a = {r.folder: r for r in collect_rows(run_a)}
    rows_b = {r.folder: r for r in collect_rows(run_b)}
    comparisons, notes = [], []
    for name in list(rows_a) + [n for n in rows_b if n not in rows_a]:
        a, b = rows_a.get(name), rows_b.get(name)
        c = Comparison((a or b).label, a, b)
        if a and b and a.status == b.status == "done":
            pa, pb = _row_protocol(Path(run_a), a), _row_protocol(Path(run_b), b)
            for bench in (x for x in a.benchmarks if x in b.benchmarks):
                if pa is None or pa != pb:
                    c.differences[bench] = None
                    continue
                d = paired_difference(_row_per_problem(Path(run_b), b, bench), _row_per_problem(Path(run_a), a, bench))
                if d["n_problems"] > 1:  # fewer problems in common: no standard error to show
                    c.differences[bench] = d
            if pa != pb:
                keys = sorted(k for k in set(pa or {}) | set(pb or {}) if (pa or {}).get(k) != (pb or {}).get(k))
                notes.append(f"{c.label}: evaluation protocols differ ({', '.join(keys) or 'settings missing'}); "
                             "no paired difference")
        comparisons.append(c)
    return comparisons, notes


def _row_protocol(run_dir: Path, row: Row) -> dict | None:
    """The evaluation protocol of a row (of its runs, when they all share one)."""
    protocols = [_protocol(run_dir / folder / "eval") for _, folder, _ in row.runs()]
    return protocols[0] if all(p == protocols[0] for p in protocols) else None


def _row_per_problem(run_dir: Path, row: Row, bench: str) -> dict[str, float]:
    """Problem id -> accuracy, averaged over the row's seeds (problems every seed scored)."""
    runs = [per_problem_accuracy(run_dir / folder / "eval" / bench) for _, folder, _ in row.runs()]
    return {p: sum(r[p] for r in runs) / len(runs) for p in runs[0] if all(p in r for r in runs)}


def _protocol(eval_dir: Path) -> dict | None:
    path = eval_dir / "eval_settings.json"
    return json.loads(path.read_text()).get("protocol") if path.exists() else None


def _stage_label(rows: list[Row], stage_dir: str) -> str:
    """Name a stage after the shortest pipeline that ends with it (its owner), e.g. `base + SFT`, and the
    seed when that pipeline runs once per seed."""
    owners = [(r, seed) for r in rows for seed, _, stages in r.runs() if stages and stages[-1]["dir"] == stage_dir]
    users = owners or [(r, seed) for r in rows for seed, _, stages in r.runs()
                       if any(st["dir"] == stage_dir for st in stages)]
    kind = Path(stage_dir).name.split("-")[0]
    if not users:
        return Path(stage_dir).name
    row, seed = users[0]
    return f"{row.label}{'' if seed is None else f' seed {seed}'} ({kind})"


def collect_stages(rows: list[Row]) -> list[StageCost]:
    """Every stage folder the rows went through, once each, in order of first use."""
    stages: dict[str, StageCost] = {}
    for r in rows:
        for st in r.stages:
            if st["dir"] not in stages:
                stages[st["dir"]] = StageCost(_stage_label(rows, st["dir"]), st["kind"], st["status"],
                                              st.get("cost", {}))
            stages[st["dir"]].used_by.append(r.label)
    return list(stages.values())


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` finite values (fewer at the start); NaN where none is finite."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i + 1 - window): i + 1] if v == v]
        out.append(sum(recent) / len(recent) if recent else float("nan"))
    return out


def _smoothing_window(n_steps: int) -> int:
    return max(1, min(25, n_steps // 10))


def _finish_figure(fig, out: Path, title: str, handles_from=None) -> None:
    """Suptitle, the legend outside the axes (right of them), save, close."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    right = 1.0
    if handles_from is not None:
        handles, labels = handles_from.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")


def _log_y(ax) -> None:
    """Log-scale y with plain numbers (0.3, 1, 2) instead of powers of ten: loss ranges are narrow."""
    import math

    from matplotlib.ticker import FuncFormatter

    def label(every: tuple[int, ...]):
        def fmt(v, _):
            lead = round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0
            return f"{v:g}" if lead in every else ""
        return FuncFormatter(fmt)

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(label((1,)))
    ax.yaxis.set_minor_formatter(label((2, 5)))


def plot_files(run_dir: Path, rows: list[Row]) -> list[tuple[str, str]]:
    """Write the report's PNGs; returns (caption, relative path) pairs. Needs matplotlib (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    plots: list[tuple[str, str]] = []
    stage_dirs = list(dict.fromkeys(st["dir"] for r in rows for st in r.stages))
    # stage folders are recorded relative to the run folder (absolute in runs from before that)
    metrics = {d: read_metrics(run_dir / d / "metrics.jsonl") if (run_dir / d / "metrics.jsonl").exists() else []
               for d in stage_dirs}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    rl = [d for d in stage_dirs if Path(d).name.startswith("grpo") and metrics[d]]
    if rl:
        fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
        n_steps = max(len(metrics[d]) for d in rl)
        window = _smoothing_window(n_steps)
        for i, d in enumerate(rl):
            m, color = metrics[d], colors[i % len(colors)]
            steps = [x["step"] for x in m]
            for ax, (key, title) in zip(axes.flat, RL_CURVES):
                raw = [float(x.get(key, float("nan"))) for x in m]
                if window > 1:  # else the line is the raw values themselves
                    ax.plot(steps, raw, color=color, alpha=0.25, linewidth=0.8, marker=".", markersize=3)
                ax.plot(steps, moving_average(raw, window), color=color, linewidth=1.6, label=_stage_label(rows, d))
                ax.set_title(title, fontsize=10)
                _integer_steps(ax)
        smooth = f" (lines: moving average over {window} steps; faint: each step)" if window > 1 else ""
        _finish_figure(fig, out / "rl_curves.png", f"GRPO training: rollout metrics per step{smooth}", axes.flat[0])
        plots.append(("GRPO training curves: reward, rollout accuracy and format rate, KL, completion length, "
                      "truncation (lines: moving average; faint points: each step)", "plots/rl_curves.png"))
    sup = [d for d in stage_dirs if not Path(d).name.startswith("grpo") and metrics[d]]
    pre = [d for d in sup if Path(d).name.startswith("pretrain")]
    tuned = [d for d in sup if d not in pre]
    panels = [(pre, "pre-training"), (tuned, "supervised stages (SFT, KD, distillation)")]
    panels = [(ds, t) for ds, t in panels if ds]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
        for j, (ax, (ds, title)) in enumerate(zip(axes.flat, panels)):
            for i, d in enumerate(ds):
                m = metrics[d]
                steps, loss = [x["step"] for x in m], [x["loss"] for x in m]
                color = colors[(i + 3 * j) % len(colors)]
                window = _smoothing_window(len(m))
                if window > 1:
                    ax.plot(steps, loss, color=color, alpha=0.25, linewidth=0.8)
                ax.plot(steps, moving_average(loss, window), color=color, linewidth=1.6, label=_stage_label(rows, d))
            _log_y(ax)
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("training loss (log scale)")
            _integer_steps(ax)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15), frameon=False, ncol=2)
        _finish_figure(fig, out / "loss_curves.png",
                       "Training loss of the supervised stages (lines: moving average over a tenth of the steps, "
                       "at most 25; faint: each step)")
        plots.append(("Training loss: pre-training, and the SFT / KD stages in their own panel",
                      "plots/loss_curves.png"))
    scored = [r for r in rows if r.benchmarks and r.status == "done"]
    if scored:
        plots.append(_accuracy_plot(scored, out, plt, colors))
    return plots


def _accuracy_plot(scored: list[Row], out: Path, plt, colors) -> tuple[str, str]:
    """Bars of accuracy ± standard error, one panel per starting model, one colour per benchmark."""
    groups = start_groups(scored)
    benches = list(dict.fromkeys(b for r in scored for b in r.benchmarks))
    widths = [len(g) for _, g in groups]
    fig, axes = plt.subplots(1, len(groups), figsize=(max(7, 0.55 * len(scored) * len(benches) ** 0.5 + 2), 5),
                             sharey=True, squeeze=False, gridspec_kw={"width_ratios": widths})
    width = 0.8 / len(benches)
    for ax, (name, members) in zip(axes.flat, groups):
        for j, b in enumerate(benches):
            xs = [i + (j - (len(benches) - 1) / 2) * width for i in range(len(members))]
            ys = [100 * r.benchmarks[b]["accuracy"] if b in r.benchmarks else float("nan") for r in members]
            es = [100 * r.benchmarks[b].get("accuracy_se", 0) if b in r.benchmarks else 0 for r in members]
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=b, color=colors[j % len(colors)])
        ax.set_xticks(range(len(members)))
        ax.set_xticklabels([r.label for r in members], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"from {name}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].set_ylabel("accuracy (%, ± standard error)")
    _finish_figure(fig, out / "accuracy.png", "Accuracy per method, grouped by starting model", axes.flat[0])
    return ("Accuracy per method and benchmark (± standard error over problems), grouped by starting model",
            "plots/accuracy.png")


def write_report(run_dir: Path, formats: tuple[str, ...] = ("md", "csv", "tex", "png", "html")) -> Path:
    """Write `report.md` (and csv/tex tables, png plots, the self-contained report.html) into `run_dir`;
    returns the report's path."""
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir)
    gains = collect_gains(run_dir, rows)
    stages = collect_stages(rows)
    if "csv" in formats:
        records = {"accuracy": accuracy_records(rows), "cost": cost_records(stages),
                   "pipeline_cost": pipeline_cost_records(rows)}
        if gains:
            records["gains"] = gains_records(gains)
        for name, recs in records.items():
            atomic_write_text(run_dir / f"{name}.csv", csv_records(recs))
    fault_point("report:mid_write")
    if "tex" in formats:
        tables = {"accuracy": accuracy_table(rows), "cost": cost_table(stages),
                  "pipeline_cost": pipeline_cost_table(rows, stages)}
        if gains:
            tables["gains"] = gains_table(gains)
        for name, t in tables.items():
            atomic_write_text(run_dir / f"{name}.tex", latex(t))
    plots = plot_files(run_dir, rows) if "png" in formats else []
    title = f"srlm report: {run_dir.name}"
    path = run_dir / "report.md"
    atomic_write_text(path, report_markdown(title, rows, plots, gains, stages))
    if "html" in formats:
        from srlm.report_tables import report_sections
        from srlm.report_html import png_data_uri, render

        images = [(caption, png_data_uri((run_dir / rel).read_bytes())) for caption, rel in plots]
        atomic_write_text(run_dir / "report.html", render(title, report_sections(rows, gains, stages), images))
    return path
