"""The golf config: a training config (out_dir, seed, data, model, train) plus a `golf:`
section, in one YAML file; overrides `golf.key=value` patch the golf section, every other
key the training config (same rules and errors as `scalelab train`).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scalelab.config import (
    RunConfig,
    all_keys,
    apply_overrides,
    build_dataclass,
    config_from_dict,
    load_yaml_mapping,
    split_config_arg,
)
from scalelab.errors import ConfigError
from scalelab.golf.compress import COMPRESS_PER, COMPRESSORS, KNOWN_COMPRESSORS
from scalelab.golf.quantize import CLIPS, METHODS, SCHEMES, QuantSpec


@dataclass
class GolfConfig:
    budget_bytes: int = 16_000_000  # code + compressed weights must fit (decimal bytes, as the challenge)
    weights: str = "auto"  # which weights to quantize: ema | raw | auto (ema when train.ema_decay is set)
    quant: str = "int8"  # scheme of tensors over keep_float_numel values: int8 | int7 | int6 | int5 | int4 | fp16
    quant_overrides: dict[str, str] = field(default_factory=dict)  # fnmatch pattern on names -> scheme
    clip: str = "mse"  # per-row clip value: max | quantile | mse
    clip_quantile: float = 0.9999984  # for clip=quantile (the public baseline's value)
    keep_float_numel: int = 4096  # tensors this small (norm weights, skip scalars) stay fp16
    quant_method: str = "rtn"  # rtn (round to nearest) | gptq (Hessian-aware rounding, golf/gptq.py)
    gptq_calib_tokens: int = 65536  # gptq: training tokens whose activations give each layer's Hessian
    gptq_damp: float = 0.01  # gptq: damp * mean(diag H) added to H's diagonal
    compressors: list[str] = field(default_factory=lambda: list(COMPRESSORS))  # smallest output wins
    sliding_stride: int | None = 64  # also score with a sliding window of this stride (capped at seq_len); null: off
    eval_cap_s: float | None = 600.0  # the scoring evaluation's time cap (the challenge's 10 min); over = flagged
    ttt: str | None = None  # score-first test-time training on the val stream: full | lora | null (golf/ttt.py)
    ttt_lr: float = 1e-3  # ttt: Adam learning rate
    ttt_steps: int = 1  # ttt: passes over each chunk after it is scored
    ttt_chunk_tokens: int = 4096  # ttt: scored targets per chunk (score a chunk, then train on it)
    ttt_rank: int = 4  # ttt=lora: adapter rank
    eval_batch: int = 16  # windows per forward pass in the final evaluations
    count_tokenizer: bool = False  # add the tokenizer file to the artifact bytes (the challenge does not)
    precheck: bool = True  # refuse, before training, a model that cannot fit even at 2x compression
    # -- quantization-aware training, low-rank error correction, compression layout (issue 16) --
    qat_frac: float = 0.0  # fake-quantize (straight-through) in the last fraction of training (golf/qat.py)
    lowrank_rank: int = 0  # rank of the stored correction of W - dequant(Q) (golf/lowrank.py); 0 = off
    lowrank_tensors: int = 0  # how many quantized tensors get one (those it helps most)
    lowrank_quant: str = "int8"  # scheme of the correction's factors: int8 | ... | fp16
    compress_per: str = "file"  # file (one compressor) | tensor (best compressor per chunk) | auto (smaller)
    row_reorder: bool = False  # tensor chunks: store rows sorted by scale (+ the permutation) where smaller

    def quant_spec(self) -> QuantSpec:
        return QuantSpec(default=self.quant, overrides=dict(self.quant_overrides), clip=self.clip,
                         clip_quantile=self.clip_quantile, keep_float_numel=self.keep_float_numel,
                         method=self.quant_method, damp=self.gptq_damp)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate_golf(g: GolfConfig, run: RunConfig) -> None:
    _check(g.budget_bytes > 0, f"golf.budget_bytes must be > 0, got {g.budget_bytes}")
    _check(g.weights in ("auto", "ema", "raw"), f"golf.weights must be auto, ema or raw; got '{g.weights}'")
    _check(not (g.weights == "ema" and not run.train.ema_decay),
           "golf.weights=ema needs train.ema_decay (e.g. train.ema_decay=0.995); or use golf.weights=raw")
    _check(g.quant in SCHEMES, f"golf.quant must be one of {', '.join(SCHEMES)}; got '{g.quant}'")
    for pattern, scheme in g.quant_overrides.items():
        _check(scheme in SCHEMES, f"golf.quant_overrides['{pattern}'] must be one of {', '.join(SCHEMES)}; "
                                  f"got '{scheme}'")
    _check(g.quant_method in METHODS, f"golf.quant_method must be one of {', '.join(METHODS)}; got '{g.quant_method}'")
    _check(g.gptq_calib_tokens >= run.model.seq_len,
           f"golf.gptq_calib_tokens must be >= model.seq_len={run.model.seq_len}, got {g.gptq_calib_tokens}")
    _check(0 < g.gptq_damp < 1, f"golf.gptq_damp must be in (0, 1), got {g.gptq_damp}")
    _check(g.clip in CLIPS, f"golf.clip must be one of {', '.join(CLIPS)}; got '{g.clip}'")
    _check(0.5 < g.clip_quantile <= 1.0, f"golf.clip_quantile must be in (0.5, 1], got {g.clip_quantile}")
    _check(g.keep_float_numel >= 0, f"golf.keep_float_numel must be >= 0, got {g.keep_float_numel}")
    _check(len(g.compressors) > 0, "golf.compressors must name at least one of " + ", ".join(KNOWN_COMPRESSORS))
    for c in g.compressors:
        _check(c in KNOWN_COMPRESSORS,
               f"golf.compressors: unknown compressor '{c}'; known: {', '.join(KNOWN_COMPRESSORS)}")
    _check(g.sliding_stride is None or 1 <= g.sliding_stride <= max(run.model.seq_len, 64),  # 64: the default
           f"golf.sliding_stride must be in [1, model.seq_len={run.model.seq_len}] (the default 64 is capped at "
           f"it) or null, got {g.sliding_stride}")
    _check(g.eval_batch >= 1, f"golf.eval_batch must be >= 1, got {g.eval_batch}")
    _check(g.eval_cap_s is None or g.eval_cap_s > 0, f"golf.eval_cap_s must be > 0 or null, got {g.eval_cap_s}")
    _check(g.ttt in (None, "full", "lora"), f"golf.ttt must be full, lora or null; got '{g.ttt}'")
    _check(g.ttt_lr >= 0 and g.ttt_steps >= 0 and g.ttt_rank >= 1 and g.ttt_chunk_tokens >= 1,
           f"golf.ttt_lr and golf.ttt_steps must be >= 0, golf.ttt_rank and golf.ttt_chunk_tokens >= 1; "
           f"got {g.ttt_lr}, {g.ttt_steps}, {g.ttt_rank}, {g.ttt_chunk_tokens}")
    _check(0.0 <= g.qat_frac <= 1.0, f"golf.qat_frac must be in [0, 1] (0 = off), got {g.qat_frac}")
    _check(g.lowrank_rank >= 0 and g.lowrank_tensors >= 0,
           f"golf.lowrank_rank and golf.lowrank_tensors must be >= 0, got {g.lowrank_rank}, {g.lowrank_tensors}")
    _check(g.lowrank_quant in SCHEMES and g.lowrank_quant != "fp32",
           f"golf.lowrank_quant must be one of {', '.join(s for s in SCHEMES if s != 'fp32')}; got '{g.lowrank_quant}'")
    _check(g.compress_per in COMPRESS_PER, f"golf.compress_per must be one of {', '.join(COMPRESS_PER)}; "
                                           f"got '{g.compress_per}'")
    _check(not g.row_reorder or g.compress_per != "file",
           "golf.row_reorder needs per-tensor chunks: set golf.compress_per=tensor or auto")
    _check(run.train.max_time_s is not None,
           "golf runs under a wall-clock cap: set train.max_time_s (e.g. 300 for 5 minutes)")


def golf_keys() -> list[str]:
    """Every dotted key a golf config accepts: the training config's and golf.*."""
    return all_keys() + ["golf." + k for k in GolfConfig.__dataclass_fields__]


def load_golf_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[RunConfig, GolfConfig]:
    """Load and validate a golf YAML (training config + golf section) with overrides; the
    path may be an override itself, as for every CLI (config.split_config_arg)."""
    path, overrides = split_config_arg(path, overrides)
    tree = load_yaml_mapping(path, "golf config", "configs/golf-*.yaml") if path is not None else {}
    tree = apply_overrides(copy.deepcopy(tree), list(overrides or []), valid=golf_keys())
    golf_tree = tree.pop("golf", None) or {}
    run = config_from_dict(tree)
    golf = build_dataclass(GolfConfig, golf_tree, "golf.")
    validate_golf(golf, run)
    return run, golf


def to_dict(run: RunConfig, golf: GolfConfig) -> dict[str, Any]:
    return {**run.to_dict(), "golf": asdict(golf)}
