"""Run configuration: dataclasses, YAML loading, dotted overrides, validation.

One `RunConfig` describes a whole training run. It is loaded from YAML, then
patched by `key=value` overrides from the command line (`train.lr=3e-3`), then
validated -- all before any work starts, so a typo costs a second, not an hour.
"""
from __future__ import annotations

import codecs
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalelab.errors import ConfigError
from scalelab.model.gpt import GPTConfig


@dataclass
class DataConfig:
    # Where text comes from: "builtin:bbcnews", a local .txt/.jsonl/.parquet file or
    # folder, or "hf:<dataset>" (streamed with `datasets`; see hf_name/hf_split).
    source: str = "builtin:bbcnews"
    hf_config: str | None = None  # e.g. "sample-10BT" for HuggingFaceFW/fineweb-edu
    hf_split: str = "train"
    text_column: str = "text"
    # Text files (.txt, .jsonl) are decoded with `encoding`; undecodable bytes become
    # U+FFFD, with a warning, and an error above this fraction of the characters read.
    encoding: str = "utf-8"
    max_replaced_fraction: float = 0.01
    max_docs: int | None = None  # cap on documents read (None = all)
    max_bytes: int | None = None  # cap on text bytes read (None = all)
    # Tokenizer: "bpe" (byte-level BPE trained on the source), "sentencepiece"
    # (trained), "gpt2" (offline GPT-2 ranks), or a path to a saved tokenizer file.
    tokenizer: str = "bpe"
    vocab_size: int = 1024  # for trained tokenizers
    tokenizer_train_bytes: int = 20_000_000  # text used to train the tokenizer
    # Output directory of `scalelab data` / input of `scalelab train`: shards,
    # tokenizer and meta.json. Existing public llm.c shards can be pointed to directly.
    dir: str = "data/bbcnews-bpe1024"
    val_fraction: float = 0.05  # deterministic document-level split
    shard_tokens: int = 100_000_000  # tokens per shard file
    num_workers: int = 2  # tokenization processes
    split_seed: int = 0


@dataclass
class TrainConfig:
    # Batch: the global token batch per optimizer step; accumulation is derived
    # as batch_tokens / (micro_batch * seq_len * world_size).
    micro_batch: int = 8
    batch_tokens: int = 8192
    # Optimizer: "adamw" (decoupled weight decay; no decay on norms/biases/embeddings), or
    # "muon" (scalelab.train.muon.Muon on the hidden 2-D matrices, AdamW at `lr` for the rest).
    optimizer: str = "adamw"
    lr: float = 3e-3
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_ns: str = "quintic"  # Muon's orthogonalization: quintic (Newton-Schulz) | polar_express (train/muon.py)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables clipping
    # Schedule: "cosine" (warmup + cosine to min_lr_ratio*lr), "wsd"
    # (warmup-stable-decay, linear decay over the last decay_frac of steps), "constant".
    schedule: str = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    decay_frac: float = 0.2
    # Stopping: the first of steps / tokens / wall-clock reached. At least one is set.
    max_steps: int | None = None
    max_tokens: int | None = None
    max_time_s: float | None = None  # training steps' time; with compile, the first (compiling) step is not billed
    # Numerics and speed.
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    activation_checkpointing: bool = False
    fp8: bool = False  # FP8 forward matmuls in the blocks (H100-class GPUs; scalelab.train.fp8)
    parallel: str = "auto"  # auto | none | ddp | fsdp
    deterministic: bool = False
    threads: int | None = None  # torch CPU threads (None = torch default)
    ema_decay: float | None = None  # EMA of the weights (evaluated, saved as ema.safetensors); decay warms up as min(d, (1+n)/(10+n))
    # Throughput knobs (see `scalelab tune`): data-loader workers, DDP buckets, FSDP resharding.
    loader_workers: int = 0  # 0 = batches prepared in the training process
    prefetch_factor: int = 2
    pin_memory: bool = False
    ddp_bucket_mb: float = 25.0
    fsdp_reshard_after_forward: bool = True
    # Evaluation, checkpoints, logging.
    eval_every: int = 100
    eval_tokens: int = 65536
    # Zero-shot tasks scored at each evaluation on a fixed seeded subset (e.g. [hellaswag]);
    # `scalelab eval --help` lists the task names.
    eval_tasks: list[str] = field(default_factory=list)
    eval_tasks_limit: int = 200
    ckpt_every: int = 200
    ckpt_keep: int = 2  # newest checkpoints kept (plus `best`); older ones are deleted after each save
    ckpt_keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: none), for `eval --checkpoints`
    ckpt_samples: bool = False  # after each save, the fixed prompts' completions into samples.jsonl (train.samples)
    log_every: int = 10
    keep_best: bool = True
    # false: a new run (refused if out_dir holds checkpoints); true: continue out_dir's run from
    # its newest valid checkpoint, or start it if there is none (safe to relaunch as is);
    # last (= --resume): the same, but out_dir must hold a run; step_000025 / 25 (= --resume
    # step_000025): continue from that checkpoint.
    resume: bool | str = False
    # Train into an out_dir that holds files not written by scalelab (its config.yaml,
    # metrics.jsonl and summary.json get replaced); without it such a folder is refused.
    reuse_out_dir: bool = False
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "scalelab"
    progress: bool = True


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    seed: int = 1337
    data: DataConfig = field(default_factory=DataConfig)
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------
# Building from dicts with precise errors


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build any config dataclass from a dict, with the same key/type errors as RunConfig."""
    return _build(cls, data, prefix)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'root'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = prefix + key
        if key not in fields:
            raise ConfigError(_unknown_key_message(full, [prefix + k for k in fields]))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, full + ".")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}"


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts (for suggestions and --help)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (3e-3, true, null, [1,2])."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "3e-3" as a string; accept it as a number.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(tree: dict[str, Any], overrides: list[str], valid: list[str] | None = None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (types are checked later by _build).

    `valid`: the accepted dotted keys (default: RunConfig's); None-valued entries of a
    caller's own schema can pass `valid=[]` to skip the key check (checked at build time).
    """
    valid = all_keys() if valid is None else valid
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=3e-3)")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-")
        if valid and key not in valid:
            raise ConfigError(_unknown_key_message(key, valid))
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _parse_scalar(text)
    return tree


