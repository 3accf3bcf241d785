"""Language-modelling metrics: loss, perplexity and bits per byte, on token shards or raw text.

Windows. A token stream s[0..n) (a shard split, or one document as [BOS/EOT] + its
tokens) has targets s[1..n): every token after the first is scored exactly once.
Window k feeds s[a_k : b_k] (at most `context` tokens, a_k = k * stride) and scores the
targets it has not scored before, i.e. those after the previous window's last target:

* stride == context: non-overlapping windows (what the trainer's eval does); a token's
  context is whatever precedes it inside its window (0 .. context-1 tokens).
* stride < context: a sliding window (the Hugging Face perplexity guide,
  parameter-golf's sliding eval): each window scores only its last `stride` targets,
  which therefore see at least context - stride tokens of context. Costs
  context / stride times more compute; gives a lower (better) loss.

Bytes. bits per byte = sum of nats / ln 2 / sum of UTF-8 bytes of the *scored tokens*
(the tokenizer's `token_bytes()`), so shards and text agree exactly and nothing is
estimated. A tokenizer without byte information (HF tokenizers of other kinds) gives
a clear error unless bpb is turned off.

Error bars: the loss (and bpb, ppl) interval is a bootstrap over units -- documents for
raw text, scored windows for shards -- through `stats.bootstrap_ratio`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from scalelab.errors import DataError
from scalelab.eval import scoring, stats
from scalelab.eval.scoring import EvalError

CHUNK_TOKENS = 1 << 18  # window tokens handed to the engine at a time


def window_plan(n: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(a, b, t0) per window of a stream of n tokens: input s[a:b], scoring targets
    s[t0 .. b] (inclusive), predicted from positions t0-1-a .. b-1-a of the window."""
    if context < 1 or stride < 1 or stride > context:
        raise EvalError(f"need 1 <= stride <= context, got context={context}, stride={stride}")
    a, next_t = 0, 1
    while next_t < n:
        b = min(a + context, n - 1)
        if b >= next_t:
            yield a, b, next_t
            next_t = b + 1
        a += stride


def _window_item(s: np.ndarray, a: int, b: int, t0: int) -> scoring.Item:
    pred = np.arange(t0 - 1 - a, b - a, dtype=np.int64)
    return scoring.linear_item(s[a:b], [(pred, s[t0:b + 1].astype(np.int64))])


def _is_data_dir(p: Path) -> bool:
    return p.is_dir() and ((p / "meta.json").is_file() or any(p.glob("*val_*.bin")) or any(p.glob("*train_*.bin")))


def evaluate_lm(model, source: str | Path, split: str = "val", context: int | None = None,
                stride: int | None = None, max_tokens: int | None = None, max_docs: int | None = None,
                text_column: str = "text", bpb: bool | None = None, n_boot: int = 1000, seed: int = 0,
                progress: bool = True) -> dict:
    """Loss / perplexity / bits-per-byte of `model` (an EvalModel) on a scalelab data
    dir's shards (`split`) or on raw text (a .txt/.jsonl/.parquet file, a folder of
    them, or hf:NAME). bpb=None: when the tokenizer knows its bytes; True: required."""
    L = int(context or model.max_length)
    if L > model.max_length:
        raise EvalError(f"context {L} is longer than the model's window {model.max_length}")
    S = int(stride or L)
    if not 1 <= S <= L:
        raise EvalError(f"--stride must be between 1 and the context ({L}), got {S}")
    tb = model.token_bytes() if bpb is not False else None
    if bpb and tb is None:
        raise DataError(f"the tokenizer of '{model.name}' has no byte information, so bits per byte cannot be "
                        "computed exactly; drop bpb (--no-bpb) to report loss and perplexity only")
    src = Path(str(source))
    t_start = time.perf_counter()
    if not str(source).startswith("hf:") and _is_data_dir(src):
        kind, units, nats, toks, nbytes = "shards", "windows", *_eval_shards(model, src, split, L, S, max_tokens, tb, progress)
    else:
        kind, units = "text", "documents"
        nats, toks, nbytes = _eval_text(model, str(source), L, S, max_tokens, max_docs, text_column, tb, progress)
    elapsed = time.perf_counter() - t_start
    nats, toks = np.asarray(nats), np.asarray(toks, dtype=np.float64)
    if toks.sum() == 0:
        raise DataError(f"'{source}' gave no tokens to score (need at least 2 tokens)")
    out: dict = {"source": str(source), "kind": kind, "split": split if kind == "shards" else None,
                 "context": L, "stride": S, "units": units, "n": int(nats.size), "tokens": int(toks.sum())}
    loss = stats.bootstrap_ratio(nats, toks, n_boot=n_boot, seed=seed)
    ppl = stats.bootstrap_ratio(nats, toks, n_boot=n_boot, seed=seed, transform=np.exp)
    for name, s in (("loss", loss), ("ppl", ppl)):
        out[name] = s["value"]
        out[f"{name}_stderr"] = scoring.finite(s["stderr"])
        out[f"{name}_ci"] = [scoring.finite(s["lo"]), scoring.finite(s["hi"])]
        out[f"{name}_ci_method"] = "bootstrap"
    if tb is not None:
        nb = np.asarray(nbytes, dtype=np.float64)
        out["bytes"] = int(nb.sum())
        if nb.sum() > 0:
            s = stats.bootstrap_ratio(nats / math.log(2), nb, n_boot=n_boot, seed=seed)
            out["bpb"] = s["value"]
            out["bpb_stderr"] = scoring.finite(s["stderr"])
            out["bpb_ci"] = [scoring.finite(s["lo"]), scoring.finite(s["hi"])]
            out["bpb_ci_method"] = "bootstrap"
    out["n_truncated"] = 0
    out["time_s"] = round(elapsed, 3)
    out["tokens_per_s"] = round(out["tokens"] / max(elapsed, 1e-9), 1)
    return out


