"""The L(N) and L(N, D) fits: ``fit_kaplan`` and ``fit_chinchilla`` (with their data checks and flags)."""

from __future__ import annotations

import math

import numpy as np

from scalelab.errors import DataError
from scalelab.scaling.fit.points import FitError, _check_array
from scalelab.scaling.fit.result import FitResult
from scalelab.scaling.fit.solver import _Spec, _fit_law, _kaplan_grid, _natural, hoffmann_grid

#: Hoffmann et al. (2022) Approach-3 estimates, as published.
CHINCHILLA_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _nonfinite_share(samples: dict[str, np.ndarray]) -> float:
    if not samples:
        return 0.0
    M = np.stack(list(samples.values()), axis=1)
    return float(np.mean(~np.all(np.isfinite(M), axis=1)))


def _common_checks(N: np.ndarray, n_params: int, law: str) -> list[str]:
    warn = []
    if N.size < n_params:
        raise FitError(f"{law} fit has {n_params} free parameters but only {N.size} run(s); add runs")
    if N.size < 2 * n_params:
        warn.append(f"only {N.size} runs for {n_params} free parameters: CIs will be wide and fragile")
    return warn


def _check_groups(groups, n: int):
    if groups is None:
        return None
    g = np.asarray(groups).reshape(-1)
    if g.size != n:
        raise DataError(f"groups has {g.size} labels, expected {n}")
    if np.unique(g).size < 2:
        raise FitError("group bootstrap needs at least 2 groups")
    return g


def fit_kaplan(N, L, fix_E: float | None = None, n_boot: int = 200, seed: int = 0, delta: float = 1e-3,
               groups=None, confidence: float = 0.95, boot_starts: int = 4) -> FitResult:
    """Fit L(N) = E + A * N^-alpha (Kaplan et al. 2020), E free or fixed (``fix_E=0``: pure power law).

    Same machinery as ``fit_chinchilla`` (Huber on log loss, grid of starts, bootstrap).
    Use non-embedding N, as Kaplan et al. did (``run_fit`` picks that column when present).
    """
    N = _check_array("N", N)
    L = _check_array("L", L, N.size)
    if fix_E is not None and not (math.isfinite(fix_E) and fix_E >= 0):
        raise FitError(f"fix_E must be a finite number >= 0, got {fix_E!r}")
    if fix_E is not None and fix_E >= L.min():
        raise FitError(f"fix_E={fix_E} is not below the smallest observed loss {L.min():.4g}; the law cannot fit")
    free_e = fix_E is None
    n_params = 3 if free_e else 2
    warn = _common_checks(N, n_params, "Kaplan")
    n_sizes = np.unique(N).size
    need = 3 if free_e else 2
    if n_sizes < need:
        raise FitError(
            f"Kaplan fit with {'E free' if free_e else 'E fixed'} needs at least {need} distinct model sizes, got "
            f"{n_sizes}" + ("; add sizes or fix E (--fix-E 0; fix_E=0 in Python)" if free_e else "; add model sizes")
        )
    groups = _check_groups(groups, N.size)
    if free_e:
        spec = _Spec(names=("a", "e", "alpha"), terms=((0, 2, 0),), e_idx=1)
    else:
        spec = _Spec(names=("a", "alpha"), terms=((0, 1, 0),), e_fixed=(math.log(fix_E) if fix_E > 0 else None))
    X = np.log(N)[None, :]
    y = np.log(L)
    prob, bx, bf, boot, ties = _fit_law(spec, X, y, _kaplan_grid(free_e), delta, n_boot, seed, groups, boot_starts)
    params = {k: float(v) for k, v in _natural(spec.names, bx, spec).items()}
    samples = _natural(spec.names, boot, spec) if boot is not None else {k: np.array([]) for k in params}
    res = FitResult(law="kaplan", params=params, objective=prob.huber_sum(bx), n=int(N.size), samples=samples,
                    confidence=confidence, n_boot=n_boot if boot is not None else 0,
                    resample="points" if groups is None else "groups", delta=delta,
                    fixed={} if free_e else {"E": float(fix_E)})
    res.warnings.extend(warn)
    _flag(res, ties, {"N": (params["A"] / N ** params["alpha"]) / L}, (params["E"] / L.min()) if free_e else None)
    return res


