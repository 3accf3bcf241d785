"""Downstream scaling in two steps (Bhagia et al. 2024, "Establishing Task Scaling Laws via
Compute-Efficient Model Ladders", the OLMo ladder):

1. task bpb(N, D) = E + A / N^alpha + B / D^beta  -- the gold continuation's bits per byte,
   fitted with the same Huber / L-BFGS / bootstrap machinery as the loss (scaling.fit);
2. accuracy(bpb) = chance + (top - chance) / (1 + exp(k (bpb - x0)))  -- a sigmoid that
   falls from `top` to chance as bpb grows.

Chained, they predict accuracy at a target (N, D) with an interval (each bootstrap draw
of step 1 goes through a draw of step 2). Step 2 needs points above chance: at CPU scale
there are none, and `fit_accuracy_sigmoid` says so instead of fitting noise. Points from
other models (any HF model scored by `scalelab eval`) can be added as ladder points.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import curve_fit

from scalelab.errors import ScalelabError
from scalelab.eval.stats import percentile_interval

MIN_ABOVE_CHANCE = 3


def sigmoid_accuracy(bpb, top, k, x0, chance):
    return chance + (top - chance) / (1.0 + np.exp(k * (np.asarray(bpb, float) - x0)))


def _fit_one(x: np.ndarray, y: np.ndarray, chance: float) -> np.ndarray:
    p0 = (min(0.99, max(y.max(), chance + 0.05)), 5.0, float(np.median(x)))
    params, _ = curve_fit(lambda b, top, k, x0: sigmoid_accuracy(b, top, k, x0, chance), x, y, p0=p0,
                          bounds=([chance, 0.0, 0.0], [1.0, 100.0, 20.0]), maxfev=20000)
    return params


def fit_accuracy_sigmoid(bpb, acc, chance: float, above_chance, n_boot: int = 200, seed: int = 0,
                         confidence: float = 0.95) -> dict[str, Any]:
    """Step 2 on (bpb, accuracy) points; `above_chance[i]` says whether point i's accuracy
    interval lies above chance. Fewer than MIN_ABOVE_CHANCE such points: not fitted, with why."""
    x, y = np.asarray(bpb, float), np.asarray(acc, float)
    above = np.asarray(above_chance, bool)
    n_above = int(above.sum())
    base = {"law": "accuracy_sigmoid", "chance": chance, "n": int(x.size), "n_above_chance": n_above}
    if n_above < MIN_ABOVE_CHANCE:
        return {**base, "fitted": False,
                "reason": f"{n_above} of {x.size} points have accuracy above chance (95% interval); the sigmoid "
                          f"needs {MIN_ABOVE_CHANCE}+ -- add larger models (or scored public checkpoints) as ladder points"}
    try:
        top, k, x0 = _fit_one(x, y, chance)
    except (RuntimeError, ValueError) as e:
        return {**base, "fitted": False, "reason": f"sigmoid fit did not converge ({e})"}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, x.size, x.size)
        try:
            draws.append(_fit_one(x[idx], y[idx], chance))
        except (RuntimeError, ValueError):
            draws.append((np.nan, np.nan, np.nan))
    d = np.array(draws, float).reshape(-1, 3)
    ci = {name: list(percentile_interval(d[:, i], confidence)) for i, name in enumerate(("top", "k", "x0"))}
    return {**base, "fitted": True, "top": float(top), "k": float(k), "x0": float(x0), "ci": ci,
            "samples": {"top": d[:, 0].tolist(), "k": d[:, 1].tolist(), "x0": d[:, 2].tolist()},
            "n_boot": n_boot, "confidence": confidence}


def predict_accuracy(bpb_fit: dict[str, Any], acc_fit: dict[str, Any], N: float, D: float,
                     confidence: float = 0.95) -> dict[str, Any]:
    """Chain: bpb at (N, D) from step 1's bootstrap samples, through step 2's samples, to accuracy.
    Without a fitted step 2 the accuracy is left out, with the reason."""
    if bpb_fit.get("degenerate"):
        raise ScalelabError(f"the task-bpb law is degenerate: {bpb_fit.get('reason')}")
    s = bpb_fit.get("samples") or {}
    if not s:
        raise ScalelabError("the task-bpb fit has no stored bootstrap samples; refit with n_boot >= 2")
    E, A, B, al, be = (np.asarray(s[k], float) for k in ("E", "A", "B", "alpha", "beta"))
    with np.errstate(all="ignore"):
        bpb = E + A / N ** al + B / D ** be
    p = bpb_fit
    bpb_pt = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    out = {"N": N, "D": D, "bpb": float(bpb_pt), "bpb_ci": list(percentile_interval(bpb, confidence))}
    if not acc_fit.get("fitted"):
        out["accuracy_reason"] = acc_fit.get("reason") or "no accuracy law"
        return out
    a = acc_fit["samples"]
    m = min(bpb.size, len(a["top"]))
    acc = sigmoid_accuracy(bpb[:m], np.asarray(a["top"][:m]), np.asarray(a["k"][:m]), np.asarray(a["x0"][:m]),
                           acc_fit["chance"])
    out["accuracy"] = float(sigmoid_accuracy(bpb_pt, acc_fit["top"], acc_fit["k"], acc_fit["x0"], acc_fit["chance"]))
    out["accuracy_ci"] = list(percentile_interval(acc, confidence))
    return out


def above_chance(lo: float | None, chance: float | None) -> bool:
    return lo is not None and chance is not None and math.isfinite(lo) and lo > chance
