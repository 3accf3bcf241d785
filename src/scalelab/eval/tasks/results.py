"""Task results on disk (results.json, results.md, samples_<task>.jsonl) and paired comparisons."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.eval.scoring import EvalError
from scalelab.io import read_json

RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
# The scores a task's results carry as a mean with a 95% CI (`<metric>`, `<metric>_ci`).
SCORED_METRICS = ("acc", "acc_norm", "bpb")


def write_results(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """results.json (no per-example data), results.md, samples_<task>.jsonl.

    All files are first written beside their targets under temp names and renamed only
    once every one is complete: a full disk (or any failed write) leaves the previous
    results as they were and no partial files, and ends in one DataError."""
    from scalelab.data.outdir import json_text, stage_files

    out = Path(out_dir)
    paths: dict[str, Path] = {}
    body = {k: v for k, v in results.items() if k != "samples"}
    texts: dict[str, str] = {}
    files = {}
    for task, records in (results.get("samples") or {}).items():
        name = f"samples_{task}.jsonl"
        texts[name] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        files[task] = name
        paths[f"samples_{task}"] = out / name
    if files:
        body["samples"] = files
    texts[RESULTS_FILE] = json_text(body)
    texts[TABLE_FILE] = format_table(results)
    stage_files(out, texts, hint="or pass --out DIR on a disk with room")
    paths["results"] = out / RESULTS_FILE
    paths["table"] = out / TABLE_FILE
    return paths


def load_results(path: str | Path) -> dict:
    """A results.json (or its directory), with the per-example records loaded back."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    data = read_json(p, EvalError, f"no results at '{path}' (expected a results.json or a directory holding one)",
                     lambda e: f"'{p}' is not a readable results.json ({e})")
    samples = {}
    for task, name in (data.get("samples") or {}).items():
        f = p.parent / name
        if f.is_file():
            samples[task] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    data["samples"] = samples
    data["_path"] = str(p)
    return data


def _fmt(v, digits=4):
    return "" if v is None else f"{v:.{digits}f}"


def format_table(results: dict) -> str:
    m = results.get("model", {})
    lines = [f"# Evaluation: {m.get('name', '?')}", ""]
    if m.get("hash"):
        lines += [f"model hash `{m['hash']}`, {results.get('config', {}).get('device', '')} "
                  f"{results.get('config', {}).get('dtype', '')}, 0-shot", ""]
    lines += ["| task | metric | value | ± stderr | 95% CI | n | truncated |", "|---|---|---:|---:|---|---:|---:|"]
    for task, res in results.get("results", {}).items():
        metrics = [k for k in res if isinstance(res.get(f"{k}_ci"), list)]
        for metric in metrics:
            lo, hi = res[f"{metric}_ci"]
            d = 2 if metric in ("perplexity", "loss_ppl", "ppl") else 4
            ci = f"[{_fmt(lo, d)}, {_fmt(hi, d)}]" if lo is not None else ""
            lines.append(f"| {task} | {metric} | {_fmt(res[metric], d)} | {_fmt(res.get(f'{metric}_stderr'), d)} | {ci} "
                         f"| {res.get('n', '')} | {res.get('n_truncated', '')} |")
    lines.append("")
    ci_note = ("Accuracies: Wilson 95% intervals; perplexities and means: percentile bootstrap over "
               "examples (documents / windows for language-modelling metrics).")
    lines += [ci_note, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Comparison


def compare(results_a: dict | str | Path, results_b: dict | str | Path, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired bootstrap of (A - B) per task and metric over the examples both scored."""
    from scalelab.eval import stats

    a = results_a if isinstance(results_a, dict) else load_results(results_a)
    b = results_b if isinstance(results_b, dict) else load_results(results_b)
    sa, sb = a.get("samples") or {}, b.get("samples") or {}
    out: dict[str, Any] = {"a": a.get("model", {}), "b": b.get("model", {}), "tasks": {}}
    for task in sa:
        if task not in sb:
            continue
        ra = {r["doc_id"]: r for r in sa[task]}
        rb = {r["doc_id"]: r for r in sb[task]}
        common = sorted(set(ra) & set(rb))
        if not common:
            continue
        metrics = [k for k in (*SCORED_METRICS, "ll") if k in ra[common[0]] and k in rb[common[0]]]
        per = {}
        for metric in metrics:
            x = [float(ra[i][metric]) for i in common]
            y = [float(rb[i][metric]) for i in common]
            d = stats.paired_bootstrap_diff(x, y, n_boot=n_boot, seed=seed)
            per[metric] = {"a": float(np.mean(x)), "b": float(np.mean(y)), "diff": d["diff"], "ci": [d["lo"], d["hi"]],
                           "p_value": d["p_value"], "n": d["n"]}
        out["tasks"][task] = per
    if not out["tasks"]:
        raise EvalError("the two results share no task with per-example records (samples_*.jsonl); evaluate "
                        "both on the same tasks")
    return out


def format_compare(cmp: dict) -> str:
    lines = [f"A: {cmp['a'].get('name', '?')}  vs  B: {cmp['b'].get('name', '?')}", "",
             "| task | metric | A | B | A - B | 95% CI | p | n |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for task, per in cmp["tasks"].items():
        for metric, r in per.items():
            lines.append(f"| {task} | {metric} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | "
                         f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] | {r['p_value']:.3g} | {r['n']} |")
    lines += ["", "Paired bootstrap over the examples both runs scored (ll: per-example log-likelihood of "
              "the target)."]
    return "\n".join(lines)
