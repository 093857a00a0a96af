"""`srlm run CONFIG [key.path=value ...]`: run every pipeline of a config (a pipeline or a study)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("run", help="run the pipelines of a config file (resumable)",
                       description="Run every pipeline of CONFIG, skipping finished stages and resuming an "
                                   "interrupted one. Overrides are dotted keys: grpo.beta=0.02.")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides (values parsed as YAML)")
    p.add_argument("--only", help="comma-separated pipeline names to run (default: all)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (neither srlm's nor transformers'); the one-line stage progress stays")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: config `threads`, else the free cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    from srlm.config import load_config
    from srlm.cpu import apply_threads

    cfg = load_config(args.config, args.overrides)
    apply_threads(args.threads or cfg.threads)
    only = args.only.split(",") if args.only else None
    return execute(cfg, progress=not args.no_progress, only=only)


def execute(cfg, progress: bool = True, only=None) -> int:
    """Run, print the report's accuracy table and a summary; non-zero exit when any pipeline did not finish."""
    from pathlib import Path

    from srlm.pipeline import run_all
    from srlm.report_tables import accuracy_table, format_table, markdown, marks_legend
    from srlm.report_folder import collect_rows

    results = run_all(cfg, progress=progress, only=only)
    rows = collect_rows(Path(cfg.run_dir))
    print()
    table = accuracy_table(rows)
    print(markdown(table))
    if marks_legend(table):  # what †, ‡ or § in the table mean
        print(marks_legend(table))
    print()
    print(markdown(format_table(rows)))
    print(f"\nreport: {Path(cfg.run_dir) / 'report.md'}")
    bad = [r for r in results if r.status != "done"]
    for r in bad:
        print(f"pipeline {r.name}: {r.status}: {r.reason}")
    return 1 if bad else 0
