"""Loader throughput (tokens/s) next to a training step's, measured in one run.

    .venv/bin/python bench/bench_loader.py [--data-dir DIR] [--seconds 2]
                                           [--train-tok-s N | --train-steps 2] [--threads N]

Without --data-dir, the builtin corpus is tokenized with GPT-2 into a temp dir
(~1M tokens). For several (micro_batch, seq_len) shapes it times `TokenLoader.next_batch`
(shuffled, memory-mapped, int64 tensors out) and `iter_eval_batches`; then it times a few
forward+backward+AdamW steps of two scalelab GPTs on random tokens -- ~10M parameters
(vocab 1024, d=384, 6 layers, seq 256, micro-batch 8) and the configs/cpu-tiny.yaml model
(d=128, 4 layers, seq 128, micro-batch 16) -- unless you pass the training rate you
measured yourself (--train-tok-s). Target: loader >= 50x training tokens/s.
Prints /proc/loadavg before and after (shared machines skew absolute numbers).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from scalelab.config import DataConfig
from scalelab.data.loader import TokenLoader, iter_eval_batches
from scalelab.data.prepare import prepare_data

SHAPES = [(8, 256), (16, 512), (8, 1024), (64, 128)]


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def loader_rate(data_dir: Path, micro_batch: int, seq_len: int, seconds: float) -> float:
    loader = TokenLoader(data_dir, "train", micro_batch, seq_len, seed=0)
    for _ in range(3):
        loader.next_batch()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            x, _ = loader.next_batch()
            n += x.numel()
    return n / (time.perf_counter() - t0)


def eval_rate(data_dir: Path, micro_batch: int, seq_len: int) -> float:
    t0 = time.perf_counter()
    n = sum(x.numel() for x, _ in iter_eval_batches(data_dir, "train", micro_batch, seq_len, 10**12))
    return n / (time.perf_counter() - t0)


# Training-step stand-ins: the ~10M model of the brief, and configs/cpu-tiny.yaml's model.
MODELS = {
    "10M": (dict(vocab_size=1024, seq_len=256, n_layer=6, n_head=6, d_model=384), 8),
    "cpu-tiny": (dict(vocab_size=1024, seq_len=128, n_layer=4, n_head=4, d_model=128), 16),
}


def train_rate(name: str, steps: int, threads: int | None) -> float | None:
    import torch

    try:
        from scalelab.model.gpt import GPT, GPTConfig
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    kw, micro_batch = MODELS[name]
    model = GPT(GPTConfig(**kw))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, kw["vocab_size"], (micro_batch, kw["seq_len"]))
    y = torch.randint(0, kw["vocab_size"], (micro_batch, kw["seq_len"]))

    def step():
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    rate = steps * x.numel() / (time.perf_counter() - t0)
    print(f"training step {name}: GPT {params / 1e6:.2f}M params, micro-batch {micro_batch} x {kw['seq_len']}, "
          f"{steps} steps, torch threads {torch.get_num_threads()}: {rate:,.0f} tokens/s")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="a prepared data dir (default: builtin corpus, GPT-2, temp dir)")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per loader shape")
    ap.add_argument("--train-tok-s", type=float, help="training tokens/s to compare with (skips the step timing)")
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch threads for the training step")
    args = ap.parse_args()

    print(f"cpus={os.cpu_count()} loadavg(before)={loadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "bbc-gpt2"
        if not args.data_dir:
            prepare_data(DataConfig(tokenizer="gpt2", dir=str(data_dir), num_workers=1), progress=False)
        rows = []
        for b, t in SHAPES:
            rows.append((b, t, loader_rate(data_dir, b, t, args.seconds), eval_rate(data_dir, b, t)))
        if args.train_tok_s:
            trains = {"given": args.train_tok_s}
        else:
            trains = {name: train_rate(name, args.train_steps if name == "10M" else 5 * args.train_steps, args.threads)
                      for name in MODELS}
            trains = {k: v for k, v in trains.items() if v}
    print(f"loadavg(after)={loadavg()}\n")
    head = "".join(f" {'/train ' + k:>16s}" for k in trains)
    print(f"{'micro_batch x seq_len':>22s} {'loader tok/s':>14s} {'eval tok/s':>14s}{head}")
    for b, t, rate, erate in rows:
        ratios = "".join(f" {rate / v:15,.0f}x" for v in trains.values())
        print(f"{f'{b} x {t}':>22s} {rate:14,.0f} {erate:14,.0f}{ratios}")
    print("\ntraining tokens/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in trains.items())
          + "; target: loader >= 50x training")


if __name__ == "__main__":
    main()
