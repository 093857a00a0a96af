"""Tables from run results (pure: data in, text out; the pipeline writes the files).

The accuracy table has the paper's shape: methods as rows, benchmarks as columns, accuracy (%) with its
standard error, best per column in bold, ‡ for a collapsed RL stage, † where no answer could be
extracted, § after an incomplete evaluation, and `failed` where a stage broke.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DAGGER, DOUBLE_DAGGER, SECTION_SIGN = "†", "‡", "§"
# what † says, wherever it is printed (the report's tables, `srlm eval`'s summary)
NO_ANSWER_NOTE = "no answer could be extracted: the accuracy measures the format, not reasoning"
# what § says: the summary's `complete` is false (a problem lacks samples, e.g. damaged lines were skipped)
INCOMPLETE_NOTE = ("the evaluation is incomplete: fewer problems were scored than the benchmark has (accuracy.csv: "
                   "n_problems, complete); re-run the same command to complete it")


@dataclass
class Row:
    """One pipeline's results, as the report sees them."""

    label: str
    status: str  # done | collapsed | failed | running
    benchmarks: dict[str, dict] = field(default_factory=dict)  # name -> summary of evaluate.summarize
    stages: list[dict] = field(default_factory=list)  # [{kind, status, reason, dir, cost, warnings}]
    reason: str | None = None
    folder: str = ""  # the pipeline's folder in the run directory
    start: str = ""  # the starting model (hub id or folder) of its first stage
    # a pipeline run once per training seed: seed -> {"folder": "<pipeline>/seed<s>", "stages": [...]}; its
    # `benchmarks` then hold the mean over seeds with `seed_sd` (see report_folder.combine_seeds)
    seed_runs: dict[int, dict] = field(default_factory=dict)

    def runs(self) -> list[tuple[int | None, str, list[dict]]]:
        """(seed, folder, stages) of each run behind the row: one per seed, or the row itself."""
        if self.seed_runs:
            return [(s, r["folder"], r["stages"]) for s, r in self.seed_runs.items()]
        return [(None, self.folder, self.stages)]


@dataclass
class Gain:
    """What one pipeline's last stage added: its accuracy minus its starting checkpoint's, per benchmark,
    paired over the problems both were scored on (`stats.paired_difference` results)."""

    label: str  # the pipeline's row
    start: str  # the row of the checkpoint its last stage started from
    benchmarks: dict[str, dict] = field(default_factory=dict)  # name -> {difference, se, n_problems}


def _cell(row: Row, bench: str, best: float | None) -> str:
    if row.status == "collapsed":
        return DOUBLE_DAGGER
    if row.status == "failed":
        return "failed"
    s = row.benchmarks.get(bench)
    if s is None:
        return "–"
    incomplete = f" {SECTION_SIGN}" if not is_complete(s) else ""
    if s.get("no_answer"):
        return DAGGER + incomplete
    acc, se = 100 * s["accuracy"], 100 * s.get("accuracy_se", 0.0)
    text = f"{acc:.1f} ± {se:.1f}"
    if s.get("seed_sd") is not None:
        text += f" (SD {100 * s['seed_sd']:.1f}, {s.get('n_seeds')} seeds)"
    return (f"**{text}**" if best is not None and abs(acc - best) < 1e-9 else text) + incomplete


def is_complete(summary: dict) -> bool:
    """Whether every problem of the benchmark has its samples (summaries older than the field: yes)."""
    return summary.get("complete", True) is not False


