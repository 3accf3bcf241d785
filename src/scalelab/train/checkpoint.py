"""Checkpoints: one directory per save, written to a temp dir and renamed atomically.

Layout (see docs/FORMATS.md):
    <out_dir>/checkpoints/step_000200/model.safetensors   weights (tied aliases in metadata)
                                     /optimizer.pt        optimizer state (tensors + primitives)
                                     /state.json          step, tokens, loader, RNG, config,
                                                          sha256 of every file (and of itself)
    <out_dir>/checkpoints/last, best                      one-line pointer files
A crash at any moment leaves the previous checkpoint and pointers intact; a failed write
(full disk, ...) removes its temp dir and says what to free. Loading verifies the
checksums and never unpickles arbitrary objects (safetensors, `torch.load(weights_only=True)`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scalelab.errors import CheckpointError
from scalelab.io import (
    _json_default,
    atomic_write_json,
    atomic_write_text,
    check_free_space,
    describe_write_error,
    file_mode,
    fsync_dir,
    swap_dir_into_place,
)

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
STATE_FILE = "state.json"
_TMP_PREFIX = ".tmp-"
_STEP_PREFIX = "step_"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dirname(step: int) -> str:
    return f"{_STEP_PREFIX}{step:06d}"


def step_of(name: str) -> int | None:
    """30 for 'step_000030'; None for anything else."""
    tail = name[len(_STEP_PREFIX):] if name.startswith(_STEP_PREFIX) else ""
    return int(tail) if tail.isdigit() else None


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
    os.chmod(path, file_mode())  # safetensors creates 0600 files whatever the umask


def load_weights(path: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """Load a safetensors file (tied aliases restored); inside a checkpoint, its checksum
    in state.json is verified first (`verify=False` when the caller just did)."""
    from safetensors import safe_open

    path = Path(path)
    if verify:
        _verify_in_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
        aliases = json.loads(meta.get("aliases", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint weights '{path}' are unreadable ({e}); "
                              f"{_other_checkpoints_hint(path.parent)}") from None
    for alias, source in aliases.items():
        tensors[alias] = tensors[source]
    return tensors


# -- checksums -------------------------------------------------------------------------

def _sha256(path: Path, sync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
        if sync:  # the data must be on disk before the rename publishes the checkpoint
            os.fsync(f.fileno())
    return h.hexdigest()


def _canonical_sha256(obj: dict[str, Any]) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _other_checkpoints_hint(ckpt: Path) -> str:
    """'use another checkpoint, e.g. `--resume step_000020` ...' for a damaged `ckpt`."""
    here = step_of(ckpt.name)
    others = sorted((d.name for d in ckpt.parent.glob(_STEP_PREFIX + "*")
                     if d.is_dir() and d != ckpt and step_of(d.name) is not None), reverse=True)
    older = [n for n in others if here is None or step_of(n) < here]
    if older:
        return (f"use another checkpoint, e.g. resume training from an older one with `--resume {older[0]}` "
                f"(train.resume={older[0]}); checkpoints there: {', '.join(others)}")
    if others:
        return f"use another checkpoint (`--resume NAME`); checkpoints there: {', '.join(others)}"
    return "no other checkpoint is left in that folder; train again (a new out_dir=...)"


def _verify_file(path: Path, expected: dict[str, Any]) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' is missing; {_other_checkpoints_hint(path.parent)}")
    size = path.stat().st_size
    if "bytes" in expected and size != expected["bytes"]:
        raise CheckpointError(f"checkpoint file '{path}' is corrupt ({size:,} bytes, {expected['bytes']:,} "
                              f"written); {_other_checkpoints_hint(path.parent)}")
    if _sha256(path) != expected.get("sha256"):
        raise CheckpointError(f"checkpoint file '{path}' is corrupt (its sha256 differs from the one in "
                              f"state.json); {_other_checkpoints_hint(path.parent)}")


def _verify_in_checkpoint(path: Path) -> None:
    state_path = path.parent / STATE_FILE
    if not state_path.is_file():
        return  # a bare weights file, not a checkpoint
    expected = (load_state(path.parent).get("files") or {}).get(path.name)
    if expected is not None:  # None: a checkpoint written before checksums
        _verify_file(path, expected)


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Check a checkpoint's state.json and every file's checksum; return the state.
    Checkpoints written before checksums only need their state and weights present."""
    ckpt = Path(ckpt)
    state = load_state(ckpt)
    files = state.get("files")
    if files is None:
        if not (ckpt / MODEL_FILE).is_file():
            raise CheckpointError(f"checkpoint file '{ckpt / MODEL_FILE}' is missing; {_other_checkpoints_hint(ckpt)}")
        return state
    for name, expected in files.items():
        _verify_file(ckpt / name, expected)
    return state


