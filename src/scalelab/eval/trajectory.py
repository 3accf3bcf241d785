"""The learning trajectory: one evaluation per saved checkpoint of a run.

    evaluate_checkpoints("runs/100m", "all")             # every kept step_* checkpoint
    evaluate_checkpoints("runs/100m", "last:3")          # the three newest
    evaluate_checkpoints("runs/100m", "step_001000,2000,best")
    load_trajectory("runs/100m")                         # the rows, oldest first (report reads this)

Each checkpoint gets val loss / perplexity / bits per byte on the run's own validation
shards (the first `train.eval_tokens` tokens, bootstrap CIs over windows) and the task set
(default HellaSwag, ARC-Easy, PIQA on one fixed seeded subset, Wilson CIs), written to

    RUN/eval/checkpoints/step_001000.json   one file per checkpoint (format below)
    RUN/eval/checkpoints/index.json         checkpoint -> step, tokens, weights sha256, settings, file

A checkpoint is skipped when the index already holds it with the same weights checksum
(state.json's sha256 of model.safetensors) and the same settings, so a rerun after more
training only evaluates the new checkpoints; entries of checkpoints pruned since stay in
the index (their results are the trajectory's history). Every file is written atomically.
"""
from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scalelab.errors import CheckpointError, ScalelabError
from scalelab.eval.scoring import EvalError
from scalelab.io import atomic_write_json

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
DEFAULT_TASKS = ("hellaswag", "arc_easy", "piqa")
DEFAULT_LIMIT = 500  # per task: a 95% CI of about +-0.04 around 0.3


def default_out(run_dir: str | Path) -> Path:
    return Path(run_dir) / "eval" / "checkpoints"


# -- which checkpoints ------------------------------------------------------------------

def select_checkpoints(run_dir: str | Path, spec: str) -> list[Path]:
    """`all`, `last:N`, or a comma list of step_NNNNNN / NNNN / last / best; oldest first.
    One EvalError naming the available checkpoints when the spec does not match."""
    from scalelab.train import checkpoint as ck

    run = Path(run_dir)
    if not (run / "checkpoints").is_dir():
        raise CheckpointError(f"'{run}' is not a run dir with checkpoints/: `--checkpoints` needs the run dir "
                              "(e.g. runs/100m), not a checkpoint or an HF model")
    kept = sorted(ck.list_checkpoints(run), key=lambda d: ck.step_of(d.name))
    names = ", ".join(d.name for d in kept) or "none"
    spec = (spec or "").strip()
    if spec == "all":
        chosen = kept
    elif spec.startswith("last:"):
        n = spec[len("last:"):]
        if not n.isdigit() or int(n) < 1:
            raise EvalError(f"--checkpoints {spec}: N in last:N must be a whole number >= 1 (e.g. last:3)")
        chosen = kept[-int(n):]
    else:
        chosen = []
        for item in (x.strip() for x in spec.split(",")):
            if not item:
                continue
            if item in ("last", "best"):
                path = ck.find_checkpoint(run, item)
                if path is None:
                    raise EvalError(f"--checkpoints {item}: run '{run}' has no '{item}' checkpoint; kept: {names}")
            else:
                name = ck.step_dirname(int(item)) if item.isdigit() else item
                path = run / "checkpoints" / name
                if ck.step_of(name) is None or not path.is_dir():
                    raise EvalError(f"--checkpoints: no checkpoint '{item}' in '{run / 'checkpoints'}' (kept: "
                                    f"{names}); use all, last:N, or names/steps from that list")
            chosen.append(path)
        chosen = sorted(set(chosen), key=lambda d: ck.step_of(d.name))
    if not chosen:
        raise EvalError(f"--checkpoints {spec!r} selects no checkpoint in '{run}' (kept: {names}); "
                        "use all, last:N, or step_a,step_b")
    return chosen


# -- index and result files -------------------------------------------------------------

def read_index(out: str | Path) -> dict[str, Any]:
    """The index (empty when absent). A damaged index is an error naming the fix."""
    import json

    path = Path(out) / INDEX_FILE
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "kind": "scalelab.checkpoint_evals", "entries": {}}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("entries"), dict):
            raise ValueError("no 'entries' object")
    except (OSError, ValueError, AttributeError) as e:
        raise EvalError(f"checkpoint-eval index '{path}' is unreadable ({e}); delete it to re-evaluate "
                        "the checkpoints from scratch") from None
    return data


