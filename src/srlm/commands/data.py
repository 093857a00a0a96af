"""`srlm data`: list the named datasets, show their canonical records, prepare training examples.

    srlm data list
    srlm data show NAME [--split S] [--path P] [--limit N] [--json]
    srlm data prepare NAME --for sft|rl [--split S] [--path P] [--out FILE] [--max-chars N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from srlm.data import prepare as prep
from srlm.data import sources
from srlm.errors import UserError

PREVIEW_RECORDS = 3


def _option(text: str) -> tuple[str, Any]:
    """Parse `KEY=VALUE` from `--opt`; numbers become int or float so generators get typed values."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for parse in (int, float):
        try:
            return key, parse(value)
        except ValueError:
            pass
    return key, value


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="dataset name (see `srlm data list`)")
    p.add_argument("--split", help="split to load (default: the dataset's default, test for benchmarks)")
    p.add_argument("--path", help=f"local data: {sources.DATA_LAYOUT} (default: $SRLM_DATA_PATH, else the "
                                  "Hugging Face hub copy)")
    p.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="loader option for generated datasets, e.g. --opt n=500 --opt seed=1 (repeatable)")


def _load(args: argparse.Namespace, limit: int | None = None) -> list[dict[str, Any]]:
    return sources.load_records(args.name, split=args.split, path=args.path, limit=limit, **dict(args.opt))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` verb and its sub-verbs."""
    data = subparsers.add_parser("data", help="list, inspect and prepare datasets",
                                 description="List, inspect and prepare the named datasets.")

    def show_help(args: argparse.Namespace) -> int:  # `srlm data` alone: say what the sub-verbs are
        data.print_help()
        return 2

    data.set_defaults(func=show_help)
    verbs = data.add_subparsers(dest="data_verb", metavar="SUBCOMMAND")

    p = verbs.add_parser("list", description="List every named dataset: its splits, and whether it loads from "
                                             "the hub, local files or a generator.",
                         help="list the named datasets, their splits and where they load from")
    p.set_defaults(func=cmd_list)

    p = verbs.add_parser("show", description="Load a dataset as canonical records (question, gold answer, "
                                             "solution) and print a preview of the first ones, or every record "
                                             "as JSON lines with --json.",
                         help="print a dataset's canonical records (a preview, or all with --json)")
    _add_source_args(p)
    p.add_argument("--limit", type=int, help="load only the first N records")
    p.add_argument("--json", action="store_true",
                   help="print one canonical record per line (JSON) instead of a preview")
    p.set_defaults(func=cmd_show)

    p = verbs.add_parser("prepare", description="De-duplicate a dataset and build training examples: for SFT a "
                                                "prompt and a completion in the <think>/<answer> format, for RL a "
                                                "prompt and its gold answer. Prints counts; --out writes them.",
                         help="de-duplicate and build SFT or RL examples, optionally writing jsonl")
    _add_source_args(p)
    p.add_argument("--for", dest="purpose", required=True, choices=sorted(prep.EXAMPLE_BUILDERS),
                   help="sft: prompt + completion in the <think>/<answer> format; rl: prompt + gold answer")
    p.add_argument("--out", help="write the examples here as jsonl (atomically); without it only counts are shown")
    p.add_argument("--max-chars", type=int, help="drop examples longer than this many characters")
    p.set_defaults(func=cmd_prepare)


def cmd_list(args: argparse.Namespace) -> int:
    """Print one line per dataset: name, splits (default first, starred), source, description."""
    rows = []
    for name, description, splits in sources.list_datasets():
        spec = sources.get_spec(name)
        shown = [f"{s}*" if s == spec.default_split else s for s in splits] or [f"{spec.default_split}*", "..."]
        rows.append((name, ",".join(shown), spec.source_hint, description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print("(* = default split; load from local files with --path DIR, DIR/NAME/SPLIT.jsonl)")
    return 0


def _one_line(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_show(args: argparse.Namespace) -> int:
    """Print records: as JSON lines with --json, else a short preview and the count."""
    records = _load(args, limit=args.limit)
    try:
        if args.json:
            for record in records:
                sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            for record in records[:PREVIEW_RECORDS]:
                print(f"{record['id']}  answer: {record['answer']}")
                print(f"  question: {_one_line(record['question'], 300)}")
                if record["solution"]:
                    print(f"  solution: {_one_line(record['solution'], 200)}")
                print()
            origin = records[0]["meta"].get("origin", "generated") if records else "-"
            print(f"{len(records)} records ({args.name}, from {origin})")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` closed the pipe: not an error, and no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _default_file_mode() -> int:
    """0o666 minus the process umask (read without changing it for good)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write `rows` as jsonl to `path` via a temporary file in the same folder and `os.replace`, so a
    crash or error leaves either the old file or the complete new one, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
            # mkstemp creates the file private (0600); give it the mode a plain open() would have.
            os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def cmd_prepare(args: argparse.Namespace) -> int:
    """Build examples for SFT or RL, print the counts, and write them if --out is given."""
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / (args.name + '.jsonl')}")
    examples, report = prep.prepare(_load(args), for_=args.purpose, max_chars=args.max_chars)
    print(f"in: {report.n_in}")
    print(f"duplicates dropped: {report.n_duplicates}")
    print(f"too long dropped: {report.n_too_long}")
    print(f"out: {report.n_out}")
    if out is None:
        print("nothing written (no --out)")
    else:
        write_jsonl_atomic(out, examples)
        print(f"wrote {out}")
    return 0
