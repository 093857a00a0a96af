"""`srlm compare RUN_A RUN_B`: the same rows of two runs side by side, with paired differences."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("compare", help="two run folders side by side, with B - A paired per problem",
                       description="Match the pipelines of RUN_A and RUN_B by name and print, per benchmark, "
                                   "A's accuracy, B's, and B - A with its paired standard error (over the "
                                   "problems both scored) where both evaluations used the same protocol. "
                                   "For two configs of one study: no spreadsheet needed.")
    p.add_argument("run_a", metavar="RUN_A", help="a folder written by `srlm run` or `srlm demo`")
    p.add_argument("run_b", metavar="RUN_B", help="another such folder")
    p.add_argument("--csv", metavar="FILE", help="also write the comparison as CSV (numeric columns)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from srlm.errors import UserError
    from srlm.report_tables import BOLD_GAIN, compare_records, compare_table, csv_records, markdown
    from srlm.report_folder import compare_runs
    from srlm.files import atomic_write_text

    for d in (args.run_a, args.run_b):
        if not Path(d).is_dir() or not list(Path(d).glob("*/pipeline.json")):
            raise UserError(f"{d}: not a run folder (no */pipeline.json)")
    comparisons, notes = compare_runs(Path(args.run_a), Path(args.run_b))
    print(f"A: {args.run_a}\nB: {args.run_b}\n")
    print(markdown(compare_table(comparisons)))
    print("\nB − A: accuracy points, ± the standard error of the per-problem differences. " + BOLD_GAIN)
    for note in notes:
        print(f"- {note}")
    if args.csv:
        atomic_write_text(Path(args.csv), csv_records(compare_records(comparisons)))
        print(f"\nwrote {args.csv}")
    return 0
