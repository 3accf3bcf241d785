"""Every fit and check a study stores in results.json (the report only reads them).

Design "ratios" (sizes x tokens-per-param ratios): Kaplan L(N) on the primary ratio's
family, Chinchilla L(N, D) and IsoFLOP on all runs (as before).

Design "isoflop" (budgets x sizes): the three approaches of Hoffmann et al. 2022 -- the
envelope of training curves (1), parabolas per budget (2), L(N, D) (3) -- their exponents
side by side, the frontier consistency check, the holdout check (largest budget held
out, for the loss and each task's bpb), and per task the two-step downstream law (task
bpb(N, D), then accuracy(bpb) where points above chance exist).

Bootstrap samples of every law are stored (``samples``) so figures draw bands without
refitting.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from scalelab.errors import ScalelabError

_Fit = Callable[[], dict[str, Any]]


def _attempt(fits: dict[str, Any], name: str, fn: _Fit, law: str | None = None) -> None:
    try:
        fits[name] = fn()
    except ScalelabError as e:  # a fit that cannot be made is recorded with its reason, never dropped
        fits[name] = {"law": law or name, "degenerate": True, "reason": str(e)}


def _groups(runs: list[dict], resample: str):
    if resample == "size":
        return np.array([r["params"] for r in runs])
    if resample == "seed":
        return np.array([r["seed"] for r in runs])
    return None


def _arrays(runs: list[dict], value: Callable[[dict], Any]) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray]:
    keep = [r for r in runs if value(r) is not None and math.isfinite(value(r))]
    return (keep, np.array([r["params"] for r in keep], float), np.array([r["tokens"] for r in keep], float),
            np.array([value(r) for r in keep], float))


def chinchilla_fit(runs: list[dict], value: Callable[[dict], Any], n_boot: int, seed: int, resample: str,
                   budgets: list[float] | None = None, profile: bool = True) -> dict[str, Any]:
    """L(N, D) (approach 3) on `value` of the runs, samples stored, L_opt at each budget."""
    from scalelab.scaling.fit import fit_chinchilla

    keep, N, D, y = _arrays(runs, value)
    res = fit_chinchilla(N, D, y, n_boot=n_boot, seed=seed, groups=_groups(keep, resample))
    out = res.to_dict(include_samples=True)
    out.update(n_column="params", runs_used=len(keep))
    if budgets:
        out["frontier"] = [res.predict_compute(C) for C in budgets]
    if profile and not res.degenerate:
        out = _with_profile(out, "chinchilla", N, D, y)
    return out


def _with_profile(out: dict[str, Any], law: str, N, D, y) -> dict[str, Any]:
    """Attach the E profile; where E is flat, move the point estimate to the best grid E and
    recompute the point values derived from it (their CIs stay the bootstrap's)."""
    from scalelab.scaling.fit import _clean, compute_optimal
    from scalelab.scaling.profile import deterministic_point, profile_E

    prof = profile_E(law, N, D, y)
    out["profile_E"] = {k: prof[k] for k in ("E", "objective", "rel_tol", "flat_range", "flat_points", "identified")}
    new = deterministic_point(out, prof)
    if new is out or law != "chinchilla":
        return new
    p = {k: new[k] for k in ("E", "A", "B", "alpha", "beta")}
    pt = compute_optimal(1.0, **p)
    for k in ("a", "b", "G"):
        if isinstance(new.get("derived", {}).get(k), dict):
            new["derived"][k] = dict(new["derived"][k], value=float(pt[k]))
    for row in new.get("frontier") or []:
        opt = compute_optimal(row["C"], **p)
        row.update({k: float(opt[k]) for k in ("N_opt", "D_opt", "tokens_per_param", "loss")})
    return _clean(new)


def task_values(runs: list[dict]) -> list[str]:
    names: list[str] = []
    for r in runs:
        for t in r.get("tasks") or {}:
            if t not in names:
                names.append(t)
    return names


def task_metric(task: str, metric: str) -> Callable[[dict], Any]:
    return lambda r: ((r.get("tasks") or {}).get(task) or {}).get(metric)


def fit_isoflop_design(results: dict[str, Any], n_boot: int, seed: int, resample: str,
                       predict: list | None = None) -> dict[str, Any]:
    from scalelab.scaling.envelope import fit_envelope
    from scalelab.scaling.fit import Points, fit_chinchilla, fit_isoflop
    from scalelab.scaling.ladder import compare_exponents, frontier_consistency, holdout

    runs = [r for r in results["runs"] if r.get("loss") is not None and math.isfinite(r["loss"])]
    budgets = sorted({r["budget"] for r in runs})
    fits: dict[str, Any] = {"kaplan": {"law": "kaplan", "degenerate": True,
                                       "reason": "IsoFLOP design: no fixed tokens-per-parameter family to fit L(N) on; "
                                                 "see L(N, D) and the IsoFLOP profiles"}}
    loss = lambda r: r["loss"]  # noqa: E731
    _attempt(fits, "chinchilla", lambda: chinchilla_fit(runs, loss, n_boot, seed, resample, budgets))

    def isoflop():
        pts = Points(N=np.array([r["params"] for r in runs], float), D=np.array([r["tokens"] for r in runs], float),
                     L=np.array([r["loss"] for r in runs], float), seed=np.array([r["seed"] for r in runs], float),
                     flops=np.array([r["budget"] for r in runs], float), source="study")
        out = fit_isoflop(pts, n_boot=n_boot, seed=seed, predict_compute=budgets, tol=0.05)
        out["n_column"] = "params"
        return out

    _attempt(fits, "isoflop", isoflop)
    _attempt(fits, "envelope", lambda: fit_envelope(runs, n_column="params", n_boot=n_boot, seed=seed))
    fits["exponents"] = compare_exponents(fits)
    fits["consistency"] = frontier_consistency(runs, fits)

    def chin(N, D, y, **kw):
        return fit_chinchilla(N, D, y, **kw)

    hold: dict[str, Any] = {}
    _attempt(hold, "loss", lambda: holdout(runs, loss, chin, n_boot=n_boot, seed=seed, label="loss"), law="holdout")
    tasks: dict[str, Any] = {}
    for task in task_values(runs):
        bpb = task_metric(task, "bpb")
        _attempt(hold, f"{task}_bpb", lambda: holdout(runs, bpb, chin, n_boot=n_boot, seed=seed,
                                                        label=f"{task} bpb"), law="holdout")
        tasks[task] = task_fits(runs, task, n_boot, seed, resample, budgets,
                                external=results.get("ladder_points") or [], predict=predict or [])
    _attempt(hold, "isoflop_N_opt", lambda: isoflop_holdout(runs, fits.get("isoflop") or {}, n_boot, seed),
             law="holdout")
    fits["holdout"] = hold
    fits["tasks"] = tasks
    return fits


def isoflop_holdout(runs: list[dict], full: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
    """Approach 2 without the largest budget: its N_opt power law predicts the held-out
    budget's optimum, compared with that budget's own parabola vertex (both with CIs)."""
    from scalelab.scaling.fit import Points, fit_isoflop

    budgets = sorted({r["budget"] for r in runs})
    if len(budgets) < 3:
        raise ScalelabError("an IsoFLOP holdout needs 3+ budgets (2 to fit, 1 to predict)")
    top = budgets[-1]
    held_in = [r for r in runs if r["budget"] != top]
    pts = Points(N=np.array([r["params"] for r in held_in], float), D=np.array([r["tokens"] for r in held_in], float),
                 L=np.array([r["loss"] for r in held_in], float), flops=np.array([r["budget"] for r in held_in], float),
                 source="study")
    fit = fit_isoflop(pts, n_boot=n_boot, seed=seed, predict_compute=[top], tol=0.05)
    pred = fit["compute_predictions"][0]
    vertex = next((b for b in full.get("budgets") or [] if b.get("used") and abs(b["C"] / top - 1) < 0.05), None)
    if vertex is None:
        raise ScalelabError(f"the largest budget C = {top:.3g} has no usable parabola vertex to compare with")
    lo, hi = pred["N_opt_ci"]
    return {"target": "N_opt (approach 2)", "held_out": f"largest budget C = {top:.3g}", "a_fit": fit["a"],
            "predicted": pred["N_opt"], "pi": [lo, hi], "observed": vertex["N_opt"],
            "observed_ci": vertex.get("N_opt_ci"), "ratio": vertex["N_opt"] / pred["N_opt"],
            "inside": bool(lo is not None and hi is not None and lo <= vertex["N_opt"] <= hi),
            "note": "the interval is the bootstrap CI of the power law fitted on the held-in budgets' vertices"}


def task_fits(runs: list[dict], task: str, n_boot: int, seed: int, resample: str, budgets: list[float],
              external: list[dict] | None = None, predict: list | None = None) -> dict[str, Any]:
    """Step 1 (task bpb vs N, D, on the study's runs) and step 2 (accuracy vs bpb, where points are
    above chance; externally scored ladder points join here), chained at the `predict` targets."""
    from scalelab.scaling.task_laws import above_chance, fit_accuracy_sigmoid, predict_accuracy

    out: dict[str, Any] = {}
    _attempt(out, "bpb_law", lambda: chinchilla_fit(runs, task_metric(task, "bpb"), n_boot, seed, resample,
                                                    budgets, profile=False), law="chinchilla")
    own = [r["tasks"][task] for r in runs if task in (r.get("tasks") or {})]
    from scalelab.eval.tasks.spec import chance_level

    # chance per run: measured (mean 1 / choices of its examples), else the task YAML's metadata.chance
    levels = [t["chance"] if t.get("chance") is not None else chance_level(task) for t in own]
    chance = float(np.mean(levels)) if own and None not in levels else None
    ext = [p["tasks"][task] for p in external or [] if task in (p.get("tasks") or {})]
    rows = own + ext
    metric = "acc_norm" if rows and all("acc_norm" in t for t in rows) else "acc"
    rows = [t for t in rows if t.get("bpb") is not None and t.get(metric) is not None]
    if rows and chance is not None:
        out["accuracy"] = fit_accuracy_sigmoid([t["bpb"] for t in rows], [t[metric] for t in rows], chance,
                                               [above_chance(t.get(f"{metric}_lo"), chance) for t in rows],
                                               n_boot=n_boot, seed=seed)
        out["accuracy"].update(metric=metric, n_external=len(ext))
    preds = []
    for target in predict or []:
        N, D = (float(x) for x in target)
        try:
            preds.append(predict_accuracy(out["bpb_law"], out.get("accuracy") or {}, N, D))
        except (ScalelabError, KeyError) as e:
            preds.append({"N": N, "D": D, "reason": str(e)})
    if preds:
        out["predictions"] = preds
    return out


def frontier_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per budget, the runs of the size with the lowest seed-mean loss (the compute-optimal frontier)."""
    out = []
    for C in sorted({r["budget"] for r in results["runs"] if r.get("budget")}):
        at = [r for r in results["runs"] if r.get("budget") == C and r.get("loss") is not None]
        by_n: dict[float, list[dict]] = {}
        for r in at:
            by_n.setdefault(r["params"], []).append(r)
        best = min(by_n.values(), key=lambda rs: float(np.mean([r["loss"] for r in rs])))
        out.append({"budget": C, "params": best[0]["params"], "name": best[0]["name"], "runs": best})
    return out


def frontier_check(results: dict[str, Any]) -> dict[str, Any]:
    """Along the frontier (best size per budget), do the validation loss and each downstream
    metric improve between neighbouring budgets by more than seed noise (gain > 2 x combined
    stderr of the seed means)?"""
    from scalelab.eval.stats import mean_ci

    front = frontier_runs(results)
    metrics = [("validation", "loss", lambda r: r.get("loss"))]
    metrics += [(t, m, task_metric(t, m)) for t in task_values(results["runs"]) for m in ("bpb", "acc_norm", "acc")]
    rows = []
    for task, metric, get in metrics:
        cis = []
        for f in front:
            vals = [get(r) for r in f["runs"] if get(r) is not None]
            cis.append(mean_ci(vals) if len(vals) >= 2 else None)
        if any(c is None for c in cis) or len(cis) < 2:
            continue
        sign = -1.0 if metric.startswith("acc") else 1.0  # loss and bpb fall, accuracy rises
        steps = []
        for a, b, fa, fb in zip(cis, cis[1:], front, front[1:]):
            gain = sign * (a["mean"] - b["mean"])
            se = math.sqrt(a["stderr"] ** 2 + b["stderr"] ** 2)
            steps.append({"from": fa["name"], "to": fb["name"], "gain": gain, "stderr": se,
                          "z": gain / se if se > 0 else None, "beyond_noise": bool(gain > 2 * se)})
        rows.append({"task": task, "metric": metric, "means": [c["mean"] for c in cis], "steps": steps,
                     "separates": all(s["beyond_noise"] for s in steps)})
    loss_row = next((r for r in rows if r["metric"] == "loss"), None)
    return {"rule": "along the frontier (lowest-loss size per budget), each improvement between neighbouring "
                    "budgets > 2 x combined stderr of the seed means",
            "frontier": [{"budget": f["budget"], "name": f["name"], "params": f["params"]} for f in front],
            "metrics": rows, "loss_decreases_beyond_noise": bool(loss_row and loss_row["separates"]),
            "downstream_separates": any(r["separates"] for r in rows if r["metric"] != "loss")}


def fit_ratio_design(results: dict[str, Any], n_boot: int, seed: int, resample: str) -> dict[str, Any]:
    """Kaplan L(N) on the runs at the primary ratio; Chinchilla L(N,D) and IsoFLOP on all runs."""
    from scalelab.scaling.fit import Points, fit_isoflop, fit_kaplan
    from scalelab.scaling.results import plan_primary_ratio

    runs = results["runs"]
    plan = results["plan"]
    fits: dict[str, Any] = {}
    ratio = plan_primary_ratio(plan)
    main = [r for r in runs if (r.get("ratio") or 20.0) == ratio]

    def kaplan():
        N = np.array([r["non_embedding_params"] for r in main], dtype=float)
        L = np.array([r["loss"] for r in main], dtype=float)
        groups = None if resample == "points" else np.array([r["non_embedding_params" if resample == "size" else "seed"]
                                                              for r in main])
        res = fit_kaplan(N, L, groups=groups, n_boot=n_boot, seed=seed)
        out = res.to_dict(include_samples=True)
        out.update(n_column="non_embedding_params", tokens_per_param=ratio, runs_used=len(main))
        return out if res.degenerate else _with_profile(out, "kaplan", N, None, L)

    _attempt(fits, "kaplan", kaplan)
    if len({m.get("ratio") for m in plan["models"]}) < 2:
        fits["chinchilla"] = {"law": "chinchilla", "degenerate": True,
                              "reason": "every run uses the same tokens-per-parameter ratio, so N and D move together "
                                        "and L(N,D) is not identifiable; list several plan.tokens_per_param values"}
    else:
        _attempt(fits, "chinchilla", lambda: chinchilla_fit(runs, lambda r: r["loss"], n_boot, seed, resample))

    def isoflop():
        pts = Points(N=np.array([r["params"] for r in runs], dtype=float),
                     D=np.array([r["tokens"] for r in runs], dtype=float),
                     L=np.array([r["loss"] for r in runs], dtype=float),
                     seed=np.array([r["seed"] for r in runs], dtype=float),
                     flops=np.array([r["flops"] for r in runs], dtype=float), source="study")
        return fit_isoflop(pts, n_boot=n_boot, seed=seed)

    _attempt(fits, "isoflop", isoflop)
    return fits


def fit_study(results: dict[str, Any], n_boot: int = 200, seed: int = 0, resample: str = "points",
              predict: list | None = None) -> dict[str, Any]:
    if (results.get("plan") or {}).get("design") == "isoflop":
        return fit_isoflop_design(results, n_boot, seed, resample, predict or [])
    return fit_ratio_design(results, n_boot, seed, resample)
