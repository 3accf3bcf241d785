"""`scalelab suggest --finetune`: a starting configuration for `scalelab finetune` (full or LoRA).

Every number carries its formula (the text and the JSON both):
- shape: a Hugging Face config.json (--model-config), else a Llama-3-8B-shaped model with
  --params non-embedding parameters (tune/ft_shape.py; 7e9 = Llama-3-8B itself).
- global batch: --batch-rows rows of --seq tokens (default 64 x 2048: configs/finetune-7b.yaml),
  rounded up to a multiple of the GPU count; accumulation = rows / (GPUs x micro-batch).
- memory per GPU: tune/ft_memory.py, against `headroom x GiB - reserved` usable bytes
  (as tune/suggest.py).
- choice: the first that fits of DDP, FSDP2 full shard, DDP + activation checkpointing,
  FSDP + checkpointing (one GPU: none, none + checkpointing), each at its largest
  power-of-two micro-batch that divides the per-GPU rows; under FSDP
  reshard_after_forward=false when it fits too (one all-gather per block fewer in backward).
- FLOPs per token (N = the blocks' matmul parameters, V h the head, q = heads x head_dim,
  T = --seq, l = labelled share of positions: the job runs the head on those only):
    full  6N + 6 V h l + 12 L q T
    LoRA  4N + 6P + 4 V h l + 12 L q T: the frozen weights still run forward (2N) and pass
          the gradient to their input (2N) -- the adapters sit in every layer, so the
          backward goes through all of them -- but compute no weight gradient (the 2N
          saved); P adapter parameters cost 6P; attention has no weights (12 L q T as in
          training).
    checkpointing recomputes the layers' forward: + 2N (+ 2P) + 4 L q T.
- tokens/s/GPU = peak x utilization / hardware FLOPs per token; utilization assumed 0.35 of
  the bf16 peak (as pretraining, tune/suggest.py) or calibrated (--calibrate tune.json):
  a fine-tune study's winner (its model's config.json, LoRA and checkpointing from its
  winning params) or, with a note, a pretraining study.
- wall time = tokens / (tokens/s/GPU x GPUs).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scalelab.errors import ConfigError
from scalelab.tune.ft_memory import DEFAULT_LORA_TARGETS, GIB, FTMemorySetup, estimate_ft_memory
from scalelab.tune.ft_shape import HFShape, llama3_shape_for_params, shape_from_hf_config
from scalelab.tune.suggest import (DEFAULT_MFU, HEADROOM, RESERVED_GIB, DoesNotFitError, _micro_options, _size,
                                   calibration_from)
from scalelab.tune.suggest_common import (closing_lines, fewest_gpus, layout_lines, memory_summary, memory_term_lines,
                                          read_tune_json, resolve_peak, throughput_range, time_estimate, usable_bytes)

DEFAULT_ROWS = 64  # configs/finetune-7b.yaml: 8 GPUs x 4 x 2 accumulation
DEFAULT_SEQ = 2048


def ft_flops_per_token(shape: HFShape, seq_len: int, lora_rank: int | None = None,
                       targets: tuple[str, ...] = DEFAULT_LORA_TARGETS, labelled: float = 1.0,
                       checkpointing: bool = False) -> dict[str, float]:
    """{'model': FLOPs per token of the step, 'hardware': with recomputation, 'recompute'} (module doc)."""
    N = shape.params()["matmul"] - shape.vocab * shape.hidden  # the blocks' matmuls
    head = shape.vocab * shape.hidden
    attn = 4 * shape.n_layer * shape.q_width * seq_len  # forward QK^T and AV
    if lora_rank:
        P = shape.lora_params(lora_rank, targets)
        model = 4 * N + 6 * P + 4 * head * labelled + 3 * attn
        recompute = 2 * N + 2 * P + attn
    else:
        model = 6 * N + 6 * head * labelled + 3 * attn
        recompute = 2 * N + attn
    return {"model": float(model), "recompute": float(recompute),
            "hardware": float(model + (recompute if checkpointing else 0.0))}


def _setup(micro: int, seq: int, gpus: int, mode: str, ckpt: bool, lora_rank: int | None, targets, labelled,
           reshard: bool = True) -> FTMemorySetup:
    return FTMemorySetup(micro_batch=micro, seq_len=seq, world=gpus, parallel=mode, dtype="bf16",
                         lora=bool(lora_rank), lora_rank=lora_rank or 16, lora_targets=tuple(targets),
                         checkpointing=ckpt, reshard_after_forward=reshard, labelled_fraction=labelled)


def choose_ft_layout(shape: HFShape, gpus: int, per_gpu_rows: int, seq: int, usable: float, lora_rank, targets,
                     labelled: float, max_micro: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    modes = ["none"] if gpus == 1 else ["ddp", "fsdp"]
    tried, chosen = [], None
    for ckpt in (False, True):
        for mode in modes:
            fit = None
            for micro in _micro_options(per_gpu_rows, max_micro):
                est = estimate_ft_memory(shape, _setup(micro, seq, gpus, mode, ckpt, lora_rank, targets, labelled))
                if est["peak_bytes"] <= usable:
                    fit = (micro, est)
                    break
            smallest = estimate_ft_memory(shape, _setup(1, seq, gpus, mode, ckpt, lora_rank, targets, labelled))
            tried.append({"parallel": mode, "checkpointing": ckpt, "max_micro_batch": fit[0] if fit else None,
                          "peak_gib": (fit[1] if fit else smallest)["peak_gib"], "fits": fit is not None})
            if fit and chosen is None:
                chosen = {"parallel": mode, "checkpointing": ckpt, "micro_batch": fit[0], "memory": fit[1],
                          "reshard_after_forward": True}
                if mode == "fsdp":
                    keep = estimate_ft_memory(shape, _setup(fit[0], seq, gpus, mode, ckpt, lora_rank, targets,
                                                            labelled, reshard=False))
                    if keep["peak_bytes"] <= usable:
                        chosen.update(memory=keep, reshard_after_forward=False)
    return chosen, tried


def _min_gpus(shape, seq, usable, lora_rank, targets, labelled) -> int | None:
    def fits(g: int) -> bool:
        return estimate_ft_memory(shape, _setup(1, seq, g, "fsdp", True, lora_rank, targets,
                                                labelled))["peak_bytes"] <= usable
    return fewest_gpus(fits, 2**16)


def ft_calibration_from(path: str | Path, labelled: float) -> dict[str, Any]:
    """Utilization of the device peak measured by a fine-tune study's winner (or a
    pretraining study's, through tune/suggest.calibration_from)."""
    p, data = read_tune_json(path)
    if data.get("kind") != "scalelab.tune" or data.get("job", "pretrain") != "finetune":
        cal = calibration_from(p)  # a pretraining study (its own checks and messages)
        cal["job"] = "pretrain"
        return cal
    w, hw, model = data.get("winner") or {}, data.get("hardware") or {}, data.get("model") or {}
    peak = hw.get("peak_flops")
    if not w or not peak:
        raise ConfigError(f"--calibrate: '{p}' has no completed winner with a device peak")
    params = w.get("params") or {}
    lora = bool(params.get("model.lora", model.get("lora")))
    rank = int(params.get("model.lora_rank", model.get("lora_rank") or 16)) if lora else None
    ckpt = bool(params.get("model.activation_checkpointing", False))
    seq = int(params.get("data.max_length") or (data.get("batch") or {}).get("max_length") or 0)
    cfg_path = Path(model.get("path") or "") / "config.json"
    if not cfg_path.is_file() or not seq:
        raise ConfigError(f"--calibrate: the fine-tune study '{p}' names no readable model config.json "
                          f"({cfg_path}) or max_length; its FLOPs per token cannot be counted -- run it where its "
                          "model directory is, or calibrate with --mfu")
    shape = shape_from_hf_config(cfg_path)
    fpt = ft_flops_per_token(shape, seq, rank, labelled=labelled, checkpointing=ckpt)
    val = w.get("remeasured") or {"mean": w.get("value"), "lo": None, "hi": None}
    scale = fpt["hardware"] / peak
    return {"source": str(p), "job": "finetune", "tokens_per_s": val.get("mean"), "lo": val.get("lo"),
            "hi": val.get("hi"), "hfu": val["mean"] * scale, "hfu_lo": val["lo"] * scale if val.get("lo") else None,
            "hfu_hi": val["hi"] * scale if val.get("hi") else None, "device": hw.get("device"),
            "device_name": hw.get("name"), "flops_per_token": fpt["hardware"], "peak_flops": peak,
            "checkpointing": ckpt, "lora_rank": rank, "seq_len": seq, "model": shape.describe(),
            "basis": data.get("winner_basis")}


