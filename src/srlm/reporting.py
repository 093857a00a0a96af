"""Collect a run folder's results and write its report files (the I/O around the pure `report` module)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from srlm.report import Row, accuracy_table, cost_table, csv_text, latex, report_markdown
from srlm.train.loop import atomic_write_text


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
        rows.append(Row(label, info["status"], benches, cost, info["stages"], info.get("reason")))
    return rows


def write_report(run_dir: Path, formats: tuple[str, ...] = ("md", "csv", "tex")) -> Path:
    """Write `report.md` (and csv/tex tables) into `run_dir`; returns the report's path."""
    run_dir = Path(run_dir)
    rows = collect_rows(run_dir)
    tables = {"accuracy": accuracy_table(rows), "cost": cost_table(rows)}
    if "csv" in formats:
        for name, t in tables.items():
            atomic_write_text(run_dir / f"{name}.csv", csv_text(t))
    if "tex" in formats:
        for name, t in tables.items():
            atomic_write_text(run_dir / f"{name}.tex", latex(t))
    path = run_dir / "report.md"
    atomic_write_text(path, report_markdown(f"srlm report: {run_dir.name}", rows))
    return path