def load_yaml_mapping(path: str | Path, what: str = "config file", example: str = "configs/") -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; clear errors for missing/invalid files."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} '{p}' does not exist; see {example} for examples")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{p}' is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{what} '{p}' must contain a mapping at the top level")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or defaults), apply overrides, validate. Raises ConfigError."""
    tree: dict[str, Any] = load_yaml_mapping(path) if path is not None else {}
    tree = apply_overrides(tree, overrides or [])
    cfg = _build(RunConfig, tree, "")
    validate(cfg)
    return cfg


def split_config_arg(config: str | Path | None, overrides: list[str] | None = None) -> tuple[str | None, list[str]]:
    """A command's CONFIG word may be an override itself (`scalelab train train.max_steps=5`,
    no YAML file): then it leads the overrides. Returns (YAML path or None, overrides)."""
    overrides = list(overrides or [])
    text = None if config is None else str(config)
    if text and "=" in text and not text.endswith((".yaml", ".yml")):
        return None, [text] + overrides
    return text, overrides


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """The CLIs' "config file + dotted overrides" (the YAML path may be an override, see
    split_config_arg), validated."""
    return load_config(*split_config_arg(path, overrides))


def config_from_dict(tree: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, tree, "")
    validate(cfg)
    return cfg


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: RunConfig) -> None:
    """Reject impossible values, naming the key and what would be valid."""
    d, m, t = cfg.data, cfg.model, cfg.train
    _check(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    _check(d.vocab_size >= 64, f"data.vocab_size must be >= 64, got {d.vocab_size}")
    _check(d.shard_tokens >= 1024, f"data.shard_tokens must be >= 1024, got {d.shard_tokens}")
    _check(d.num_workers >= 1, f"data.num_workers must be >= 1, got {d.num_workers}")
    _check(0 <= d.max_replaced_fraction <= 1,
           f"data.max_replaced_fraction must be in [0, 1], got {d.max_replaced_fraction}")
    try:
        codecs.lookup(d.encoding)
    except LookupError:
        raise ConfigError(f"data.encoding '{d.encoding}' is not a known text encoding; use e.g. utf-8, "
                          "latin-1, cp1252") from None
    m.validate()
    _check(t.micro_batch >= 1, f"train.micro_batch must be >= 1, got {t.micro_batch}")
    _check(t.batch_tokens >= t.micro_batch * m.seq_len,
           f"train.batch_tokens ({t.batch_tokens}) must be >= train.micro_batch * model.seq_len "
           f"({t.micro_batch * m.seq_len})")
    _check(t.batch_tokens % (t.micro_batch * m.seq_len) == 0,
           f"train.batch_tokens ({t.batch_tokens}) must be a multiple of train.micro_batch * model.seq_len "
           f"({t.micro_batch * m.seq_len}); e.g. {max(1, round(t.batch_tokens / (t.micro_batch * m.seq_len))) * t.micro_batch * m.seq_len}")
    _check(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _check(t.optimizer in ("adamw", "muon"), f"train.optimizer must be adamw or muon, got '{t.optimizer}'")
    _check(t.muon_lr > 0, f"train.muon_lr must be > 0, got {t.muon_lr}")
    _check(t.muon_ns in ("quintic", "polar_express"),
           f"train.muon_ns must be quintic or polar_express, got '{t.muon_ns}'")
    _check(t.ema_decay is None or 0 < t.ema_decay < 1, f"train.ema_decay must be in (0, 1) or null, got {t.ema_decay}")
    _check(t.loader_workers >= 0, f"train.loader_workers must be >= 0, got {t.loader_workers}")
    _check(t.prefetch_factor >= 1, f"train.prefetch_factor must be >= 1, got {t.prefetch_factor}")
    _check(t.ddp_bucket_mb > 0, f"train.ddp_bucket_mb must be > 0, got {t.ddp_bucket_mb}")
    _check(not (t.optimizer == "muon" and t.parallel == "fsdp"),
           "train.optimizer=muon needs whole matrices: use train.parallel=ddp (not fsdp)")
    _check(not (t.ema_decay and t.parallel == "fsdp"), "train.ema_decay is not supported with train.parallel=fsdp")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _check(t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 disables), got {t.grad_clip}")
    _check(t.schedule in ("cosine", "wsd", "constant"),
           f"train.schedule must be one of cosine, wsd, constant; got '{t.schedule}'")
    _check(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(0 <= t.min_lr_ratio <= 1, f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    _check(0 < t.decay_frac <= 1, f"train.decay_frac must be in (0, 1], got {t.decay_frac}")
    _check(any(x is not None for x in (t.max_steps, t.max_tokens, t.max_time_s)),
           "set at least one of train.max_steps, train.max_tokens, train.max_time_s")
    for key in ("max_steps", "max_tokens", "max_time_s"):
        v = getattr(t, key)
        _check(v is None or v > 0, f"train.{key} must be > 0, got {v}")
    _check(t.dtype in ("auto", "fp32", "bf16"), f"train.dtype must be auto, fp32 or bf16; got '{t.dtype}'")
    _check(t.parallel in ("auto", "none", "ddp", "fsdp"),
           f"train.parallel must be auto, none, ddp or fsdp; got '{t.parallel}'")
    _check(t.ckpt_keep >= 1, f"train.ckpt_keep must be >= 1, got {t.ckpt_keep}")
    _check(t.ckpt_keep_every >= 0, f"train.ckpt_keep_every must be >= 0 (0 keeps none extra), got {t.ckpt_keep_every}")
    _check(isinstance(t.resume, bool) or t.resume == "last" or (isinstance(t.resume, int) and t.resume >= 0)
           or (isinstance(t.resume, str) and t.resume.startswith("step_") and t.resume[5:].isdigit()),
           f"train.resume must be true, false, last, or a checkpoint name like step_000025 (or its step, 25); "
           f"got {t.resume!r}")
    for key in ("eval_every", "ckpt_every", "log_every"):
        _check(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    _check(t.eval_tokens >= m.seq_len, f"train.eval_tokens must be >= model.seq_len ({m.seq_len})")
    _check(t.eval_tasks_limit >= 1, f"train.eval_tasks_limit must be >= 1, got {t.eval_tasks_limit}")