def _resolve_shape(params: Any, model_config: str | Path | None, vocab_size: int | None,
                   warnings: list[str]) -> HFShape:
    if model_config:
        shape = shape_from_hf_config(model_config)
        if params is not None:
            N = _size(params, "--params")
            have = shape.params()["non_embedding"]
            if not 0.8 <= have / N <= 1.25:
                warnings.append(f"--params {N:.3g} differs from --model-config's {have:,} non-embedding parameters; "
                                "the model config is used")
        return shape
    if params is None:
        raise ConfigError("suggest --finetune needs --params (non-embedding parameters, e.g. 7e9) or --model-config "
                          "(a Hugging Face config.json)")
    N = _size(params, "--params")
    shape = llama3_shape_for_params(N, **({"vocab": vocab_size} if vocab_size else {}))
    have = shape.params()["non_embedding"]
    if not 0.8 <= have / N <= 1.25:
        warnings.append(f"--params {N:.3g}: the nearest Llama-3-8B-shaped model ({shape.n_layer} x {shape.hidden}) has "
                        f"{have:,} non-embedding parameters; every number below is for that model (give "
                        "--model-config for the real one)")
    return shape


def suggest_finetune(params: Any = None, gpus: int = 1, gpu_mem_gib: float = 80.0, tokens: Any = 2e8,
                     seq_len: int = DEFAULT_SEQ, lora_rank: int | None = None,
                     lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS, model_config: str | Path | None = None,
                     vocab_size: int | None = None, batch_rows: int = DEFAULT_ROWS, labelled_fraction: float = 1.0,
                     gpu_name: str | None = "H100", peak_tflops: float | None = None, mfu: float | None = None,
                     calibrate: str | Path | None = None, max_micro_batch: int = 64, headroom: float = HEADROOM,
                     reserved_gib: float = RESERVED_GIB) -> dict[str, Any]:
    """The fine-tune suggestion as a dict (module doc for every rule)."""
    D = _size(tokens, "--tokens")
    for ok, msg in ((gpus >= 1, f"--gpus must be >= 1, got {gpus}"),
                    (gpu_mem_gib > 0, f"--gpu-mem must be > 0 GiB, got {gpu_mem_gib}"),
                    (seq_len >= 2, f"--seq must be >= 2, got {seq_len}"),
                    (batch_rows >= 1, f"--batch-rows must be >= 1, got {batch_rows}"),
                    (max_micro_batch >= 1, f"--max-micro-batch must be >= 1, got {max_micro_batch}"),
                    (mfu is None or 0 < mfu <= 1, f"--mfu must be in (0, 1], got {mfu}"),
                    (peak_tflops is None or peak_tflops > 0, f"--peak-tflops must be > 0, got {peak_tflops}"),
                    (lora_rank is None or lora_rank >= 1, f"--lora-rank must be >= 1, got {lora_rank}"),
                    (0 < labelled_fraction <= 1, f"--labelled-fraction must be in (0, 1], got {labelled_fraction}")):
        if not ok:
            raise ConfigError(msg)
    usable = usable_bytes(gpu_mem_gib, headroom, reserved_gib)
    warnings: list[str] = []
    shape = _resolve_shape(params, model_config, vocab_size, warnings)
    targets = tuple(lora_targets)
    sizes = shape.params()
    rows = math.ceil(batch_rows / gpus) * gpus
    if rows != batch_rows:
        warnings.append(f"--batch-rows {batch_rows} rounded up to {rows}, a multiple of --gpus {gpus}")
    per_gpu = rows // gpus
    steps = D / (rows * seq_len)
    if steps < 1:
        raise ConfigError(f"--tokens {D:.3g} is less than one optimizer step ({rows} rows x {seq_len} tokens): give "
                          f"more --tokens or a smaller --batch-rows")
    if steps < 50:
        warnings.append(f"only {steps:,.1f} optimizer steps ({rows} rows x {seq_len} tokens per step for --tokens "
                        f"{D:.3g}): a learning-rate warm-up alone takes ~10-20; give a smaller --batch-rows")
    chosen, tried = choose_ft_layout(shape, gpus, per_gpu, seq_len, usable, lora_rank, targets, labelled_fraction,
                                     max_micro_batch)
    kind = f"LoRA rank {lora_rank}" if lora_rank else "full fine-tune"
    if chosen is None:
        mode = "fsdp" if gpus > 1 else "none"
        need = estimate_ft_memory(shape, _setup(1, seq_len, gpus, mode, True, lora_rank, targets,
                                                labelled_fraction))["peak_bytes"]
        g_min = _min_gpus(shape, seq_len, usable, lora_rank, targets, labelled_fraction)
        if g_min:
            how = (f"it fits on {g_min:,} GPUs of this size with FSDP (--gpus {g_min})"
                   + ("" if lora_rank else ", or as LoRA (--lora-rank 16)") + ", or on GPUs with more --gpu-mem")
        else:
            how = "no number of GPUs helps: use a shorter --seq" + ("" if lora_rank else " or LoRA (--lora-rank 16)")
        raise DoesNotFitError(
            f"a {kind} of a model of {sizes['total'] / 1e9:,.2f}B parameters ({shape.describe()}; seq {seq_len}) does not "
            f"fit on {gpus} GPU(s) of {gpu_mem_gib:g} GiB even with {'FSDP full sharding, ' if gpus > 1 else ''}"
            f"activation checkpointing and micro-batch 1: it needs {need / GIB:.1f} GiB per GPU, {usable / GIB:.1f} "
            f"GiB are usable ({headroom:.0%} of {gpu_mem_gib:g} GiB - {reserved_gib:g} GiB reserved). "
            f"{how[0].upper() + how[1:]}.")
    micro, ckpt, mode = chosen["micro_batch"], chosen["checkpointing"], chosen["parallel"]
    accum = per_gpu // micro
    fpt = ft_flops_per_token(shape, seq_len, lora_rank, targets, labelled_fraction, ckpt)

    notes: list[str] = []
    peak, peak_src = resolve_peak(peak_tflops, gpu_name)
    if calibrate:
        cal = ft_calibration_from(calibrate, labelled_fraction)
        hfu, lo, hi = cal["hfu"], cal["hfu_lo"], cal["hfu_hi"]
        src = (f"calibrated: the measured winner of {cal['source']} ({cal['job']} study, {cal['tokens_per_s']:,.0f} "
               f"tokens/s per process on {cal['device_name']}) runs {hfu:.1%} of that device's peak "
               f"({cal['peak_flops'] / 1e12:.3g} TFLOP/s) at {cal['flops_per_token']:.3g} FLOPs/token; the same "
               "utilization is assumed here")
        if hfu > 1:
            warnings.append(f"the calibration claims {hfu:.0%} of its device's peak ({cal['peak_flops'] / 1e12:.3g} "
                            "TFLOP/s): that peak is too low (a CPU matmul peak measured under load, or fewer threads "
                            "than the study used), so these tokens/s are not to be trusted; use --mfu or a GPU study")
        if cal["job"] != "finetune":
            notes.append("the calibration is a pretraining study: a fine-tune step has the same matmuls but a "
                         "different model and data path; a `job: finetune` study on the target GPUs is better")
        if cal["device"] != "cuda":
            notes.append("the calibration comes from a CPU study: its utilization of a measured CPU matmul peak "
                         "says little about GPUs; prefer a study run on the target GPUs")
    else:
        hfu, lo, hi = (DEFAULT_MFU if mfu is None else mfu), None, None
        cal = None
        src = (f"assumed utilization {hfu:.0%} of the bf16 peak" + (" (--mfu)" if mfu is not None else
               " (as pretraining; calibrate with --calibrate tune.json of a `job: finetune` study on the target GPUs)"))
    tok_s = peak * hfu / fpt["hardware"]
    flops_formula = ("4N + 6P + 4 V h l + 12 L q T (LoRA: frozen weights forward + input gradient, adapters 6P)"
                     if lora_rank else "6N + 6 V h l + 12 L q T")
    tput = {"tokens_per_s_per_gpu": tok_s, "mfu": hfu * fpt["model"] / fpt["hardware"], "hfu": hfu,
            "lo": peak * lo / fpt["hardware"] if lo else None, "hi": peak * hi / fpt["hardware"] if hi else None,
            "flops_per_token": fpt, "source": src, "calibration": cal,
            "formula": f"peak {peak / 1e12:,.0f} TFLOP/s ({peak_src}) x {hfu:.3f} / {fpt['hardware']:.4g} FLOPs/token "
                       f"({flops_formula} = {fpt['model']:.4g}"
                       + (f", + {fpt['recompute']:.3g} recomputed: 2N + 4 L q T" if ckpt else "") + ")"}
    time_est = time_estimate(D, tput, gpus)
    mem = chosen["memory"]
    memory = memory_summary(mem, usable, gpu_mem_gib, headroom, reserved_gib,
                            "tune/ft_memory.py; checked against measured peaks in docs/FINETUNE.md (suggest)")
    reason = {("none", False): "one GPU", ("none", True): "one GPU; checkpointing needed to fit",
              ("ddp", False): "the model states fit replicated on every GPU (DDP: least communication)",
              ("fsdp", False): "the model states do not fit replicated; FSDP2 shards them over the GPUs",
              ("ddp", True): "DDP fits only with activation checkpointing",
              ("fsdp", True): "only FSDP2 full sharding plus activation checkpointing fits"}[(mode, ckpt)]
    if mode == "fsdp":
        reason += ("; reshard_after_forward=false fits (no re-gather in backward)" if not
                   chosen["reshard_after_forward"] else "; reshard_after_forward=true (gathering every block "
                                                        "at once does not fit)")
    overrides = [f"model.lora={'true' if lora_rank else 'false'}"]
    if lora_rank:
        overrides += [f"model.lora_rank={lora_rank}", f"model.lora_target_modules=[{','.join(targets)}]"]
    overrides += ["model.dtype=bf16", f"model.activation_checkpointing={'true' if ckpt else 'false'}",
                  f"data.max_length={seq_len}", "data.packing=true", f"train.micro_batch={micro}",
                  f"train.batch_rows={rows}", f"train.parallel={mode}"]
    if mode == "fsdp":
        overrides.append(f"train.fsdp_reshard_after_forward={'true' if chosen['reshard_after_forward'] else 'false'}")
    launcher = (f"torchrun --standalone --nproc_per_node={gpus} -m scalelab finetune" if gpus > 1
                else "scalelab finetune")
    return {
        "kind": "scalelab.suggest", "job": "finetune",
        "inputs": {"params": None if params is None else _size(params, "--params"), "model_config":
                   str(model_config) if model_config else None, "gpus": gpus, "gpu_mem_gib": gpu_mem_gib,
                   "tokens": D, "seq_len": seq_len, "lora_rank": lora_rank, "lora_targets": list(targets),
                   "batch_rows": batch_rows, "labelled_fraction": labelled_fraction, "gpu": gpu_name,
                   "max_micro_batch": max_micro_batch},
        "model": {"n_layer": shape.n_layer, "hidden": shape.hidden, "n_head": shape.n_head,
                  "n_kv_head": shape.n_kv_head, "intermediate": shape.intermediate, "vocab": shape.vocab,
                  **sizes, "trainable": mem["trainable_params"], "describe": shape.describe(),
                  "source": shape.source},
        "batch": {"rows": rows, "tokens": rows * seq_len, "per_gpu_rows": per_gpu, "micro_batch": micro,
                  "grad_accum": accum, "steps": steps,
                  "rule": "given (--batch-rows)" if batch_rows != DEFAULT_ROWS else
                          f"default {DEFAULT_ROWS} rows (configs/finetune-7b.yaml)",
                  "formula": f"{rows} rows = {gpus} GPUs x micro-batch {micro} x {accum} accumulation; "
                             f"{D:.3g} tokens / ({rows} x {seq_len}) = {steps:,.0f} steps"},
        "parallel": {"mode": mode, "checkpointing": ckpt, "reshard_after_forward": chosen["reshard_after_forward"],
                     "reason": reason, "options": tried},
        "memory": memory, "throughput": tput, "time": time_est, "overrides": overrides,
        "command": f"{launcher} CONFIG.yaml model.hf=MODEL data.source=DATA " + " ".join(overrides),
        "warnings": warnings, "notes": notes,
    }


