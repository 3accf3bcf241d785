"""Checks that tie the three compute-optimal estimates to each other and to the data.

- ``compare_exponents``: a = d log N_opt / d log C from approaches 1 (envelope),
  2 (IsoFLOP parabolas) and 3 (L(N, D): a = beta / (alpha + beta)) side by side with
  Hoffmann et al.'s published values.
- ``frontier_consistency``: within the trained range the fitted L_opt(C) of approach 3
  must agree with the empirical frontier (best seed-mean loss per budget, and the
  parabola vertex of approach 2); residuals are reported, and the fit is flagged when
  it predicts below the best observed loss by more than the CIs allow.
- ``holdout``: fit on all but the largest budget (or size), predict the held-out runs
  with prediction intervals (curve bootstrap + the held-in residual scatter), report
  the errors and whether each observation lies inside.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from scalelab.errors import ScalelabError
from scalelab.eval.stats import mean_ci, percentile_interval

# Hoffmann et al. 2022, Table 2: a (N_opt ~ C^a) per approach, with their intervals.
CHINCHILLA_A = {"approach1": (0.50, [0.488, 0.502]), "approach2": (0.49, [0.462, 0.534]),
                "approach3": (0.46, [0.454, 0.455])}


def _get(d: Any, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def compare_exponents(fits: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per approach: a with its CI, or why it is missing."""
    rows = []
    sources = (("approach1", "envelope", lambda f: (f.get("a"), _get(f, "ci", "a"))),
               ("approach2", "isoflop", lambda f: (f.get("a"), _get(f, "ci", "a"))),
               ("approach3", "chinchilla", lambda f: (_get(f, "derived", "a", "value"), _get(f, "derived", "a", "ci"))))
    for name, law, pick in sources:
        f = fits.get(law) or {}
        a, ci = pick(f) if f else (None, None)
        pub, pub_ci = CHINCHILLA_A[name]
        row = {"approach": name, "law": law, "a": a, "ci": ci, "chinchilla_a": pub, "chinchilla_ci": pub_ci}
        if not f or f.get("degenerate") or a is None:
            row["missing"] = (f or {}).get("reason") or "not fitted"
        rows.append(row)
    return rows


def _config_means(runs: list[dict[str, Any]], value: Callable[[dict], float | None],
                  key: Callable[[dict], Any]) -> dict[Any, dict[str, Any]]:
    groups: dict[Any, list[float]] = {}
    for r in runs:
        v = value(r)
        if v is not None and math.isfinite(v):
            groups.setdefault(key(r), []).append(v)
    return {k: mean_ci(vs) for k, vs in groups.items()}


def frontier_consistency(runs: list[dict[str, Any]], fits: dict[str, Any]) -> dict[str, Any]:
    """Approach 3's L_opt(C) against the best observed loss and the parabola vertex per budget."""
    chin = fits.get("chinchilla") or {}
    opt = {round(math.log(r["C"]), 6): r for r in _get(chin, "frontier") or []}
    iso = {round(math.log(b["C"]), 6): b for b in _get(fits.get("isoflop"), "budgets") or []}
    if chin.get("degenerate") or not opt:
        return {"checked": False, "reason": chin.get("reason") or "no L(N, D) fit with frontier predictions"}
    budgets = sorted({r["budget"] for r in runs if r.get("budget")})
    rows, flagged = [], []
    for C in budgets:
        at = [r for r in runs if r.get("budget") == C]
        means = _config_means(at, lambda r: r.get("loss"), lambda r: r["params"])
        if not means:
            continue
        n_best, best = min(means.items(), key=lambda kv: kv[1]["mean"])
        fit = opt.get(round(math.log(C), 6))
        if fit is None:
            continue
        lo, hi = fit.get("loss_ci") or [None, None]
        row = {"C": C, "fit_loss_opt": fit["loss"], "fit_ci": [lo, hi], "best_observed": best["mean"],
               "best_observed_ci": [best["lo"], best["hi"]], "best_N": n_best,
               "residual": fit["loss"] - best["mean"]}
        vertex = iso.get(round(math.log(C), 6))
        if vertex and vertex.get("loss_opt") is not None:
            row["vertex_loss"] = vertex["loss_opt"]
            row["residual_vs_vertex"] = fit["loss"] - vertex["loss_opt"]
        # The grid may miss the optimum, so the fit may sit a little below the best run;
        # below it by more than both intervals is a contradiction.
        obs_lo = best["lo"] if best["lo"] is not None and math.isfinite(best["lo"]) else best["mean"]
        row["below_data"] = bool(hi is not None and hi < obs_lo)
        if row["below_data"]:
            flagged.append(C)
        rows.append(row)
    return {"checked": bool(rows), "budgets": rows, "flagged": bool(flagged),
            "rule": "flag when the upper CI of the fitted L_opt(C) is below the lower CI of the best observed "
                    "seed-mean loss at that budget",
            "max_abs_residual": max((abs(r["residual"]) for r in rows), default=None)}


