"""`scalelab suggest`: a starting configuration from model size, GPUs, GPU memory and tokens.

Every number carries the formula or measurement it came from:
- shape: model/sizing.shape_for_params (aspect ratio 64, head_dim 64, SwiGLU), the same
  rule `scalelab plan` uses; parameters and FLOPs per token from model/sizing.py.
- global batch: DeepSeek LLM's B_opt = 0.2920 C^0.3271 tokens with C = 6 N D
  (scaling/plan.batch_for_compute), rounded to a power-of-two number of sequences that
  the GPUs divide; learning rate 0.3118 C^-0.125 alongside.
- memory per GPU: tune/memory.py (16 B/param mixed-precision AdamW, DDP buckets, FSDP
  sharding, activations per layer after Korthikanti et al. 2022 for our block), against
  `headroom x GiB - reserved` usable bytes (CUDA context, NCCL buffers, allocator
  fragmentation).
- choice: the first that fits of DDP without checkpointing, FSDP without checkpointing,
  DDP with checkpointing, FSDP with checkpointing (one GPU: no parallelism), each with the
  largest power-of-two micro-batch (<= max_micro_batch) that fits and divides the
  per-GPU batch; accumulation makes up the global batch.
- tokens/s/GPU = peak bf16 FLOP/s x MFU / (6N + 12 L H Q T) FLOPs per token, MFU assumed
  (0.35; measured 0.398 for the 124M shape on one H100, docs/bench-gpu.md) or calibrated
  from a tuning study's measured winner (--calibrate tune.json); activation checkpointing
  recomputes the blocks' forward pass (not the embedding or output head), so it multiplies
  by fpt / (fpt + blocks' forward FLOPs): 0.80 for the 124M shape (measured on the H100:
  34.6% MFU through the trainer with checkpointing vs 39.8% bare, 0.87).
- wall time = tokens / (tokens/s/GPU x GPUs). Communication is assumed overlapped.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scalelab.errors import ConfigError, ScalelabError
from scalelab.model.gpt import GPTConfig
from scalelab.model.sizing import count_params, flops_per_token, forward_flops_per_token, shape_for_params
from scalelab.tune.memory import GIB, MemorySetup, estimate_memory
from scalelab.tune.suggest_common import (closing_lines, fewest_gpus, layout_lines, memory_summary, memory_term_lines,
                                          read_tune_json, resolve_peak, throughput_range, time_estimate, usable_bytes)

DEFAULT_MFU = 0.35
HEADROOM = 0.90  # fraction of GPU memory the tensors may use (allocator fragmentation, spikes)
RESERVED_GIB = 1.0  # CUDA context + NCCL buffers, outside the allocator's count
CKPT_SPEED = 0.75  # recomputing the whole forward pass (6N -> 8N): when the model is unknown


def recompute_speed(cfg: GPTConfig) -> float:
    """Speed factor of activation checkpointing: each block's forward (2 N_blocks + 4 L H Q T
    FLOPs per token) runs twice; embedding and output head are not checkpointed."""
    fpt = flops_per_token(cfg)
    blocks_forward = forward_flops_per_token(cfg) - 2.0 * cfg.d_model * cfg.padded_vocab  # less the head
    return fpt / (fpt + blocks_forward)


class DoesNotFitError(ScalelabError):
    """The model cannot be trained on the given GPUs even with full sharding and checkpointing."""


def _size(value: Any, flag: str) -> float:
    """A size the user typed ('124M', '2.5B', 3e5), or an error naming the flag they typed."""
    from scalelab.scaling.plan import parse_size

    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is not None:
        if not (number > 0 and math.isfinite(number)):
            raise ConfigError(f"{flag} must be > 0, got {value}")
        return number
    try:
        return parse_size(str(value))
    except ConfigError:  # its message speaks of a "model size", whatever the flag
        raise ConfigError(f"{flag}: cannot read '{value}'; use e.g. 124M, 2.5B or 3e5") from None


def model_for_params(params: float, seq_len: int, vocab_size: int) -> GPTConfig:
    shape = shape_for_params(params)
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, **shape)


def _pow2_floor(x: float) -> int:
    return 2 ** int(math.floor(math.log2(x))) if x >= 1 else 0


def global_batch(params_nonemb: float, tokens: float, seq_len: int, gpus: int,
                 batch_tokens: int | None = None) -> dict[str, Any]:
    """The global batch: the rule's target as a power-of-two number of sequences, at least one
    per GPU, never more than the run's tokens. `warnings` says when the GPU count forced it
    above the target or the run is left with few optimizer steps."""
    from scalelab.scaling.plan import batch_for_compute, lr_for_compute

    C = 6.0 * params_nonemb * tokens
    if batch_tokens is not None:
        target, rule = float(batch_tokens), "given (--batch-tokens)"
    else:
        target, rule = batch_for_compute(C), f"DeepSeek LLM: 0.2920 x C^0.3271 with C = 6 N D = {C:.3g}"
    run_seqs = int(tokens // seq_len)  # sequences in the whole run: a batch can never hold more
    if run_seqs < 1:
        raise ConfigError(f"--tokens {tokens:.3g} is less than one sequence of --seq {seq_len}: give more --tokens "
                          f"(or a shorter --seq)")
    if batch_tokens is not None and batch_tokens > tokens:
        raise ConfigError(f"--batch-tokens {batch_tokens:,} exceeds the whole run (--tokens {tokens:.3g}): give at "
                          f"most {int(tokens):,}")
    warnings: list[str] = []
    seqs = 2 ** max(0, round(math.log2(max(1.0, target / seq_len))))
    if seqs > run_seqs:
        seqs = _pow2_floor(run_seqs)
        warnings.append(f"the batch rule's {target:,.0f} tokens exceed the whole run (--tokens {tokens:.3g}); capped "
                        f"to {seqs} sequences ({seqs * seq_len:,} tokens)")
    useful_gpus = seqs  # one sequence per GPU at the target batch: more GPUs only make the batch larger
    if gpus > run_seqs:
        raise ConfigError(
            f"--gpus {gpus:,} needs a global batch of at least {gpus * seq_len:,} tokens (one --seq {seq_len} sequence "
            f"per GPU), more than the whole run (--tokens {tokens:.3g}): not even one optimizer step. Use at most "
            f"{run_seqs:,} GPUs, and at most {useful_gpus:,} for a batch near the target ({target:,.0f} tokens) -- "
            f"or give more --tokens")
    if gpus > seqs:
        forced = gpus * seq_len
        warnings.append(
            f"--gpus {gpus:,} forces a global batch of at least {forced:,} tokens (one sequence per GPU), "
            f"{forced / target:,.1f}x the target of {target:,.0f} tokens ({rule}): far above the compute-optimal "
            f"(near-critical) batch, each token does less, and extra GPUs mostly buy a larger batch rather than "
            f"speed. Use fewer GPUs: at most {useful_gpus:,} (--gpus {useful_gpus})")
        seqs = gpus
    if seqs % gpus:
        seqs = math.ceil(seqs / gpus) * gpus
    if seqs > run_seqs:  # rounding up to a multiple of the GPU count overshot the run
        seqs = (run_seqs // gpus) * gpus
    steps = tokens / (seqs * seq_len)
    if steps < 100:
        warnings.append(f"the run has only {steps:,.1f} optimizer steps at this batch ({seqs * seq_len:,} tokens for "
                        f"--tokens {tokens:.3g}): too few for a learning-rate warm-up and decay; give more --tokens"
                        + (", a smaller --batch-tokens" if batch_tokens is not None else "")
                        + (" or fewer --gpus" if gpus > 1 else ""))
    return {"tokens": seqs * seq_len, "sequences": seqs, "target_tokens": target, "rule": rule,
            "lr": lr_for_compute(C), "lr_rule": "DeepSeek LLM: 0.3118 x C^-0.125", "compute_6nd": C,
            "steps": steps, "max_useful_gpus": useful_gpus, "warnings": warnings,
            "rounding": "power-of-two sequences (at least one per GPU, a multiple of the GPU count, at most the "
                        "run's tokens)"}


def _micro_options(per_gpu: int, max_micro: int) -> list[int]:
    out, m = [], 1
    while m <= min(per_gpu, max_micro):
        if per_gpu % m == 0:
            out.append(m)
        m *= 2
    return sorted(out, reverse=True)


def _estimate(cfg: GPTConfig, mode: str, ckpt: bool, micro: int, gpus: int, dtype: str) -> dict[str, Any]:
    return estimate_memory(cfg, MemorySetup(micro_batch=micro, world=gpus, parallel=mode, dtype=dtype,
                                            checkpointing=ckpt, optimizer_temporaries=False))


def choose_layout(cfg: GPTConfig, gpus: int, per_gpu_seqs: int, usable: float, max_micro: int,
                  dtype: str = "bf16") -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The first fitting (parallel, checkpointing) in preference order with its largest micro-batch."""
    modes = ["none"] if gpus == 1 else ["ddp", "fsdp"]
    order = [(m, False) for m in modes] + [(m, True) for m in modes]
    tried = []
    chosen = None
    for mode, ckpt in order:
        fit = None
        for micro in _micro_options(per_gpu_seqs, max_micro):
            est = _estimate(cfg, mode, ckpt, micro, gpus, dtype)
            if est["peak_bytes"] <= usable:
                fit = (micro, est)
                break
        smallest = _estimate(cfg, mode, ckpt, 1, gpus, dtype)
        tried.append({"parallel": mode, "checkpointing": ckpt, "max_micro_batch": fit[0] if fit else None,
                      "peak_gib": (fit[1] if fit else smallest)["peak_gib"],
                      "fits": fit is not None})
        if fit and chosen is None:
            chosen = {"parallel": mode, "checkpointing": ckpt, "micro_batch": fit[0], "memory": fit[1]}
    return chosen, tried


