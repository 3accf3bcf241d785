"""Load a trained model: the one way eval, export, golf and report get a run's GPT back.

    t = load_trained("runs/tiny")                    # checkpoints/last of a run
    t = load_trained("runs/tiny", which="best")      # or "RUN@best"; "step_200" / "step_000200"
    t = load_trained("runs/tiny/checkpoints/step_000200", weights="ema")
    t.model, t.tokenizer, t.state, t.path            # GPT (eval mode), Tokenizer, state.json, dir

The tokenizer is the one of the data dir the run was trained on (state.json:
config.data.dir), or an explicit one; either way it is refused when its identity differs
from the checkpoint's `tokenizer_identity`. Weights are checksum-verified (load_weights).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from scalelab.errors import CheckpointError, DataError
from scalelab.train import checkpoint as ck

WEIGHT_FILES = {"model": ck.MODEL_FILE, "ema": "ema.safetensors"}


@dataclasses.dataclass
class Trained:
    model: Any  # scalelab GPT, weights loaded, eval mode
    tokenizer: Any  # scalelab Tokenizer
    state: dict[str, Any]  # the checkpoint's verified state.json
    path: Path  # the checkpoint directory
    config: Any  # its GPTConfig
    weights_file: Path  # the safetensors file the weights came from

    @property
    def run_dir(self) -> Path:
        return self.path.parent.parent if self.path.parent.name == "checkpoints" else self.path


def split_target(target: str | Path, which: str = "last") -> tuple[Path, str]:
    """'RUN@best' -> (RUN, 'best'); a target without a suffix keeps `which`."""
    text = str(target)
    if "@" in Path(text).name:
        text, which = text.rsplit("@", 1)
        if which not in ("last", "best"):
            raise CheckpointError(f"'{target}': the suffix after @ must be 'last' or 'best', got '{which}'")
    return Path(text), which


def _find(path: Path, which: str) -> Path | None:
    if which in ("last", "best") or (path / ck.STATE_FILE).is_file():
        return ck.find_checkpoint(path, which)
    step = ck.step_of(which)
    if step is None:
        raise CheckpointError(f"which='{which}': use 'last', 'best' or step_N (e.g. step_200)")
    ckpt = ck.checkpoint_root(path) / ck.step_dirname(step)
    if not (ckpt / ck.STATE_FILE).is_file():
        names = [d.name for d in ck.list_checkpoints(path)]
        raise CheckpointError(f"no checkpoint '{ckpt.name}' in '{ck.checkpoint_root(path)}'; "
                              + (f"choose one of {', '.join(names)}" if names else "that run has none"))
    return ckpt


def read_checkpoint(path: Path, which: str = "last"):
    """(checkpoint dir, its state.json, its GPTConfig) for a run dir or a checkpoint dir."""
    from scalelab.model.gpt import GPTConfig

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist: give a scalelab run dir, a checkpoint dir, or hf:PATH "
                              "for a Hugging Face model")
    ckpt = _find(path, which)
    if ckpt is None:
        raise CheckpointError(f"'{path}' holds no scalelab checkpoint (no {ck.STATE_FILE}, no checkpoints/{which}); "
                              "train it first, or pass hf:PATH for a Hugging Face model directory")
    state = ck.load_state(ckpt)
    mc = state.get("model_config")
    if not isinstance(mc, dict):
        raise CheckpointError(f"checkpoint '{ckpt}' has no model_config in {ck.STATE_FILE}; it was not written by "
                              "scalelab train")
    unknown = sorted(set(mc) - set(GPTConfig.__dataclass_fields__))
    if unknown:
        raise CheckpointError(f"checkpoint '{ckpt}' has model settings this scalelab does not know ({', '.join(unknown)}); "
                              "upgrade scalelab")
    return ckpt, state, GPTConfig(**mc)


def checkpoint_tokenizer(ckpt: Path, state: dict[str, Any], tokenizer: Any = None):
    """The tokenizer a checkpoint was trained with (its data dir's), or `tokenizer` if
    given (a path, or a Tokenizer already loaded); refused when its identity differs from the checkpoint's."""
    from scalelab.data.prepare import load_data_tokenizer
    from scalelab.data.tokenizer import load_tokenizer

    saved_identity = state.get("tokenizer_identity")
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):  # already loaded (golf)
        tok, where = tokenizer, getattr(tokenizer, "name", "the given tokenizer")
    elif tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        where = str(tokenizer)
    else:
        data_dir = ((state.get("config") or {}).get("data") or {}).get("dir")
        if not data_dir:
            raise DataError(f"checkpoint '{ckpt}' does not record its data dir (config.data.dir); pass the "
                            "tokenizer explicitly (--tokenizer PATH)")
        candidates = [Path(data_dir)]
        if not Path(data_dir).is_absolute():  # trained from another working directory?
            run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
            candidates += [run_dir.parent / data_dir, run_dir / Path(data_dir).name]
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            raise DataError(f"the tokenizer of checkpoint '{ckpt}' is missing: its data dir '{data_dir}' "
                            f"(state.json config.data.dir) does not exist here. Run from the directory you "
                            f"trained in, or pass --tokenizer PATH (a tokenizer with identity {saved_identity})")
        try:
            tok = load_data_tokenizer(found)
        except DataError as e:
            raise DataError(f"cannot load the tokenizer of checkpoint '{ckpt}' from '{found}': {e}") from None
        if tok is None:
            raise DataError(f"data dir '{found}' of checkpoint '{ckpt}' has no tokenizer (public shards?); pass "
                            "--tokenizer PATH")
        where = str(found)
    if saved_identity and tok.identity != saved_identity:
        raise CheckpointError(f"wrong tokenizer for checkpoint '{ckpt}': it was trained with {saved_identity} but "
                              f"'{where}' holds {tok.identity}. Point at the original data dir / tokenizer")
    return tok


def load_trained(run_or_checkpoint: str | Path, which: str = "last", device: str | torch.device | None = "cpu",
                 tokenizer: Any = None, weights: str = "model") -> Trained:
    """A run dir (`which`: last, best, step_N; or a `RUN@best` suffix) or a checkpoint dir,
    loaded: GPT in eval mode on `device` (fp32 weights; bf16 comes from autocast, as in
    training), its tokenizer, its state. `weights="ema"` loads ema.safetensors instead."""
    from scalelab.model.gpt import GPT
    from scalelab.train.hardware import resolve_device

    if weights not in WEIGHT_FILES:
        raise CheckpointError(f"weights='{weights}': use 'model' or 'ema'")
    path, which = split_target(run_or_checkpoint, which)
    ckpt, state, cfg = read_checkpoint(path, which)
    tok = checkpoint_tokenizer(ckpt, state, tokenizer)
    if cfg.vocab_size is None:
        cfg.vocab_size = tok.vocab_size
    weights_file = ckpt / WEIGHT_FILES[weights]
    if weights == "ema" and not weights_file.is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no EMA weights (ema.safetensors): the run was trained "
                              "without train.ema_decay; use the model weights instead")
    sd = ck.load_weights(weights_file)
    with torch.device(resolve_device(device)):
        model = GPT(cfg)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        what = "EMA weights of" if weights == "ema" else "checkpoint"
        raise CheckpointError(f"{what} '{ckpt}' does not fit its own model_config: {str(e).splitlines()[0]}") from None
    model.eval()
    return Trained(model, tok, state, ckpt, cfg, weights_file)