def split_holdout(runs: list[dict[str, Any]]) -> tuple[list[dict], list[dict], str]:
    """Held-in and held-out runs: the largest budget when runs have budgets, else the largest size."""
    budgets = sorted({r["budget"] for r in runs if r.get("budget")})
    if len(budgets) >= 3:
        top = budgets[-1]
        return ([r for r in runs if r.get("budget") != top], [r for r in runs if r.get("budget") == top],
                f"largest budget C = {top:.3g}")
    sizes = sorted({r["params"] for r in runs})
    if len(sizes) < 3:
        raise ScalelabError("a holdout check needs at least 3 budgets or 3 sizes")
    top = sizes[-1]
    return ([r for r in runs if r["params"] != top], [r for r in runs if r["params"] == top],
            f"largest size N = {top:.3g}")


def prediction_interval(curve_draws: np.ndarray, sigma: float, confidence: float, seed: int = 0) -> list[float]:
    """Interval for a new observation: the fitted curve's bootstrap draws plus residual noise."""
    rng = np.random.default_rng(seed)
    draws = curve_draws[np.isfinite(curve_draws)]
    if draws.size < 2:
        return [float("nan"), float("nan")]
    noisy = draws + sigma * rng.standard_normal(draws.size)
    lo, hi = percentile_interval(noisy, confidence)
    return [float(lo), float(hi)]


def holdout(runs: list[dict[str, Any]], value: Callable[[dict], float | None], fit: Callable[..., Any],
            n_boot: int = 200, seed: int = 0, confidence: float = 0.95, label: str = "loss") -> dict[str, Any]:
    """Fit L(N, D) to `value` of the held-in runs; predict every held-out run with a prediction interval.

    `fit(N, D, y, n_boot=, seed=)` returns a FitResult (e.g. scaling.fit.fit_chinchilla).
    Kaplan's L(N) works too (D is then ignored). The residual scatter is the held-in runs'
    residual standard deviation (n - free parameters dof).
    """
    held_in, held_out, what = split_holdout(runs)
    pick = [(r, value(r)) for r in held_in]
    pick = [(r, v) for r, v in pick if v is not None and math.isfinite(v)]
    if len(pick) < 8:
        raise ScalelabError(f"holdout fit of {label}: {len(pick)} usable held-in runs; need 8+")
    N = np.array([r["params"] for r, _ in pick], dtype=float)
    D = np.array([r["tokens"] for r, _ in pick], dtype=float)
    y = np.array([v for _, v in pick], dtype=float)
    res = fit(N, D, y, n_boot=n_boot, seed=seed)
    if res.degenerate:
        raise ScalelabError(f"holdout fit of {label} on the held-in runs is degenerate: {res.reason}")
    p, s = res.params, res.samples

    def law(prm, n, d):
        with np.errstate(all="ignore"):
            return res.loss_at(prm, n, d)

    resid = y - law(p, N, D)
    sigma = float(np.sqrt(np.sum(resid ** 2) / max(1, y.size - len(p))))
    rows = []
    for r in held_out:
        obs = value(r)
        if obs is None or not math.isfinite(obs):
            continue
        n, d = float(r["params"]), float(r["tokens"])
        pred = float(law(p, n, d))
        draws = law({k: np.asarray(v, float) for k, v in s.items()}, n, d)
        lo, hi = prediction_interval(np.asarray(draws, float), sigma, confidence, seed)
        rows.append({"name": r.get("name"), "seed": r.get("seed"), "params": n, "tokens": d, "observed": obs,
                     "predicted": pred, "pi": [lo, hi], "error": obs - pred,
                     "inside": bool(lo <= obs <= hi)})
    if not rows:
        raise ScalelabError(f"holdout of {label}: no held-out run has a value")
    errors = np.array([r["error"] for r in rows])
    return {"target": label, "held_out": what, "n_fit": int(y.size), "n_held_out": len(rows),
            "residual_sd": sigma, "confidence": confidence, "n_boot": n_boot,
            "mean_error": float(errors.mean()), "mean_abs_error": float(np.abs(errors).mean()),
            "max_abs_error": float(np.abs(errors).max()),
            "coverage": float(np.mean([r["inside"] for r in rows])),
            "fit": {k: float(v) for k, v in p.items()}, "runs": rows}
