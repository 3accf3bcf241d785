"""Parameter golf: our recipe vs the public baseline recipe, same data, hardware, cap and budget.

Runs `scalelab golf` on each config one after the other (separate processes, so neither
inherits the other's threads or caches), then prints one Markdown table of what each
golf.json says: post-round-trip val_bpb (the score), pre-quantization val_bpb, the
artifact bytes, steps and tokens trained, and the machine load around each run.

    .venv/bin/python bench/bench_golf.py                       # 5-minute cap each (CPU)
    .venv/bin/python bench/bench_golf.py --cap 60 --out runs/bench-golf-short
    .venv/bin/python bench/bench_golf.py --set train.threads=1 # extra overrides for both

The table goes to stdout and to OUT/bench_golf.md; the raw numbers to OUT/bench_golf.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def run_one(name: str, config: str, out_dir: Path, cap: float | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "scalelab", "golf", config, f"out_dir={out_dir}", "train.progress=false", *extra]
    if cap is not None:
        cmd.append(f"train.max_time_s={cap}")
    if out_dir.exists() and (out_dir / "checkpoints").exists():
        raise SystemExit(f"{out_dir} already holds a run; pass another --out")
    before = load1()
    t0 = time.perf_counter()
    print(f"[bench] {name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    # Exit 2 = over the byte budget: golf.json is written first, and the row says EXCEEDED.
    if proc.returncode not in (0, 2) or not (out_dir / "golf.json").is_file():
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    print((proc.stdout.strip().splitlines() or [""])[-1], proc.stderr.strip().splitlines()[-1] if proc.returncode else "",
          flush=True)
    result = json.loads((out_dir / "golf.json").read_text())
    return {"name": name, "config": config, "wall_s": round(wall, 1), "load_1m_before": before,
            "load_1m_after": load1(), "golf": result}


def row(r: dict) -> dict:
    g = r["golf"]
    m, e, a, t = g["model_config"], g["eval"], g["artifact"], g["train"]
    return {
        "recipe": r["name"],
        "model": f"{m['n_layer']}x{m['d_model']}, seq {m['seq_len']}",
        "params": g["quant"]["params"],
        "steps": t["steps"], "tokens": t["tokens"], "epochs": t.get("epochs"), "train_s": round(t["train_time_s"], 1),
        "bpb_pre": e["pre"]["val_bpb"], "bpb_post": e["post"]["val_bpb"],
        "bpb_sliding": e.get("post_sliding", {}).get("val_bpb"),
        "quant": g["quant"]["default"], "compressor": g["compression"]["chosen"],
        "code_bytes": a["code_bytes"], "weights_bytes": a["weights_bytes"], "total_bytes": a["total_bytes"],
        "budget_ok": a["budget_ok"], "load": f"{r['load_1m_before']}/{r['load_1m_after']}",
    }


def table(rows: list[dict]) -> str:
    head = ("| recipe | model | params | steps | tokens (epochs) | train s | val_bpb pre-quant | **val_bpb post round trip** "
            "| sliding (stride 64) | quant + compressor | code + weights = total bytes | budget | load 1m before/after |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        sl = f"{r['bpb_sliding']:.4f}" if r["bpb_sliding"] is not None else "-"
        lines.append(f"| {r['recipe']} | {r['model']} | {r['params']:,} | {r['steps']} | {r['tokens']:,} ({r['epochs'] or 0:.1f}) | "
                     f"{r['train_s']} | {r['bpb_pre']:.4f} | **{r['bpb_post']:.4f}** | {sl} | "
                     f"{r['quant']} + {r['compressor']} | {r['code_bytes']:,} + {r['weights_bytes']:,} = "
                     f"{r['total_bytes']:,} | {'held' if r['budget_ok'] else 'EXCEEDED'} | {r['load']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", default="configs/golf-cpu.yaml")
    ap.add_argument("--baseline", default="configs/golf-baseline.yaml")
    ap.add_argument("--cap", type=float, default=None, help="override train.max_time_s of both (default: theirs)")
    ap.add_argument("--out", default="runs/bench-golf", help="parent of the two run dirs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for both runs")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_one("baseline recipe", args.baseline, out / "baseline", args.cap, args.set),
            run_one("ours", args.ours, out / "ours", args.cap, args.set)]
    rows = [row(r) for r in runs]
    base, ours = rows
    delta = ours["bpb_post"] - base["bpb_post"]
    text = (table(rows) + "\n\n"
            f"ours - baseline (post round trip): {delta:+.4f} val_bpb "
            f"({100 * delta / base['bpb_post']:+.1f}%); {os.cpu_count()} CPUs, torch threads per golf.json: "
            f"{', '.join(str(r['golf']['machine']['torch_threads']) for r in runs)}\n")
    print()
    print(text)
    (out / "bench_golf.md").write_text(text)
    (out / "bench_golf.json").write_text(json.dumps({"rows": rows, "runs": runs, "command": sys.argv}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
