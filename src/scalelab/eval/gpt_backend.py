"""The scalelab-GPT backend of eval: a trained run or an in-memory GPT as an EvalModel.

A scalelab checkpoint is loaded with train.load_trained, so it is evaluated with the
tokenizer of the data dir it was trained on (state.json: config.data.dir), refused if
that tokenizer's identity differs from the checkpoint's `tokenizer_identity`.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

from scalelab.errors import CheckpointError
from scalelab.eval.model import EvalModel, file_hash, resolve_device, resolve_dtype


class GPTBackend:
    """Our GPT with per-token positions and an attention mask (for packed/tree rows).

    Packed rows go through `GPT.hidden(idx, pos=, mask=)`, the model's one forward pass
    (U-Net skips and all). `self_check()` still compares packed with plain once, a guard
    against a kernel or dtype where masks misbehave: then rows are unpacked, exact either way.
    """

    def __init__(self, model, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.cfg = model.cfg
        self.vocab_size = int(model.cfg.vocab_size)
        self.device = device
        self.dtype = dtype
        # FSDP2-sharded parameters are gathered by hooks around forward(): go through it
        # (full logits, one plain sequence per row); every rank must make the same calls.
        self.full_logits = _is_sharded(model)
        self.supports_masks = False if self.full_logits else self.self_check()

    def _autocast(self):
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    @torch.no_grad()
    def hidden(self, idx, pos, mask):
        with self._autocast():
            if self.full_logits:
                return self.model(idx)
            return self.model.hidden(idx, pos=pos, mask=mask)

    @torch.no_grad()
    def logits(self, h):
        if self.full_logits:
            return h.float()
        with self._autocast():
            return self.model.logits(h).float()

    @torch.no_grad()
    def self_check(self) -> bool:
        n = min(12, self.cfg.seq_len)
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, self.vocab_size, (1, n), generator=g).to(self.device)
        pos = torch.arange(n, device=self.device)[None]
        mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()[None]
        try:
            ref = self.hidden(idx, None, None).float()
            got = self.hidden(idx, pos, mask).float()
        except Exception:  # noqa: BLE001 - any failure: use the plain path
            return False
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2
        return bool(torch.allclose(ref, got, atol=tol, rtol=tol))


def _is_sharded(model) -> bool:
    # No DTensor parameter can exist unless torch.distributed.tensor was imported (by FSDP2's
    # fully_shard): look it up rather than import it, which costs ~0.3 s of every eval's start-up.
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is None:
        return False
    return any(isinstance(p, dtensor.DTensor) for p in model.parameters())


class GPTEvalModel(EvalModel):
    """A scalelab `GPT` and its scalelab `Tokenizer`."""

    kind = "scalelab"

    def __init__(self, model, tokenizer, device: str | torch.device | None = None,
                 dtype: str | torch.dtype | None = None, name: str = "gpt", hash: str | None = None):
        super().__init__()
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model
        self.tokenizer = tokenizer
        self.name, self.hash = name, hash
        self.max_length = int(model.cfg.seq_len)
        self.eot_id = int(tokenizer.eot_id)
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise CheckpointError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                                  f"{model.cfg.vocab_size}: wrong tokenizer for this checkpoint")
        self.backend = GPTBackend(model, self.device, self.dtype)

    def token_bytes(self) -> np.ndarray | None:
        try:
            tb = np.asarray(self.tokenizer.token_bytes(), dtype=np.int64)
        except NotImplementedError:
            return None
        if tb.size < self.model.cfg.vocab_size:  # ids the tokenizer never produces
            tb = np.concatenate((tb, np.zeros(self.model.cfg.vocab_size - tb.size, np.int64)))
        return tb

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=0,
                 use_cache=True, stop_at_eot=True):
        ids = list(prompt_ids) or [self.eot_id]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        was_training = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                out = self.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                          generator=gen, use_cache=use_cache)
        finally:
            self.model.train(was_training)
        new = out[0, len(ids):].tolist()
        if stop_at_eot and self.eot_id in new:
            new = new[:new.index(self.eot_id)]
        return new


def load_gpt(target: str | Path, device=None, dtype=None, tokenizer: str | Path | None = None) -> GPTEvalModel:
    """A scalelab run dir (`RUN`, `RUN@best`, `RUN@last`) or checkpoint dir (train.load_trained)."""
    from scalelab.train.load import load_trained

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    t = load_trained(target, device=dev, tokenizer=tokenizer)
    ckpt = t.path
    run = ckpt.parent.parent.name if ckpt.parent.name == "checkpoints" else ckpt.name
    name = f"{run}/{ckpt.name}" if ckpt.parent.name == "checkpoints" else run
    em = GPTEvalModel(t.model, t.tokenizer, dev, dt, name=name, hash=file_hash([t.weights_file]))
    em.origin = str(t.weights_file)
    return em


def wrap_gpt(model, tokenizer, device=None, name: str = "gpt") -> GPTEvalModel:
    """An EvalModel around a bare in-memory GPT (in-training evaluation)."""
    return GPTEvalModel(model, tokenizer, device=device, name=name)
