"""The evaluation interface: `EvalModel` (a causal LM + tokenizer) and its helpers.

Every backend (gpt_backend.py: our GPT; hf.py: any Hugging Face causal LM) subclasses
`EvalModel` and supplies `backend` (hidden states + logits for the packed scorer),
`tokenizer`, `max_length`, `eot_id` and `generate`; what is built on top is shared:
`loglikelihood` on token ids (the harness's request format), `token_logprobs`,
`encode_pair` (the harness's text -> ids split), `token_bytes()`, `name`, `hash`.
`loading.load_model_for_eval` picks the backend for a target.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
