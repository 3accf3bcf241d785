"""Training throughput and MFU of the scalelab GPT (forward + backward + AdamW step).

CPU (default): a ~10M non-embedding-parameter model (6 x 384, vocab 1024, seq 256, fp32)
trained on random tokens, once per thread setting, each next to the fp32 matmul peak
measured with the same threads in the same process (before and after the steps; the
higher is used, so MFU is a lower bound). Each setting runs in a fresh subprocess;
settings are interleaved over --rounds to spread the noise of shared cores evenly.
A setting is a thread count, with suffix "p" for OMP_WAIT_POLICY=PASSIVE (OpenMP
threads sleep instead of spinning while they wait -- it matters on shared cores).

    .venv/bin/python bench/bench_train.py                       # threads 1, 2, 2p
    .venv/bin/python bench/bench_train.py --threads 1,2 --rounds 3 --steps 12

Two MFU columns: wall clock (what a run gets) and CPU time (FLOPs per CPU-second of
training / FLOPs per CPU-second of matmul): the second is barely moved by other
processes on the same cores, so it shows what the code does on an idle machine.

GPU: GPT-2 small's shape (12 x 768, vocab 50257 padded to 50304, seq 1024), bf16
autocast, torch.compile, fused AdamW; MFU against the card's dense bf16 peak:

    python bench/bench_train.py --device cuda --compile

Results are printed as a table and, with --json PATH, written as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

from scalelab.model.gpt import GPT, GPTConfig
from scalelab.model.sizing import NAMED_SIZES, count_params, flops_per_token
from scalelab.train.hardware import (gpu_peak_flops, machine_load, measure_matmul_peak, num_threads,
                                     pick_cpu_dtype)
from scalelab.train.host_memory import keep_freed_host_memory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_config(args) -> GPTConfig:
    shape = dict(NAMED_SIZES[args.size]) if args.size else {}
    for key in ("n_layer", "d_model", "n_head"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    return GPTConfig(vocab_size=args.vocab, seq_len=args.seq_len, mlp=args.mlp, **shape)


def run_one(args, cfg: GPTConfig, device: torch.device, dtype: torch.dtype, threads: int | None) -> dict:
    """Time args.steps training steps after args.warmup untimed ones."""
    if device.type == "cpu":
        keep_freed_host_memory()  # as every scalelab command does (train/host_memory.py)
    with num_threads(threads if device.type == "cpu" else None):
        load_before = machine_load()
        peak_dtype = dtype if device.type == "cpu" else torch.bfloat16
        peak_before = measure_matmul_peak(peak_dtype, seconds=args.peak_seconds, device=device)
        cpu_peak_before = (measure_matmul_peak(peak_dtype, seconds=args.peak_seconds, clock="cpu")
                           if device.type == "cpu" else None)

        torch.manual_seed(0)
        model = GPT(cfg).to(device)
        fused = device.type == "cuda"
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                fused=fused, foreach=None if fused else True)
        fwd = torch.compile(model) if args.compile else model
        use_autocast = dtype != torch.float32
        ctx = torch.autocast(device.type, dtype=dtype) if use_autocast else nullcontext()
        gen = torch.Generator(device=device).manual_seed(0)

        def batch():  # random tokens, drawn where the model lives (no host-to-device copy)
            x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len + 1), generator=gen, device=device)
            return x[:, :-1], x[:, 1:]

        def step():
            x, y = batch()
            with ctx:
                loss = fwd(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        t_compile = time.perf_counter()
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_compile = time.perf_counter() - t_compile

        times, cpu_times = [], []
        for _ in range(args.steps):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            else:
                loss.item()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)

        peak_after = measure_matmul_peak(peak_dtype, seconds=args.peak_seconds, device=device)
        cpu_peak_after = (measure_matmul_peak(peak_dtype, seconds=args.peak_seconds, clock="cpu")
                          if device.type == "cpu" else None)
        load_after = machine_load()

    tokens = args.batch * cfg.seq_len
    fpt = flops_per_token(cfg)
    step_med = statistics.median(times)
    step_best = min(times)
    tok_s = tokens / step_med
    model_flops = fpt * tok_s
    if device.type == "cuda":
        peak = gpu_peak_flops(device)
        peak_kind = "vendor dense bf16"
    else:
        peak = max(peak_before, peak_after)
        peak_kind = f"measured {args.dtype if args.dtype != 'auto' else str(dtype).split('.')[-1]} matmul"
    cpu_peak = max(cpu_peak_before, cpu_peak_after) if cpu_peak_before else None
    cpu_med = statistics.median(cpu_times)
    return {
        "threads": threads if device.type == "cpu" else None,
        "dtype": str(dtype).replace("torch.", ""),
        "tokens_per_step": tokens,
        "step_s_median": step_med,
        "step_s_best": step_best,
        "tokens_per_s": tok_s,
        "model_flops_per_s": model_flops,
        "peak_flops_per_s": peak,
        "peak_kind": peak_kind,
        "measured_matmul_peak_before": peak_before,
        "measured_matmul_peak_after": peak_after,
        "mfu": model_flops / peak if peak else None,
        "mfu_best_step": fpt * tokens / step_best / peak if peak else None,
        "step_cpu_s_median": cpu_med,
        "cpu_time_peak_flops_per_cpu_s": cpu_peak,
        # Same ratio on the CPU-time clock: FLOPs per CPU-second of training vs of matmul.
        # Robust to other processes sharing the cores (they steal wall time, not CPU time).
        "mfu_cpu_time": fpt * tokens / cpu_med / cpu_peak if cpu_peak else None,
        "warmup_s": t_compile,
        "load_before": load_before,
        "load_after": load_after,
        "final_loss": loss.item(),
    }


def resolve_defaults(args) -> None:
    gpu = args.device.startswith("cuda")
    if not args.size and not any(getattr(args, k) for k in ("n_layer", "d_model", "n_head")):
        args.size = "124m" if gpu else "10m"
    args.vocab = args.vocab or (50257 if gpu else 1024)
    args.seq_len = args.seq_len or (1024 if gpu else 256)
    args.batch = args.batch or (16 if gpu else 8)
    args.steps = args.steps or (30 if gpu else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)


def worker_argv(args, threads: int, out: str) -> list[str]:
    argv = [sys.executable, __file__, "--device", "cpu", "--threads", str(threads), "--dtype", args.dtype,
            "--vocab", str(args.vocab), "--seq-len", str(args.seq_len), "--batch", str(args.batch),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--mlp", args.mlp,
            "--peak-seconds", str(args.peak_seconds), "--worker", out]
    if args.size:
        argv += ["--size", args.size]
    for key in ("n_layer", "d_model", "n_head"):
        if getattr(args, key) is not None:
            argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    if args.compile:
        argv.append("--compile")
    return argv


def run_cpu_settings(args) -> list[dict]:
    """Each setting in its own process (OMP_WAIT_POLICY is read once, at torch import)."""
    settings = [s.strip() for s in args.threads.split(",") if s.strip()]
    runs: dict[str, list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for s in settings:
                passive = s.endswith("p")
                threads = int(s.rstrip("p"))
                env = dict(os.environ)
                if passive:
                    env["OMP_WAIT_POLICY"] = "PASSIVE"
                out = os.path.join(tmp, f"{s}-{rnd}.json")
                proc = subprocess.run(worker_argv(args, threads, out), env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"worker for threads={s} failed:\n{proc.stderr[-3000:]}")
                with open(out) as f:
                    r = json.load(f)
                r["setting"] = s
                r["omp_wait_policy"] = env.get("OMP_WAIT_POLICY", "default")
                runs[s].append(r)
                print(f"  round {rnd + 1}/{args.rounds} threads={s}: {r['tokens_per_s']:.0f} tok/s, "
                      f"MFU {100 * r['mfu']:.1f}% (CPU time {100 * r['mfu_cpu_time']:.1f}%)", flush=True)
    # One row per setting: the round with the median tokens/s (all rounds kept in JSON).
    results = []
    for s, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["tokens_per_s"])
        row = dict(rs[len(rs) // 2])
        row["rounds"] = rs
        results.append(row)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--threads", default="1,2,2p",
                   help="CPU thread settings to compare, comma separated; suffix p = OMP_WAIT_POLICY=PASSIVE")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of all CPU settings")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 on GPU, on CPU whichever matmul is measured faster")
    p.add_argument("--size", default=None, choices=sorted(NAMED_SIZES), help="named shape (default 10m CPU, 124m GPU)")
    p.add_argument("--n-layer", dest="n_layer", type=int, default=None)
    p.add_argument("--d-model", dest="d_model", type=int, default=None)
    p.add_argument("--n-head", dest="n_head", type=int, default=None)
    p.add_argument("--mlp", default="swiglu", choices=["swiglu", "relu2"])
    p.add_argument("--vocab", type=int, default=None, help="default 1024 CPU, 50257 GPU")
    p.add_argument("--seq-len", dest="seq_len", type=int, default=None, help="default 256 CPU, 1024 GPU")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8 CPU, 16 GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 8 CPU, 30 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2 CPU, 10 GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--peak-seconds", dest="peak_seconds", type=float, default=1.5)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one CPU setting -> JSON file
    args = p.parse_args(argv)
    resolve_defaults(args)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    cfg = build_config(args)

    if args.worker:  # child process: one thread setting
        dtype = DTYPES[args.dtype]
        result = run_one(args, cfg, device, dtype, int(args.threads))
        with open(args.worker, "w") as f:
            json.dump(result, f)
        return 0

    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        dtype = DTYPES.get(args.dtype, torch.bfloat16)
    else:
        if args.dtype == "auto":
            top = max(int(s.strip().rstrip("p")) for s in args.threads.split(","))
            args.dtype = "bf16" if pick_cpu_dtype(threads=top) == torch.bfloat16 else "fp32"
        dtype = DTYPES[args.dtype]

    counts = count_params(cfg)
    print(f"model: {cfg.n_layer} layers x d_model {cfg.d_model}, {cfg.n_head} heads, {cfg.mlp}, "
          f"vocab {cfg.vocab_size} (padded {cfg.padded_vocab}), seq {cfg.seq_len}; "
          f"params non-embedding {counts['non_embedding'] / 1e6:.2f}M, total {counts['total'] / 1e6:.2f}M; "
          f"{flops_per_token(cfg) / 1e6:.1f} MFLOP/token (train)")
    print(f"batch {args.batch} x {cfg.seq_len} tokens/step, {args.steps} timed steps after {args.warmup}, "
          f"dtype {str(dtype).replace('torch.', '')}, compile {args.compile}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if gpu else f" ({platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs)")
          + f", torch {torch.__version__}", flush=True)

    if gpu:
        results = [run_one(args, cfg, device, dtype, None)]
        results[0]["setting"] = "-"
    else:
        results = run_cpu_settings(args)

    cols = [("threads", lambda r: r["setting"]),
            ("step s (med)", lambda r: f"{r['step_s_median']:.3f}"),
            ("tokens/s", lambda r: f"{r['tokens_per_s']:,.0f}"),
            ("model GFLOP/s", lambda r: f"{r['model_flops_per_s'] / 1e9:,.1f}"),
            ("peak GFLOP/s", lambda r: f"{r['peak_flops_per_s'] / 1e9:,.1f}" if r["peak_flops_per_s"] else "?"),
            ("MFU %", lambda r: f"{100 * r['mfu']:.1f}" if r["mfu"] else "?"),
            ("MFU % (best step)", lambda r: f"{100 * r['mfu_best_step']:.1f}" if r["mfu_best_step"] else "?"),
            ("MFU % (CPU time)", lambda r: f"{100 * r['mfu_cpu_time']:.1f}" if r["mfu_cpu_time"] else "-"),
            ("load 1m before/after", lambda r: f"{r['load_before'][0]:.2f}/{r['load_after'][0]:.2f}")]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in results:
        print("| " + " | ".join(f(r) for _, f in cols) + " |")
    for r in results:
        print(f"threads {r['setting']}: peak = {r['peak_kind']}; measured matmul peak before "
              f"{r['measured_matmul_peak_before'] / 1e9:,.1f} / after {r['measured_matmul_peak_after'] / 1e9:,.1f} "
              f"GFLOP/s; warm-up {r['warmup_s']:.1f}s")
    if args.json:
        out = {"argv": sys.argv, "config": dataclasses.asdict(cfg), "params": counts,
               "flops_per_token": flops_per_token(cfg), "torch": torch.__version__, "device": str(device),
               "results": results}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
