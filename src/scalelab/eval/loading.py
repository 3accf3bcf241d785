"""Load what gets evaluated: a scalelab run / checkpoint, or any Hugging Face causal LM.

    load_model_for_eval("runs/tiny")              # checkpoints/last of a run
    load_model_for_eval("runs/tiny@best")         # its best checkpoint
    load_model_for_eval("runs/tiny/checkpoints/step_000200")
    load_model_for_eval("hf:path/to/dir")         # or any directory holding config.json

Every target becomes an `EvalModel`: `loglikelihood` on token ids (the harness's
request format), `token_logprobs`, `encode_pair` (the harness's text -> ids split),
`generate`, `max_length`, `eot_id`, `tokenizer`, `token_bytes()`, `name`, `hash`.
A scalelab checkpoint is evaluated with the tokenizer of the data dir it was trained
on (state.json: config.data.dir), refused if that tokenizer's identity differs from
the checkpoint's `tokenizer_identity`.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalelab.errors import CheckpointError
from scalelab.eval import scoring
from scalelab.eval.scoring import EngineStats, EvalError

HASH_CHARS = 16


def resolve_device(device: str | torch.device | None) -> torch.device:
    from scalelab.train.hardware import resolve_device as check

    return check(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on GPUs that have it, unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise EvalError(f"unknown dtype '{dtype}'; use fp32, bf16 or fp16")
    return table[dtype]


def file_hash(paths: Sequence[Path]) -> str:
    """Short sha256 over the bytes of the weight file(s), in name order."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:HASH_CHARS]


class EvalModel:
    """A causal LM + tokenizer behind one interface (see the module docstring)."""

    name: str = "model"
    hash: str | None = None
    origin: str | None = None  # the checkpoint / weights it was loaded from, for messages
    max_length: int
    eot_id: int
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    backend: Any

    def __init__(self) -> None:
        self.batch_size = 16  # rows per forward pass
        self.pack_len = 512  # tokens per packed row (longer requests get a row of their own)
        self.stats = EngineStats()
        self.n_truncated = 0  # requests whose context was cut from the left, since creation

    # -- text -> ids ---------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Plain text to ids, no special tokens."""
        return list(self.tokenizer.encode(text))

    def encode_context(self, text: str) -> list[int]:
        """How the harness encodes a context (`tok_encode`): the tokenizer's default
        special tokens (a BOS for Llama-style HF tokenizers; none for scalelab's)."""
        return self.encode(text)

    @property
    def prefix_id(self) -> int:
        """The token that stands for an empty context (and starts a document)."""
        return self.eot_id

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-evaluation-harness's split of (context, continuation) into ids: trailing
        spaces of the context move to the continuation; the pair is encoded whole and
        the continuation is what follows the context's own encoding; an empty context
        becomes the prefix token (BOS/EOT)."""
        if context == "":
            cont = self.encode(continuation)
            if not cont:
                raise EvalError("empty continuation: nothing to score")
            if cont[0] != self.prefix_id:
                return [self.prefix_id], cont
            return cont[:1], cont[1:]
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode_context(context + continuation)
        ctx = self.encode_context(context)
        return ctx, whole[len(ctx):]

    def token_bytes(self) -> np.ndarray | None:
        """UTF-8 bytes of each token's text (special tokens 0), or None when unknown."""
        return None

    # -- scoring -------------------------------------------------------------

    def token_logprobs(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                       progress: bool = False) -> list[np.ndarray]:
        """Per request, the log-prob of each continuation token (float64 array)."""
        return [lp for lp, _ in self._score(requests, progress)]

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                      progress: bool = False) -> list[tuple[float, bool]]:
        """Per (context ids, continuation ids): (sum of log-probs, greedy decoding would
        produce the continuation) -- the harness's `loglikelihood` on ids."""
        return [(float(lp.sum()), bool(g.all())) for lp, g in self._score(requests, progress)]

    def loglikelihood_text(self, pairs: Sequence[tuple[str, str]], progress: bool = False) -> list[tuple[float, bool]]:
        return self.loglikelihood([self.encode_pair(c, k) for c, k in pairs], progress)

    def _score(self, requests, progress: bool):
        out, truncated = scoring.score_requests(self.backend, requests, self.max_length, self.batch_size,
                                                self.pack_len, self.stats, progress)
        self.last_truncated = truncated
        self.n_truncated += sum(truncated)
        for i, (lp, _) in enumerate(out):  # NaN would argmax to choice 0: an error, never a score
            if not np.isfinite(lp).all():
                raise scoring.NonFiniteScore(self.label(), f"request {i}", i, float(lp[~np.isfinite(lp)][0]))
        return out

    def run_items(self, items: list[scoring.Item], progress: bool = False, desc: str = "scoring"):
        out = scoring.run_items(self.backend, items, self.batch_size, self.pack_len, self.stats, progress, desc)
        for i, per_item in enumerate(out):
            for lp, _ in per_item:
                if not np.isfinite(lp).all():
                    raise scoring.NonFiniteScore(self.label(), f"item {i}", i, float(lp[~np.isfinite(lp)][0]))
        return out

    def label(self) -> str:
        """The model as an error message names it: name, and the weights it came from."""
        return f"model '{self.name}'" + (f" ({self.origin})" if self.origin else "")

    # -- generation ----------------------------------------------------------

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 use_cache: bool = True, stop_at_eot: bool = True) -> list[int]:
        raise NotImplementedError

    def autocast(self):
        if self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.hash, "kind": self.kind, "max_length": self.max_length,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}

    kind = "?"


# ---------------------------------------------------------------------------
# scalelab GPT


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
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


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
        model = load_gpt(text, device=device, dtype=dtype, tokenizer=tokenizer)
    if batch_size is not None:
        if batch_size < 1:
            raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
        model.batch_size = batch_size
    elif model.device.type == "cuda":
        model.batch_size = 64
    return model


def wrap_gpt(model, tokenizer, device=None, name: str = "gpt") -> GPTEvalModel:
    """An EvalModel around a bare in-memory GPT (in-training evaluation)."""
    return GPTEvalModel(model, tokenizer, device=device, name=name)
