"""Learning-rate schedules as pure functions of training progress.

`lr_at(step, total_steps, cfg)` returns the learning rate for an optimizer step.
Warmup is linear from lr/warmup to lr over `warmup_steps`; after that:
- cosine: half-cosine from lr down to min_lr_ratio*lr at the last step;
- wsd (warmup-stable-decay, Hu et al. 2024 "MiniCPM"): constant lr, then a linear
  decay to min_lr_ratio*lr over the last `decay_frac` of the steps;
- constant: lr after warmup.
`progress` (0..1) can replace step/total_steps when a run stops on a wall-clock cap.
"""
from __future__ import annotations

import math

from scalelab.config import TrainConfig


def lr_at(step: int, total_steps: int, cfg: TrainConfig, progress: float | None = None) -> float:
    peak = cfg.lr
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return peak
    if progress is None:
        span = max(1, total_steps - cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / span
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd: stable until the decay window, then linear to the floor.
    decay_start = 1.0 - cfg.decay_frac
    if progress <= decay_start:
        return peak
    return peak - (peak - floor) * (progress - decay_start) / cfg.decay_frac
