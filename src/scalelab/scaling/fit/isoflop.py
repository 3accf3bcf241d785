"""Hoffmann et al.'s Approach 2 (IsoFLOP profiles): ``fit_isoflop``."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from scalelab.eval.stats import percentile_interval
from scalelab.scaling.fit.points import FitError, Points, _check_array
from scalelab.scaling.fit.result import _clean



def _bin_budgets(C: np.ndarray, tol: float) -> np.ndarray:
    """Label runs by compute budget: sorted runs within a factor (1+tol) of a group's first member."""
    order = np.argsort(C)
    labels = np.empty(C.size, dtype=int)
    g = -1
    start = None
    for i in order:
        if start is None or C[i] > start * (1.0 + tol):
            g += 1
            start = C[i]
        labels[i] = g
    return labels


def _parabola_min(lN: np.ndarray, L: np.ndarray):
    """Fit L = c2 x^2 + c1 x + c0 in x = log N; return (x*, L*, c2) or None if no minimum."""
    c2, c1, c0 = np.polyfit(lN, L, 2)
    if not (c2 > 0):
        return None
    x = -c1 / (2 * c2)
    return x, c0 - c1 * c1 / (4 * c2), c2


def _loglog(C: np.ndarray, Y: np.ndarray):
    slope, icpt = np.polyfit(np.log(C), np.log(Y), 1)
    return float(slope), float(icpt)


def _isoflop_core(lN, L, labels, budgets):
    """Per budget id: (id, log N_opt, loss at the vertex, curvature, vertex inside the sampled range)."""
    rows = []
    for gid in budgets:
        m = labels == gid
        r = _parabola_min(lN[m], L[m])
        if r is None:
            rows.append((gid, np.nan, np.nan, np.nan, False))
            continue
        x, lmin, c2 = r
        inside = lN[m].min() <= x <= lN[m].max()
        rows.append((gid, x, lmin, c2, inside))
    return rows


