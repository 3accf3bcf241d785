"""`scalelab tune`'s set-up: everything before the first trial (the job, its base config,
hardware, search space, data, model) gathered into a `TuneSetup`. search.py runs the study on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scalelab.errors import ConfigError
from scalelab.tune.jobs import get_job
from scalelab.tune.measure import MeasureSettings, train_command
from scalelab.tune.space import Hardware, ResolvedSpace, parse_space, resolve_space
from scalelab.tune.tune_config import DEVICES, TuneConfig, key_name


@dataclass
class TuneSetup:
    cfg: TuneConfig
    out: Path
    base_path: Path
    base: Any  # RunConfig (pretrain) or FinetuneConfig (finetune)
    hw: Hardware
    space: ResolvedSpace
    settings: MeasureSettings
    tokens_per_step: float | None  # per process; None: read from every step (the fine-tune job's real tokens)
    model: dict[str, Any]  # sizes, flops per token (pretrain); the HF model (finetune)
    hardware: dict[str, Any]
    job: Any = None  # tune/jobs.py: Pretrain or Finetune

    def command(self, run_dir: Path, overrides: list[str]) -> list[str]:
        over = merge_overrides(self.cfg.base_overrides, self.job.measurement_overrides(self.base, run_dir,
                                                                                       self.settings), overrides)
        return train_command(self.base_path, over, self.hw.nproc, entry=self.job.entry)


def merge_overrides(*groups: list[str]) -> list[str]:
    """Concatenate key=value lists; a later group's key replaces an earlier one (in place)."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            key = item.split("=", 1)[0].strip()
            merged.pop(key, None)
            merged[key] = item
    return list(merged.values())


def _resolve_base(cfg: TuneConfig, out: Path) -> Path:
    if isinstance(cfg.base, dict):
        path = out / "base.yaml"
        from scalelab.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(cfg.base, sort_keys=False))
        return path
    p = Path(cfg.base)
    if p.is_file():
        return p
    if cfg.source and (Path(cfg.source).parent / p).is_file():
        return Path(cfg.source).parent / p
    raise ConfigError(f"tune config: base training config '{cfg.base}' does not exist (relative to the current "
                      f"directory or to the tune config)")


def _hardware(device: str, nproc: int) -> Hardware:
    """The trials' device and process count, checked before anything is written or prepared."""
    import torch

    if device not in DEVICES:  # a TuneConfig built in code skips load_tune_config's check
        raise ConfigError(f"tune config: {key_name('device')} must be one of {', '.join(DEVICES)}; got '{device}'")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible")
        raise ConfigError(f"tune config: {key_name('device')} is cuda but {why}; use --device cpu (or auto)")
    if nproc == 0:
        nproc = torch.cuda.device_count() if device == "cuda" else 1
    if device == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"tune config: nproc={nproc} but only {torch.cuda.device_count()} GPUs are visible; "
                          f"set nproc (0 = all GPUs) in the tune YAML")
    return Hardware(device=device, nproc=nproc)


def describe_hardware(hw: Hardware, threads: int | None) -> dict[str, Any]:
    """Device name, count, peak FLOP/s (vendor table on GPU, measured matmul on CPU), load."""
    import os
    import platform

    import torch

    from scalelab.io import software_versions
    from scalelab.train.hardware import gpu_peak_flops, machine_load, measure_matmul_peak

    info: dict[str, Any] = {"device": hw.device, "nproc": hw.nproc, "cpu_count": os.cpu_count(),
                            "load_avg_start": list(machine_load()), "platform": platform.platform(),
                            "versions": software_versions()}
    if hw.device == "cuda":
        info["name"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 1024**3
        info["peak_flops"] = gpu_peak_flops(0)
        info["peak_source"] = "vendor dense bf16 peak (train/hardware.py table)"
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in open("/proc/cpuinfo"):
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info["name"] = name
        info["peak_flops"] = measure_matmul_peak(torch.float32, seconds=0.5, threads=threads or 1)
        info["peak_source"] = f"measured fp32 matmul peak, {threads or 1} thread(s), at the start of this session"
    return info


def prepare(cfg: TuneConfig, progress: bool = True) -> TuneSetup:
    """Everything before the first trial: base config, hardware, space, data, model."""
    job = get_job(cfg.job)
    hw = _hardware(cfg.device, cfg.nproc)  # first: a wrong device fails before any file is written
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_path = _resolve_base(cfg, out)
    base = job.load_base(base_path, list(cfg.base_overrides))
    knobs = parse_space(cfg.space, job.known_knobs, job.valid_keys(), job.example, job.renamed)
    space = resolve_space(knobs, base, hw, job)
    if not space.knobs:
        raise ConfigError("tune config: no knob of the space applies to this hardware ("
                          + "; ".join(f"{d['knob']}: {d['reason']}" for d in space.dropped) + ")")
    settings = MeasureSettings(warmup_steps=cfg.warmup_steps, measure_steps=cfg.measure_steps, windows=cfg.windows,
                               timeout_s=cfg.trial_timeout_s, stall_timeout_s=cfg.stall_timeout_s)
    model = job.prepare(base, progress)
    hardware = describe_hardware(hw, job.threads(base))
    return TuneSetup(cfg=cfg, out=out, base_path=base_path, base=base, hw=hw, space=space, settings=settings,
                     tokens_per_step=job.tokens_per_step(base, hw.nproc), model=model, hardware=hardware, job=job)
