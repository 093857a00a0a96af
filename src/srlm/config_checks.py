"""Load-time checks of what the schema's types cannot say: registry names, cross-field rules, paths.

`load_config` calls `check_config` after pydantic has validated the types, so a run with a misspelt reward
or a dataset split that does not exist fails before its first stage, not hours into a study. Names are
looked up in the registries they live in (datasets, prompts, rewards, loss aggregations, advantage
estimators, engines), so a name registered there is accepted here with no list to keep in step. Every problem is one clause naming
the full key path and, for a name, the closest valid one; all problems of a config are reported at once.

A stage of a pipeline is checked with its kind's section merged in; a problem that comes from the section
itself is reported once, under the section's key (`grpo.aggregation`), not once per stage using it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from srlm.errors import UserError

# The registry getters import lazily: the registries pull in torch or the grader.


def _datasets() -> dict:
    from srlm.data.sources import DATASETS

    return DATASETS


def _prompts() -> dict:
    from srlm.data.prompts import PROMPTS

    return PROMPTS


def _rewards() -> dict:
    from srlm.grading.rewards import REWARDS

    return REWARDS


def _aggregations() -> dict:
    from srlm.train.losses import AGGREGATIONS

    return AGGREGATIONS


def _advantages() -> dict:
    from srlm.train.losses import ADVANTAGE_ESTIMATORS

    return ADVANTAGE_ESTIMATORS


def _engines() -> Iterable[str]:
    import srlm.engines as engines

    registry = getattr(engines, "ENGINES", None)
    return list(registry) if registry is not None else []


# stage field -> registry of its valid names (a list field: every item)
STAGE_NAMES: dict[str, Callable[[], Iterable[str]]] = {
    "prompt": _prompts,
    "rewards": _rewards,
    "aggregation": _aggregations,
    "advantage": _advantages,
    "engine": _engines,
}


def _bf16_capable() -> bool:
    import torch

    from srlm.train.optim import cpu_has_bf16
    return torch.cuda.is_available() or cpu_has_bf16()


def closest(name: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.4)
    return f"; did you mean {match[0]!r}?" if match else ""


def _unknown(key: str, value: Any, valid: Iterable[str], what: str = "name", of: str = "") -> str:
    valid = list(valid)
    return (f"{key}: unknown {what} {value!r}{' of ' + of if of else ''}{closest(value, valid)} "
            f"(choose from {', '.join(sorted(map(str, valid)))})")


# ------------------------------------------------------------------------------------------- pieces


def dataset_problems(key: str, ref) -> list[str]:
    """Name, split, options and path of a DatasetRef (`key` is its full key path)."""
    from srlm.data.sources import RECORDS_DATASET

    datasets = _datasets()
    if ref.name == RECORDS_DATASET and ref.name not in datasets:
        if not ref.path:
            return [f"{key}.path: dataset 'records' reads a file of canonical records: set its path"]
        return _path_problems(f"{key}.path", ref.path)
    if ref.name not in datasets:
        return [_unknown(f"{key}.name", ref.name, [*datasets, RECORDS_DATASET], "dataset")]
    spec = datasets[ref.name]
    out = []
    if ref.split is not None and spec.splits and ref.split not in spec.splits:
        out.append(_unknown(f"{key}.split", ref.split, spec.splits, "split", ref.name))
    for option in sorted(set(ref.options) - set(spec.options)):
        out.append(_unknown(f"{key}.options.{option}", option, spec.options or ["(none)"], "option", ref.name))
    if ref.path:
        out += _path_problems(f"{key}.path", ref.path)
    return out


def _path_problems(key: str, path: str) -> list[str]:
    p = Path(path).expanduser()
    return [] if p.exists() else [f"{key}: path not found: {path}"]


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def model_problems(key: str, name: str | None, pipelines: Iterable[str] = ()) -> list[str]:
    """A model reference: `tiny`, a pipeline name (teachers), an existing folder/file, or a hub id."""
    if name is None or name == "tiny" or name in pipelines or _looks_like_hub_id(name):
        return []
    if Path(name).expanduser().exists():
        return []
    hint = closest(name, pipelines) if pipelines else ""
    return [f"{key}: {name!r} is not a folder or file that exists, a hub id like 'org/name'"
            + (", or a pipeline of this config" if pipelines else "") + hint]


def tiny_problems(key: str, tiny) -> list[str]:
    """Shapes of the tiny model that transformers would reject (or silently mis-build) later."""
    out = []
    if tiny.hidden % tiny.heads:
        out.append(f"{key}.heads: {tiny.heads} heads do not divide hidden {tiny.hidden}")
    elif (tiny.hidden // tiny.heads) % 2:
        out.append(f"{key}.heads: head size hidden/heads = {tiny.hidden // tiny.heads} must be even (rotary "
                   f"embedding)")
    if tiny.heads % tiny.kv_heads:
        out.append(f"{key}.kv_heads: {tiny.kv_heads} key/value heads do not divide {tiny.heads} heads")
    return out


def stage_problems(key: str, kind: str, scfg, pipelines: Iterable[str], model_modules: set[str] | None,
                   in_pipeline: bool = False) -> list[str]:
    """Every check of one stage config (a section like `grpo`, or, `in_pipeline`, a pipeline's stage merged
    with it; `model_modules`: the module names of its start model, when known)."""
    out = []
    for field, registry in STAGE_NAMES.items():
        if field not in type(scfg).model_fields:
            continue
        value = getattr(scfg, field)
        valid = list(registry())
        if not valid:
            continue  # a registry this build does not have: the type already limits the value
        for item in (value if isinstance(value, list) else [value]):
            if item not in valid:
                out.append(_unknown(f"{key}.{field}", item, valid))
    if getattr(scfg, "data", None) is not None:
        out += dataset_problems(f"{key}.data", scfg.data)
    if getattr(scfg, "bf16_autocast", None) and not _bf16_capable():
        out.append(f"{key}.bf16_autocast: true, but this machine has no GPU and its CPU no bf16 instructions "
                   f"(avx512_bf16 or amx_bf16); leave it unset (null) or set it false")
    if kind == "grpo":
        for field in ("compile", "fsdp"):
            if getattr(scfg, field):
                out.append(f"{key}.{field}: GRPO stages do not support it (pretrain, sft, kd and distill do); "
                           f"set it false")
        if scfg.reward_weights is not None and len(scfg.reward_weights) != len(scfg.rewards):
            out.append(f"{key}.reward_weights: {len(scfg.reward_weights)} weights for {len(scfg.rewards)} rewards "
                       f"{scfg.rewards}; give one weight per reward")
        if scfg.minibatch_size and scfg.minibatch_size % scfg.group_size:
            out.append(f"{key}.minibatch_size: {scfg.minibatch_size} is not a multiple of group_size "
                       f"{scfg.group_size}; try {max(1, round(scfg.minibatch_size / scfg.group_size)) * scfg.group_size}")
        if scfg.epsilon_high is not None and scfg.epsilon_high < scfg.epsilon:
            out.append(f"{key}.epsilon_high: {scfg.epsilon_high} is below epsilon {scfg.epsilon}")
    if kind in ("kd", "distill"):
        out += model_problems(f"{key}.teacher", scfg.teacher, pipelines)
    if kind == "distill" and scfg.teacher is None and in_pipeline:
        out.append(f"{key}.teacher: logit-level distillation needs a teacher (a pipeline of this config, a "
                   f"model folder or a hub id)")
    lora = getattr(scfg, "lora", None)
    if lora is not None and lora.enabled and model_modules is not None:
        missing = [t for t in lora.target_modules if t not in model_modules]
        if len(missing) == len(lora.target_modules):
            out.append(f"{key}.lora.target_modules: {lora.target_modules} match no module of the model"
                       f"{closest(missing[0], model_modules)} (its modules: {', '.join(sorted(model_modules)[:12])})")
    return out


def tiny_module_names() -> set[str]:
    """The leaf module names of the tiny model (a Qwen2): what `lora.target_modules` can name."""
    return {"embed_tokens", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
            "input_layernorm", "post_attention_layernorm", "norm", "lm_head", "rotary_emb", "act_fn"}


def local_module_names(folder: str) -> set[str] | None:
    """Leaf module names of the model in a local folder, built on the meta device (no weights read);
    None when that cannot be done cheaply (a hub id, remote code, no config.json)."""
    p = Path(folder).expanduser()
    if not (p / "config.json").is_file():
        return None
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(p))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - the model's own loading reports its problems later, with context
        return None
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


# ------------------------------------------------------------------------------------------- whole config


def check_config(cfg, stage_kinds: Iterable[str], resolved: dict[str, tuple[str, list]]) -> None:
    """Raise one UserError listing every problem of a validated RunConfig (see the module docstring).

    `stage_kinds`: the kinds whose sections `cfg` has; `resolved`: pipeline name -> (starting model, (kind, resolved
    config) of every stage, inherited ones first), resolved by `config.py` (which calls this, so no import
    back)."""
    problems: list[str] = []
    pipelines = list(cfg.pipelines)
    if not str(cfg.run_dir).strip():
        problems.append("run_dir: empty; name the folder the run writes to (e.g. runs/demo)")
    if cfg.data_path:
        problems += _path_problems("data_path", cfg.data_path)
    if cfg.model.name_or_path == "tiny":
        problems += tiny_problems("model.tiny", cfg.model.tiny)
    problems += model_problems("model.name_or_path", cfg.model.name_or_path)
    modules: dict[str, set[str] | None] = {}

    def modules_of(start: str) -> set[str] | None:
        if start not in modules:
            modules[start] = tiny_module_names() if start == "tiny" else local_module_names(start)
        return modules[start]

    section_problems: dict[str, set[str]] = {}
    for kind in stage_kinds:
        found = stage_problems(kind, kind, getattr(cfg, kind), pipelines, None)
        section_problems[kind] = {re.sub(rf"^{kind}\.", "", p) for p in found}
        problems += found
    for i, ref in enumerate(cfg.eval.benchmarks):
        problems += dataset_problems(f"eval.benchmarks.{i}", ref)
    names = [ref.name for ref in cfg.eval.benchmarks]
    for name in sorted({n for n in names if names.count(n) > 1}):
        where = [str(i) for i, n in enumerate(names) if n == name]
        problems.append(f"eval.benchmarks: {name!r} is listed {len(where)} times (entries {', '.join(where)}); its "
                        f"samples and its report column would be mixed: keep one entry per dataset")
    for name, p in cfg.pipelines.items():
        if p.start:
            problems += model_problems(f"pipelines.{name}.start", p.start)
        start, stages = resolved[name]
        own = len(stages) - len(p.stages)  # stages inherited through `extends`
        for i, (kind, scfg) in enumerate(stages[own:]):
            key = f"pipelines.{name}.stages.{i}"
            for problem in stage_problems(key, kind, scfg, pipelines, modules_of(start), in_pipeline=True):
                if problem.removeprefix(key + ".") not in section_problems.get(kind, set()):
                    problems.append(problem)
    if problems:
        raise UserError("; ".join(dict.fromkeys(problems)))
