"""val_bpb of a model on the full validation split, with exact byte accounting.

    val_bpb = (sum of cross-entropy in nats / ln 2) / (UTF-8 bytes of the scored tokens)
            = (mean CE / ln 2) * (tokens / bytes)

Bytes per scored token come from the tokenizer (`ByteCounter`): `token_bytes()` of the
target (a SentencePiece "▁" counts one byte for the space, a byte-fallback piece one
byte, control tokens zero). A tokenizer that adds a dummy-prefix space (SentencePiece's
default, and the public `fineweb_1024_bpe.model`) writes a "▁" at the start of every
document that is not in the text: a leading "▁" right after a boundary token (control /
unknown, e.g. BOS) is therefore not counted -- the rule of the parameter-golf evaluator.
scalelab's own SentencePiece tokenizers add no dummy prefix, so every "▁" is a space.

Windows: the layout of `scalelab.eval.lm.window_plan` (one definition in scalelab). The
split's tokens are one stream; window k feeds seq_len tokens starting at k * stride and
scores the targets no earlier window scored, so every target of the split is scored
exactly once.
- stride None (= seq_len): consecutive non-overlapping windows, as the trainer's eval
  and the challenge's (which drops a tail shorter than a window; we score it with a
  shorter window -- a difference of a few hundred tokens out of the split);
- stride S < seq_len: a sliding window; every target after the first window sees at
  least seq_len - S tokens of context. It costs about seq_len / S times more.
The loss is computed here in batches of equal-length windows with the golf byte rule
above (which needs the previous token); lm.py's `evaluate_lm` scores the same windows
through the generic evaluation engine.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from scalelab.data.shards import list_shards, open_shard
from scalelab.data.tokenizer import Tokenizer, load_tokenizer
from scalelab.errors import DataError
from scalelab.eval.lm import window_plan

LN2 = math.log(2.0)


class ByteCounter:
    """UTF-8 bytes of each scored token, given the token before it."""

    def __init__(self, token_bytes: np.ndarray, leading_space: np.ndarray | None = None,
                 boundary: np.ndarray | None = None, dummy_prefix: bool = False):
        n = len(token_bytes)
        self.token_bytes = torch.as_tensor(np.asarray(token_bytes, dtype=np.int64))
        self.leading_space = torch.as_tensor(np.zeros(n, bool) if leading_space is None else np.asarray(leading_space, bool))
        self.boundary = torch.as_tensor(np.zeros(n, bool) if boundary is None else np.asarray(boundary, bool))
        self.dummy_prefix = bool(dummy_prefix)

    @classmethod
    def for_tokenizer(cls, tok: Tokenizer, spm_file: str | Path | None = None) -> ByteCounter:
        """From a scalelab tokenizer; `spm_file` (its SentencePiece model) adds the
        dummy-prefix rule when that model uses one."""
        tb = np.asarray(tok.token_bytes(), dtype=np.int64)
        if spm_file is None:
            return cls(tb)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(spm_file))
        n = sp.get_piece_size()
        leading = np.array([not sp.is_byte(i) and sp.id_to_piece(i).startswith("\u2581") for i in range(n)])
        boundary = np.array([bool(sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)) for i in range(n)])
        pieces = sp.encode("a", out_type=str)
        dummy = bool(pieces) and pieces[0].startswith("\u2581")
        return cls(tb, leading, boundary, dummy)

    def to(self, device) -> ByteCounter:
        out = ByteCounter.__new__(ByteCounter)
        out.token_bytes, out.leading_space, out.boundary = (t.to(device) for t in
                                                            (self.token_bytes, self.leading_space, self.boundary))
        out.dummy_prefix = self.dummy_prefix
        return out

    def __call__(self, prev: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """int64 bytes per target token (same shape as tgt)."""
        n = self.token_bytes[tgt]
        if self.dummy_prefix:
            n = n - (self.leading_space[tgt] & self.boundary[prev]).long()
        return n


def resolve_tokenizer(data_dir: str | Path, tokenizer: str | None) -> tuple[Tokenizer, Path | None]:
    """The tokenizer of a data dir (prepared by `scalelab data`), else the one `tokenizer`
    names (a path, e.g. the public fineweb_1024_bpe.model); and its file (None for gpt2)."""
    d = Path(data_dir)
    if (d / "tokenizer_meta.json").is_file():
        import json

        from scalelab.data.prepare import load_data_tokenizer

        tok = load_data_tokenizer(d)
        file = json.loads((d / "tokenizer_meta.json").read_text()).get("file")
        return tok, (d / file) if file and (d / file).is_file() else None
    if tokenizer and tokenizer not in ("bpe", "sentencepiece"):
        tok = load_tokenizer(tokenizer)
        p = Path(tokenizer)
        return tok, p if p.is_file() else None
    raise DataError(f"data dir {d} has no tokenizer (public shards?): val_bpb needs one; set data.tokenizer to "
                    f"the tokenizer file the shards were made with (e.g. data.tokenizer=fineweb_1024_bpe.model)")


def load_split_tokens(data_dir: str | Path, split: str = "val") -> torch.Tensor:
    """All tokens of a split, in shard order (int64)."""
    arrays = [np.asarray(open_shard(p), dtype=np.int64) for p in list_shards(data_dir, split)]
    return torch.from_numpy(np.concatenate(arrays)) if arrays else torch.zeros(0, dtype=torch.int64)


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, tokens: torch.Tensor, counter: ByteCounter, seq_len: int,
                 batch_size: int = 16, stride: int | None = None, device: str | torch.device = "cpu",
                 autocast_dtype: torch.dtype | None = None) -> dict:
    """Loss and bits per byte of `model` on `tokens` (see the module doc for the windows)."""
    device = torch.device(device)
    n = tokens.numel()
    if n < 2:
        raise DataError(f"the validation split has {n} tokens; it needs at least 2")
    if stride is not None and not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    groups: dict[int, list[tuple[int, int]]] = {}  # window length -> [(start, first scored target)]
    plan = list(window_plan(n, seq_len, stride or seq_len))
    for a, b, t0 in plan:
        groups.setdefault(b - a, []).append((a, t0))
    counter = counter.to(device)
    tokens = tokens.to(device)
    was_training = model.training
    model.eval()
    t_start = time.perf_counter()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    nbytes = torch.zeros((), dtype=torch.int64, device=device)
    scored = 0
    for length, windows in groups.items():
        offs = torch.arange(length, device=device)
        for i in range(0, len(windows), batch_size):
            a = torch.tensor([w[0] for w in windows[i:i + batch_size]], device=device)
            t0 = torch.tensor([w[1] for w in windows[i:i + batch_size]], device=device)
            idx = a[:, None] + offs[None, :]
            x, y = tokens[idx], tokens[idx + 1]  # position j predicts target a + 1 + j
            keep = offs[None, :] >= (t0 - a - 1)[:, None]
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                losses = model(x, y, reduction="none")
            nats += (losses.double() * keep).sum()
            nbytes += (counter(x, y) * keep).sum()
            scored += int(keep.sum())
    if was_training:
        model.train()
    seconds = time.perf_counter() - t_start
    total_bytes = int(nbytes.item())
    return {"val_loss": (nats / scored).item(), "val_bpb": nats.item() / LN2 / max(total_bytes, 1),
            "tokens": scored, "bytes": total_bytes, "windows": len(plan), "stride": stride,
            "seq_len": seq_len, "seconds": round(seconds, 3)}
