"""Measured matmul peak of this machine: fp32 and bf16, 1 and 2 threads, side by side.

    .venv/bin/python bench/matmul_peak.py [--seconds 1.5] [--threads 1,2] [--device cuda]

The numbers MFU is divided by on CPU (see scalelab.train.hardware). On a GPU it prints
the measured bf16 matmul rate next to the vendor's dense bf16 peak.
"""
from __future__ import annotations

import argparse

import torch

from scalelab.train.hardware import gpu_peak_flops, machine_load, measure_matmul_peak, pick_cpu_dtype


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seconds", type=float, default=1.5)
    args = p.parse_args(argv)
    print(f"load before: {machine_load()}")
    if args.device.startswith("cuda"):
        dev = torch.device(args.device)
        meas = measure_matmul_peak(torch.bfloat16, seconds=args.seconds, device=dev)
        peak = gpu_peak_flops(dev)
        print(f"{torch.cuda.get_device_name(dev)}: measured bf16 {meas / 1e12:.0f} TFLOP/s; "
              f"vendor dense bf16 peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
        return 0
    print("| threads | dtype | wall GFLOP/s | per CPU-second GFLOP/s |")
    print("|---|---|---|---|")
    for t in (int(x) for x in args.threads.split(",")):
        for dt in (torch.float32, torch.bfloat16):
            wall = measure_matmul_peak(dt, seconds=args.seconds, threads=t)
            cpu = measure_matmul_peak(dt, seconds=args.seconds, threads=t, clock="cpu")
            print(f"| {t} | {str(dt).replace('torch.', '')} | {wall / 1e9:.1f} | {cpu / 1e9:.1f} |")
    print(f"pick_cpu_dtype(): {pick_cpu_dtype()}")
    print(f"load after: {machine_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
