"""Golf quantization and compression techniques, each against the default, post round trip.

Two parts, both optional, in one invocation:

1. `--train-seed S` (repeatable): trains, per seed, the baseline and a quantization-aware
   run (golf.qat_frac) one after the other, at a FIXED step count (`--steps`,
   train.max_steps; the wall-clock cap is lifted so that the box's load changes the time,
   not the result), into `--runs-dir`/base-sS and qat-sS, and reports QAT - baseline;
2. post-training variants (`--variants`, default all of VARIANTS) on finished runs (the
   baseline runs just trained, plus any `--run DIR`): each re-quantizes the run's weights
   (no training: train.resume on a finished run), writes the artifact, rebuilds the model
   from it (bit-exact) and scores the full val split; reported against the first variant.

Deltas are paired per run (same weights or same seed) with a Student-t 95% CI over the
runs (scalelab.eval.stats.mean_ci; with 2 runs the t factor is 12.7).

    .venv/bin/python bench/bench_golf_quant.py configs/golf-cpu-regime.yaml --steps 2000 \\
        --train-seed 1 --train-seed 2 --runs-dir runs/bench-golf-quant --out runs/bench-golf-quant/rows.json
    .venv/bin/python bench/bench_golf_quant.py configs/golf-cpu-regime.yaml --run runs/golf-regime-s1 ...
    .venv/bin/python bench/bench_golf_quant.py configs/golf-cpu-regime.yaml --qat-step-time

Variants are measured with the budget lifted and then judged against the config's
golf.budget_bytes (code + weights; "OVER" in the output). `--qat-step-time` times one
training step with QAT on and off, interleaved in one process (the load-robust ratio).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_EMB8 = "golf.quant_overrides={tok_emb.weight: int8}"
VARIANTS = {  # name: golf overrides (the first is the reference of the deltas)
    "int6 + int8 emb, rtn, lzma/zstd/zlib (default)": ["golf.quant=int6", _EMB8, "golf.quant_method=rtn"],
    "+ brotli": ["golf.quant=int6", _EMB8, "golf.compressors=[zlib, lzma, zstd, brotli]"],
    "+ best compressor per tensor": ["golf.quant=int6", _EMB8, "golf.compressors=[zlib, lzma, zstd, brotli]",
                                     "golf.compress_per=auto"],
    "+ per tensor + row reordering": ["golf.quant=int6", _EMB8, "golf.compressors=[zlib, lzma, zstd, brotli]",
                                      "golf.compress_per=auto", "golf.row_reorder=true"],
    "+ low-rank r4, 2 tensors": ["golf.quant=int6", _EMB8, "golf.lowrank_rank=4", "golf.lowrank_tensors=2"],
    "+ low-rank r4, all tensors": ["golf.quant=int6", _EMB8, "golf.lowrank_rank=4", "golf.lowrank_tensors=99"],
    "gptq": ["golf.quant=int6", _EMB8, "golf.quant_method=gptq"],
    "int5 + int8 emb, rtn": ["golf.quant=int5", _EMB8],
    "int5 + int8 emb, low-rank r4, all tensors": ["golf.quant=int5", _EMB8, "golf.lowrank_rank=4",
                                                  "golf.lowrank_tensors=99"],
}
QUIET = ["golf.sliding_stride=null", "train.progress=false"]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _row(kind: str, run: str, name: str, r: dict, seconds: float) -> dict:
    ent = r.get("entropy", {}).get("overall", {})
    return {"kind": kind, "run": run, "variant": name, "pre": r["eval"]["pre"]["val_bpb"], "post": r["val_bpb"],
            "gap": r["eval"]["quant_gap_bpb"], "weights_bytes": r["artifact"]["weights_bytes"],
            "total_bytes": r["artifact"]["total_bytes"], "bits_per_param": r["artifact"]["bits_per_param"],
            "entropy_bits_per_param": ent.get("entropy_bits_per_param"), "quant_s": r["quant"]["seconds"],
            "train_s": r["train"]["train_time_s"], "steps": r["train"]["steps"], "seconds": round(seconds, 1),
            "chosen": r["compression"]["chosen"], "exact": r["roundtrip_bit_exact"], "load_1m": _load()}


def _print(row: dict) -> None:
    print(f"{row['run']} | {row['variant']} | pre {row['pre']:.4f} | post {row['post']:.4f} | gap {row['gap']:+.4f} | "
          f"weights {row['weights_bytes']:,} | {row['bits_per_param']} b/p (entropy {row['entropy_bits_per_param']}) | "
          f"{row['chosen']} | quant {row['quant_s']:.1f} s | train {row['train_s']:.0f} s / {row['steps']} steps | "
          f"load {row['load_1m']}", flush=True)


def _late_step_ratio(out_dir: str, frac: float) -> float | None:
    """Median step time of the last `frac` of the steps over that of the window before it,
    from the run's metrics.jsonl: QAT's per-step cost, robust to the box's load drifting
    slowly (the same ratio of a baseline run is ~1)."""
    import statistics

    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    times = [r["step_time"] for r in map(json.loads, open(path)) if r.get("kind") == "train" and "step_time" in r]
    n = int(len(times) * frac)
    if n < 5:
        return None
    return round(statistics.median(times[-n:]) / statistics.median(times[-2 * n:-n]), 3)


def _seed_of(out_dir: str) -> int:
    """The seed a finished run was trained with (its config.yaml): a resume must use it."""
    import yaml

    with open(os.path.join(out_dir, "config.yaml")) as f:
        return int(yaml.safe_load(f)["seed"])


def _deltas(rows: list[dict], ref: str, name: str, runs_of) -> None:
    from scalelab.eval.stats import mean_ci

    pairs = []
    for run in sorted({r["run"] for r in rows}):
        by = {r["variant"]: r for r in rows if r["run"] == run}
        if ref in by and name in by:
            pairs.append((by[name], by[ref]))
    if not pairs:
        return
    d = [a["post"] - b["post"] for a, b in pairs]
    ci = mean_ci(d)
    db = [a["weights_bytes"] - b["weights_bytes"] for a, b in pairs]
    dt = [(a["quant_s"] - b["quant_s"]) if runs_of == "quant" else (a["train_s"] - b["train_s"]) for a, b in pairs]
    print(f"  {name} - {ref}: post val_bpb {ci['mean']:+.4f} [95% CI {ci['lo']:+.4f}, {ci['hi']:+.4f}] "
          f"(per run {', '.join(f'{x:+.4f}' for x in d)}) | weights bytes {sum(db) / len(db):+,.0f} "
          f"(per run {', '.join(f'{x:+,}' for x in db)}) | {runs_of} s {sum(dt) / len(dt):+.1f}", flush=True)


def qat_step_ratio(config: str, sets: list[str], reps: int = 60) -> dict:
    """Training-step time with QAT on / off, interleaved in one process (the config's
    model and batch, AdamW, one thread): the load-robust time cost of fake quantization."""
    import dataclasses
    import statistics

    import torch

    from scalelab.golf.config import load_golf_config
    from scalelab.golf.qat import disable, enable
    from scalelab.model.gpt import GPT

    run, golf = load_golf_config(config, sets)
    torch.set_num_threads(run.train.threads or 1)
    torch.manual_seed(0)
    cfg = run.model
    model = GPT(dataclasses.replace(cfg, vocab_size=cfg.vocab_size or run.data.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, model.cfg.vocab_size, (run.train.micro_batch, cfg.seq_len))
    spec = golf.quant_spec()

    def step() -> float:
        t0 = time.perf_counter()
        loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for _ in range(5):
        step()
    on, off = [], []
    for i in range(reps):
        for qat in ((False, True) if i % 2 else (True, False)):
            enable(model, spec) if qat else disable(model)
            (on if qat else off).append(step())
    return {"off_ms": 1000 * statistics.median(off), "on_ms": 1000 * statistics.median(on),
            "ratio": statistics.median(on) / statistics.median(off), "reps": reps}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--run", action="append", default=[], help="out_dir of a finished golf run (repeatable)")
    p.add_argument("--train-seed", action="append", type=int, default=[], help="train baseline + QAT for this seed")
    p.add_argument("--steps", type=int, default=2000, help="train.max_steps of the trained runs")
    p.add_argument("--qat-frac", type=float, default=0.2)
    p.add_argument("--runs-dir", default="runs/bench-golf-quant")
    p.add_argument("--variants", default=None, help="subset of the variant names, separated by ; (default: all)")
    p.add_argument("--no-variants", action="store_true", help="only the training comparison")
    p.add_argument("--set", action="append", default=[], help="extra override for every run and variant")
    p.add_argument("--out", default=None, help="write all rows as JSON here")
    p.add_argument("--qat-step-time", action="store_true", help="only time a training step with QAT on vs off")
    args = p.parse_args()
    if args.qat_step_time:
        r = qat_step_ratio(args.config, args.set)
        print(f"training step, QAT off {r['off_ms']:.1f} ms, on {r['on_ms']:.1f} ms (median of {r['reps']} "
              f"interleaved): {r['ratio']:.2f}x | load {_load()}", flush=True)
        return 0

    from scalelab.golf.config import load_golf_config
    from scalelab.golf.run import run_golf

    print(f"load at start: {_load()}", flush=True)
    rows, runs = [], {d: [f"seed={_seed_of(d)}"] for d in args.run}  # out_dir -> the overrides it was trained with
    fixed = [f"train.max_steps={args.steps}", "train.max_time_s=1000000"]
    for seed in args.train_seed:
        for arm, ov in (("baseline", []), (f"qat {args.qat_frac}", [f"golf.qat_frac={args.qat_frac}"])):
            out_dir = os.path.join(args.runs_dir, f"{'base' if arm == 'baseline' else 'qat'}-s{seed}")
            # A finished run of an earlier invocation is re-scored, not retrained (same weights).
            again = ["train.resume=true"] if os.path.isfile(os.path.join(out_dir, "golf.json")) else []
            run, golf = load_golf_config(args.config, [*args.set, *fixed, *QUIET, f"seed={seed}",
                                                       f"out_dir={out_dir}", *ov, *again])
            t0 = time.perf_counter()
            r = run_golf(run, golf, progress=False)
            rows.append(_row("train", f"s{seed}", arm, r, time.perf_counter() - t0))
            rows[-1]["late_step_time_ratio"] = _late_step_ratio(out_dir, args.qat_frac)
            rows[-1]["reused"] = bool(again)
            _print(rows[-1])
            print(f"    last {args.qat_frac:.0%} of steps / the window before (median step time): "
                  f"{rows[-1]['late_step_time_ratio']}{' (reused run)' if again else ''}", flush=True)
            if arm == "baseline":
                runs[out_dir] = [*fixed, f"seed={seed}"]
    if args.train_seed:
        print("\nQAT - baseline (same seed, same step count), post round trip:")
        _deltas([r for r in rows if r["kind"] == "train"], "baseline", f"qat {args.qat_frac}", "train")

    names = list(VARIANTS) if not args.variants else [n.strip() for n in args.variants.split(";")]
    budget = load_golf_config(args.config, args.set)[1].budget_bytes
    if not args.no_variants and runs:
        for out_dir, trained_with in runs.items():
            for name in names:
                run, golf = load_golf_config(args.config, [*args.set, *trained_with, *QUIET, f"out_dir={out_dir}",
                                                           "train.resume=true", *VARIANTS[name],
                                                           "golf.budget_bytes=1000000000"])  # measured, then judged
                t0 = time.perf_counter()
                r = run_golf(run, golf, progress=False)
                rows.append(_row("quant", out_dir, name, r, time.perf_counter() - t0))
                rows[-1]["fits_budget"] = r["artifact"]["total_bytes"] <= budget
                rows[-1]["code_bytes"] = r["artifact"]["code_bytes"]
                _print(rows[-1])
                print(f"    code {rows[-1]['code_bytes']:,} + weights = {rows[-1]['total_bytes']:,}: "
                      f"{'fits' if rows[-1]['fits_budget'] else 'OVER'} golf.budget_bytes={budget:,}", flush=True)
        print(f"\nvariant - {names[0]} (paired on the same weights), post round trip:")
        for name in names[1:]:
            _deltas([r for r in rows if r["kind"] == "quant"], names[0], name, "quant")
    print(f"load at end: {_load()}", flush=True)
    if args.out:
        from scalelab.io import atomic_write_json

        atomic_write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
