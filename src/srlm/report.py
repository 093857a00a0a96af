"""Tables from run results (pure: data in, text out; the pipeline writes the files).

The accuracy table has the paper's shape: methods as rows, benchmarks as columns, accuracy (%) with its
standard error, best per column in bold, ‡ for a collapsed RL stage, † where no answer could be
extracted, and `failed` where a stage broke.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAGGER, DOUBLE_DAGGER = "†", "‡"


@dataclass
class Row:
    """One pipeline's results, as the report sees them."""

    label: str
    status: str  # done | collapsed | failed | running
    benchmarks: dict[str, dict] = field(default_factory=dict)  # name -> summary of evaluate.summarize
    cost: dict = field(default_factory=dict)  # wall_seconds, device, device_hours, tokens, peak_memory_gb
    stages: list[dict] = field(default_factory=list)  # [{kind, status, reason, dir}]
    reason: str | None = None
    folder: str = ""  # the pipeline's folder in the run directory


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
    if s.get("no_answer"):
        return DAGGER
    acc, se = 100 * s["accuracy"], 100 * s.get("accuracy_se", 0.0)
    text = f"{acc:.1f} ± {se:.1f}"
    return f"**{text}**" if best is not None and abs(acc - best) < 1e-9 else text


def benchmark_names(rows: list[Row]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for b in r.benchmarks:
            if b not in names:
                names.append(b)
    return names


def _best(rows: list[Row], bench: str) -> float | None:
    vals = [100 * r.benchmarks[bench]["accuracy"] for r in rows
            if r.status == "done" and bench in r.benchmarks and not r.benchmarks[bench].get("no_answer")]
    return max(vals) if vals else None


def accuracy_table(rows: list[Row]) -> list[list[str]]:
    benches = benchmark_names(rows)
    best = {b: _best(rows, b) for b in benches}
    table = [["method"] + benches]
    for r in rows:
        table.append([r.label] + [_cell(r, b, best[b]) for b in benches])
    return table


def format_table(rows: list[Row]) -> list[list[str]]:
    """Format rate and extraction rate per method and benchmark (%)."""
    benches = benchmark_names(rows)
    table = [["method"] + [f"{b} format / extracted" for b in benches]]
    for r in rows:
        cells = []
        for b in benches:
            s = r.benchmarks.get(b)
            cells.append("–" if s is None else f"{100 * s['format_rate']:.0f} / {100 * s['extraction_rate']:.0f}")
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


def cost_table(rows: list[Row]) -> list[list[str]]:
    table = [["method", "status", "train wall (s)", "device", "device-hours", "train tokens", "peak memory (GB)"]]
    for r in rows:
        c = r.cost
        table.append([r.label, r.status, f"{c.get('wall_seconds', 0):.0f}", str(c.get("device", "–")),
                      f"{c.get('device_hours', 0):.3f}", f"{c.get('tokens', 0):,}",
                      f"{c.get('peak_memory_gb', 0):.2f}"])
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
            cells.append(f"**{text}**" if abs(diff) > 2 * se else text)
        table.append([g.label, g.start] + cells)
    return table


def markdown(table: list[list[str]]) -> str:
    head, *body = table
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def csv_text(table: list[list[str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows([[c.replace("**", "") for c in row] for row in table])
    return buf.getvalue()


def latex(table: list[list[str]]) -> str:
    def esc(c: str) -> str:
        c = c.replace("±", r"$\pm$").replace(DAGGER, r"$\dagger$").replace(DOUBLE_DAGGER, r"$\ddagger$")
        if c.startswith("**") and c.endswith("**"):
            c = r"\textbf{" + c[2:-2] + "}"
        return c.replace("_", r"\_").replace("%", r"\%")

    head, *body = table
    lines = [r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\toprule", " & ".join(esc(c) for c in head)
             + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def report_markdown(title: str, rows: list[Row], plots: list[tuple[str, str]] = (), gains: list[Gain] = ()) -> str:
    """The whole `report.md`: accuracy, format, gain and cost tables, notes on failures, and plot links."""
    parts = [f"# {title}", "", "## Accuracy (%, mean ± standard error over problems)", "",
             markdown(accuracy_table(rows)), "",
             f"{DAGGER} no answer could be extracted from the responses; {DOUBLE_DAGGER} the RL stage collapsed "
             "(training stopped by the collapse guard).", "",
             "## Format and extraction rates (%)", "", markdown(format_table(rows)), "",
             "## How responses ended", "", markdown(response_table(rows)), "",
             "Truncated: hit the response token limit. Loop: the response ends in a repetition loop (the same "
             "text at least 4 times over at least 200 characters, whatever ended it).", ""]
    if gains:
        parts += ["## What each stage adds (accuracy points over its starting checkpoint)", "",
                  markdown(gains_table(list(gains))), "",
                  "Paired over the problems both checkpoints were scored on: the standard error is that of the "
                  "per-problem differences, so problem difficulty cancels out. Bold: more than twice the "
                  "standard error.", ""]
    parts += ["## Compute cost", "", markdown(cost_table(rows)), ""]
    notes = [f"- **{r.label}**: {r.status}: {r.reason}" for r in rows if r.status != "done" and r.reason]
    if notes:
        parts += ["## Problems", ""] + notes + [""]
    if plots:
        parts += ["## Plots", ""]
        parts += [f"### {caption}\n\n![{caption}]({path})\n" for caption, path in plots]
    return "\n".join(parts)
