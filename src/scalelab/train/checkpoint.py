"""Checkpoints: one directory per save, written to a temp dir and renamed atomically.

Layout (see docs/FORMATS.md):
    <out_dir>/checkpoints/step_000200/model.safetensors   weights (tied aliases in metadata)
                                     /optimizer.pt        optimizer state (tensors + primitives)
                                     /state.json          step, tokens, loader, RNG, config, ...
    <out_dir>/checkpoints/last, best                      one-line pointer files
A crash at any moment leaves the previous checkpoint and pointers intact. Loading
never unpickles arbitrary objects (safetensors, `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scalelab.errors import CheckpointError
from scalelab.io import atomic_write_json, atomic_write_text, fsync_dir

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
STATE_FILE = "state.json"
_TMP_PREFIX = ".tmp-"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"


def _dedupe_tied(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep one copy and remember the aliases."""
    first_by_ptr: dict[tuple[int, int], str] = {}
    tensors, aliases = {}, {}
    for key, t in state_dict.items():
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if ptr in first_by_ptr and t.numel():
            aliases[key] = first_by_ptr[ptr]
        else:
            first_by_ptr[ptr] = key
            tensors[key] = t.detach().contiguous().cpu()
    return tensors, aliases


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors, aliases = _dedupe_tied(state_dict)
    meta = {"format": "scalelab", "aliases": json.dumps(aliases)}
    meta.update(metadata or {})
    save_file(tensors, str(path), metadata=meta)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights '{path}' are unreadable ({e}); use another checkpoint") from None
    for alias, source in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[source]
    return tensors


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any] | None,
    state: dict[str, Any],
    *,
    is_best: bool = False,
    keep_last: int = 2,
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a checkpoint atomically and move the `last` (and maybe `best`) pointer."""
    root = checkpoint_root(out_dir)
    final = root / step_dirname(step)
    tmp = root / f"{_TMP_PREFIX}{step_dirname(step)}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_weights(tmp / MODEL_FILE, model_state)
        for name, weights in (extra_weights or {}).items():  # e.g. ema.safetensors
            save_weights(tmp / name, weights)
        if optim_state is not None:
            torch.save(optim_state, tmp / OPTIM_FILE)
        state = dict(state, format_version=FORMAT_VERSION, step=step)
        atomic_write_json(tmp / STATE_FILE, state)
        _crash_hook(step)
        fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. after resume): swap, then drop the old one
            trash = root / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
        atomic_write_text(root / "last", final.name + "\n")
        if is_best:
            atomic_write_text(root / "best", final.name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint to '{root}': {e.strerror or e}. Free disk space or choose a "
            f"writable out_dir=...; earlier checkpoints are intact"
        ) from None
    _prune(root, keep_last)
    return final


def _crash_hook(step: int) -> None:
    # Test hook: simulate `kill -9` in the middle of a checkpoint write.
    if os.environ.get("SCALELAB_TEST_CRASH_IN_CHECKPOINT") == str(step):
        os.kill(os.getpid(), 9)


def _read_pointer(root: Path, name: str) -> Path | None:
    p = root / name
    if not p.is_file():
        return None
    target = root / p.read_text().strip()
    return target if (target / STATE_FILE).is_file() else None


def _prune(root: Path, keep_last: int) -> None:
    keep = {p for p in (_read_pointer(root, "last"), _read_pointer(root, "best")) if p}
    steps = sorted(d for d in root.glob("step_*") if d.is_dir())
    keep.update(steps[-keep_last:] if keep_last > 0 else [])
    for d in steps:
        if d not in keep:
            shutil.rmtree(d, ignore_errors=True)


def clean_stale(out_dir: str | Path) -> None:
    """Remove temp dirs left by a run killed mid-write (never a finished checkpoint)."""
    root = checkpoint_root(out_dir)
    for d in root.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(d, ignore_errors=True)


def find_checkpoint(out_dir: str | Path, which: str = "last") -> Path | None:
    """Resolve `last`/`best` of a run dir, or accept a checkpoint directory itself."""
    path = Path(out_dir)
    if (path / STATE_FILE).is_file():
        return path
    return _read_pointer(checkpoint_root(path), which)


def load_state(ckpt: Path) -> dict[str, Any]:
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint state '{ckpt / STATE_FILE}' is unreadable ({e})") from None
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{ckpt}' has format {state['format_version']}, newer than this scalelab "
            f"understands ({FORMAT_VERSION}); upgrade scalelab"
        )
    return state


def load_optimizer(ckpt: Path) -> dict[str, Any] | None:
    path = ckpt / OPTIM_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"optimizer state '{path}' is unreadable ({e}); use another checkpoint") from None
