"""Scoring: log-likelihoods of continuations, fast, and the per-example metrics built on them.

The request format and the numbers are those of lm-evaluation-harness
(`loglikelihood(context, continuation) -> (sum of log p(continuation tokens), is_greedy)`,
contexts longer than the window truncated from the left: the model sees the last
`max_length` tokens of `context + continuation[:-1]`). How we get there is different:

* **Prefix sharing.** Requests whose (truncated) contexts are the same token sequence --
  the choices of one multiple-choice question -- become one *tree*: the context once,
  then each continuation as a branch that attends to the context and to itself only.
  The context is computed once, not once per choice, and one-token continuations cost
  nothing beyond the context (their log-prob is read at the context's last position).
* **Packing, no padding.** Trees (and plain sequences) are packed best-fit-decreasing
  into rows of `pack_len` tokens with a block mask and per-token position ids, so a
  forward pass carries almost no padding. Rows of one whole causal sequence use the
  plain causal path (no mask).
* **Logits only where needed.** The vocabulary projection and log-softmax run only at
  positions that predict a scored token, in chunks (bounded memory), in fp32.

A backend supplies `hidden(idx, pos, mask)` (final hidden states; `pos`/`mask` None =
ordinary causal) and `logits(h)`; `scalelab.eval.gpt_backend` (our GPT) and
`scalelab.eval.hf` (any Hugging Face causal LM) implement it. A backend without
working masks (`supports_masks = False`) gets one plain sequence per row instead; one
with `full_logits = True` returns logits from `hidden` (a model reachable only through
its forward, e.g. FSDP-sharded) and gets fewer rows per pass.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from scalelab.errors import ScalelabError

LOGITS_BUDGET = 1 << 25  # fp32 logits elements materialised at once (128 MB)
MASK_BUDGET = 1 << 27  # attention-mask elements per forward (B * R * R); long rows -> fewer rows


class EvalError(ScalelabError):
    """An evaluation input is wrong (task file, task name, request, tokenizer)."""


class NonFiniteScore(EvalError):
    """A NaN / inf log-likelihood: the model's numbers are broken (corrupt weights,
    overflow), so no metric may be computed from them. `index` is the request (or
    item) whose score was not finite; callers re-raise naming their document."""

    def __init__(self, model: str, what: str, index: int, value: float):
        self.model, self.index, self.value = model, index, value
        super().__init__(self.message(what))

    def message(self, what: str) -> str:
        return (f"{self.model} gave a non-finite log-likelihood ({self.value}) for {what}: its weights are "
                "corrupt or overflow in this dtype, so nothing was scored; check or restore the checkpoint "
                "(or try --dtype fp32)")


class Backend(Protocol):
    vocab_size: int
    device: torch.device
    supports_masks: bool

    def hidden(self, idx: torch.Tensor, pos: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states [B, R, d] for ids [B, R]; pos [B, R] position ids and mask
        [B, R, R] bool (True = may attend), both None for plain causal rows."""

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits [N, vocab_size] for hidden states [N, d]."""


# ---------------------------------------------------------------------------
# Items: what gets packed


@dataclass
class Item:
    """A token tree: branch 0 is the trunk, branch j > 0 sees the trunk and itself only.

    `queries` are (indices into `tokens` of the positions that predict, target ids);
    the engine returns the log-prob (and greedy flag) of each target.
    """

    tokens: np.ndarray
    branch: np.ndarray
    pos: np.ndarray
    queries: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def linear(self) -> bool:
        return not self.branch.any()

    def __len__(self) -> int:
        return int(self.tokens.size)


def linear_item(tokens: Sequence[int], queries: list[tuple[np.ndarray, np.ndarray]]) -> Item:
    t = np.asarray(tokens, dtype=np.int64)
    return Item(t, np.zeros(t.size, np.int32), np.arange(t.size, dtype=np.int32), queries)


def tree_item(trunk: Sequence[int], continuations: Sequence[Sequence[int]]) -> Item:
    """The trunk (a non-empty context) once, then continuation j as branch j+1 holding
    its tokens but the last (continuation tokens are predicted, the last one is never
    an input). Query j scores continuation j."""
    c = len(trunk)
    toks, branch, pos = [np.asarray(trunk, np.int64)], [np.zeros(c, np.int32)], [np.arange(c, dtype=np.int32)]
    queries, offset = [], c
    for j, cont in enumerate(continuations):
        cont = np.asarray(cont, dtype=np.int64)
        k = cont.size - 1  # tokens this branch adds
        toks.append(cont[:-1])
        branch.append(np.full(k, j + 1, np.int32))
        pos.append(np.arange(c, c + k, dtype=np.int32))
        pred = np.concatenate(([c - 1], np.arange(offset, offset + k))).astype(np.int64)
        queries.append((pred, cont))
        offset += k
    return Item(np.concatenate(toks), np.concatenate(branch), np.concatenate(pos), queries)


def expand_tree(item: Item) -> list[tuple[Item, int]]:
    """For backends without masks: one linear item per query (trunk + its branch).
    Returns (item, query index in the original)."""
    if item.linear:
        return [(item, -1)]
    trunk = item.tokens[item.branch == 0]
    out = []
    for q, (_, targets) in enumerate(item.queries):
        seq = np.concatenate((trunk, targets[:-1]))
        pred = np.arange(trunk.size - 1, seq.size, dtype=np.int64)
        out.append((linear_item(seq, [(pred, targets)]), q))
    return out


# ---------------------------------------------------------------------------
# Packing and the forward loop


def pack_rows(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of items per row, each row's total <= capacity
    (an item larger than capacity gets a row of its own)."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    for i in order:
        s = sizes[i]
        k = bisect.bisect_left(free, (s, -1))
        if k < len(free):
            rem, r = free.pop(k)
            rows[r].append(i)
            rem -= s
        else:
            rows.append([i])
            r, rem = len(rows) - 1, capacity - s
        if rem > 0:
            bisect.insort(free, (rem, r))
    return rows


@dataclass
class EngineStats:
    forwards: int = 0
    rows: int = 0
    tokens: int = 0  # real tokens fed
    padded: int = 0  # row slots fed (tokens + padding)
    scored: int = 0  # target tokens scored


def run_items(backend: Backend, items: list[Item], batch_size: int = 16, pack_len: int = 512,
              stats: EngineStats | None = None, progress: bool = False,
              desc: str = "scoring") -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Score every query of every item: per item, per query, (log-probs float64 [k],
    greedy bool [k])."""
    if batch_size < 1:
        raise EvalError(f"batch size must be >= 1, got {batch_size}")
    results: list[list] = [[None] * len(it.queries) for it in items]
    units: list[tuple[Item, int, int]] = []  # (item, original item index, query index or -1)
    if backend.supports_masks:
        units = [(it, i, -1) for i, it in enumerate(items)]
    else:
        for i, it in enumerate(items):
            units += [(sub, i, q) for sub, q in expand_tree(it)]
    if not units:
        return results
    sizes = [len(u[0]) for u in units]
    if backend.supports_masks:
        # Rows hold pack_len tokens; a longer item gets a row of its own. (Sizing every row to the
        # longest item -- e.g. one HellaSwag context shared by 32 endings, 4,065 tokens -- made
        # every row's attention 60x larger than needed.)
        rows = pack_rows(sizes, pack_len)
    else:
        rows = [[i] for i in sorted(range(len(units)), key=lambda i: -sizes[i])]
    rows.sort(key=lambda r: -sum(sizes[i] for i in r))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(sizes), unit="tok", unit_scale=True, desc=desc, mininterval=0.5, dynamic_ncols=True,
                   disable=None)  # None: no carriage-return bars in pipes and logs
    try:
        b = 0
        while b < len(rows):
            longest = sum(sizes[i] for i in rows[b])  # rows are sorted longest first
            n = max(1, min(batch_size, MASK_BUDGET // max(1, longest * longest)))
            if longest > pack_len:  # an oversized item runs alone: its batch-mates would be padded to it
                n = 1
            if getattr(backend, "full_logits", False):  # the backend returns logits at every position
                n = max(1, min(n, 4 * LOGITS_BUDGET // max(1, longest * backend.vocab_size)))
            batch_rows = rows[b:b + n]
            b += n
            _run_batch(backend, [[units[i] for i in r] for r in batch_rows], results, stats)
            if bar is not None:
                bar.update(sum(sizes[i] for r in batch_rows for i in r))
    finally:
        if bar is not None:
            bar.close()
    return results


@torch.no_grad()
def _run_batch(backend: Backend, rows: list[list[tuple[Item, int, int]]], results: list[list],
               stats: EngineStats | None) -> None:
    R = max(sum(len(u[0]) for u in row) for row in rows)
    B = len(rows)
    plain = all(len(row) == 1 and row[0][0].linear for row in rows)
    idx = np.zeros((B, R), np.int64)
    pos = np.zeros((B, R), np.int64)
    seg = np.full((B, R), -1, np.int64)
    br = np.zeros((B, R), np.int64)
    sel_rows, sel_targets, where = [], [], []  # flat positions, targets, (item, query, length)
    n_tok = 0
    for r, row in enumerate(rows):
        off = 0
        for s, (item, orig, q) in enumerate(row):
            n = len(item)
            idx[r, off:off + n] = item.tokens
            pos[r, off:off + n] = item.pos
            seg[r, off:off + n] = s
            br[r, off:off + n] = item.branch
            for qi, (pred, targets) in enumerate(item.queries):
                sel_rows.append(r * R + off + pred)
                sel_targets.append(targets)
                where.append((orig, qi if q < 0 else q, targets.size))
            off += n
            n_tok += n
    dev = backend.device
    idx_t = torch.from_numpy(idx).to(dev)
    if plain:
        h = backend.hidden(idx_t, None, None)
    else:
        pos_t = torch.from_numpy(pos).to(dev)
        seg_t = torch.from_numpy(seg).to(dev)
        br_t = torch.from_numpy(br).to(dev)
        mask = ((seg_t[:, :, None] == seg_t[:, None, :])
                & ((br_t[:, None, :] == 0) | (br_t[:, None, :] == br_t[:, :, None]))
                & (pos_t[:, None, :] <= pos_t[:, :, None]))
        h = backend.hidden(idx_t, pos_t, mask)
    h = h.reshape(B * R, h.shape[-1])
    flat = torch.from_numpy(np.concatenate(sel_rows)).to(dev)
    targets = torch.from_numpy(np.concatenate(sel_targets)).to(dev)
    logp = torch.empty(flat.numel(), dtype=torch.float32, device=dev)
    greedy = torch.empty(flat.numel(), dtype=torch.bool, device=dev)
    chunk = max(1, LOGITS_BUDGET // max(1, backend.vocab_size))
    for a in range(0, flat.numel(), chunk):
        logits = backend.logits(h[flat[a:a + chunk]]).float()
        lsm = torch.log_softmax(logits, dim=-1)
        t = targets[a:a + chunk]
        logp[a:a + chunk] = lsm.gather(1, t[:, None]).squeeze(1)
        greedy[a:a + chunk] = logits.argmax(dim=-1) == t
    logp_np = logp.double().cpu().numpy()
    greedy_np = greedy.cpu().numpy()
    o = 0
    for orig, q, k in where:
        results[orig][q] = (logp_np[o:o + k], greedy_np[o:o + k])
        o += k
    if stats is not None:
        stats.forwards += 1
        stats.rows += B
        stats.tokens += n_tok
        stats.padded += B * R
        stats.scored += int(flat.numel())


# ---------------------------------------------------------------------------
# Requests in the harness's format


@dataclass
class Prepared:
    items: list[Item]
    where: list[list[tuple[int, int]]]  # request -> its pieces' (item, query)
    truncated: list[bool]


def prepare_requests(requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> Prepared:
    """Group (context ids, continuation ids) requests into prefix-sharing trees, after the
    harness's left truncation: the model sees the last `max_length` tokens of
    `context + continuation[:-1]`.

    A continuation longer than the window (where the harness stops with an assertion)
    is scored in window-sized pieces, each after as much of the preceding text as fits;
    such requests count as truncated."""
    groups: dict[tuple, tuple[int, dict[tuple, int]]] = {}
    trunks: list[tuple] = []
    conts: list[list[tuple]] = []
    where: list[list[tuple[int, int]]] = []
    truncated: list[bool] = []
    for n, (ctx, cont) in enumerate(requests):
        ctx, cont = list(ctx), list(cont)
        if not cont:
            raise EvalError(f"request {n} has an empty continuation: there is nothing to score")
        if not ctx:
            raise EvalError(f"request {n} has an empty context; give at least one token (the harness "
                            "uses the BOS/EOT token, see EvalModel.encode_pair)")
        pieces, cut = [], False
        for start in range(0, len(cont), max_length):
            piece = cont[start:start + max_length]
            full = ctx + cont[:start] + piece
            if len(full) > max_length + 1:
                cut = True
                full = full[-(max_length + 1):]
            key = tuple(full[:len(full) - len(piece)])
            if key not in groups:
                groups[key] = (len(trunks), {})
                trunks.append(key)
                conts.append([])
            g, seen = groups[key]
            ck = tuple(piece)
            if ck not in seen:
                seen[ck] = len(conts[g])
                conts[g].append(ck)
            pieces.append((g, seen[ck]))
        where.append(pieces)
        truncated.append(cut)
    items = [tree_item(t, c) for t, c in zip(trunks, conts)]
    return Prepared(items, where, truncated)


def score_requests(backend: Backend, requests: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int,
                   batch_size: int = 16, pack_len: int = 512, stats: EngineStats | None = None,
                   progress: bool = False) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[bool]]:
    """Per request (token log-probs, greedy flags) and whether its context was truncated."""
    prep = prepare_requests(requests, max_length)
    out = run_items(backend, prep.items, batch_size, pack_len, stats, progress)
    res = []
    for pieces in prep.where:
        if len(pieces) == 1:
            res.append(out[pieces[0][0]][pieces[0][1]])
        else:
            parts = [out[i][q] for i, q in pieces]
            res.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
    return res, prep.truncated


# ---------------------------------------------------------------------------
# Per-example metrics (lm-evaluation-harness definitions)


def multiple_choice_metrics(lls: Sequence[float], choices: Sequence[str], gold: int,
                            greedy: Sequence[bool] | None = None) -> dict:
    """acc: argmax of summed log-likelihoods; acc_norm: argmax of log-likelihood divided
    by the choice's length in characters (the choice text without the target delimiter);
    ties go to the first choice (numpy argmax), as in the harness."""
    ll = np.asarray(lls, dtype=np.float64)
    lengths = np.array([float(len(c)) for c in choices])
    pred = int(np.argmax(ll))
    pred_norm = int(np.argmax(ll / lengths))
    out = {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold), "pred": pred, "pred_norm": pred_norm}
    if greedy is not None:
        out["exact_match"] = float(bool(greedy[gold]))
    return out


def gold_bits_per_byte(gold_ll: float, gold_bytes: int) -> float:
    """-log p(gold continuation) in bits per UTF-8 byte of its text (the target delimiter
    included: its tokens are scored too) -- the "task bpb" of Bhagia et al. 2024 (OLMo ladder)."""
    if gold_bytes <= 0:
        raise ValueError("the gold continuation has no bytes")
    return float(-gold_ll / (math.log(2.0) * gold_bytes))


def summarize(metric: str, values: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """value, stderr, 95% CI and n of a per-example metric: Wilson for 0/1 accuracies,
    a bootstrap for means; `perplexity` gets exp(mean negative log-likelihood) with the
    bootstrap interval of the mean mapped through exp."""
    from scalelab.eval import stats

    v = np.asarray(values, dtype=np.float64)
    if metric == "perplexity":
        s = stats.bootstrap_ratio(-v, None, n_boot=n_boot, seed=seed, transform=np.exp)
        return {"value": s["value"], "stderr": s["stderr"], "ci": [s["lo"], s["hi"]], "n": s["n"], "method": "bootstrap"}
    if np.all((v == 0) | (v == 1)):
        s = stats.summarize_accuracy(v)
        return {"value": s["value"], "stderr": s["stderr"], "ci": [s["lo"], s["hi"]], "n": s["n"], "method": "wilson"}
    s = stats.bootstrap_ratio(v, None, n_boot=n_boot, seed=seed)
    return {"value": s["value"], "stderr": s["stderr"], "ci": [s["lo"], s["hi"]], "n": s["n"], "method": "bootstrap"}


def finite(x: float) -> float | None:
    """JSON-friendly: None for nan/inf."""
    return float(x) if x is not None and math.isfinite(x) else None


def iter_chunks(seq: Sequence, size: int) -> Iterable[Sequence]:
    for a in range(0, len(seq), size):
        yield seq[a:a + size]
