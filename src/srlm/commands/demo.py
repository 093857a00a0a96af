"""`srlm demo`: the embedded default run (configs/demo.yaml) on the tiny model and the synthetic task."""

from __future__ import annotations

from importlib import resources

# `--quick`: the same study, smaller everywhere (a smaller model, fewer steps, a smaller test set), for a
# first look in about three minutes. The numbers it prints are noisier; the full demo is the reference.
QUICK = [
    "run_dir=runs/demo-quick",
    "pretrain.steps=500", "sft.steps=80", "grpo.steps=10",
    "eval.benchmarks=[{name: synthetic, split: test, options: {n: 150, seed: 0}}]", "eval.n=2",
]


def demo_config_path():
    return resources.files("srlm") / "demo.yaml"


def register(sub) -> None:
    p = sub.add_parser("demo", help="train and evaluate the tiny model end to end on CPU (minutes)",
                       description="Builds the tiny model, pre-trains it, fine-tunes it (SFT), runs GRPO, "
                                   "evaluates each checkpoint and writes RUN/report.md. Same as "
                                   "`srlm run configs/demo.yaml`.")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. run_dir=/tmp/demo")
    p.add_argument("--quick", action="store_true", help="fewer steps and a smaller test set (a first look)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from srlm.commands.run import execute
    from srlm.config import load_config

    overrides = (QUICK if args.quick else []) + list(args.overrides)
    with resources.as_file(demo_config_path()) as path:
        cfg = load_config(path, overrides)
    return execute(cfg, progress=not args.no_progress)
