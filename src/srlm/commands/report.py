"""`srlm report RUN_DIR`: (re)write a run folder's report.md, CSV/LaTeX tables and plots."""

from __future__ import annotations

FORMATS = ("md", "csv", "tex", "png", "html")


def register(sub) -> None:
    p = sub.add_parser("report", help="write report.md, tables and plots for a run folder",
                       description="Collect every pipeline of RUN_DIR and write report.md (accuracy with "
                                   "standard errors, format rates, compute cost), CSV/LaTeX tables, PNG plots "
                                   "and report.html (one self-contained page: plots embedded, sortable tables).")
    p.add_argument("run_dir", help="a folder written by `srlm run` or `srlm demo`")
    p.add_argument("--format", default=",".join(FORMATS),
                   help=f"comma-separated subset of {','.join(FORMATS)} (md is always written; html embeds the "
                        "png plots written by the same call) (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from srlm.errors import UserError
    from srlm.report_tables import accuracy_table, markdown
    from srlm.report_folder import collect_rows, write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UserError(f"unknown report format(s) {bad}; choose from {','.join(FORMATS)}")
    rows = collect_rows(run_dir)
    if not rows:
        raise UserError(f"{run_dir} holds no finished pipeline (no */pipeline.json)")
    path = write_report(run_dir, formats)
    print(markdown(accuracy_table(rows)))
    print(f"\nwrote {path}")
    return 0