# -- saving ----------------------------------------------------------------------------

def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _keep_hint(keep_last: int) -> str:
    if keep_last > 1:
        return f"or set train.ckpt_keep={keep_last - 1} (now {keep_last}) to keep fewer checkpoints"
    return "or choose an out_dir=... on a larger disk"


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any] | None,
    state: dict[str, Any],
    *,
    is_best: bool = False,
    keep_last: int = 2,
    keep_every: int = 0,
    extra_weights: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a checkpoint atomically and move the `last` (and maybe `best`) pointer.

    Any failure (full disk, read-only folder, a library's write error) removes the temp
    dir, leaves the earlier checkpoints and pointers as they were, and raises one
    CheckpointError saying what to free or change."""
    root = checkpoint_root(out_dir)
    final = root / step_dirname(step)
    tmp = root / f"{_TMP_PREFIX}{step_dirname(step)}-{os.getpid()}"
    extra_weights = extra_weights or {}
    need = (_tensor_bytes(_dedupe_tied(model_state)[0]) + _tensor_bytes(optim_state)
            + sum(_tensor_bytes(_dedupe_tied(w)[0]) for w in extra_weights.values()) + (1 << 20))
    try:
        root.mkdir(parents=True, exist_ok=True)
        short = check_free_space(root, need, _keep_hint(keep_last))
        if short:
            raise CheckpointError(f"checkpoint step {step} not saved: {short}; earlier checkpoints are intact")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _crash_hook(step, "start")
        files: dict[str, dict[str, Any]] = {}

        def written(name: str) -> None:
            p = tmp / name
            files[name] = {"sha256": _sha256(p, sync=True), "bytes": p.stat().st_size}

        save_weights(tmp / MODEL_FILE, model_state)
        written(MODEL_FILE)
        _crash_hook(step, "weights")
        for name, weights in extra_weights.items():  # e.g. ema.safetensors
            save_weights(tmp / name, weights)
            written(name)
        if optim_state is not None:
            torch.save(optim_state, tmp / OPTIM_FILE)
            written(OPTIM_FILE)
        _crash_hook(step, "optimizer")
        # The state as it will read back from JSON, then a checksum of that (for itself).
        state = json.loads(json.dumps(dict(state, format_version=FORMAT_VERSION, step=step, files=files),
                                      default=_json_default))
        state["state_sha256"] = _canonical_sha256(state)
        atomic_write_json(tmp / STATE_FILE, state)
        _crash_hook(step, "state")
        fsync_dir(tmp)
        # Re-saving a step (e.g. after resume) swaps the old one out; its trash name has the
        # temp prefix, so clean_stale removes it if a crash comes first.
        swap_dir_into_place(tmp, final, trash=root / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}")
        _crash_hook(step, "renamed")
        atomic_write_text(root / "last", final.name + "\n")
        _crash_hook(step, "pointer")
        if is_best:
            atomic_write_text(root / "best", final.name + "\n")
    except CheckpointError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - torch/safetensors raise RuntimeError/SafetensorError, not OSError
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"checkpoint step {step} not saved: {describe_write_error(e, root, need, _keep_hint(keep_last))}"
                              f"; earlier checkpoints are intact") from None
    except BaseException:  # interrupted: no torn temp dir either
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep_last, keep_every)
    return final


def _crash_hook(step: int, phase: str) -> None:
    # Test hook: simulate `kill -9` in the middle of a checkpoint write.
    # SCALELAB_TEST_CRASH_IN_CHECKPOINT="6" dies after step 6's state.json, before the
    # rename; "6:weights" (start|weights|optimizer|state|renamed|pointer) at that phase.
    want = os.environ.get("SCALELAB_TEST_CRASH_IN_CHECKPOINT")
    if want and want in (f"{step}:{phase}", str(step) if phase == "state" else None):
        os.kill(os.getpid(), 9)


def _pointer_name(root: Path, name: str) -> str | None:
    """The directory name a pointer file holds (it may dangle), or None."""
    try:
        text = (root / name).read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None


def _read_pointer(root: Path, name: str) -> Path | None:
    target = _pointer_name(root, name)
    if target is None or step_of(target) is None:  # empty, or damaged
        return None
    path = root / target
    return path if (path / STATE_FILE).is_file() else None


def _prune(root: Path, keep_last: int, keep_every: int = 0) -> None:
    """Keep `last`, `best`, the `keep_last` newest up to `last`, any newer than `last`
    (those of a run resumed from an older checkpoint: replaced when it gets there), and
    every step that is a multiple of `keep_every` (the learning trajectory's checkpoints)."""
    last = _read_pointer(root, "last")
    keep = {p for p in (last, _read_pointer(root, "best")) if p}
    steps = sorted((d for d in root.glob(_STEP_PREFIX + "*") if d.is_dir() and step_of(d.name) is not None),
                   key=lambda d: step_of(d.name))
    limit = step_of(last.name) if last else None
    upto = [d for d in steps if limit is None or step_of(d.name) <= limit]
    keep.update(upto[-keep_last:] if keep_last > 0 else [])
    keep.update(d for d in steps if limit is not None and step_of(d.name) > limit)
    if keep_every > 0:
        keep.update(d for d in steps if step_of(d.name) % keep_every == 0)
    for d in steps:
        if d not in keep:
            shutil.rmtree(d, ignore_errors=True)


def set_last(out_dir: str | Path, ckpt: Path) -> None:
    """Point `last` at `ckpt` (a run resumed from an older checkpoint continues from it)."""
    atomic_write_text(checkpoint_root(out_dir) / "last", Path(ckpt).name + "\n")


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


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """The step_* directories of a run, newest first (complete or not: see verify_checkpoint)."""
    root = checkpoint_root(out_dir)
    dirs = [d for d in root.glob(_STEP_PREFIX + "*") if d.is_dir() and step_of(d.name) is not None]
    return sorted(dirs, key=lambda d: step_of(d.name), reverse=True)


def select_checkpoint(out_dir: str | Path, which: str = "last") -> tuple[Path, dict[str, Any], list[str]]:
    """The checkpoint to resume from: (its dir, its verified state, notes on what was skipped).

    `which="last"`: the one `last` names if it verifies, else the newest valid one before it
    (`last` may dangle or name a corrupt checkpoint). `which="step_000025"`: that one.
    Raises CheckpointError when nothing valid is left, naming each checkpoint's problem."""
    root = checkpoint_root(out_dir)
    if which != "last":
        path = root / which
        if not path.is_dir():
            names = [d.name for d in list_checkpoints(out_dir)]
            raise CheckpointError(f"no checkpoint '{which}' in '{root}'; "
                                  + (f"choose one of {', '.join(names)}" if names else "that run has none"))
        return path, verify_checkpoint(path), []
    notes: list[str] = []
    pointer = _pointer_name(root, "last")
    limit = step_of(pointer) if pointer else None
    if pointer is not None and limit is None:
        notes.append(f"the 'last' pointer is unreadable ({ascii(pointer[:40])})")
    elif pointer is not None and not (root / pointer).is_dir():
        notes.append(f"{pointer} (named by 'last') is missing")
    candidates = [d for d in list_checkpoints(out_dir) if limit is None or step_of(d.name) <= limit]
    for d in candidates:
        try:
            return d, verify_checkpoint(d), notes
        except CheckpointError as e:
            notes.append(f"skipped {d.name}: {e}")
    newer = [d.name for d in list_checkpoints(out_dir) if d not in candidates]
    detail = "; ".join(notes) if notes else "it holds no checkpoint"
    fix = (f"checkpoints newer than 'last' ({', '.join(newer)}) may be resumed with --resume NAME"
           if newer else "start a new run in another out_dir=...")
    raise CheckpointError(f"no valid checkpoint to resume in '{root}': {detail}. {fix}")


def load_state(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's state.json, its own checksum verified (when it has one)."""
    path = Path(ckpt) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint state '{path}' is unreadable ({e}); "
                              f"{_other_checkpoints_hint(Path(ckpt))}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state '{path}' is not a JSON object; {_other_checkpoints_hint(Path(ckpt))}")
    if isinstance(state.get("format_version"), int) and state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{ckpt}' has format {state['format_version']}, newer than this scalelab "
            f"understands ({FORMAT_VERSION}); upgrade scalelab"
        )
    if "state_sha256" in state:
        expected = state.pop("state_sha256")
        if _canonical_sha256(state) != expected:
            raise CheckpointError(f"checkpoint state '{path}' is corrupt (its content differs from its "
                                  f"state_sha256); {_other_checkpoints_hint(Path(ckpt))}")
    return state


def load_optimizer(ckpt: Path, verify: bool = True) -> dict[str, Any] | None:
    path = Path(ckpt) / OPTIM_FILE
    if not path.is_file():
        if verify and OPTIM_FILE in (load_state(ckpt).get("files") or {}):
            _verify_file(path, {})  # listed but gone: "missing"
        return None
    if verify:
        _verify_in_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"optimizer state '{path}' is unreadable ({e}); "
                              f"{_other_checkpoints_hint(Path(ckpt))}") from None
