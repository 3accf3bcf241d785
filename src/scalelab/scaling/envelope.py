"""Hoffmann et al. (2022) approach 1: the lower envelope of the training curves.

Every run contributes its evaluated points (tokens seen D_t, validation loss) as a curve
in compute C = 6 N D_t. At each C of a log-spaced grid the envelope is the lowest loss
any configuration (a model size trained for one budget; its seeds averaged) reaches,
and the size that reaches it is N_opt(C). A power law N_opt = k C^a through the grid
points gives approach 1's exponent; D_opt = C / (6 N_opt) gives b = 1 - a.

Caveat, stated in the result: with a cosine schedule a run's intermediate points sit
above what a run *planned* to stop there would reach (its learning rate has not decayed
yet), so the envelope is built from annealed end points and un-annealed middles alike.
Hoffmann et al. trained several schedule lengths per size for this reason; an IsoFLOP
ladder gives each size up to one end point per budget.

CIs: percentile bootstrap, resampling the seeds of each configuration (a configuration
keeps its curve, averaged over a resample of its seeds).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from scalelab.errors import ScalelabError
from scalelab.eval.stats import percentile_interval

GRID_POINTS = 24
MIN_SIZES = 3  # a grid point counts only where this many sizes have reached it


def _curves(runs: list[dict[str, Any]], n_column: str) -> dict[tuple, list[tuple[np.ndarray, np.ndarray]]]:
    """Configuration (N, budget or tokens) -> list of per-seed curves (log C, loss), sorted by C."""
    out: dict[tuple, list] = {}
    for r in runs:
        pts = [(p["tokens"], p["val_loss"]) for p in r.get("curve") or []
               if p.get("tokens") and p.get("val_loss") is not None and math.isfinite(p["val_loss"])]
        if len(pts) < 2:
            continue
        N = float(r[n_column])
        D, L = np.array(pts, dtype=float).T
        order = np.argsort(D)
        key = (N, r.get("budget") or r.get("tokens"))
        out.setdefault(key, []).append((np.log(6.0 * N * D[order]), L[order]))
    return out


def _config_curve(seed_curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> np.ndarray:
    """Mean over seeds of each seed's loss interpolated (linearly in log C) on the grid; NaN outside."""
    vals = []
    for lc, L in seed_curves:
        v = np.interp(grid, lc, L)
        v[(grid < lc[0]) | (grid > lc[-1])] = np.nan
        vals.append(v)
    return np.mean(vals, axis=0)


def _envelope(configs: list[tuple[float, list]], grid: np.ndarray):
    """(N_opt, L_opt, ok) per grid point: the best configuration where >= MIN_SIZES sizes are present."""
    Ns = np.array([n for n, _ in configs])
    M = np.stack([_config_curve(curves, grid) for _, curves in configs])  # configs x grid
    present = np.isfinite(M)
    n_sizes = np.array([np.unique(Ns[present[:, j]]).size for j in range(grid.size)])
    best = np.argmin(np.where(present, M, np.inf), axis=0)
    ok = n_sizes >= MIN_SIZES
    return Ns[best], M[best, np.arange(grid.size)], ok


def _power_law(logC: np.ndarray, N: np.ndarray) -> tuple[float, float]:
    a, k = np.polyfit(logC, np.log(N), 1)
    return float(a), float(k)


def fit_envelope(runs: list[dict[str, Any]], n_column: str = "params", n_boot: int = 200, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, Any]:
    """Approach 1 on a study's runs (each with a ``curve`` of evaluated points); JSON-ready."""
    curves = _curves(runs, n_column)
    if len({k[0] for k in curves}) < MIN_SIZES:
        raise ScalelabError(f"approach 1 needs training curves of at least {MIN_SIZES} model sizes; "
                            f"found {len({k[0] for k in curves})}")
    lo = min(c[0][0] for cs in curves.values() for c in cs)  # grid points with < MIN_SIZES sizes are not used
    hi = max(c[0][-1] for cs in curves.values() for c in cs)
    grid = np.linspace(lo, hi, GRID_POINTS)
    keys = sorted(curves)
    configs = [(k[0], curves[k]) for k in keys]
    N_opt, L_opt, ok = _envelope(configs, grid)
    warnings = ["intermediate points of cosine-schedule runs are not annealed: the envelope mixes end points "
                "with un-decayed middles (Hoffmann et al. used several schedule lengths per size)"]
    if ok.sum() < 3 or np.unique(N_opt[ok]).size < 2:
        return {"law": "envelope", "degenerate": True,
                "reason": f"the envelope changes size at fewer than 2 places ({int(ok.sum())} usable grid points, "
                          f"{np.unique(N_opt[ok]).size} distinct N_opt); train more sizes or budgets",
                "warnings": warnings}
    a, k = _power_law(grid[ok], N_opt[ok])
    samples = []
    rng = np.random.default_rng(seed)
    for _ in range(n_boot if n_boot >= 2 else 0):
        boot = [(n, [cs[i] for i in rng.integers(0, len(cs), len(cs))]) for n, cs in configs]
        Nb, _, okb = _envelope(boot, grid)
        if okb.sum() >= 3 and np.unique(Nb[okb]).size >= 2:
            samples.append(_power_law(grid[okb], Nb[okb]))
        else:
            samples.append((float("nan"), float("nan")))
    draws = np.array(samples, dtype=float).reshape(-1, 2)
    s, log_k = draws[:, 0], draws[:, 1]
    ci = list(percentile_interval(s, confidence)) if s.size and np.isfinite(s).mean() > 0.8 else [None, None]
    steps = np.unique(N_opt[ok]).size
    if steps < 4:
        warnings.append(f"N_opt(C) takes only {steps} distinct sizes on the grid: the power law is fitted "
                        "through a staircase")
    return {
        "law": "envelope", "degenerate": False, "reason": None, "a": a, "b": 1.0 - a,
        "coef": {"N_opt": math.exp(k)}, "ci": {"a": ci, "b": [1.0 - ci[1], 1.0 - ci[0]] if ci[0] is not None else ci},
        "n_boot": int(n_boot), "confidence": confidence, "resample": "seeds within each configuration",
        "n_column": n_column,
        "grid": [{"C": float(math.exp(g)), "N_opt": float(n), "loss": float(l), "used": bool(u)}
                 for g, n, l, u in zip(grid, N_opt, L_opt, ok)],
        "samples": {"a": [x if math.isfinite(x) else None for x in s.tolist()],
                    "log_k_N": [x if math.isfinite(x) else None for x in log_k.tolist()]},
        "warnings": warnings,
    }
