"""`srlm kd generate`: teacher traces for sequence-level KD (stage kind `kd`), by rejection sampling.

    srlm kd generate --teacher MODEL --dataset NAME [--split S] [--data-path P] [--samples K]
                     [--out FILE] [--max-new-tokens N] [--temperature T] [--limit N]

K responses per problem are sampled from the teacher; those the grader marks correct are written as
canonical records whose `solution` is the `<think>…</think>\\n<answer>…</answer>` completion. Train on
them with a `kd` (or SFT) stage whose data is `{name: records, path: FILE}`. Re-running the same command
continues where it stopped (`FILE.done` lists finished problems). Logit-level distillation is the
pipeline stage kind `distill` (see `LogitKDConfig`).
"""

from __future__ import annotations

import argparse
import json


def prompt_names() -> list[str]:
    from srlm.data.prompts import PROMPTS

    return list(PROMPTS)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `kd` verb and its `generate` sub-verb."""
    kd = subparsers.add_parser("kd", help="generate teacher traces for sequence-level KD",
                               description="Teacher traces for sequence-level knowledge distillation (stage kind "
                                           "`kd`).")

    def show_help(args: argparse.Namespace) -> int:
        kd.print_help()
        return 2

    kd.set_defaults(func=show_help)
    verbs = kd.add_subparsers(dest="kd_verb", metavar="SUBCOMMAND")
    p = verbs.add_parser("generate", help="sample teacher traces, keep the correct ones (rejection sampling)",
                         description="Sample K traces per problem from a teacher, keep those graded correct, "
                                     "write canonical records in the paper's format (resumable).")
    p.add_argument("--teacher", required=True, metavar="MODEL", help="teacher model folder or hub id")
    p.add_argument("--dataset", required=True, metavar="NAME", help="dataset name (see `srlm data list`)")
    p.add_argument("--split", help="split (default: the dataset's default)")
    p.add_argument("--data-path", metavar="P", help="local data: a data folder laid out as DIR/NAME/SPLIT.jsonl "
                                                     "(.json and .parquet also work), a folder of SPLIT.jsonl files, "
                                                     "or one file (default: $SRLM_DATA_PATH, else the hub)")
    p.add_argument("--samples", type=int, default=4, metavar="K", help="responses per problem (default 4)")
    p.add_argument("--out", metavar="FILE", help="output jsonl (default: traces-NAME-SPLIT.jsonl)")
    p.add_argument("--max-new-tokens", type=int, default=1024, metavar="N", help="longest response (default 1024)")
    p.add_argument("--temperature", type=float, default=0.7, metavar="T", help="sampling temperature (default 0.7)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N problems")
    p.add_argument("--prompt", default="tags", choices=sorted(prompt_names()), help="prompt template (default: tags)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the teacher runs")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from srlm.data.prompts import get_prompt
    from srlm.data.sources import get_spec, load_records
    from srlm.errors import UserError
    from srlm.models import resolve_device
    from srlm.train.kd import generate_traces

    if args.samples < 1 or args.max_new_tokens < 1:
        raise UserError("--samples and --max-new-tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
    get_prompt(args.prompt)
    split = args.split or get_spec(args.dataset).default_split
    records = load_records(args.dataset, split=split, path=args.data_path, limit=args.limit)
    out = Path(args.out or f"traces-{args.dataset}-{split}.jsonl")
    counts = generate_traces(args.teacher, records, out, resolve_device(args.device), samples=args.samples,
                             prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                             benchmark=args.dataset, progress=not args.quiet)
    rate = counts["acceptance_rate"]
    shown = f"{100 * rate:.1f}%" if rate is not None else "n/a (nothing new sampled)"
    print(f"accepted {counts['accepted']}/{counts['sampled']} traces ({shown}); "
          f"{counts['problems_with_accepted']} of {counts['problems'] - counts['skipped_done']} new problems "
          f"have one; {counts['skipped_done']} already done; wrote {out}")
    print(f"train on it with: data: {{name: records, path: {out}}}")
    print(json.dumps(counts))
    return 0
