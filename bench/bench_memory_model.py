"""The memory model of `scalelab suggest` (scalelab/tune/memory.py) against measured peaks.

Each shape runs in a fresh subprocess: build the GPT, the trainer's AdamW (foreach on
CPU, fused on CUDA) and optionally activation checkpointing / bf16 autocast, run one
warm-up step (AdamW creates its states lazily), then measure one more training step
(forward, backward, clip, step, zero_grad) the way the trainer does it.

Measured peaks
- CPU, live tensors: torch.distributed._tools.mem_tracker.MemTracker (a TorchDispatchMode
  that sees every tensor allocated: the CPU analogue of torch.cuda.max_memory_allocated;
  this is what the model predicts).
- CPU, process RSS: the high-water mark (/proc/self/status VmHWM, reset via
  /proc/self/clear_refs) minus the RSS before the model was built -- what the OS sees,
  allocator caching and fragmentation included (informational).
- CUDA: torch.cuda.max_memory_allocated() minus the allocation before the model.

    .venv/bin/python bench/bench_memory_model.py                 # CPU shapes, table
    .venv/bin/python bench/bench_memory_model.py --json out.json
    python bench/bench_memory_model.py --device cuda             # GPU shapes (bf16 autocast)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

MIB = 1024**2

# name, model kwargs, micro_batch, precision (fp32 | autocast_bf16), checkpointing
CPU_SHAPES = [
    ("2x128 V1024 s128 b8", dict(n_layer=2, d_model=128, n_head=4, seq_len=128, vocab_size=1024), 8, "fp32", False),
    ("4x256 V4096 s256 b4", dict(n_layer=4, d_model=256, n_head=4, seq_len=256, vocab_size=4096), 4, "fp32", False),
    ("6x384 V8192 s256 b8", dict(n_layer=6, d_model=384, n_head=6, seq_len=256, vocab_size=8192), 8, "fp32", False),
    ("8x512 V1024 s512 b2", dict(n_layer=8, d_model=512, n_head=8, seq_len=512, vocab_size=1024), 2, "fp32", False),
    ("4x256 relu2 gqa s256 b4", dict(n_layer=4, d_model=256, n_head=4, n_kv_head=2, mlp="relu2", seq_len=256,
                                     vocab_size=4000), 4, "fp32", False),
    ("4x256 V4096 s256 b4 ckpt", dict(n_layer=4, d_model=256, n_head=4, seq_len=256, vocab_size=4096), 4, "fp32", True),
    ("6x384 V8192 s256 b8 ckpt", dict(n_layer=6, d_model=384, n_head=6, seq_len=256, vocab_size=8192), 8, "fp32", True),
    ("8x512 V32768 s64 b1 (states)", dict(n_layer=8, d_model=512, n_head=8, seq_len=64, vocab_size=32768), 1, "fp32",
     False),
    ("4x256 V4096 s256 b4 bf16-autocast", dict(n_layer=4, d_model=256, n_head=4, seq_len=256, vocab_size=4096), 4,
     "autocast_bf16", False),
]

CUDA_SHAPES = [
    ("124M s1024 b8", dict(n_layer=12, d_model=768, n_head=12, seq_len=1024, vocab_size=50257), 8, "autocast_bf16", False),
    ("124M s1024 b8 ckpt", dict(n_layer=12, d_model=768, n_head=12, seq_len=1024, vocab_size=50257), 8, "autocast_bf16",
     True),
    ("350M s1024 b4", dict(n_layer=24, d_model=1024, n_head=16, seq_len=1024, vocab_size=50257), 4, "autocast_bf16",
     False),
    ("10M s256 b32", dict(n_layer=6, d_model=384, n_head=6, seq_len=256, vocab_size=50257), 32, "autocast_bf16", False),
]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(spec: dict) -> dict:
    import torch

    from scalelab.config import TrainConfig
    from scalelab.model.gpt import GPT, GPTConfig
    from scalelab.train.distributed import _checkpoint_block
    from scalelab.train.optim import build_optimizer

    torch.set_num_threads(1)
    device = torch.device(spec["device"])
    cfg = GPTConfig(**spec["model"])
    B, T = spec["micro_batch"], cfg.seq_len
    autocast = spec["precision"] == "autocast_bf16"
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    y = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    # Page in the kernels and thread pools first, so the RSS baseline holds them.
    warm = GPT(GPTConfig(vocab_size=64, n_layer=1, d_model=32, n_head=2, seq_len=8)).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        wl = warm(torch.zeros(2, 8, dtype=torch.long, device=device), torch.zeros(2, 8, dtype=torch.long, device=device))
    wl.backward()
    build_optimizer(warm, TrainConfig(), device.type)[0].step()
    del warm, wl
    if device.type == "cuda":
        torch.cuda.synchronize()
        base_alloc = torch.cuda.memory_allocated()
    rss0 = _status("VmRSS")
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    if spec["checkpointing"]:
        for block in model.blocks:
            _checkpoint_block(block)
    opts = build_optimizer(model, TrainConfig(), device.type)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)

    step()  # AdamW states exist from here on
    out = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        out["tensor_peak"] = torch.cuda.max_memory_allocated() - base_alloc
        return out
    hwm_ok = _reset_hwm()
    t0 = time.perf_counter()
    step()
    out["step_s"] = time.perf_counter() - t0
    out["rss_peak"] = (_status("VmHWM") - rss0) if hwm_ok else None
    try:
        from torch.distributed._tools.mem_tracker import MemTracker

        mt = MemTracker()
        mt.track_external(model, *opts)
        with mt:
            step()
        snap = mt.get_tracker_snapshot("peak")
        out["tensor_peak"] = int(next(iter(snap.values()))["Total"])
    except Exception as e:  # a private torch API; the RSS column still stands
        out["tensor_peak"] = None
        out["tracker_error"] = f"{type(e).__name__}: {e}"
    return out


def estimate(spec: dict) -> dict:
    from scalelab.model.gpt import GPTConfig
    from scalelab.tune.memory import MemorySetup, estimate_memory

    cfg = GPTConfig(**spec["model"])
    setup = MemorySetup(micro_batch=spec["micro_batch"], parallel="none",
                        dtype="fp32" if spec["precision"] == "fp32" else "bf16",
                        checkpointing=spec["checkpointing"], optimizer_temporaries=spec["device"] == "cpu")
    return estimate_memory(cfg, setup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    shapes = CUDA_SHAPES if args.device.startswith("cuda") else CPU_SHAPES
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    print(f"{'shape':36s} {'phase':>14s} {'model MiB':>10s} {'tensors MiB':>12s} {'err':>7s} {'RSS MiB':>9s} {'err':>7s}")
    for name, model, micro, precision, ckpt in shapes:
        spec = {"device": args.device, "model": model, "micro_batch": micro, "precision": precision,
                "checkpointing": ckpt}
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=1800)
        if res.returncode != 0:
            print(f"{name:36s} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
            continue
        meas = json.loads(res.stdout.strip().splitlines()[-1])
        est = estimate(spec)
        pred = est["peak_bytes"]
        row = {"shape": name, **spec, "model_bytes": pred, "phase": est["peak_phase"], **meas}
        t, r = meas.get("tensor_peak"), meas.get("rss_peak")
        row["tensor_err"] = (pred - t) / t if t else None
        row["rss_err"] = (pred - r) / r if r else None
        rows.append(row)
        fmt = lambda v: f"{v / MIB:10.1f}" if v else f"{'-':>10s}"  # noqa: E731
        pct = lambda e: f"{100 * e:+6.1f}%" if e is not None else f"{'-':>7s}"  # noqa: E731
        print(f"{name:36s} {est['peak_phase']:>14s} {pred / MIB:10.1f} {fmt(t):>12s} {pct(row['tensor_err'])} "
              f"{fmt(r):>9s} {pct(row['rss_err'])}", flush=True)
    errs = [abs(r["tensor_err"]) for r in rows if r.get("tensor_err") is not None]
    rss = [abs(r["rss_err"]) for r in rows if r.get("rss_err") is not None]
    summary = {}
    if errs:
        summary["tensor_abs_err_mean"] = sum(errs) / len(errs)
        summary["tensor_abs_err_max"] = max(errs)
        print(f"model vs live-tensor peak: mean |error| {100 * summary['tensor_abs_err_mean']:.1f}%, "
              f"max {100 * summary['tensor_abs_err_max']:.1f}% over {len(errs)} shapes")
    if rss:
        summary["rss_abs_err_mean"] = sum(rss) / len(rss)
        summary["rss_abs_err_max"] = max(rss)
        print(f"model vs RSS peak:         mean |error| {100 * summary['rss_abs_err_mean']:.1f}%, "
              f"max {100 * summary['rss_abs_err_max']:.1f}%")
    if args.json:
        import torch

        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "torch": torch.__version__,
                       "machine": platform.processor() or platform.machine()}, f, indent=2)


if __name__ == "__main__":
    main()
