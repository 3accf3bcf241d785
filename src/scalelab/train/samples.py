"""The fixed prompts sampled at each checkpoint save, into RUN/samples.jsonl (train.ckpt_samples).

    sampler = CheckpointSampler(out_dir, data_dir, model_cfg, device, sample_fn)   # the trainer's after_save
    sampler(ckpt_dir, model_state_dict, live_model)                     # after each checkpoint save

One JSON line per save: {"step", "tokens", "checkpoint", "settings", "samples": [{"prompt",
"completion", "tokens"}]}. Prompts and decoding are those of `scalelab sample`
(scalelab.eval.generate: DEFAULT_PROMPTS, SampleSettings, prompt i with seed + i), so the
line for step k is what `scalelab sample RUN/checkpoints/step_k` prints -- and it outlives
the checkpoint when that is pruned. With train.wandb the rows also go to W&B as a table.

Layer rule: train does not import eval; the sampling itself is a hook (`sample_fn`,
eval.train_hooks.sample_for_training, handed over in TrainHooks).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from scalelab.io import atomic_write_text

SAMPLES_FILE = "samples.jsonl"


def read_samples(out_dir: str | Path) -> list[dict[str, Any]]:
    """samples.jsonl of a run, one record per step (the newest line wins), by step; [] if none.
    Unreadable lines are skipped: the file is a by-product, never a reason to fail a report."""
    path = Path(out_dir) / SAMPLES_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and isinstance(rec.get("samples"), list):
            by_step[rec["step"]] = rec
    return [by_step[k] for k in sorted(by_step)]


class CheckpointSampler:
    """Callable run on rank 0 after each checkpoint save (see the module docstring)."""

    def __init__(self, out_dir: str | Path, data_dir: str | Path, model_cfg, device: torch.device,
                 sample_fn, wandb: bool = False):
        self.out_dir = Path(out_dir)
        self.sample_fn = sample_fn  # (model, tokenizer, device, name) -> (samples, settings)
        self.data_dir = data_dir
        self.model_cfg = model_cfg
        self.device = device
        self.wandb = wandb
        self._tokenizer = None

    def __call__(self, ckpt: Path, model_state: dict[str, torch.Tensor] | None = None, model=None) -> dict | None:
        """Sample `model` (the live, unsharded model that was just saved) or, when None (FSDP),
        a copy built from `model_state`; append the record. A failure is a printed warning:
        a sample must never cost the run."""
        from scalelab.train import checkpoint as ckpt_io

        try:
            state = ckpt_io.load_state(ckpt)
            samples, settings = self._sample(model, model_state)
        except Exception as e:  # noqa: BLE001 - tokenizer, generation or memory: warn, keep training
            print(f"warning: the samples of checkpoint {Path(ckpt).name} were not drawn ({e}); training goes on",
                  flush=True)
            return None
        rec = {"step": int(state["step"]), "tokens": state.get("tokens_seen"), "checkpoint": Path(ckpt).name,
               "settings": settings, "samples": samples}
        self._append(rec)
        if self.wandb:
            self._log_wandb(rec["step"])
        return rec

    def _sample(self, model, model_state):
        from scalelab.data.prepare import load_data_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_data_tokenizer(self.data_dir)
            if self._tokenizer is None:
                raise ValueError(f"data dir '{self.data_dir}' has no tokenizer (set train.ckpt_samples=false)")
        if model is None:  # sharded: gather-free copy from the full state dict
            from scalelab.model.gpt import GPT

            with torch.device(self.device):
                model = GPT(self.model_cfg)
            model.load_state_dict(model_state, strict=True)
        return self.sample_fn(model, self._tokenizer, self.device, self.out_dir.name)

    def _append(self, rec: dict[str, Any]) -> None:
        # A save at step k supersedes lines at or after k (a resumed run's abandoned future).
        kept = [r for r in read_samples(self.out_dir) if r["step"] < rec["step"]]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept + [rec])
        atomic_write_text(self.out_dir / SAMPLES_FILE, text)

    def _log_wandb(self, step: int) -> None:
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is None:
            return
        rows = [[r["step"], r.get("tokens"), s["prompt"], s["completion"]]
                for r in read_samples(self.out_dir) for s in r["samples"]]
        # The whole trajectory so far, so the newest table shows every checkpoint.
        wandb.log({"samples": wandb.Table(columns=["step", "tokens", "prompt", "completion"], data=rows)}, step=step)
