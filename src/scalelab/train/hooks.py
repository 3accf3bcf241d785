"""The trainer's upward calls, as callables built above it (DESIGN: layers).

The trainer does not import eval: the in-training task scores (train.eval_tasks) and the
checkpoint samples (train.ckpt_samples) reach it as `TrainHooks`, which the CLI, a study
or golf build with `scalelab.eval.train_hooks.training_hooks()`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scalelab.errors import ConfigError


@dataclass(frozen=True)
class TrainHooks:
    # (model, tokenizer, task names, limit=, device=, seed=) -> {task: accuracy}
    task_scores: Callable[..., dict[str, float]] | None = None
    # (model, tokenizer, device, name) -> (samples [{prompt, completion, tokens}], settings dict)
    sample: Callable[..., tuple[list[dict[str, Any]], dict[str, Any]]] | None = None
    # (raw model, step, schedule progress in [0, 1] or None) -> None, before every step
    # (e.g. golf's quantization-aware training switching on late in the run: golf/qat.py)
    before_step: Callable[[Any, int, float | None], None] | None = None


def check_hooks(cfg, hooks: TrainHooks | None) -> TrainHooks:
    """The hooks, or a ConfigError before any work when the config asks for one not given."""
    hooks = hooks or TrainHooks()
    t = cfg.train
    missing = [key for key, wanted, hook in (("train.eval_tasks", bool(t.eval_tasks), hooks.task_scores),
                                              ("train.ckpt_samples", bool(t.ckpt_samples), hooks.sample))
               if wanted and hook is None]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} need eval's training hooks: call train(cfg, hooks="
                          "scalelab.eval.train_hooks.training_hooks()) as `scalelab train` does, or turn "
                          f"{' and '.join(missing)} off")
    return hooks