def _weights_sha256(ckpt: Path, state: dict[str, Any]) -> str:
    from scalelab.train import checkpoint as ck

    recorded = ((state.get("files") or {}).get(ck.MODEL_FILE) or {}).get("sha256")
    if recorded:
        return recorded
    h = hashlib.sha256()  # a checkpoint written before checksums: hash the weights here
    with open(ckpt / ck.MODEL_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _resolve_data_dir(ckpt: Path, state: dict[str, Any]) -> Path | None:
    d = ((state.get("config") or {}).get("data") or {}).get("dir")
    if not d:
        return None
    p = Path(d)
    run = ckpt.parent.parent
    cands = [p] if p.is_absolute() else [p, run.parent / p, run / p.name]
    return next((c for c in cands if c.is_dir()), None)


# -- evaluating -------------------------------------------------------------------------

def _task_list(tasks) -> list[str]:
    from scalelab.eval import tasks as T

    if tasks is None:
        names = list(DEFAULT_TASKS)
    elif isinstance(tasks, str):
        names = [t.strip() for t in tasks.split(",") if t.strip()]
    else:
        names = list(tasks)
    if names == ["all"]:
        names = sorted(T.builtin_specs())
    for t in names:  # a bad name fails before any checkpoint is loaded
        T.get_spec(t)
    return names


def evaluate_checkpoints(run_dir: str | Path, checkpoints: str = "all", tasks=None, limit: int | None = None,
                         fraction: float | None = None, seed: int = 0, source: str = "auto",
                         lm: str | None = None, lm_max_tokens: int | None = None, device=None, dtype=None,
                         tokenizer=None, batch_size: int | None = None, out: str | Path | None = None,
                         force: bool = False, progress: bool = False, log=print) -> dict[str, Any]:
    """Evaluate each selected checkpoint not yet in the index (see the module docstring).
    Returns {"out", "index", "evaluated", "skipped", "failed"} (checkpoint names; failed: with
    the reason). A checkpoint that cannot be read is reported and the others go on; when
    none could be evaluated, CheckpointError."""
    from scalelab.data.outdir import check_writable
    from scalelab.eval import tasks as T
    from scalelab.eval.lm import evaluate_lm
    from scalelab.eval.loading import load_model_for_eval
    from scalelab.train import checkpoint as ck

    run = Path(run_dir)
    chosen = select_checkpoints(run, checkpoints)
    names = _task_list(tasks)
    if limit is None and fraction is None:
        limit = DEFAULT_LIMIT
    out = Path(out) if out else default_out(run)
    check_writable(out, "the checkpoint-eval folder", "pass --out DIR with a folder you can write to")
    index = read_index(out)
    entries = index["entries"]
    specs = [T.get_spec(t) for t in names]
    examples: dict[str, tuple] = {}  # built once, scored by every checkpoint
    done: dict[str, list] = {"evaluated": [], "skipped": [], "failed": []}
    for ckpt in chosen:
        name = ckpt.name
        try:
            state = ck.load_state(ckpt)
            sha = _weights_sha256(ckpt, state)
        except (CheckpointError, OSError) as e:
            done["failed"].append([name, str(e)])
            log(f"{name}: not evaluated ({e})")
            continue
        data_dir = Path(lm) if lm else _resolve_data_dir(ckpt, state)
        max_tok = lm_max_tokens or ((state.get("config") or {}).get("train") or {}).get("eval_tokens")
        # The data dir as configured (not as resolved here), so a moved run still matches its index.
        lm_name = lm or ((state.get("config") or {}).get("data") or {}).get("dir") if data_dir else None
        settings = {"tasks": names, "limit": limit, "fraction": fraction, "seed": seed,
                    "lm": {"source": lm_name, "split": "val", "max_tokens": max_tok}}
        prev = entries.get(name)
        if not force and prev and prev.get("sha256") == sha and prev.get("settings") == settings \
                and (out / prev.get("file", "")).is_file():
            done["skipped"].append(name)
            log(f"{name}: already evaluated (same weights sha256 and settings), skipped")
            continue
        t0 = time.perf_counter()
        try:
            model = load_model_for_eval(str(ckpt), device=device, dtype=dtype, tokenizer=tokenizer,
                                        batch_size=batch_size)
        except CheckpointError as e:
            done["failed"].append([name, str(e)])
            log(f"{name}: not evaluated ({e})")
            continue
        results: dict[str, Any] = {}
        config_tasks: dict[str, Any] = {}
        for spec in specs:
            if spec.name not in examples:
                examples[spec.name] = T.build_examples(spec, limit, fraction, seed, source)
            exs, n_total, where = examples[spec.name]
            records = T.score_examples(model, spec, exs, progress=progress)
            res = T.aggregate(spec, records, seed=seed)
            res["n_total"] = n_total
            results[spec.name] = res
            config_tasks[spec.name] = {**spec.describe(), "data": where, "metrics": spec.metrics}
        if data_dir is not None:
            results["lm"] = evaluate_lm(model, data_dir, split="val", max_tokens=max_tok, seed=seed,
                                        progress=progress)
        else:
            log(f"{name}: no validation loss (the run's data dir is not here; pass --lm DATA_DIR)")
        step = ck.step_of(name)
        body = {"format_version": FORMAT_VERSION, "kind": "scalelab.checkpoint_eval", "checkpoint": name,
                "step": state.get("step", step), "tokens": state.get("tokens_seen"), "sha256": sha,
                "settings": settings, "results": results, "config": {"tasks": config_tasks},
                "model": model.describe(), "versions": T._versions(),
                "time_s": round(time.perf_counter() - t0, 3),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        file = f"{name}.json"
        atomic_write_json(out / file, body)  # the result first, then the index that names it
        entries[name] = {"step": body["step"], "tokens": body["tokens"], "sha256": sha, "settings": settings,
                         "file": file, "created": body["created"]}
        index["entries"] = dict(sorted(entries.items(), key=lambda kv: kv[1].get("step") or 0))
        atomic_write_json(out / INDEX_FILE, index)
        done["evaluated"].append(name)
        log(f"{name}: " + format_row(body))
    if not done["evaluated"] and not done["skipped"]:
        raise CheckpointError(f"no checkpoint of '{run}' could be evaluated: "
                              + "; ".join(f"{n}: {why}" for n, why in done["failed"]))
    return {"out": str(out), "index": str(out / INDEX_FILE), **done}


def format_row(body: dict[str, Any]) -> str:
    """One line: step, tokens, val loss and each task's headline metric."""
    from scalelab.eval.tasks.spec import headline_metric

    r = body.get("results") or {}
    parts = [f"step {body.get('step')}", f"{body.get('tokens') or 0:,} tokens"]
    if isinstance(r.get("lm"), dict):
        parts.append(f"val loss {r['lm']['loss']:.4f}")
    for task, res in r.items():
        if task == "lm":
            continue
        metric = headline_metric(task)  # the metric published baselines quote (the task YAML's)
        if metric not in res:
            continue
        parts.append(f"{task} {metric} {res[metric]:.4f}")
    return ", ".join(parts)


def format_summary(result: dict[str, Any]) -> str:
    lines = [f"evaluated {len(result['evaluated'])}, skipped {len(result['skipped'])} already evaluated, "
             f"failed {len(result['failed'])}"]
    lines += [f"  {n}: {why}" for n, why in result["failed"]]
    lines.append(f"wrote {result['index']}")
    return "\n".join(lines)


def load_trajectory(run_dir: str | Path, out: str | Path | None = None) -> list[dict[str, Any]]:
    """The per-checkpoint results the index names, oldest first ([] when there are none).
    For the report: an unreadable index or result file is left out, never fatal."""
    import json

    out = Path(out) if out else default_out(run_dir)
    try:
        entries = read_index(out)["entries"]
    except ScalelabError:
        return []
    rows = []
    for name, e in entries.items():
        try:
            body = json.loads((out / e.get("file", f"{name}.json")).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(body, dict) and isinstance(body.get("results"), dict):
            rows.append(body)
    return sorted(rows, key=lambda b: b.get("step") or 0)
