"""Post-training quantization variants on finished golf runs: RTN vs GPTQ, bit widths.

Re-quantizes each finished run (no training: `train.resume=true` on a completed run) once
per variant and prints val_bpb after the round trip, the quantization gap and the weight
bytes, side by side, plus the GPTQ - RTN delta per bit width over the runs.

    .venv/bin/python bench/bench_golf_quant.py configs/golf-cpu-regime.yaml \\
        --run runs/golf-regime-s1 --run runs/golf-regime-s2 [--set key=value ...]

The runs must have been trained with the same config and the same --set overrides
(seed, train.max_time_s) first, e.g. `scalelab golf configs/golf-cpu-regime.yaml
out_dir=runs/golf-regime-s1 seed=1`: with a longer cap than the run had, the resume
trains on to the new cap before the first variant (the trainer's resume semantics).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VARIANTS = {  # name: golf overrides
    "int6 + int8 emb, rtn": ["golf.quant=int6", "golf.quant_overrides={tok_emb.weight: int8}",
                             "golf.quant_method=rtn"],
    "int6 + int8 emb, gptq": ["golf.quant=int6", "golf.quant_overrides={tok_emb.weight: int8}",
                              "golf.quant_method=gptq"],
    "int6 everywhere, rtn": ["golf.quant=int6", "golf.quant_overrides={}", "golf.quant_method=rtn"],
    "int5 + int8 emb, rtn": ["golf.quant=int5", "golf.quant_overrides={tok_emb.weight: int8}",
                             "golf.quant_method=rtn"],
    "int5 + int8 emb, gptq": ["golf.quant=int5", "golf.quant_overrides={tok_emb.weight: int8}",
                              "golf.quant_method=gptq"],
    "int4 + int8 emb, rtn": ["golf.quant=int4", "golf.quant_overrides={tok_emb.weight: int8}",
                             "golf.quant_method=rtn"],
    "int4 + int8 emb, gptq": ["golf.quant=int4", "golf.quant_overrides={tok_emb.weight: int8}",
                              "golf.quant_method=gptq"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--run", action="append", required=True, help="out_dir of a finished golf run (repeatable)")
    p.add_argument("--set", action="append", default=[], help="extra override for every variant")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()

    from scalelab.golf.config import load_golf_config
    from scalelab.golf.run import run_golf

    rows = []
    for out_dir in args.run:
        for name, ov in VARIANTS.items():
            run, golf = load_golf_config(args.config, [*args.set, f"out_dir={out_dir}", "train.resume=true",
                                                       "golf.sliding_stride=null", "train.progress=false", *ov])
            r = run_golf(run, golf, progress=False)
            rows.append({"run": out_dir, "variant": name, "pre": r["eval"]["pre"]["val_bpb"],
                         "post": r["val_bpb"], "gap": r["eval"]["quant_gap_bpb"],
                         "weights_bytes": r["artifact"]["weights_bytes"], "total_bytes": r["artifact"]["total_bytes"],
                         "bits_per_param": r["artifact"]["bits_per_param"], "quant_s": r["quant"]["seconds"],
                         "exact": r["roundtrip_bit_exact"], "load_1m": r["machine"]["load_1m_after"]})
            row = rows[-1]
            print(f"{out_dir} | {name} | pre {row['pre']:.4f} | post {row['post']:.4f} | gap {row['gap']:+.4f} | "
                  f"weights {row['weights_bytes']:,} | total {row['total_bytes']:,} | {row['bits_per_param']} b/p | "
                  f"quant {row['quant_s']:.1f} s | load {row['load_1m']}", flush=True)
    print("\nGPTQ - RTN (post round trip val_bpb), per run:")
    for bits in ("int6", "int5", "int4"):
        deltas = []
        for out_dir in args.run:
            by = {r["variant"]: r["post"] for r in rows if r["run"] == out_dir}
            deltas.append(by[f"{bits} + int8 emb, gptq"] - by[f"{bits} + int8 emb, rtn"])
        mean = statistics.mean(deltas)
        print(f"  {bits}: " + ", ".join(f"{d:+.4f}" for d in deltas) + f"  (mean {mean:+.4f})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
