"""Tokenization into shards: MB/s of text with 1 and N worker processes, side by side.

    .venv/bin/python bench/bench_tokenize.py [--tokenizers bpe,sentencepiece,gpt2] [--workers 2]
                                             [--repeats 2] [--source builtin:bbcnews]

For each tokenizer: train it once (not timed here), then run `prepare_data` with the
saved tokenizer, alternating 1 and N workers `--repeats` times, and report the best
MB/s of each (text bytes / time from reading the source to the last shard written, pool
start-up included) and their ratio, and the CPU seconds used (parent + workers). Prints /proc/loadavg before and after: on a shared
machine other processes steal cores, so compare the ratio within one run.
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from scalelab.config import DataConfig
from scalelab.data.prepare import prepare_data
from scalelab.data.sources import iter_documents
from scalelab.data.tokenizer import train_tokenizer


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def cpu_seconds() -> float:
    """User+system CPU time of this process and its reaped children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="builtin:bbcnews")
    ap.add_argument("--tokenizers", default="bpe,sentencepiece,gpt2")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    print(f"cpus={os.cpu_count()} loadavg(before)={loadavg()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for kind in args.tokenizers.split(","):
            if kind == "gpt2":
                tok_ref = "gpt2"
            else:
                t0 = time.perf_counter()
                tok = train_tokenizer(kind, iter_documents(DataConfig(source=args.source)), args.vocab_size)
                tok_ref = str(tok.save(tmp / f"tok-{kind}"))
                print(f"{kind}: trained vocab {args.vocab_size} in {time.perf_counter() - t0:.1f}s (not in the timings)")
            best: dict[int, float] = {}
            for r in range(args.repeats):
                for w in (1, args.workers):
                    cfg = DataConfig(source=args.source, tokenizer=tok_ref, dir=str(tmp / f"out-{kind}-{w}-{r}"),
                                     num_workers=w)
                    c0 = cpu_seconds()
                    meta = prepare_data(cfg, progress=False)
                    cpu = cpu_seconds() - c0
                    t = meta["timing"]
                    mbps = sum(s["bytes"] for s in meta["splits"].values()) / 1e6 / t["tokenize_s"]
                    best[w] = max(best.get(w, 0.0), mbps)
                    tokens = sum(s["tokens"] for s in meta["splits"].values())
                    print(f"  {kind:13s} workers={w} run={r}: {mbps:6.2f} MB/s  ({t['tokenize_s']:.2f}s wall, {cpu:.2f} CPU-s, {tokens:,} tokens)")
            rows.append((kind, best[1], best[args.workers]))
    print(f"\nloadavg(after)={loadavg()}")
    print(f"{'tokenizer':13s} {'1 proc MB/s':>12s} {f'{args.workers} procs MB/s':>13s} {'ratio':>6s}")
    for kind, one, many in rows:
        print(f"{kind:13s} {one:12.2f} {many:13.2f} {many / one:6.2f}")


if __name__ == "__main__":
    main()