def format_ft_suggestion(s: dict[str, Any]) -> str:
    m, b, p, mem, t, tm = s["model"], s["batch"], s["parallel"], s["memory"], s["throughput"], s["time"]
    kind = f"LoRA rank {s['inputs']['lora_rank']}" if s["inputs"]["lora_rank"] else "full fine-tune"
    lines = [f"WARNING: {w}" for w in s.get("warnings", [])]
    lines += [
        f"model:       {m['describe']}: {m['total']:,} params ({m['non_embedding']:,} non-embedding); {kind}, "
        f"{m['trainable']:,} trained",
        f"             <- {m['source']}",
        f"batch:       {b['rows']} rows x {s['inputs']['seq_len']} tokens = {b['tokens']:,} tokens/step, "
        f"{b['steps']:,.0f} steps   <- {b['rule']}",
        *layout_lines(p, b),
        f"memory/GPU:  {mem['peak_gib']:.2f} GiB of {mem['usable_gib']:.1f} usable ({mem['usable_formula']}); "
        f"{mem['precision']} activations",
    ]
    lines += memory_term_lines(mem)
    rng = throughput_range(t)
    lines += [
        f"tokens/s/GPU {t['tokens_per_s_per_gpu']:,.0f}{rng} (MFU {t['mfu']:.1%}, hardware utilization {t['hfu']:.1%})",
        f"             <- {t['formula']}",
        f"             <- {t['source']}",
        f"time:        {tm['wall_hours']:,.2f} h wall, {tm['gpu_hours']:,.1f} GPU-hours   <- {tm['formula']}",
    ]
    lines += closing_lines(s)
    return "\n".join(lines)
