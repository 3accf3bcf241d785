"""A study's task scores: each finished run's zero-shot metrics (cached in its eval/ folder)
and externally scored models as extra ladder points, both as results.json task rows."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalelab.errors import ConfigError

if TYPE_CHECKING:
    from scalelab.scaling.study_config import StudyConfig


def task_row(res: dict[str, Any]) -> dict[str, Any]:
    """One task's results.json row: n, and each scored metric with its 95% CI as _lo / _hi."""
    from scalelab.eval.tasks.results import SCORED_METRICS  # lazily: eval's task stack is heavy

    row = {"n": res.get("n")}
    for metric in SCORED_METRICS:
        if metric in res:
            lo, hi = res.get(f"{metric}_ci") or [None, None]
            row.update({metric: res[metric], f"{metric}_lo": lo, f"{metric}_hi": hi})
    return row


def evaluate_tasks(run: dict[str, Any], cfg: StudyConfig) -> dict[str, Any]:
    """Zero-shot task metrics (with 95% CIs) of a finished run, cached in <run_dir>/eval/."""
    from scalelab.eval.loading import load_model_for_eval
    from scalelab.eval.tasks import evaluate, get_spec, write_results

    out_dir = Path(run["run_dir"]) / "eval"
    cached = out_dir / "results.json"
    want = sorted(get_spec(t).name for t in cfg.eval.tasks)
    results = None
    if cached.is_file():
        results = json.loads(cached.read_text())
        conf = results.get("config", {})
        if sorted(results.get("results", {})) != want or conf.get("limit") != cfg.eval.limit \
                or conf.get("seed") != cfg.eval.seed:
            results = None
    if results is None:
        model = load_model_for_eval(run["run_dir"])
        results = evaluate(model, list(cfg.eval.tasks), limit=cfg.eval.limit, seed=cfg.eval.seed, progress=False)
        write_results(results, out_dir)
    tasks = {}
    for name, res in results["results"].items():
        row = task_row(res)
        samples = results.get("samples", {}).get(name)
        if isinstance(samples, list) and samples and "lls" in samples[0]:
            row["chance"] = sum(1.0 / len(r["lls"]) for r in samples) / len(samples)
        elif isinstance(samples, str) and (out_dir / samples).is_file():
            recs = [json.loads(line) for line in (out_dir / samples).read_text().splitlines() if line]
            if recs and "lls" in recs[0]:
                row["chance"] = sum(1.0 / len(r["lls"]) for r in recs) / len(recs)
        tasks[name] = row
    return tasks


def read_ladder_point(point: dict[str, Any]) -> dict[str, Any]:
    """An externally scored model (`scalelab eval` results.json) as a ladder point: N, D, task metrics."""
    missing = [k for k in ("name", "params", "tokens", "results") if k not in point]
    if missing:
        raise ConfigError(f"eval.ladder_points entry {point!r} lacks {', '.join(missing)}; give name, params, tokens "
                          "and results (the results.json of `scalelab eval`)")
    path = Path(point["results"])
    try:
        res = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"eval.ladder_points '{point['name']}': cannot read {path} ({e}); run `scalelab eval "
                          f"TARGET --tasks ...` and point results at its results.json") from None
    return {"name": point["name"], "params": float(point["params"]), "tokens": float(point["tokens"]),
            "source": str(path), "tasks": {task: task_row(r) for task, r in res.items()}}