def _score_windows(model, streams: Iterable[tuple[int, np.ndarray]], L: int, S: int, tb, per_window: bool,
                   progress: bool, name_stream=lambda i: f"stream {i}"):
    """streams: (unit id, tokens). Returns per-unit (or per-window) nats, tokens, bytes.
    `name_stream(id)` names a stream in errors (a shard file, a document)."""
    nats: dict[int, float] = {}
    toks: dict[int, int] = {}
    nbytes: dict[int, int] = {}
    pending: list[tuple[int, scoring.Item]] = []
    pending_tokens = 0
    counter = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="tok", unit_scale=True, desc="lm eval", mininterval=0.5, dynamic_ncols=True,
                   disable=None)  # None: no carriage-return bars in pipes and logs

    def flush():
        nonlocal pending, pending_tokens
        if not pending:
            return
        try:
            out = model.run_items([it for _, it, _ in pending])
        except scoring.NonFiniteScore as e:
            _, _, (stream, a) = pending[e.index]
            raise EvalError(e.message(f"{name_stream(stream)}, window at token {a}")) from None
        for (unit, item, _), res in zip(pending, out):
            lp, _ = res[0]
            targets = item.queries[0][1]
            nats[unit] = nats.get(unit, 0.0) - float(lp.sum())
            toks[unit] = toks.get(unit, 0) + int(targets.size)
            if tb is not None:
                nbytes[unit] = nbytes.get(unit, 0) + int(tb[targets].sum())
            if bar is not None:
                bar.update(int(targets.size))
        pending, pending_tokens = [], 0

    try:
        for unit, s in streams:
            for a, b, t0 in window_plan(len(s), L, S):
                key = counter if per_window else unit
                counter += 1
                pending.append((key, _window_item(s, a, b, t0), (unit, a)))
                pending_tokens += b - a
                if pending_tokens >= CHUNK_TOKENS:
                    flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    keys = sorted(nats)
    return [nats[k] for k in keys], [toks[k] for k in keys], [nbytes.get(k, 0) for k in keys]


def _same_content(data_dir: Path, tokenizer) -> bool:
    """The data dir's tokenizer has the model's vocabulary and merges (e.g. a run's bpe
    shards and its Hugging Face export: different names, identical ids)."""
    from scalelab.data.prepare import load_data_tokenizer
    from scalelab.data.tokenizer_content import same_tokenizer

    try:
        return same_tokenizer(load_data_tokenizer(data_dir), tokenizer)
    except DataError:  # no readable tokenizer beside the shards: names are all there is
        return False


def _eval_shards(model, data_dir: Path, split: str, L: int, S: int, max_tokens: int | None, tb, progress: bool):
    from scalelab.data.prepare import load_meta
    from scalelab.data.shards import list_shards, open_shard

    meta = load_meta(data_dir)
    info = meta.get("tokenizer") or {}
    ident = getattr(model.tokenizer, "identity", None)
    if info.get("identity") and ident and info["identity"] != ident and not _same_content(data_dir, model.tokenizer):
        raise DataError(f"the shards in '{data_dir}' were tokenized with {info['identity']} but the model uses "
                        f"{ident} (vocabulary and merges differ too); evaluate on data tokenized with the "
                        "model's tokenizer (or on raw text)")
    files = list_shards(data_dir, split)
    budget = None if max_tokens is None else int(max_tokens) + 1  # +1: the first token is context only

    def streams():
        remaining = budget
        for i, f in enumerate(files):
            if remaining is not None and remaining < 2:
                return
            s = open_shard(f)
            if remaining is not None:
                s = s[:remaining]
                remaining -= len(s)
            yield i, np.asarray(s, dtype=np.int64)

    return _score_windows(model, streams(), L, S, tb, per_window=True, progress=progress,
                          name_stream=lambda i: f"shard {files[i]}")


def _eval_text(model, source: str, L: int, S: int, max_tokens, max_docs, column: str, tb, progress: bool):
    from scalelab.config import DataConfig
    from scalelab.data.sources import iter_documents

    cfg = DataConfig(source=source, text_column=column, max_docs=max_docs)

    def streams():
        used = 0
        for i, doc in enumerate(iter_documents(cfg)):
            ids = [model.prefix_id] + model.encode(doc)
            if max_tokens is not None:
                ids = ids[:max_tokens - used + 1]
            if len(ids) >= 2:
                yield i, np.asarray(ids, dtype=np.int64)
                used += len(ids) - 1
            if max_tokens is not None and used >= max_tokens:
                return

    return _score_windows(model, streams(), L, S, tb, per_window=False, progress=progress,
                          name_stream=lambda i: f"document {i} of '{source}'")