def fit_isoflop(points: Points, tol: float = 0.2, n_boot: int = 200, seed: int = 0, confidence: float = 0.95,
                min_sizes: int = 3, allow_extrapolated: bool = False,
                predict_compute: Sequence[float] | None = None) -> dict:
    """Hoffmann et al. Approach 2 (IsoFLOP profiles).

    Runs are grouped into compute budgets (FLOPs column, else 6ND; runs within a factor
    ``1+tol`` of a group's smallest member form one budget). For each budget with at
    least ``min_sizes`` distinct N a parabola of loss vs log N gives N_opt (its vertex)
    and the loss there; D_opt = C / (6 N_opt) with C the budget's geometric-mean compute.
    Budgets whose parabola opens downwards are skipped; so are those whose vertex lies
    outside the sampled N range unless ``allow_extrapolated``. Then N_opt = k_N C^a and
    D_opt = k_D C^b are fitted by least squares in log-log. CIs: percentile bootstrap
    resampling runs within each budget (stratified), refitting parabolas and power laws.
    ``predict_compute``: budgets C at which to report N_opt and D_opt with CIs
    (``compute_predictions`` in the result).
    """
    if not isinstance(points, Points):
        raise TypeError("fit_isoflop takes a Points object (see load_points)")
    N, L = points.N, points.L
    C = points.compute
    _check_array("N", N)
    _check_array("L", L, N.size)
    _check_array("C", C, N.size)
    if tol <= 0:
        raise FitError(f"tol must be > 0, got {tol}")
    labels = _bin_budgets(C, tol)
    lN = np.log(N)
    warn: list[str] = list(points.warnings)
    gids = np.unique(labels)
    Cg = {int(g): float(np.exp(np.mean(np.log(C[labels == g])))) for g in gids}
    spread = {int(g): float(C[labels == g].max() / C[labels == g].min()) for g in gids}
    usable = [int(g) for g in gids if np.unique(lN[labels == g]).size >= min_sizes]
    thin = [g for g in usable if np.unique(lN[labels == g]).size == min_sizes == 3]
    if thin:
        warn.append(f"{len(thin)} budget(s) have exactly 3 sizes: the parabola passes through them exactly, "
                    "so nothing checks its shape; 5+ sizes per budget are better")
    if len(gids) - len(usable):
        warn.append(f"{len(gids) - len(usable)} compute budget(s) have fewer than {min_sizes} model sizes and were "
                    "skipped")
    rows = _isoflop_core(lN, L, labels, usable)
    budgets_out = []
    keep = []
    for gid, x, lmin, c2, inside in rows:
        info = {"C": Cg[gid], "n_runs": int((labels == gid).sum()), "n_sizes": int(np.unique(lN[labels == gid]).size),
                "C_spread": spread[gid]}
        if not np.isfinite(x):
            info.update(used=False, reason="loss vs log N is not convex (no minimum)")
            warn.append(f"budget C={Cg[gid]:.3g}: loss vs log N has no minimum; skipped")
        else:
            info.update(N_opt=float(np.exp(x)), D_opt=float(Cg[gid] / (6 * np.exp(x))), loss_opt=float(lmin),
                        curvature=float(c2), inside_range=bool(inside))
            if inside or allow_extrapolated:
                info["used"] = True
                keep.append(gid)
                if not inside:
                    warn.append(f"budget C={Cg[gid]:.3g}: optimum is outside the sampled N range (extrapolated)")
            else:
                info.update(used=False, reason="optimum outside the sampled N range; sample wider or "
                                                "allow_extrapolated=True")
                warn.append(f"budget C={Cg[gid]:.3g}: optimum outside the sampled N range; skipped")
        budgets_out.append(info)
    out = {"law": "isoflop", "n": int(N.size), "tol": tol, "budgets": budgets_out, "warnings": warn,
           "confidence": confidence, "n_boot": 0, "resample": "runs within each budget", "degenerate": False,
           "reason": None}
    if len(keep) < 2:
        raise FitError(
            f"IsoFLOP fit needs at least 2 compute budgets with >= {min_sizes} model sizes and an interior loss "
            f"minimum; found {len(keep)} (of {len(gids)} budgets, tol={tol}). Train more sizes per budget, or adjust tol"
        )
    if len(keep) < 3:
        warn.append("only 2 usable budgets: the exponents are a line through two points (no CI possible from "
                    "budget scatter)")
    cs = np.array([Cg[g] for g in keep])
    nopt = np.array([b["N_opt"] for b in budgets_out if b.get("used")])
    dopt = cs / (6 * nopt)
    a, ka = _loglog(cs, nopt)
    b, kb = _loglog(cs, dopt)
    out.update(a=a, b=b, coef={"N_opt": math.exp(ka), "D_opt": math.exp(kb)})
    ci: dict = {}
    boot = None  # rows: (a, log k_N, b, log k_D)
    if n_boot >= 2:
        rng = np.random.default_rng(seed)
        members = {g: np.flatnonzero(labels == g) for g in keep}
        boot = np.full((n_boot, 4), np.nan)
        vertex_draws = np.full((n_boot, len(keep)), np.nan)
        for i in range(n_boot):
            xs = []
            for g in keep:
                idx = rng.choice(members[g], size=members[g].size, replace=True)
                r = _parabola_min(lN[idx], L[idx]) if np.unique(lN[idx]).size >= 3 else None
                xs.append(np.nan if r is None else r[0])
            xs = np.array(xs)
            vertex_draws[i] = xs
            ok = np.isfinite(xs)
            if ok.sum() >= 2:
                nb = np.exp(xs[ok])
                boot[i] = (*_loglog(cs[ok], nb), *_loglog(cs[ok], cs[ok] / (6 * nb)))
        ci = {"a": list(percentile_interval(boot[:, 0], confidence)),
              "b": list(percentile_interval(boot[:, 2], confidence))}
        # per-budget vertex intervals and the power law's draws, for figures (no refits there)
        for j, info in enumerate(b for b in budgets_out if b.get("used")):
            info["N_opt_ci"] = list(np.exp(percentile_interval(vertex_draws[:, j], confidence)))
        out["samples"] = {"a": boot[:, 0].tolist(), "log_k_N": boot[:, 1].tolist(),
                          "b": boot[:, 2].tolist(), "log_k_D": boot[:, 3].tolist()}
        bad = float(np.mean(~np.isfinite(boot[:, 0])))
        if bad > 0.2:
            # the surviving resamples are a biased subset: no honest interval
            ci = {"a": [float("nan")] * 2, "b": [float("nan")] * 2}
            boot = None
            out["degenerate"] = True
            out["reason"] = (f"{bad:.0%} of bootstrap resamples could not be refitted (too few runs per budget "
                             "for a parabola): no CI; train more sizes per budget")
            warn.append("degenerate fit: " + out["reason"])
        elif bad > 0.05:
            warn.append(f"{bad:.0%} of bootstrap resamples could not be fitted")
        out["n_boot"] = n_boot
    preds = []
    for Cp in predict_compute or []:
        Cp = float(_check_array("C", [Cp])[0])
        row = {"C": Cp, "N_opt": math.exp(ka) * Cp**a, "D_opt": math.exp(kb) * Cp**b}
        for key, (si, ii) in (("N_opt", (0, 1)), ("D_opt", (2, 3))):
            if boot is not None:
                with np.errstate(all="ignore"):
                    draws = np.exp(boot[:, ii] + boot[:, si] * math.log(Cp))
                row[key + "_ci"] = list(percentile_interval(draws, confidence))
            else:
                row[key + "_ci"] = [float("nan")] * 2
        preds.append(row)
    if preds:
        out["compute_predictions"] = preds
    out["ci"] = ci
    if not (0 < a < 1):
        out["degenerate"] = True
        msg = f"N_opt exponent a={a:.3g} outside (0, 1)"
        out["reason"] = msg if not out.get("reason") else out["reason"] + "; " + msg
        warn.append("degenerate fit: " + msg)
    return _clean(out)