def benchmark_names(rows: list[Row]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for b in r.benchmarks:
            if b not in names:
                names.append(b)
    return names


def _best(rows: list[Row], bench: str) -> float | None:
    vals = [100 * r.benchmarks[bench]["accuracy"] for r in rows
            if r.status == "done" and bench in r.benchmarks and not r.benchmarks[bench].get("no_answer")
            and is_complete(r.benchmarks[bench])]
    return max(vals) if vals else None


def accuracy_table(rows: list[Row]) -> list[list[str]]:
    benches = benchmark_names(rows)
    best = {b: _best(rows, b) for b in benches}
    table = [["method"] + benches]
    for r in rows:
        table.append([r.label] + [_cell(r, b, best[b]) for b in benches])
    return table


BOLD_BEST = "Bold: the highest accuracy in each column among the rows that finished (complete evaluations)."
BOLD_GAIN = "Bold: a change larger than twice its standard error (either sign)."
SEEDS_NOTE = ("Rows over several training seeds: the mean over seeds ± the standard error over problems of the "
              "seed-averaged per-problem accuracy, and in brackets the standard deviation of the per-seed "
              "accuracies (SD): how much the result moves with the training seed.")
SEED_GAINS_NOTE = ("For a row over several seeds, each seed's run is paired with its own starting checkpoint (the "
                   "same seed's, or the one shared by all); the cell is the mean of those per-problem differences, "
                   "and the per-seed gains follow in brackets.")


def marks_legend(table: list[list[str]]) -> str:
    """The † / ‡ / § legend for the marks that appear in `table` (empty when none does)."""
    cells = {word.strip("*") for row in table[1:] for c in row[1:] for word in c.split()}
    parts = []
    if DAGGER in cells:
        parts.append(f"{DAGGER} {NO_ANSWER_NOTE}")
    if DOUBLE_DAGGER in cells:
        parts.append(f"{DOUBLE_DAGGER} the RL stage collapsed (training stopped by the collapse guard)")
    if SECTION_SIGN in cells:
        parts.append(f"{SECTION_SIGN} {INCOMPLETE_NOTE}")
    return "; ".join(parts) + "." if parts else ""


def rate(summary: dict | None, key: str) -> float | None:
    """A rate of an evaluation summary in %, or None where it does not apply (format rate of a prompt that
    does not ask for the format) or the summary predates it."""
    v = (summary or {}).get(key)
    return 100 * v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# An evaluation found complete when a run resumes records only the time it took to re-read its samples:
# below this many seconds, its wall time says nothing about generation speed.
MIN_EVAL_SECONDS = 1.0


def tokens_per_second(summary: dict | None) -> float | None:
    """Generated tokens per second of wall time of one benchmark's evaluation (None when not measured)."""
    s = summary or {}
    tokens, wall = s.get("tokens_generated"), s.get("wall_seconds")
    return tokens / wall if tokens is not None and wall and wall >= MIN_EVAL_SECONDS else None


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def format_table(rows: list[Row]) -> list[list[str]]:
    """Per method and benchmark: format and extraction rates (%); per method, generation speed."""
    benches = benchmark_names(rows)
    table = [["method"] + [f"{b} format / extracted" for b in benches] + ["eval tokens/s"]]
    for r in rows:
        cells = []
        for b in benches:
            s = r.benchmarks.get(b)
            cells.append("–" if s is None else " / ".join(
                _pct(rate(s, k)) for k in ("format_rate", "extraction_rate")))
        tokens = sum(s.get("tokens_generated") or 0 for s in r.benchmarks.values())
        wall = sum(s.get("wall_seconds") or 0 for s in r.benchmarks.values())
        speed = tokens_per_second({"tokens_generated": tokens, "wall_seconds": wall}) if tokens else None
        table.append([r.label] + cells + ["–" if speed is None else f"{speed:,.0f}"])
    return table


def grader_agreement_table(rows: list[Row]) -> list[list[str]] | None:
    """srlm's accuracy, math-verify's and their agreement (%) per method and benchmark, over the samples
    both graders judged (`summary.json`'s `grader_audit`); ``None`` when no evaluation was audited."""
    benches = benchmark_names(rows)
    if not any((r.benchmarks.get(b) or {}).get("grader_audit") for r in rows for b in benches):
        return None
    table = [["method"] + [f"{b} srlm / math-verify / agree" for b in benches]]
    for r in rows:
        cells = []
        for b in benches:
            a = (r.benchmarks.get(b) or {}).get("grader_audit")
            if not a or not a.get("n_judged"):
                cells.append("–")
                continue
            cells.append(" / ".join(_pct(rate(a, k)) for k in ("srlm_accuracy", "math_verify_accuracy", "agreement")))
        table.append([r.label] + cells)
    return table


def response_table(rows: list[Row]) -> list[list[str]]:
    """How each evaluation's responses ended and what they cost: truncated % (hit max_new_tokens), % ending
    in a repetition loop, mean and p95 response tokens."""
    benches = benchmark_names(rows)
    table = [["method"] + [f"{b} truncated / loop % · mean / p95 tokens" for b in benches]]
    for r in rows:
        cells = []
        for b in benches:
            s = r.benchmarks.get(b)
            if s is None or "repetition_rate" not in s:
                cells.append("–")
                continue
            cells.append(f"{100 * s['truncation_rate']:.0f} / {100 * s['repetition_rate']:.0f} · "
                         f"{s['mean_response_tokens']:.0f} / {s['p95_response_tokens']}")
        table.append([r.label] + cells)
    return table


@dataclass
class StageCost:
    """One stage folder's cost, counted once however many pipelines share it."""

    label: str  # e.g. `base + SFT (sft)`: the shortest pipeline that ends with it
    kind: str
    status: str
    cost: dict  # wall_seconds, device, device_hours, tokens, peak_memory_gb
    used_by: list[str] = field(default_factory=list)  # the rows whose pipelines went through it


def cost_table(stages: list[StageCost]) -> list[list[str]]:
    """Training cost per stage; a stage shared by several pipelines is one row."""
    table = [["stage", "kind", "status", "wall (s)", "device", "device-hours", "train tokens", "tokens/s",
              "peak memory (GB)", "pipelines"]]
    for st in stages:
        c = st.cost
        wall, tokens = c.get("wall_seconds", 0.0), c.get("tokens", 0)
        table.append([st.label, st.kind, st.status, f"{wall:.0f}", str(c.get("device", "–")),
                      f"{c.get('device_hours', 0):.3f}", f"{tokens:,}", f"{tokens / wall:,.0f}" if wall else "–",
                      f"{c.get('peak_memory_gb', 0):.2f}", str(len(st.used_by))])
    return table


def pipeline_cost(row: Row) -> dict:
    """What it costs to reproduce one row alone: every stage it went through, each once, plus its
    evaluation."""
    c = {"stages": len(row.stages), "wall_seconds": 0.0, "device_hours": 0.0, "tokens": 0}
    for st in row.stages:
        sc = st.get("cost", {})
        c["wall_seconds"] += sc.get("wall_seconds", 0.0)
        c["device_hours"] += sc.get("device_hours", 0.0)
        c["tokens"] += sc.get("tokens", 0)
    c["eval_seconds"] = sum(s.get("wall_seconds") or 0 for s in row.benchmarks.values())
    return c


def pipeline_cost_table(rows: list[Row], stages: list[StageCost]) -> list[list[str]]:
    """Per row, the total of the stages it went through; the last line is the whole run, which counts a
    stage shared by several pipelines once."""
    table = [["method", "status", "stages", "train wall (s)", "device-hours", "train tokens", "eval wall (s)"]]
    for r in rows:
        c = pipeline_cost(r)
        table.append([r.label, r.status, str(c["stages"]), f"{c['wall_seconds']:.0f}", f"{c['device_hours']:.3f}",
                      f"{c['tokens']:,}", f"{c['eval_seconds']:.0f}"])
    wall = sum(s.cost.get("wall_seconds", 0.0) for s in stages)
    hours = sum(s.cost.get("device_hours", 0.0) for s in stages)
    tokens = sum(s.cost.get("tokens", 0) for s in stages)
    evals = sum(pipeline_cost(r)["eval_seconds"] for r in rows)
    table.append(["whole run", "", str(len(stages)), f"{wall:.0f}", f"{hours:.3f}", f"{tokens:,}", f"{evals:.0f}"])
    return table


def gains_table(gains: list[Gain]) -> list[list[str]]:
    """Accuracy change (points) of each stage over its starting checkpoint, ± its paired standard error;
    bold where the change is more than twice its standard error (either sign)."""
    benches = list(dict.fromkeys(b for g in gains for b in g.benchmarks))
    table = [["method", "started from"] + benches]
    for g in gains:
        cells = []
        for b in benches:
            d = g.benchmarks.get(b)
            if d is None:
                cells.append("–")
                continue
            diff, se = 100 * d["difference"], 100 * d["se"]
            text = f"{diff:+.1f} ± {se:.1f}"
            text = f"**{text}**" if abs(diff) > 2 * se else text
            if d.get("per_seed"):
                text += " (" + ", ".join(f"{100 * x['difference']:+.1f}" for x in d["per_seed"]) + ")"
            cells.append(text)
        table.append([g.label, g.start] + cells)
    return table


@dataclass
class Comparison:
    """One row of `srlm compare`: the same pipeline in run A and run B, and B - A per benchmark, paired over
    the problems both scored (`stats.paired_difference`), or None where the protocols differ."""

    label: str
    a: Row | None
    b: Row | None
    differences: dict[str, dict | None] = field(default_factory=dict)


def _accuracy_text(row: Row | None, bench: str) -> str:
    if row is None:
        return "–"
    return _cell(row, bench, None)


def compare_table(comparisons: list[Comparison]) -> list[list[str]]:
    """Per row and benchmark: A's accuracy, B's, and B - A ± its paired standard error (bold beyond twice
    it); `protocol differs` where the two evaluations are not comparable."""
    benches = list(dict.fromkeys(b for c in comparisons for r in (c.a, c.b) if r for b in r.benchmarks))
    table = [["method"] + [f"{b} {part}" for b in benches for part in ("A", "B", "B − A")]]
    for c in comparisons:
        cells = []
        for b in benches:
            cells += [_accuracy_text(c.a, b), _accuracy_text(c.b, b)]
            if b not in c.differences:
                cells.append("–")
            elif c.differences[b] is None:
                cells.append("protocol differs")
            else:
                d = c.differences[b]
                diff, se = 100 * d["difference"], 100 * d["se"]
                text = f"{diff:+.1f} ± {se:.1f}"
                cells.append(f"**{text}**" if abs(diff) > 2 * se else text)
        table.append([c.label] + cells)
    return table


def compare_records(comparisons: list[Comparison]) -> list[dict]:
    out = []
    for c in comparisons:
        benches = dict.fromkeys(b for r in (c.a, c.b) if r for b in r.benchmarks)
        for b in benches:
            sa = c.a.benchmarks.get(b) if c.a and c.a.status == "done" else None
            sb = c.b.benchmarks.get(b) if c.b and c.b.status == "done" else None
            d = c.differences.get(b)
            out.append({"method": c.label, "benchmark": b,
                        "mean_a": 100 * sa["accuracy"] if sa else None, "se_a": 100 * sa["accuracy_se"] if sa else None,
                        "mean_b": 100 * sb["accuracy"] if sb else None, "se_b": 100 * sb["accuracy_se"] if sb else None,
                        "difference": 100 * d["difference"] if d else None, "se": 100 * d["se"] if d else None,
                        "n_problems": d["n_problems"] if d else None,
                        "same_protocol": None if b not in c.differences else int(d is not None)})
    return out


def markdown(table: list[list[str]]) -> str:
    head, *body = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _dirs(row: Row) -> tuple[str, ...]:
    return tuple(st["dir"] for st in row.runs()[0][2])  # a row over seeds: its first seed's run


def start_groups(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """Rows grouped by the model they start from: (group name, rows), in row order.

    A starting model is a row without stages (a model evaluated as it is) or a row that two or more other
    rows extend (the demo's `tiny base` and `tiny instruct`); every row joins the starting model whose
    stages are the longest prefix of its own, else the group of its `start` model.
    """
    def extends(a: Row, b: Row) -> bool:  # b's stages are a strict prefix of a's
        return a.start == b.start and len(_dirs(b)) < len(_dirs(a)) and _dirs(a)[: len(_dirs(b))] == _dirs(b)

    starts = [r for r in rows if not _dirs(r) or sum(extends(o, r) for o in rows) >= 2]
    groups: dict[str, list[Row]] = {}
    for r in rows:
        mine = [b for b in starts if b is r or extends(r, b)]
        name = max(mine, key=lambda b: len(_dirs(b))).label if mine else (r.start or "–")
        groups.setdefault(name, []).append(r)
    return list(groups.items())


def accuracy_records(rows: list[Row]) -> list[dict]:
    """The accuracy table as one record per method and benchmark, numbers as numbers (for CSV)."""
    out = []
    for r in rows:
        for b in benchmark_names(rows):
            s = r.benchmarks.get(b) if r.status == "done" else None
            rec = {"method": r.label, "pipeline": r.folder, "status": r.status, "benchmark": b,
                   "mean": None, "se": None, "seed_sd": None, "n_seeds": len(r.seed_runs) or 1,
                   "n_problems": None, "n_samples": None, "no_answer": None, "complete": None}
            if s is not None:
                rec.update(mean=100 * s["accuracy"], se=100 * s.get("accuracy_se", 0.0),
                           seed_sd=100 * s["seed_sd"] if s.get("seed_sd") is not None else None,
                           n_problems=s.get("n_problems"), n_samples=s.get("n_samples"),
                           no_answer=int(bool(s.get("no_answer"))), complete=int(is_complete(s)))
            rec.update(format_rate=rate(s, "format_rate"), extraction_rate=rate(s, "extraction_rate"),
                       truncation_rate=rate(s, "truncation_rate"), repetition_rate=rate(s, "repetition_rate"),
                       mean_response_tokens=(s or {}).get("mean_response_tokens"),
                       p95_response_tokens=(s or {}).get("p95_response_tokens"), tokens_per_s=tokens_per_second(s))
            out.append(rec)
    return out


def gains_records(gains: list[Gain]) -> list[dict]:
    out = []
    for g in gains:
        for b, d in g.benchmarks.items():
            out.append({"method": g.label, "started_from": g.start, "benchmark": b, "seed": None,
                        "difference": 100 * d["difference"], "se": 100 * d["se"], "n_problems": d["n_problems"]})
            out += [{"method": g.label, "started_from": g.start, "benchmark": b, "seed": x["seed"],
                     "difference": 100 * x["difference"], "se": 100 * x["se"], "n_problems": x["n_problems"]}
                    for x in d.get("per_seed", [])]
    return out


def cost_records(stages: list[StageCost]) -> list[dict]:
    out = []
    for st in stages:
        c = st.cost
        wall = c.get("wall_seconds", 0.0)
        out.append({"stage": st.label, "kind": st.kind, "status": st.status, "wall_seconds": wall,
                    "device": c.get("device"), "device_hours": c.get("device_hours", 0.0),
                    "tokens": c.get("tokens", 0), "tokens_per_s": c.get("tokens", 0) / wall if wall else None,
                    "peak_memory_gb": c.get("peak_memory_gb", 0.0), "pipelines": len(st.used_by)})
    return out


def pipeline_cost_records(rows: list[Row]) -> list[dict]:
    return [{"method": r.label, "pipeline": r.folder, "status": r.status, **pipeline_cost(r)} for r in rows]


def csv_records(records: list[dict]) -> str:
    """CSV of `records` (columns: the union of their keys, in order); None is an empty field, so a reader
    such as pandas sees numeric columns with missing values, not strings."""
    import csv
    import io

    columns = list(dict.fromkeys(k for rec in records for k in rec))
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, lineterminator="\n")
    w.writeheader()
    for rec in records:
        w.writerow({k: "" if v is None else v for k, v in rec.items()})
    return buf.getvalue()


def latex(table: list[list[str]]) -> str:
    def esc(c: str) -> str:
        c = c.replace("±", r"$\pm$").replace(DAGGER, r"$\dagger$").replace(DOUBLE_DAGGER, r"$\ddagger$")
        c = c.replace(SECTION_SIGN, r"\S{}")
        c = c.replace("_", r"\_").replace("%", r"\%")
        return re.sub(r"\*\*(.+?)\*\*", lambda m: r"\textbf{" + m.group(1) + "}", c)

    head, *body = table
    lines = [r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\toprule", " & ".join(esc(c) for c in head)
             + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


@dataclass
class Section:
    """One part of the report: a heading, a table (first row the header), a note under it, bullet items.
    `total_rows`: how many of the table's last rows are totals (kept at the bottom when sorting)."""

    title: str
    table: list[list[str]] | None = None
    note: str = ""
    items: list[str] = field(default_factory=list)
    total_rows: int = 0


def report_sections(rows: list[Row], gains: list[Gain] = (), stages: list[StageCost] = ()) -> list[Section]:
    """The report's tables and notes in order; `report_markdown` and `report_html.render` lay them out."""
    acc = accuracy_table(rows)
    sections = [
        Section("Accuracy (%, mean ± standard error over problems)", acc,
                " ".join(x for x in (BOLD_BEST, marks_legend(acc), SEEDS_NOTE if any(r.seed_runs for r in rows)
                                     else "") if x)),
        Section("Format and extraction rates (%), generation speed", format_table(rows),
                "Format: responses in the prompt's required format (n/a where the prompt asks for none); "
                "extracted: responses an answer could be read from. Tokens/s: tokens generated per second of "
                "evaluation wall time."),
        Section("How responses ended", response_table(rows),
                "Truncated: hit the response token limit. Loop: the response ends in a repetition loop (the same "
                "text at least 4 times over at least 200 characters, whatever ended it)."),
    ]
    agreement = grader_agreement_table(rows)
    if agreement is not None:
        sections.append(Section(
            "Grader agreement (%)", agreement,
            "srlm's grader beside math-verify's (gold in \\boxed{}) on the same samples: srlm's accuracy, "
            "math-verify's, and how often they agree; each evaluation's `grader_disagreements.jsonl` lists the "
            "samples they judge differently."))
    if gains:
        sections.append(Section(
            "What each stage adds (accuracy points over its starting checkpoint)", gains_table(list(gains)),
            "Paired over the problems both checkpoints were scored on: the standard error is that of the "
            "per-problem differences, so problem difficulty cancels out. " + BOLD_GAIN
            + (" " + SEED_GAINS_NOTE if any(d.get("per_seed") for g in gains for d in g.benchmarks.values()) else "")))
    if stages:
        sections.append(Section("Compute cost per stage", cost_table(list(stages)),
                                "A stage shared by several pipelines (a common prefix) ran once and is one row; "
                                "`pipelines` counts the rows that use it."))
        sections.append(Section("Compute cost per method", pipeline_cost_table(rows, list(stages)),
                                "A method's total adds up every stage it went through, shared ones included, i.e. "
                                "what it costs to reproduce that row alone. The `whole run` line counts each "
                                "shared stage once.", total_rows=1))
    notes = [f"**{r.label}**: {r.status}: {r.reason}" for r in rows if r.status != "done" and r.reason]
    notes += [f"**{r.label}**: {st['kind']} stage warned: {w}" for r in rows for st in r.stages
              for w in st.get("warnings", [])]
    if notes:
        sections.append(Section("Problems", items=notes))
    return sections


def report_markdown(title: str, rows: list[Row], plots: list[tuple[str, str]] = (), gains: list[Gain] = (),
                    stages: list[StageCost] = ()) -> str:
    """The whole `report.md`: accuracy, format, gain and cost tables, notes on failures, and plot links."""
    parts = [f"# {title}", ""]
    for sec in report_sections(rows, gains, stages):
        parts += [f"## {sec.title}", ""]
        if sec.table is not None:
            parts += [markdown(sec.table), ""]
        if sec.note:
            parts += [sec.note, ""]
        if sec.items:
            parts += [f"- {item}" for item in sec.items] + [""]
    if plots:
        parts += ["## Plots", ""]
        parts += [f"### {caption}\n\n![{caption}]({path})\n" for caption, path in plots]
    return "\n".join(parts)
