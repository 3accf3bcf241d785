"""FP8 vs bf16 training step time on one GPU, side by side in one process (train.fp8).

The model is the golf 8xH100 shape by default (9 x 512, MLP 3x, ReLU^2, vocab 1024,
seq 1024); settings alternate bf16, fp8, bf16, fp8, ... so drift hits both alike.

    python bench/bench_fp8.py                   # eager
    python bench/bench_fp8.py --compile         # torch.compile both (fuses the FP8 casts)
    python bench/bench_fp8.py --n-layer 12 --d-model 768 --ffn 2048 --batch 16
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from scalelab.model.gpt import GPT, GPTConfig
from scalelab.train import fp8


def step_times(model, x, y, steps: int, warmup: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    out = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=9)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--batch", type=int, default=64, help="sequences of --seq-len per step")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    if not fp8.fp8_supported(dev):
        print("error: this machine has no FP8-capable CUDA GPU (compute capability >= 8.9)", file=sys.stderr)
        return 2
    cfg = GPTConfig(vocab_size=1024, n_layer=args.n_layer, d_model=args.d_model, n_head=args.d_model // 64,
                    n_kv_head=args.d_model // 128, ffn_hidden=args.ffn, seq_len=args.seq_len, mlp="relu2",
                    qk_norm=True, logit_softcap=30.0, unet_skips=True)
    torch.manual_seed(0)
    base = GPT(cfg).to(dev)
    models = {"bf16": base, "fp8": copy.deepcopy(base)}
    fp8.enable_fp8(models["fp8"], dev)
    if args.compile:
        models = {k: torch.compile(m) for k, m in models.items()}
    x = torch.randint(0, 1024, (args.batch, args.seq_len + 1), device=dev)
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    times: dict[str, list[float]] = {"bf16": [], "fp8": []}
    for _ in range(args.rounds):
        for name, m in models.items():
            times[name] += step_times(m, x, y, args.steps, args.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.seq_len
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, compile={args.compile}, "
          f"{args.n_layer}x{args.d_model} ffn {args.ffn}, {tokens:,} tokens/step")
    for k in ("bf16", "fp8"):
        print(f"  {k}: median step {1000 * med[k]:.1f} ms ({tokens / med[k]:,.0f} tokens/s) over {len(times[k])} steps")
    print(f"  fp8 speed-up: {med['bf16'] / med['fp8']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
