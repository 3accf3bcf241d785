"""Load what gets evaluated: a scalelab run / checkpoint, or any Hugging Face causal LM.

    load_model_for_eval("runs/tiny")              # checkpoints/last of a run
    load_model_for_eval("runs/tiny@best")         # its best checkpoint
    load_model_for_eval("runs/tiny/checkpoints/step_000200")
    load_model_for_eval("hf:path/to/dir")         # or any directory holding config.json

A dispatcher only: the interface is eval/model.py, the backends gpt_backend.py (ours)
and hf.py (transformers, imported on demand: it is optional).
"""
from __future__ import annotations

from pathlib import Path

from scalelab.eval.model import EvalModel
from scalelab.eval.scoring import EvalError


def load_model_for_eval(target: str | Path, device=None, dtype=None, tokenizer: str | Path | None = None,
                        batch_size: int | None = None) -> EvalModel:
    """A scalelab run/checkpoint dir, `hf:PATH`, or a directory with config.json (HF)."""
    text = str(target)
    if text.startswith("hf:"):
        from scalelab.eval.hf import load_hf

        model = load_hf(text[3:], device=device, dtype=dtype)
    elif Path(text).is_dir() and (Path(text) / "config.json").is_file() and not (Path(text) / "state.json").is_file():
        from scalelab.eval.hf import load_hf

        model = load_hf(text, device=device, dtype=dtype)
    else:
        from scalelab.eval.gpt_backend import load_gpt

        model = load_gpt(text, device=device, dtype=dtype, tokenizer=tokenizer)
    if batch_size is not None:
        if batch_size < 1:
            raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
        model.batch_size = batch_size
    elif model.device.type == "cuda":
        model.batch_size = 64
    return model
