"""Optimizer step time, AdamW vs Muon (+ AdamW for the rest), next to one forward + backward,
in one process (the golf CPU shapes by default; the numbers quoted in docs/GOLF.md).

    .venv/bin/python bench/bench_optim_step.py
    .venv/bin/python bench/bench_optim_step.py --torch-muon     # + torch.optim.Muon (bf16)
    .venv/bin/python bench/bench_optim_step.py --device cuda
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from scalelab.config import TrainConfig
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.train.optim import build_optimizer

SHAPES = {
    "golf-cpu 4x128": dict(n_layer=4, d_model=128, n_head=4, n_kv_head=2, seq_len=128),
    "golf-baseline 9x112": dict(n_layer=9, d_model=112, n_head=8, n_kv_head=4, seq_len=1024, ffn_hidden=224),
}


def timed(fn, device: torch.device, reps: int) -> float:
    fn()  # warm-up (optimizer state allocation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--torch-muon", action="store_true", help="also time torch.optim.Muon (slow on CPU: bf16)")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens in the forward + backward")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    print(f"{device}, {args.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    for name, shape in SHAPES.items():
        m = GPT(GPTConfig(vocab_size=1024, mlp="relu2", qk_norm=True, logit_softcap=30.0, unet_skips=True,
                          **shape)).to(device)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        row = []
        for opt_name in ("adamw", "muon"):
            opts = build_optimizer(m, TrainConfig(optimizer=opt_name, max_steps=1), device.type)
            row.append(f"{opt_name} {1000 * timed(lambda: [o.step() for o in opts], device, args.reps):.1f} ms")
        if args.torch_muon:  # torch's Muon on the same matrices: bf16 Newton-Schulz
            hidden = opts[0].param_groups[0]["params"]
            tm = torch.optim.Muon(hidden, lr=0.02, weight_decay=0.1)
            row.append(f"torch.optim.Muon (matrices only) {1000 * timed(tm.step, device, 2):.1f} ms")
        seq = shape["seq_len"]
        x = torch.randint(0, 1024, (max(1, args.tokens // seq), seq + 1), device=device)
        fb = timed(lambda: m(x[:, :-1], x[:, 1:]).backward(), device, max(1, args.reps // 4))
        print(f"{name}: optimizer step {', '.join(row)}; forward + backward of {x.shape[0] * seq} tokens "
              f"{1000 * fb:.1f} ms")


if __name__ == "__main__":
    main()
