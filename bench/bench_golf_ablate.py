"""Golf model / training / evaluation techniques, each against the regime baseline, post round trip.

Every arm trains per seed at a FIXED step count (`--steps` = train.max_steps, the cap lifted
to --max-time so that the box's load changes the time, not the tokens seen), one run at a
time, one thread each, then quantizes, round-trips and scores (scalelab.golf.run.run_golf).
Eval-only arms (TTT) re-score the baseline's runs (train.resume on a finished run: no
training). For each arm, paired by seed against `--ref` (default: baseline): the mean
delta of the post-round-trip val_bpb (plain windows, and the arm's scoring evaluation:
sliding / TTT) with a Student-t 95% CI over seeds (scalelab.eval.stats.mean_ci; with 2
seeds the t factor is 12.7), the weights-bytes delta and the train / eval time delta.
Rows are written to --out after every run (nothing is lost if it is stopped).

    .venv/bin/python bench/bench_golf_ablate.py --steps 600 --seeds 1,2 \\
        --arms baseline,baseline_recipe,leaky_relu2,rope_half,muon_pe,loop,sp1024_w24,muon --eval-arms ttt_lora,ttt_full \\
        --runs-dir runs/bench-golf-ablate --out runs/bench-golf-ablate/rows.json
    .venv/bin/python bench/bench_golf_ablate.py --steps 600 --seeds 1,2 --arms baseline_recipe,best \\
        --ref baseline_recipe --runs-dir runs/bench-golf-ablate --out runs/bench-golf-ablate/summary.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REGIME = "configs/golf-cpu-regime.yaml"
BASELINE_RECIPE = "configs/golf-baseline-regime.yaml"
SP1024 = ["data.dir=data/bbcnews-sp1024", "data.tokenizer=sentencepiece", "data.vocab_size=1024"]
ARMS = {  # name: (config, overrides); trained per seed
    "baseline": (REGIME, []),
    "loop": (REGIME, ["model.loop_layers=0,1", "model.loop_count=2"]),
    "rope_half": (REGIME, ["model.rope_frac=0.5"]),
    "leaky_relu2": (REGIME, ["model.mlp=leaky_relu2"]),
    "muon": (REGIME, ["train.optimizer=muon", "train.muon_lr=0.02"]),
    "muon_pe": (REGIME, ["train.optimizer=muon", "train.muon_lr=0.02", "train.muon_ns=polar_express"]),
    "sp1024": (REGIME, SP1024 + ["golf.budget_bytes=1000000"]),  # same 2 x 32: over the 70 KB budget
    "sp1024_w24": (REGIME, SP1024 + ["model.d_model=24"]),  # narrowed to fit the budget
    "baseline_recipe": (BASELINE_RECIPE, []),
    "best": (REGIME, []),  # filled by --best-set
}
EVAL_ARMS = {  # name: golf overrides, re-scoring the baseline's runs
    "ttt_lora": ["golf.ttt=lora", "golf.ttt_lr=3e-3"],
    "ttt_full": ["golf.ttt=full", "golf.ttt_lr=3e-4"],
}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _row(arm: str, seed: int, r: dict, seconds: float) -> dict:
    e = r["eval"]
    return {"arm": arm, "seed": seed, "post": r["val_bpb"], "pre": e["pre"]["val_bpb"],
            "sliding": e.get("post_sliding", {}).get("val_bpb"), "score": e["score"]["val_bpb"],
            "score_method": e["score"]["method"], "score_s": e["score"]["seconds"], "eval_over_cap": e["score"]["over_cap"],
            "plain_eval_s": e["post"]["seconds"], "weights_bytes": r["artifact"]["weights_bytes"],
            "code_bytes": r["artifact"]["code_bytes"], "total_bytes": r["artifact"]["total_bytes"],
            "budget_ok": r["artifact"]["budget_ok"], "params": r["quant"]["params"],
            "bits_per_param": r["artifact"]["bits_per_param"], "steps": r["train"]["steps"],
            "tokens": r["train"]["tokens"], "train_s": round(r["train"]["train_time_s"], 1),
            "seconds": round(seconds, 1), "load_before": r["machine"]["load_1m_before"], "load_after": _load()}


def _run(config: str, overrides: list[str]) -> dict:
    from scalelab.golf.config import load_golf_config
    from scalelab.golf.run import BudgetError, run_golf

    run, golf = load_golf_config(config, overrides)
    try:
        return run_golf(run, golf, progress=False)
    except BudgetError:  # golf.json is written first: the row says budget_ok false
        return json.loads(open(os.path.join(run.out_dir, "golf.json")).read())


def _print(row: dict) -> None:
    print(f"{row['arm']} s{row['seed']} | post {row['post']:.4f} | {row['score_method']} {row['score']:.4f} "
          f"({row['score_s']:.1f} s) | weights {row['weights_bytes']:,} total {row['total_bytes']:,} "
          f"{'fits' if row['budget_ok'] else 'OVER'} | {row['params']:,} params | {row['steps']} steps "
          f"{row['train_s']:.0f} s | load {row['load_before']}->{row['load_after']}", flush=True)


def deltas(rows: list[dict], ref: str) -> list[dict]:
    """Per arm: the paired (by seed) mean delta vs `ref` with a 95% CI, of post and score."""
    from scalelab.eval.stats import mean_ci

    base = {r["seed"]: r for r in rows if r["arm"] == ref}
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != ref):
        pairs = [(r, base[r["seed"]]) for r in rows if r["arm"] == arm and r["seed"] in base]
        if not pairs:
            continue
        d = {k: [a[k] - b[k] for a, b in pairs] for k in ("post", "score", "weights_bytes", "train_s", "score_s")}
        ent = {"arm": arm, "ref": ref, "n": len(pairs), "per_seed_post": d["post"]}
        for k in ("post", "score"):
            ci = mean_ci(d[k]) if len(pairs) > 1 else {"mean": d[k][0], "lo": float("nan"), "hi": float("nan")}
            ent[k] = {"mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]}
        for k in ("weights_bytes", "train_s", "score_s"):
            ent[k] = sum(d[k]) / len(d[k])
        ent["budget_ok"] = all(a["budget_ok"] for a, _ in pairs)
        out.append(ent)
    return out


def _print_deltas(ds: list[dict]) -> None:
    for e in ds:
        p, s = e["post"], e["score"]
        print(f"  {e['arm']} - {e['ref']} (n={e['n']}): post {p['mean']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}] | "
              f"score {s['mean']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}] | weights {e['weights_bytes']:+,.0f} B | "
              f"train {e['train_s']:+.1f} s | score eval {e['score_s']:+.1f} s | "
              f"{'fits' if e['budget_ok'] else 'OVER budget'}", flush=True)


def markdown(rows: list[dict], ds: list[dict], ref: str) -> str:
    """The docs table: per arm, mean post / score over seeds, the paired deltas with CIs, bytes, time."""
    def mean(arm, k):
        v = [r[k] for r in rows if r["arm"] == arm and r[k] is not None]
        return sum(v) / len(v) if v else float("nan")

    out = [f"| arm | seeds | post val_bpb | Δ post vs {ref} [95% CI] | score (method) | Δ score [95% CI] | "
           f"weights bytes (Δ) | total bytes | train s (Δ) | score eval s (Δ) |", "|" + "---|" * 10]
    r0 = [r for r in rows if r["arm"] == ref]
    if r0:
        out.append(f"| {ref} | {len(r0)} | {mean(ref, 'post'):.4f} | | {mean(ref, 'score'):.4f} ({r0[0]['score_method']}) "
                   f"| | {mean(ref, 'weights_bytes'):,.0f} | {mean(ref, 'total_bytes'):,.0f} | {mean(ref, 'train_s'):.0f} | "
                   f"{mean(ref, 'score_s'):.1f} |")
    for e in ds:
        a, p, s = e["arm"], e["post"], e["score"]
        method = next(r["score_method"] for r in rows if r["arm"] == a)
        out.append(f"| {a} | {e['n']} | {mean(a, 'post'):.4f} | {p['mean']:+.4f} [{p['lo']:+.4f}, {p['hi']:+.4f}] | "
                   f"{mean(a, 'score'):.4f} ({method}) | {s['mean']:+.4f} [{s['lo']:+.4f}, {s['hi']:+.4f}] | "
                   f"{mean(a, 'weights_bytes'):,.0f} ({e['weights_bytes']:+,.0f}) | {mean(a, 'total_bytes'):,.0f}"
                   f"{'' if e['budget_ok'] else ' OVER'} | {mean(a, 'train_s'):.0f} ({e['train_s']:+.0f}) | "
                   f"{mean(a, 'score_s'):.1f} ({e['score_s']:+.1f}) |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--max-time", type=float, default=100000.0, help="train.max_time_s (large: steps bind)")
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--arms", default="baseline,loop,rope_half,leaky_relu2,muon,muon_pe,sp1024_w24")
    p.add_argument("--eval-arms", default="", help="comma-separated EVAL_ARMS, run on the baseline's runs")
    p.add_argument("--best-set", action="append", default=[], help="an override of the 'best' arm (repeatable)")
    p.add_argument("--ref", default="baseline")
    p.add_argument("--runs-dir", default="runs/bench-golf-ablate")
    p.add_argument("--out", default="runs/bench-golf-ablate/rows.json")
    p.add_argument("--set", action="append", default=[], help="extra override for every run")
    p.add_argument("--table", action="store_true", help="only print the table of the rows in --out")
    args = p.parse_args()
    from scalelab.io import atomic_write_json

    ARMS["best"] = (REGIME, args.best_set)
    ARMS["best_qat"] = (REGIME, [*args.best_set, "golf.qat_frac=0.2"])  # + the QAT of golf/qat.py
    if args.table:
        rows = json.loads(open(args.out).read())
        print(markdown(rows, deltas(rows, args.ref), args.ref))
        return 0
    rows = json.loads(open(args.out).read()) if os.path.isfile(args.out) else []  # resume a stopped bench
    done = {(r["arm"], r["seed"]) for r in rows}
    seeds = [int(s) for s in args.seeds.split(",")]
    fixed = [f"train.max_steps={args.steps}", f"train.max_time_s={args.max_time}", "train.threads=1",
             "train.progress=false"]
    print(f"load at start: {_load()}", flush=True)

    def record(arm: str, seed: int, config: str, ov: list[str]) -> None:
        t0 = time.perf_counter()
        r = _run(config, [*fixed, *args.set, *ov])
        rows.append(_row(arm, seed, r, time.perf_counter() - t0))
        _print(rows[-1])
        atomic_write_json(args.out, rows)

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    evals = [a.strip() for a in args.eval_arms.split(",") if a.strip()]
    # arm-major, every seed of an arm before the next arm: a stopped bench keeps complete pairs;
    # the eval-only arms right after the reference arm they re-score
    order = [(a, None) for a in arms[:1]] + [(a, "eval") for a in evals] + [(a, None) for a in arms[1:]]
    for arm, kind in order:
        for seed in seeds:
            if (arm, seed) in done:
                continue
            if kind == "eval":
                config, ov = ARMS[args.ref]
                record(arm, seed, config, [*ov, f"seed={seed}", f"out_dir={args.runs_dir}/{args.ref}-s{seed}",
                                           "train.resume=true", *EVAL_ARMS[arm]])
            else:
                config, ov = ARMS[arm]
                record(arm, seed, config, [*ov, f"seed={seed}", f"out_dir={args.runs_dir}/{arm}-s{seed}"])
    print(f"\narm - {args.ref}, paired by seed, post round trip (95% CI over seeds):")
    ds = deltas(rows, args.ref)
    _print_deltas(ds)
    atomic_write_json(args.out.replace(".json", "-deltas.json"), ds)
    print("\n" + markdown(rows, ds, args.ref), flush=True)
    print(f"load at end: {_load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
