"""Score-first test-time training (TTT) on the validation stream (parameter-golf rule:
a model may train on validation tokens only after they have been scored).

The split is one token stream scored by the windows of `eval.lm.window_plan` (plain or
sliding). Windows are grouped into chunks of about `chunk_tokens` scored targets, in
order. For each chunk k:

1. score: its windows run through the current model (eval mode, no gradient) and their
   targets' nats and bytes are added to the totals -- the model has seen only chunks < k;
2. adapt: the model takes `steps` optimizer steps on chunk k's tokens (inputs and targets
   all at stream positions <= the last target just scored), cut into rows of seq_len.

So the score of chunk k depends on tokens of chunks <= k only (tests/test_golf_ttt.py
proves both properties with a model that records the positions it sees). `mode`:
- "full": every parameter trains (Adam);
- "lora": the block linears get rank-`rank` adapters W + B A (B = 0 at the start, so the
  first chunk is scored by the unchanged model); only A and B train (Adam).
The caller's model is not modified (a copy adapts).
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from scalelab.eval.lm import window_plan

MODES = ("full", "lora")


class _LoRA(nn.Module):
    """Parametrization W -> W + B A of a [out, in] weight; B starts at zero."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, in_features, generator=generator) / math.sqrt(in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.b @ self.a).to(w.dtype)


def _trainable(model: nn.Module, mode: str, rank: int, seed: int) -> list[nn.Parameter]:
    if mode == "full":
        return list({id(p): p for p in model.parameters()}.values())
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    params = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and "blocks." in name:  # not the tied embedding / head
            lora = _LoRA(mod.out_features, mod.in_features, rank, g).to(mod.weight.device)
            parametrize.register_parametrization(mod, "weight", lora)
            params += [lora.a, lora.b]
    return params


def _chunks(n: int, seq_len: int, stride: int, chunk_tokens: int) -> list[list[tuple[int, int, int]]]:
    """The windows of the stream, grouped in order into chunks of >= chunk_tokens targets."""
    out, cur, count = [], [], 0
    for a, b, t0 in window_plan(n, seq_len, stride):
        cur.append((a, b, t0))
        count += b + 1 - t0
        if count >= chunk_tokens:
            out.append(cur)
            cur, count = [], 0
    if cur:
        out.append(cur)
    return out


def score_first_ttt(model: nn.Module, tokens: torch.Tensor, counter, seq_len: int, stride: int | None = None,
                    mode: str = "lora", lr: float = 1e-3, steps: int = 1, chunk_tokens: int = 4096,
                    rank: int = 4, batch_size: int = 16, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict:
    """val_bpb of `model` on `tokens` with score-first TTT (module doc). `counter` is the
    golf ByteCounter. Returns the totals and, per chunk, its target range, nats and bytes."""
    if mode not in MODES:
        raise ValueError(f"ttt mode must be one of {', '.join(MODES)}, got '{mode}'")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = copy.deepcopy(model).to(device)
    params = _trainable(model, mode, rank, seed)
    opt = torch.optim.Adam(params, lr=lr)
    counter = counter.to(device)
    tokens = tokens.to(device)
    t_start = time.perf_counter()
    total_nats, total_bytes, scored, chunks = 0.0, 0, 0, []
    for windows in _chunks(tokens.numel(), seq_len, stride or seq_len, chunk_tokens):
        nats, nbytes = _score(model, tokens, windows, counter, batch_size)
        first, last = windows[0][2], windows[-1][1]
        chunks.append({"targets": [first, last], "nats": nats, "bytes": nbytes})
        total_nats, total_bytes, scored = total_nats + nats, total_bytes + nbytes, scored + last + 1 - first
        if lr > 0 and steps > 0:
            _adapt(model, opt, tokens, first, last, seq_len, steps, batch_size)
    return {"val_loss": total_nats / max(scored, 1), "val_bpb": total_nats / math.log(2) / max(total_bytes, 1),
            "tokens": scored, "bytes": total_bytes, "stride": stride, "seq_len": seq_len, "mode": mode,
            "lr": lr, "steps": steps, "chunk_tokens": chunk_tokens, "n_chunks": len(chunks),
            "seconds": round(time.perf_counter() - t_start, 3), "chunks": chunks}


@torch.no_grad()
def _score(model, tokens, windows, counter, batch_size) -> tuple[float, int]:
    model.eval()
    nats, nbytes = torch.zeros((), dtype=torch.float64), 0
    by_len: dict[int, list[tuple[int, int]]] = {}
    for a, b, t0 in windows:
        by_len.setdefault(b - a, []).append((a, t0))
    for length, ws in by_len.items():
        offs = torch.arange(length, device=tokens.device)
        for i in range(0, len(ws), batch_size):
            a = torch.tensor([w[0] for w in ws[i:i + batch_size]], device=tokens.device)
            t0 = torch.tensor([w[1] for w in ws[i:i + batch_size]], device=tokens.device)
            idx = a[:, None] + offs[None, :]
            x, y = tokens[idx], tokens[idx + 1]
            keep = offs[None, :] >= (t0 - a - 1)[:, None]
            nats += (model(x, y, reduction="none").double().cpu() * keep.cpu()).sum()
            nbytes += int((counter(x, y) * keep).sum())
    return nats.item(), nbytes


def _adapt(model, opt, tokens, first: int, last: int, seq_len: int, steps: int, batch_size: int) -> None:
    """`steps` passes over the scored targets first..last (inputs from first - 1), in rows of seq_len."""
    model.train()
    starts = list(range(first - 1, last, seq_len))  # row: inputs [p, q), targets [p + 1, q]
    for _ in range(steps):
        for i in range(0, len(starts), batch_size):
            rows = [(p, min(p + seq_len, last)) for p in starts[i:i + batch_size]]
            width = max(q - p for p, q in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long, device=tokens.device)
            y = torch.full((len(rows), width), -100, dtype=torch.long, device=tokens.device)
            for r, (p, q) in enumerate(rows):
                x[r, :q - p], y[r, :q - p] = tokens[p:q], tokens[p + 1:q + 1]
            opt.zero_grad(set_to_none=True)
            model(x, y).backward()
            opt.step()
    model.eval()
