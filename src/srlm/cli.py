"""The `srlm` command: parse arguments, dispatch to a verb. No logic of its own.

Each verb lives in `srlm.commands.<verb>` and exposes `register(subparsers)`, which adds its parser and
sets `func(args) -> int`. A user mistake raises `UserError`; it is printed as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from srlm import __version__
from srlm.errors import UserError

# Errors of the disk, not of srlm: a full disk, a read-only or forbidden folder, a quota.
DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}

# Order is the order shown by `srlm --help`.
VERB_MODULES = [
    "srlm.commands.demo",
    "srlm.commands.data",
    "srlm.commands.kd",
    "srlm.commands.grade",
    "srlm.commands.eval",
    "srlm.commands.run",
    "srlm.commands.tiny_model",
    "srlm.commands.real_model",
    "srlm.commands.report",
    "srlm.commands.compare",
]


class _ShowDefaults:
    """Help formatter mix-in: an option's default is shown after its help, unless the help already names
    it (or there is none to show: a flag, an unset option)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default in (None, False, argparse.SUPPRESS) or default == []
                or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


class SrlmParser(argparse.ArgumentParser):
    """The parser of `srlm` and of every verb (sub-parsers inherit the class): defaults shown in --help."""

    def __init__(self, *args, formatter_class=argparse.HelpFormatter, **kwargs):
        if not issubclass(formatter_class, _ShowDefaults):
            formatter_class = type(f"ShowDefaults{formatter_class.__name__}", (_ShowDefaults, formatter_class), {})
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = SrlmParser(
        prog="srlm",
        description="Train and evaluate small reasoning language models on math.",
    )
    parser.add_argument("--version", action="version", version=f"srlm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options (`srlm run cfg.yaml --only a grpo.beta=0`): argparse
    # stops collecting positionals at the first option, so pick the rest up here.
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "no_progress", False):
        from srlm.progress import silence_library_bars

        silence_library_bars()
    together = False  # the command ran to its end on this rank (see close_process_group)
    try:
        code = int(args.func(args) or 0)
        together = True
        return code
    except UserError as e:
        print(f"srlm: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise  # a bug, or something unexpected: keep the traceback
        print(f"srlm: error: {e.strerror or e}: {e.filename or 'writing output'}; free space or fix permissions, "
              f"then re-run the same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("srlm: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # a torchrun / accelerate rank; keeps `srlm grade` free of torch
            from srlm.train.distributed import close_process_group

            close_process_group(together)


if __name__ == "__main__":
    sys.exit(main())
