"""scalelab's training step vs nanoGPT's, side by side in one process (CPU, fp32).

    .venv/bin/python bench/bench_vs_nanogpt.py --nanogpt /work/shared/anchors/nanoGPT --threads 1,2

nanoGPT's model.py (MIT) is imported from the given directory at run time, never copied
into the project. Both models get the same shape (default 6 x 384, 6 heads, vocab 1024,
seq 256; nanoGPT without biases, dropout 0, so both count the same matmul FLOPs) and the
same step: forward + loss, backward, clip_grad_norm_(1.0), AdamW step, zero_grad.
nanoGPT uses its own configure_optimizers, scalelab its build_optimizer.

For each thread count the two models alternate step by step (nano, ours, nano, ours...),
so load from other processes hits both alike; the ratio is ours / nano in tokens/s, from
the median step time of each. MFU divides 6 N + 12 L H Q T FLOPs per token
(model/sizing.py) by the fp32 matmul peak measured with the same threads in the same run
(before and after; the higher). 1-minute load is printed before and after.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from scalelab.config import TrainConfig
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.model.sizing import flops_per_token
from scalelab.train.hardware import machine_load, measure_matmul_peak, num_threads
from scalelab.train.optim import build_optimizer


def load_nanogpt(directory: str):
    path = Path(directory) / "model.py"
    if not path.is_file():
        raise SystemExit(f"no nanoGPT model.py in {directory} (pass --nanogpt DIR)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nanogpt_model"] = mod  # its @dataclass needs the module registered
    spec.loader.exec_module(mod)
    return mod


def make_nano(mod, args):
    torch.manual_seed(0)
    cfg = mod.GPTConfig(block_size=args.seq_len, vocab_size=args.vocab, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.d_model, dropout=0.0, bias=False)
    model = mod.GPT(cfg)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-4, betas=(0.9, 0.95), device_type="cpu")

    def step(x, y):
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def make_ours(args):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, seq_len=args.seq_len, n_layer=args.n_layer,
                    n_head=args.n_head, d_model=args.d_model)
    model = GPT(cfg)
    opts = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.1), "cpu")

    def step(x, y):
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        return loss

    return model, cfg, step


def run(args, mod, threads: int) -> dict:
    with num_threads(threads):
        load0 = machine_load()[0]
        peak0 = measure_matmul_peak(torch.float32, seconds=args.peak_seconds)
        nano, nano_step = make_nano(mod, args)
        ours, cfg, our_step = make_ours(args)
        gen = torch.Generator().manual_seed(0)
        times = {"nanoGPT": [], "scalelab": []}
        steps = {"nanoGPT": nano_step, "scalelab": our_step}
        for i in range(args.warmup + args.steps):
            x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen)
            inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # nanoGPT .view()s targets
            order = ("nanoGPT", "scalelab") if i % 2 == 0 else ("scalelab", "nanoGPT")  # no fixed first
            for name in order:
                t0 = time.perf_counter()
                steps[name](inp, tgt)
                dt = time.perf_counter() - t0
                if i >= args.warmup:
                    times[name].append(dt)
        peak1 = measure_matmul_peak(torch.float32, seconds=args.peak_seconds)
        load1 = machine_load()[0]
    peak = max(peak0, peak1)
    tokens = args.batch * args.seq_len
    fpt = flops_per_token(cfg)
    out = {"threads": threads, "peak": peak, "load": (load0, load1)}
    for name, ts in times.items():
        tps = tokens / statistics.median(ts)
        out[name] = {"tok_s": tps, "mfu": tps * fpt / peak}
    out["ratio"] = out["scalelab"]["tok_s"] / out["nanoGPT"]["tok_s"]
    n_nano = sum(p.numel() for n, p in nano.named_parameters() if "wpe" not in n)
    n_ours = sum(p.numel() for p in ours.parameters())
    out["params"] = (n_nano, n_ours)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", required=True, help="directory holding nanoGPT's model.py")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="timed steps per model and thread count")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-seconds", type=float, default=1.0)
    args = p.parse_args(argv)
    mod = load_nanogpt(args.nanogpt)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"batch {args.batch} x {args.seq_len}, {args.steps} timed steps each")
    rows = [run(args, mod, int(t)) for t in args.threads.split(",")]
    print(f"params (nanoGPT without wpe, scalelab): {rows[0]['params']}")
    print("| threads | nanoGPT tok/s | scalelab tok/s | scalelab/nanoGPT | MFU nanoGPT % | MFU scalelab % "
          "| peak GFLOP/s | load 1m before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['nanoGPT']['tok_s']:.0f} | {r['scalelab']['tok_s']:.0f} | {r['ratio']:.2f}x "
              f"| {100 * r['nanoGPT']['mfu']:.1f} | {100 * r['scalelab']['mfu']:.1f} | {r['peak'] / 1e9:.1f} "
              f"| {r['load'][0]:.2f}/{r['load'][1]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
