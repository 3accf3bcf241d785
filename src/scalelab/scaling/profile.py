"""The profile of a fit's objective over E, and a machine-independent point where E is flat.

With few runs far from the loss floor, E trades off against A and alpha (and B, beta):
a whole valley of E fits the data equally well, and where L-BFGS stops in it depends on
floating-point details (an AVX-512 CPU lands on E = 2.001 where an AVX2 one lands on
1.956, same objective to 5 digits). The profile makes that visible: for E on a fixed
grid from 0 to just below the smallest loss, refit the other parameters with E held
fixed (a well-conditioned problem) and record the objective.

``flat_range`` is the span of grid E whose objective is within ``rel_tol`` of the best
(the practical flat direction). A Huber objective on few points is nearly piecewise
linear, so its minimum can be a whole segment of E with objectives equal to rounding:
a fine grid around the best point finds that segment (``tied_range``). Then E is not
identified and the study reports the fit at the segment's middle
(`deterministic_point`): the grid is fixed, the segment's ends are where the objective
starts to rise (far above rounding noise), and the other parameters are well identified
given E, so every machine reports the same numbers. Predictions over the data range are
unaffected (that is what "flat" means).
"""
from __future__ import annotations

import math

import numpy as np

from scalelab.scaling import fit as F

GRID_POINTS = 16
REL_TOL = 1e-3


def _fixed_e_spec(law: str, E: float) -> tuple[F._Spec, np.ndarray]:
    e_fixed = math.log(E) if E > 0 else None
    if law == "kaplan":
        return F._Spec(names=("a", "alpha"), terms=((0, 1, 0),), e_fixed=e_fixed), F._kaplan_grid(False)
    g = F.hoffmann_grid()
    starts = np.unique(g[:, [0, 1, 3, 4]], axis=0)  # (a, b, alpha, beta): e is held fixed
    return F._Spec(names=("a", "b", "alpha", "beta"), terms=((0, 2, 0), (1, 3, 1)), e_fixed=e_fixed), starts


def _fit_fixed_e(law: str, N, D, L, E: float, delta: float, starts: np.ndarray | None = None):
    spec, grid = _fixed_e_spec(law, E)
    X = np.log(N)[None, :] if law == "kaplan" else np.stack([np.log(N), np.log(D)])
    prob, bx, _, _, _ = F._fit_law(spec, X, np.log(L), grid if starts is None else starts, delta, 0, 0, None, 3)
    params = {k: float(v) for k, v in F._natural(spec.names, bx, spec).items()}
    return prob.huber_sum(bx), params, bx


def profile_E(law: str, N, D, L, delta: float = 1e-3, points: int = GRID_POINTS,
              rel_tol: float = REL_TOL, fine_points: int = 33, tie_tol: float = 1e-9) -> dict:
    """Objective vs E (others refitted) on a fixed grid, then a fine grid around the best
    point (warm-started) to find an exactly flat segment; JSON-ready."""
    N, L = np.asarray(N, float), np.asarray(L, float)
    D = None if D is None else np.asarray(D, float)
    grid = np.linspace(0.0, 0.98 * float(L.min()), points)
    coarse = [_fit_fixed_e(law, N, D, L, float(E), delta) for E in grid]
    objs = np.array([c[0] for c in coarse])
    best = int(np.argmin(objs))
    near = np.flatnonzero(objs <= objs[best] * (1 + rel_tol) + 1e-15)
    # Fine grid one coarse step either side, warm-started: a Huber objective with few points
    # is piecewise linear-ish, so its minimum can be a segment (ties to rounding).
    lo_e, hi_e = grid[max(best - 1, 0)], grid[min(best + 1, points - 1)]
    fine = np.linspace(lo_e, hi_e, fine_points)
    start = coarse[best][2][None, :]
    fits = [_fit_fixed_e(law, N, D, L, float(E), delta, starts=start) for E in fine]
    fobj = np.array([f[0] for f in fits])
    tied = np.flatnonzero(fobj <= fobj.min() * (1 + tie_tol) + 1e-15)
    mid = int(tied[len(tied) // 2])
    return {"E": grid.tolist(), "objective": objs.tolist(), "rel_tol": rel_tol,
            "flat_range": [float(grid[near.min()]), float(grid[near.max()])], "flat_points": int(near.size),
            "tied_range": [float(fine[tied.min()]), float(fine[tied.max()])], "tied_points": int(tied.size),
            "identified": bool(tied.size == 1),
            "best_grid_E": float(fine[mid]), "best_grid_fit": fits[mid][1]}


def deterministic_point(fit: dict, profile: dict) -> dict:
    """Where the best objective is a flat segment of E, report the fit at its middle
    (on a fixed fine grid) instead of wherever L-BFGS stopped."""
    if profile["identified"]:
        return fit
    out = dict(fit)
    out["free_optimum"] = {k: fit.get(k) for k in ("E", "A", "B", "alpha", "beta") if k in fit}
    out.update(profile["best_grid_fit"])
    lo, hi = profile["tied_range"]
    out["warnings"] = list(out.get("warnings") or []) + [
        f"E is not identified: the best objective is flat (to rounding) for E in [{lo:.4g}, {hi:.4g}] "
        f"and within {profile['rel_tol']:.0e} of it for E in [{profile['flat_range'][0]:.3g}, "
        f"{profile['flat_range'][1]:.3g}]; the reported point is the middle of the flat segment on a fixed grid "
        "(machine-independent); the free optimum is under free_optimum"]
    out["point"] = "middle of the flat E segment"
    return out