def _estimate_at(cfg: GPTConfig, gpus: int, seq_len: int, dtype: str) -> dict[str, Any]:
    """FSDP + checkpointing + micro-batch 1 at another sequence length."""
    return estimate_memory(cfg, MemorySetup(micro_batch=1, seq_len=seq_len, world=gpus, parallel="fsdp",
                                            dtype=dtype, checkpointing=True, optimizer_temporaries=False))


def _min_gpus(cfg: GPTConfig, usable: float, dtype: str) -> int | None:
    """Fewest GPUs with which FSDP + checkpointing + micro-batch 1 fits (None: no count does)."""
    return fewest_gpus(lambda g: _estimate(cfg, "fsdp", True, 1, g, dtype)["peak_bytes"] <= usable, 2**20)


def calibration_from(path: str | Path) -> dict[str, Any]:
    """MFU measured by a tuning study's winner (with its CI)."""
    p, data = read_tune_json(path)
    if data.get("kind") != "scalelab.tune":
        raise ConfigError(f"--calibrate: '{p}' is not a scalelab tune.json (kind={data.get('kind')!r})")
    w = data.get("winner")
    fpt = (data.get("model") or {}).get("flops_per_token")
    peak = (data.get("hardware") or {}).get("peak_flops")
    if not w or not fpt or not peak:
        raise ConfigError(f"--calibrate: '{p}' has no completed winner with a model FLOP count and a device peak")
    val = w.get("remeasured") or {"mean": w.get("value"), "lo": None, "hi": None}
    ckpt = bool((w.get("params") or {}).get("train.activation_checkpointing", False))
    mc = (data.get("model") or {}).get("config")
    speed = (recompute_speed(GPTConfig(**mc)) if isinstance(mc, dict) else CKPT_SPEED) if ckpt else 1.0
    scale = fpt / peak / speed  # hardware utilization, recompute removed
    hw = data.get("hardware") or {}
    return {"source": str(p), "tokens_per_s": val.get("mean"), "lo": val.get("lo"), "hi": val.get("hi"),
            "hfu": val["mean"] * scale, "hfu_lo": val["lo"] * scale if val.get("lo") else None,
            "hfu_hi": val["hi"] * scale if val.get("hi") else None, "device": hw.get("device"),
            "device_name": hw.get("name"), "flops_per_token": fpt, "peak_flops": peak,
            "checkpointing": ckpt, "basis": data.get("winner_basis")}


