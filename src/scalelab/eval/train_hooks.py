"""What the trainer gets from eval, as hooks (train/hooks.py): task scores and samples."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from scalelab.train.hooks import TrainHooks


def sample_for_training(model, tokenizer, device, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The fixed prompts' completions, as `scalelab sample` draws them (same settings)."""
    from scalelab.eval.generate import SampleSettings, sample_prompts
    from scalelab.eval.gpt_backend import wrap_gpt

    settings = SampleSettings()
    em = wrap_gpt(model, tokenizer, device=device, name=name)
    samples = sample_prompts(em, None, settings)
    return ([{"prompt": s["prompt"], "completion": s["completion"], "tokens": s["tokens"]} for s in samples],
            asdict(settings))


def task_scores(model, tokenizer, task_names, **kw) -> dict[str, float]:
    from scalelab.eval.tasks import run_tasks_in_training

    return run_tasks_in_training(model, tokenizer, task_names, **kw)


def training_hooks() -> TrainHooks:
    """The hooks `scalelab train`, studies and golf hand the trainer."""
    return TrainHooks(task_scores=task_scores, sample=sample_for_training)