def _flag(res: FitResult, ties: bool, shares: dict[str, np.ndarray], e_share: float | None) -> None:
    """Mark a fit degenerate (with the reason) or add warnings; never silently pass nonsense.

    ``shares``: per term, its fitted contribution as a fraction of each observed loss;
    ``e_share``: E / min(L) when E is free.
    """
    p = res.params
    reasons = []
    for k, var in (("alpha", "N"), ("beta", "D")):
        if k in p:
            if not (p[k] > 1e-3):
                reasons.append(f"{k}={p[k]:.3g} <= 0: the loss does not fall with {var}")
            elif p[k] > 5:
                reasons.append(f"{k}={p[k]:.3g} > 5: implausible exponent, the {var} term is not identified")
    for var, share in shares.items():
        with np.errstate(all="ignore"):
            top = float(np.nanmax(share)) if np.size(share) else float("nan")
        if not np.isfinite(top):
            reasons.append(f"the {var} term overflowed")
        elif top < 1e-3:
            coef, ex = ("A", "alpha") if var == "N" else ("B", "beta")
            reasons.append(f"the {var} term contributes < 0.1% of the loss on every run: {coef} and {ex} are not "
                           "identified")
    if reasons:
        res.degenerate = True
        res.warnings.append("degenerate fit: " + "; ".join(reasons))
    if e_share is not None and e_share < 1e-3:
        res.warnings.append("E was driven to ~0 (the data show no irreducible floor in range)"
                            + ("; consider --fix-E 0 (fix_E=0)" if res.law == "kaplan" else ""))
    if ties:
        res.warnings.append("distinct parameter vectors reach the same best objective: parameters are poorly "
                            "identified (see the CIs)")
    if res.n_boot:
        share = _nonfinite_share(res.samples)
        if share > 0.05:
            res.warnings.append(f"{share:.0%} of bootstrap refits gave non-finite parameters")


def fit_chinchilla(N, D, L, delta: float = 1e-3, grid: np.ndarray | None = None, n_boot: int = 200, seed: int = 0,
                   groups=None, confidence: float = 0.95, boot_starts: int = 6) -> FitResult:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta as Hoffmann et al. (2022) / Besiroglu et al. (2024).

    ``grid``: starting points as rows (a, b, e, alpha, beta); default ``hoffmann_grid()``
    (4,500 starts). ``groups``: labels for a group bootstrap (default: resample points).
    ``boot_starts``: starts per bootstrap refit (full-data optimum + next best distinct
    local optima). See the module docstring for the method.
    """
    N = _check_array("N", N)
    D = _check_array("D", D, N.size)
    L = _check_array("L", L, N.size)
    warn = _common_checks(N, 5, "Chinchilla")
    nN, nD = np.unique(N).size, np.unique(D).size
    if nN < 2:
        raise FitError(f"Chinchilla fit needs several model sizes; all {N.size} runs have N={N[0]:.4g}. "
                       "Use fit_kaplan-style data or add sizes")
    if nD < 2:
        raise FitError(f"Chinchilla fit needs several token counts; all {N.size} runs have D={D[0]:.4g}. "
                       "Fit L(N) with law='kaplan' instead, or vary D")
    if nN < 3 or nD < 3:
        warn.append(f"only {nN} distinct N and {nD} distinct D: E, A, alpha (or B, beta) are barely identified")
    lN, lD = np.log(N), np.log(D)
    collinear = None
    corr = float(np.corrcoef(lN, lD)[0, 1])
    if abs(corr) > 0.999:
        collinear = (f"N and D vary together (corr of log N, log D = {corr:.4f}, e.g. a fixed tokens/param "
                     "ratio): the N and D terms cannot be separated. Fit law='kaplan' on these runs, or train "
                     "several N per compute budget (an IsoFLOP grid)")
    elif abs(corr) > 0.98:
        warn.append(f"log N and log D are almost collinear (corr {corr:.3f}): the N and D terms are poorly "
                    "separated; an IsoFLOP grid (several N per budget) fixes this")
    groups = _check_groups(groups, N.size)
    spec = _Spec(names=("a", "b", "e", "alpha", "beta"), terms=((0, 3, 0), (1, 4, 1)), e_idx=2)
    g = hoffmann_grid() if grid is None else np.asarray(grid, dtype=float)
    if g.ndim != 2 or g.shape[1] != 5:
        raise FitError(f"grid must have rows (a, b, e, alpha, beta); got shape {g.shape}")
    X = np.stack([lN, lD])
    y = np.log(L)
    prob, bx, bf, boot, ties = _fit_law(spec, X, y, g, delta, n_boot, seed, groups, boot_starts)
    params = {k: float(v) for k, v in _natural(spec.names, bx, spec).items()}
    samples = _natural(spec.names, boot, spec) if boot is not None else {k: np.array([]) for k in params}
    res = FitResult(law="chinchilla", params=params, objective=prob.huber_sum(bx), n=int(N.size), samples=samples,
                    confidence=confidence, n_boot=n_boot if boot is not None else 0,
                    resample="points" if groups is None else "groups", delta=delta)
    res.warnings.extend(warn)
    _flag(res, ties, {"N": (params["A"] / N ** params["alpha"]) / L, "D": (params["B"] / D ** params["beta"]) / L},
          params["E"] / L.min())
    if collinear:
        res.degenerate = True
        res.warnings.append("degenerate fit: " + collinear)
    C = 6.0 * N * D
    res.budgets = [float(C.min()), float(C.max()), float(10 * C.max())]
    return res