def suggest(params: Any, gpus: int, gpu_mem_gib: float, tokens: Any, seq_len: int = 1024, vocab_size: int = 50257,
            gpu_name: str | None = "H100", peak_tflops: float | None = None, mfu: float | None = None,
            calibrate: str | Path | None = None, global_batch_tokens: int | None = None,
            max_micro_batch: int = 64, dtype: str = "bf16", headroom: float = HEADROOM,
            reserved_gib: float = RESERVED_GIB) -> dict[str, Any]:
    """The suggestion as a dict (see the module doc for every rule)."""
    N = _size(params, "--params")
    D = _size(tokens, "--tokens")
    if gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    if gpu_mem_gib <= 0:
        raise ConfigError(f"--gpu-mem must be > 0 GiB, got {gpu_mem_gib}")
    if seq_len < 2:
        raise ConfigError(f"--seq must be >= 2, got {seq_len}")
    if mfu is not None and not (0 < mfu <= 1):
        raise ConfigError(f"--mfu must be in (0, 1], got {mfu}")
    if dtype not in ("bf16", "fp32"):
        raise ConfigError(f"--dtype must be bf16 or fp32, got {dtype!r}")
    if vocab_size < 2:
        raise ConfigError(f"--vocab-size must be >= 2, got {vocab_size}")
    if max_micro_batch < 1:
        raise ConfigError(f"--max-micro-batch must be >= 1, got {max_micro_batch}")
    if global_batch_tokens is not None and global_batch_tokens < 1:
        raise ConfigError(f"--batch-tokens must be >= 1 (or left out for the DeepSeek rule), got {global_batch_tokens}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise ConfigError(f"--peak-tflops must be > 0, got {peak_tflops}")
    usable = usable_bytes(gpu_mem_gib, headroom, reserved_gib)
    cfg = model_for_params(N, seq_len, vocab_size)
    sizes = count_params(cfg)
    fpt = flops_per_token(cfg)
    warnings: list[str] = []
    if not 0.5 <= sizes["non_embedding"] / N <= 2:  # below the smallest shape, or a rounding far off
        warnings.append(f"--params {N:.3g}: the nearest shape ({cfg.n_layer} x {cfg.d_model}) has "
                        f"{sizes['non_embedding']:,} non-embedding parameters, not {N:,.0f}; every number below is "
                        f"for that model")
    batch = global_batch(sizes["non_embedding"], D, seq_len, gpus, global_batch_tokens)
    warnings += batch.pop("warnings")
    per_gpu = batch["sequences"] // gpus
    chosen, tried = choose_layout(cfg, gpus, per_gpu, usable, max_micro_batch, dtype)
    if chosen is None:
        worst = _estimate(cfg, "fsdp" if gpus > 1 else "none", True, 1, gpus, dtype)
        need = worst["peak_bytes"]
        short = (need - usable) / GIB
        g_min = _min_gpus(cfg, usable, dtype)
        if g_min:
            how = (f"it would fit on {g_min:,} GPUs of this size with FSDP (--gpus {g_min}), or on GPUs with more "
                   f"memory (--gpu-mem)")
        elif _estimate_at(cfg, 2**20, 2, dtype)["peak_bytes"] <= usable:
            how = ("no number of GPUs helps: the unsharded part (activations of one sequence, gathered blocks) "
                   "alone exceeds it; use a shorter --seq (or GPUs with more --gpu-mem)")
        else:
            how = ("no number of GPUs or sequence length helps: one gathered block alone exceeds it; use a smaller "
                   "--params or GPUs with more memory (--gpu-mem)")
        raise DoesNotFitError(
            f"a {sizes['total'] / 1e6:,.0f}M-parameter model ({cfg.n_layer} x {cfg.d_model}, seq {seq_len}) does not fit "
            f"on {gpus} GPU(s) of {gpu_mem_gib:g} GiB even with "
            f"{'full FSDP sharding, ' if gpus > 1 else ''}activation checkpointing and micro-batch 1: it needs "
            f"{need / GIB:.1f} GiB per GPU, {usable / GIB:.1f} GiB are usable ({headroom:.0%} of {gpu_mem_gib:g} GiB "
            f"- {reserved_gib:g} GiB reserved): short by {short:.1f} GiB. {how[0].upper() + how[1:]}.")
    micro = chosen["micro_batch"]
    accum = per_gpu // micro
    ckpt = chosen["checkpointing"]

    # Throughput.
    notes: list[str] = []
    peak, peak_src = resolve_peak(peak_tflops, gpu_name)
    speed = recompute_speed(cfg) if ckpt else 1.0
    tput: dict[str, Any]
    if calibrate:
        cal = calibration_from(calibrate)
        hfu = cal["hfu"]
        eff = hfu * speed
        tput = {"tokens_per_s_per_gpu": peak * eff / fpt, "mfu": eff,
                "lo": peak * cal["hfu_lo"] * speed / fpt if cal["hfu_lo"] else None,
                "hi": peak * cal["hfu_hi"] * speed / fpt if cal["hfu_hi"] else None,
                "source": f"calibrated: the measured winner of {cal['source']} ({cal['tokens_per_s']:,.0f} tokens/s per "
                          f"process on {cal['device_name']}, {cal['basis']}) is {hfu:.1%} of that device's peak "
                          f"({cal['peak_flops'] / 1e12:.3g} TFLOP/s) at {cal['flops_per_token']:.3g} FLOPs/token; "
                          "the same utilization is assumed here", "calibration": cal}
        if cal["device"] != "cuda":
            notes.append("the calibration comes from a CPU study: its utilization of a measured CPU matmul peak "
                         "says little about GPUs; prefer a study run on the target GPUs")
        elif gpu_name and cal["device_name"] and gpu_name.upper() not in str(cal["device_name"]).upper():
            notes.append(f"the calibration ran on {cal['device_name']}, not on {gpu_name}")
    else:
        m = DEFAULT_MFU if mfu is None else mfu
        eff = m * speed
        tput = {"tokens_per_s_per_gpu": peak * eff / fpt, "mfu": eff, "lo": None, "hi": None,
                "source": (f"assumed MFU {m:.0%}" + (" (--mfu)" if mfu is not None else
                           " (typical of tuned bf16 GPT training with torch.compile; calibrate with --calibrate "
                           "tune.json from `scalelab tune` on the target GPUs)"))}
    tput["formula"] = (f"peak {peak / 1e12:,.0f} TFLOP/s ({peak_src}) x MFU {eff:.3f}"
                       + (f" (x {speed:.3f}: checkpointing recomputes the blocks' forward)" if ckpt else "")
                       + f" / {fpt:.4g} FLOPs/token (6N + 12 L H Q T, model/sizing.py)")
    time_est = time_estimate(D, tput, gpus)

    mem = chosen["memory"]
    memory = memory_summary(mem, usable, gpu_mem_gib, headroom, reserved_gib,
                            "tune/memory.py; checked against measured peaks in docs/bench-tune.md")
    reason = {
        ("none", False): "one GPU: no data parallelism",
        ("none", True): "one GPU; checkpointing needed to fit",
        ("ddp", False): "the full model states fit on every GPU (DDP: least communication)",
        ("fsdp", False): "the model states do not fit replicated; FSDP shards them over the GPUs",
        ("ddp", True): "DDP fits only with activation checkpointing",
        ("fsdp", True): "only full sharding plus activation checkpointing fits",
    }[(chosen["parallel"], ckpt)]
    parallel = chosen["parallel"] if gpus > 1 else "none"
    overrides = [f"model.n_layer={cfg.n_layer}", f"model.d_model={cfg.d_model}", f"model.n_head={cfg.n_head}",
                 f"model.seq_len={seq_len}", f"train.batch_tokens={batch['tokens']}", f"train.micro_batch={micro}",
                 f"train.parallel={parallel}", f"train.activation_checkpointing={'true' if ckpt else 'false'}",
                 f"train.dtype={dtype}", "train.loader_workers=2", "train.pin_memory=true",
                 f"train.max_tokens={int(D)}", f"train.lr={batch['lr']:.3g}", "train.compile=true"]
    launcher = f"torchrun --nproc_per_node={gpus} -m scalelab train" if gpus > 1 else "scalelab train"
    return {
        "kind": "scalelab.suggest",
        "inputs": {"params": N, "gpus": gpus, "gpu_mem_gib": gpu_mem_gib, "tokens": D, "seq_len": seq_len,
                   "vocab_size": vocab_size, "gpu": gpu_name, "dtype": dtype, "max_micro_batch": max_micro_batch},
        "model": {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_head": cfg.n_head, "ffn_dim": cfg.ffn_dim,
                  **sizes, "flops_per_token": fpt,
                  "source": "model/sizing.shape_for_params (aspect ratio 64, head_dim 64, SwiGLU) and count_params"},
        "compute": {"flops": fpt * D, "flops_6nd": 6 * sizes["non_embedding"] * D,
                    "formula": "FLOPs/token (6N + 12 L H Q T, N with lm_head) x tokens"},
        "batch": {**batch, "per_gpu_sequences": per_gpu, "micro_batch": micro, "grad_accum": accum,
                  "formula": f"{batch['sequences']} sequences = {gpus} GPUs x micro-batch {micro} x {accum} accumulation"},
        "parallel": {"mode": parallel, "checkpointing": ckpt, "reason": reason, "options": tried},
        "loader": {"workers": 2, "pin_memory": True,
                   "reason": "the loader gathers windows from memory-mapped token shards (microseconds per batch); two "
                             "workers per GPU keep it off the critical path -- confirm with `scalelab tune`"},
        "memory": memory,
        "throughput": tput,
        "time": time_est,
        "overrides": overrides,
        "command": f"{launcher} CONFIG.yaml " + " ".join(overrides),
        "warnings": warnings,
        "notes": notes,
    }


def format_suggestion(s: dict[str, Any]) -> str:
    m, b, p, mem, t, tm = s["model"], s["batch"], s["parallel"], s["memory"], s["throughput"], s["time"]
    i = s["inputs"]
    lines = [f"WARNING: {w}" for w in s.get("warnings", [])]
    lines += [
        f"model:       {m['n_layer']} x {m['d_model']} ({m['n_head']} heads, ffn {m['ffn_dim']}), "
        f"{m['total']:,} params ({m['non_embedding']:,} non-embedding), {m['flops_per_token']:.3g} FLOPs/token",
        f"             <- {m['source']}",
        f"global batch {b['tokens']:,} tokens ({b['sequences']} x {i['seq_len']}), {b['steps']:,.0f} optimizer "
        f"steps; lr {b['lr']:.3g}",
        f"             <- {b['rule']} = {b['target_tokens']:,.0f} tokens, {b['rounding']}",
        *layout_lines(p, b),
        f"loader:      {s['loader']['workers']} workers, pin_memory   <- {s['loader']['reason']}",
        f"memory/GPU:  {mem['peak_gib']:.2f} GiB of {mem['usable_gib']:.1f} usable ({mem['usable_formula']})",
    ]
    lines += memory_term_lines(mem)
    rng = throughput_range(t)
    lines += [
        f"tokens/s/GPU {t['tokens_per_s_per_gpu']:,.0f}{rng} (MFU {t['mfu']:.1%})",
        f"             <- {t['formula']}",
        f"             <- {t['source']}",
        f"time:        {tm['wall_hours']:,.1f} h wall, {tm['gpu_hours']:,.0f} GPU-hours   <- {tm['formula']}",
    ]
    lines += closing_lines(s)
    return "\n".join(lines)
