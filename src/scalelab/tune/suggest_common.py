"""What `scalelab suggest` and `suggest --finetune` compute and print the same way: the usable memory
of a GPU, the bf16 peak, the fewest GPUs that fit, reading a tune.json, the wall-time and memory
summaries, and the report lines for memory terms and the layouts tried."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from scalelab.errors import ConfigError
from scalelab.tune.memory import GIB


def usable_bytes(gpu_mem_gib: float, headroom: float, reserved_gib: float) -> float:
    """Bytes a job may plan for on one GPU: the headroom fraction less the CUDA context / NCCL reserve."""
    usable = headroom * gpu_mem_gib * GIB - reserved_gib * GIB
    if usable <= 0:
        raise ConfigError(f"--gpu-mem {gpu_mem_gib:g} GiB leaves nothing usable ({headroom:.0%} of it less "
                          f"{reserved_gib:g} GiB for the CUDA context and NCCL): give the memory of one GPU in GiB, "
                          f"e.g. --gpu-mem 80")
    return usable


def resolve_peak(peak_tflops: float | None, gpu_name: str | None) -> tuple[float, str]:
    """The device's bf16 peak in FLOP/s and where it came from (--peak-tflops, else the vendor table)."""
    if peak_tflops is not None:
        return peak_tflops * 1e12, "given (--peak-tflops)"
    from scalelab.train.hardware import peak_for_name
    peak = peak_for_name(gpu_name or "")
    if peak is None:
        raise ConfigError(f"unknown GPU '{gpu_name}' for the bf16 peak table; pass --peak-tflops (e.g. 989 for "
                          f"an H100 SXM)")
    return peak, f"vendor dense bf16 peak of '{gpu_name}' (train/hardware.py)"


def fewest_gpus(fits: Callable[[int], bool], limit: int) -> int | None:
    """Fewest GPU count g <= limit with fits(g), assuming fitting is monotone in g (None: none does).
    Doubles until it fits, then bisects the last doubling."""
    g = 1
    while g <= limit:
        if fits(g):
            lo, hi = g // 2 + 1, g
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
            return max(1, lo)
        g *= 2
    return None


def read_tune_json(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The --calibrate file as JSON (its kind is checked by the caller)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--calibrate: '{p}' does not exist (give the tune.json of a `scalelab tune` run)")
    try:
        return p, json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--calibrate: '{p}' is not valid JSON ({e})") from None


def time_estimate(tokens: float, tput: dict[str, Any], gpus: int) -> dict[str, Any]:
    """Wall time and GPU-hours for `tokens` at tput's tokens/s per GPU (and its lo/hi range if known)."""
    tok_s = tput["tokens_per_s_per_gpu"]
    wall = tokens / (tok_s * gpus)
    est = {"wall_s": wall, "wall_hours": wall / 3600, "gpu_hours": wall * gpus / 3600,
           "formula": f"{tokens:.3g} tokens / ({tok_s:,.0f} tokens/s/GPU x {gpus} GPUs)"}
    if tput.get("lo") and tput.get("hi"):
        est["wall_hours_range"] = [tokens / (tput["hi"] * gpus) / 3600, tokens / (tput["lo"] * gpus) / 3600]
    return est


def memory_summary(mem: dict[str, Any], usable: float, gpu_mem_gib: float, headroom: float, reserved_gib: float,
                   source: str) -> dict[str, Any]:
    """The chosen layout's memory estimate in GiB, with the usable-memory formula and `source`."""
    return {"peak_gib": mem["peak_gib"], "usable_gib": usable / GIB, "gpu_mem_gib": gpu_mem_gib,
            "usable_formula": f"{headroom:.0%} x {gpu_mem_gib:g} GiB - {reserved_gib:g} GiB (CUDA context, NCCL)",
            "peak_phase": mem["peak_phase"], "formula": mem["formula"], "precision": mem["precision"],
            "terms": {k: {"gib": v["bytes"] / GIB, "formula": v["formula"]} for k, v in mem["terms"].items()},
            "per_layer_bytes_per_token": mem["per_layer_bytes_per_token"],
            "source": source}


def layout_lines(p: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The chosen parallelism, checkpointing, micro-batch and accumulation, and why."""
    return [f"layout:      {p['mode']}, activation checkpointing {'on' if p['checkpointing'] else 'off'}, "
            f"micro-batch {b['micro_batch']}, accumulation {b['grad_accum']}",
            f"             <- {p['reason']}; {b['formula']}"]


def memory_term_lines(mem: dict[str, Any]) -> list[str]:
    """One line per memory term, then the peak phase and its formula."""
    lines = [f"   {k:20s} {v['gib']:8.2f} GiB  {v['formula']}" for k, v in mem["terms"].items()]
    lines.append(f"   peak at {mem['peak_phase']}: {mem['formula']}")
    return lines


def throughput_range(t: dict[str, Any]) -> str:
    """' [lo, hi]' tokens/s when the calibration gave a range, else ''."""
    return f" [{t['lo']:,.0f}, {t['hi']:,.0f}]" if t.get("lo") and t.get("hi") else ""


def closing_lines(s: dict[str, Any]) -> list[str]:
    """The layouts tried, the notes and the command to run: the end of both reports."""
    lines = []
    for opt in s["parallel"]["options"]:
        lines.append(f"   option {opt['parallel']:4s} ckpt={'on ' if opt['checkpointing'] else 'off'} "
                     + (f"fits up to micro-batch {opt['max_micro_batch']} ({opt['peak_gib']:.1f} GiB)" if opt["fits"]
                        else f"does not fit ({opt['peak_gib']:.1f} GiB at micro-batch 1)"))
    lines += [f"note: {n}" for n in s["notes"]]
    lines.append(f"run: {s['command']}")
    return lines
