"""Scaling-law fits with bootstrap confidence intervals.

Three methods (see docs/SCALING_FITS.md for the longer story):

* ``fit_kaplan``      L(N)   = E + A * N^-alpha          (Kaplan et al. 2020; E may be fixed, e.g. 0)
* ``fit_chinchilla``  L(N,D) = E + A / N^alpha + B / D^beta
                      (Hoffmann et al. 2022, "Approach 3", as replicated by Besiroglu et al. 2024)
* ``fit_isoflop``     Hoffmann et al. "Approach 2": parabola of loss vs log N per compute
                      budget, then N_opt ~ C^a and D_opt ~ C^b in log-log.

Input format
------------
``load_points(path)`` reads either

* a study's ``results.json``::

      {"version": 1,
       "runs": [{"params": 1.2e7,               # total parameters N (required)
                 "non_embedding_params": 9.1e6, # optional; Kaplan fits use it when present
                 "tokens": 2.4e8,               # training tokens D (required)
                 "loss": 3.412,                 # final validation loss, nats/token (required)
                 "seed": 0,                     # optional; for seed-group bootstrap
                 "flops": 1.7e16},              # optional training FLOPs; default 6*N*D
                ...]}

  Other keys in a run (name, config, ...) and at top level are ignored.
  ``"loss": null`` (a failed run) counts as invalid.

* a CSV file with a header and columns ``params,tokens,loss`` (required) and
  optionally ``seed``, ``flops``, ``non_embedding_params``.

Invalid values (missing, NaN, inf, <= 0) raise ``DataError`` naming the rows, unless
``drop_invalid=True``, which drops them and records a warning.

How the Chinchilla fit is done
------------------------------
As in Hoffmann et al. (2022, App. D.2) and Besiroglu et al. (2024): with ``a = log A``,
``b = log B``, ``e = log E`` the predicted log loss is
``LSE(a - alpha*log N, b - beta*log D, e)`` (log-sum-exp), and the objective is
``sum_i Huber_delta(predicted log L_i - log L_i)`` with ``delta = 1e-3``, minimised by
L-BFGS from Hoffmann's grid of 4,500 starting points
(alpha, beta in {0, .5, ..., 2}; e in {-1, -.5, ..., 1}; a, b in {0, 5, ..., 25});
the best final objective wins.

*Vectorisation.* Rather than 4,500 sequential scipy runs (see bench/bench_fit.py for
the time that takes), all starts are optimised together by a batched L-BFGS written in
numpy: the objective and its analytic gradient are evaluated for every start in one
array expression (starts x points), the two-loop recursion and a backtracking
(Armijo) line search run element-wise, and starts leave the batch once converged.
Nothing is pruned: every grid start is run to convergence, so the result is the same
"best of 4,500 local optima" as the reference procedure (batched stopping rule: relative
decrease < 1e-10, max |gradient| < 1e-9, or 500 iterations). The 3 best distinct optima
are then polished with ``scipy.optimize.minimize(method="L-BFGS-B")`` with the analytic
gradient and tight tolerances. Internally the objective is divided by ``delta**2 * n`` so
that stopping tolerances are meaningful (Besiroglu et al. traced part of the original
paper's discrepancy to an optimizer stopping early), and log N, log D are centred (the
optimizer sees c = a - alpha * mean(log N) instead of a; same optima, much better
conditioning); the reported ``objective`` is the plain Huber sum. BLAS is held to one
thread during a fit (many tiny calls). This beats the allowed alternative of pruning the
grid by its initial objective, which can discard the start that leads to the best basin.

*Bootstrap.* A bootstrap resample is expressed as integer weights on the points
(how many times each point is drawn); the weighted objective is evaluated in the same
batched code for all resamples at once. Each refit warm-starts from the full-data
optimum plus the next best distinct local optima of the full grid search
(``boot_starts`` in total) rather than the whole grid: a resample moves the optimum a
little, so the full-data basins are the right place to start, and the extra starts guard
against a resample switching basin. Resampling is by points (default) or by groups
(``groups=``: e.g. all runs of one model size, or one seed, go together).

Derived quantities (Chinchilla, C = 6 N D)
------------------------------------------
``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)``,
``G = (alpha A / (beta B))^(1/(alpha+beta))``, ``N_opt(C) = G (C/6)^a``,
``D_opt(C) = G^-1 (C/6)^b``, tokens per parameter ``D_opt/N_opt``. Every derived number
gets its percentile CI by computing it for each bootstrap refit.

The CIs are percentile bootstrap intervals of the *fitted curve* (parameter
uncertainty given these runs); they are not prediction intervals for a new run's loss,
and they do not cover misspecification of the functional form.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy.optimize import minimize

from scalelab.errors import DataError, ScalelabError
from scalelab.eval.stats import percentile_interval

__all__ = [
    "FitError",
    "Points",
    "FitResult",
    "load_points",
    "fit_kaplan",
    "fit_chinchilla",
    "fit_isoflop",
    "format_fit",
    "run_fit",
    "chinchilla_loss",
    "compute_optimal",
    "hoffmann_grid",
    "CHINCHILLA_PUBLISHED",
]


def _blas_single_thread():
    """Limit BLAS to one thread while fitting.

    The fits make many tiny BLAS calls (vector products, L-BFGS-B's small dense
    algebra); multi-threaded OpenBLAS spends more on waking threads than on the work,
    20x slower on a loaded 2-core machine. ``threadpoolctl`` is used when installed.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class FitError(ScalelabError):
    """A scaling-law fit cannot be made from these data (too few points, one size, ...)."""


#: Hoffmann et al. (2022) Approach-3 estimates, as published.
CHINCHILLA_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


# --------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------


@dataclass
class Points:
    """Training runs: one row per run. Arrays are float64 of equal length."""

    N: np.ndarray  # total parameters
    D: np.ndarray  # training tokens
    L: np.ndarray  # final loss
    N_ne: np.ndarray | None = None  # non-embedding parameters
    seed: np.ndarray | None = None
    flops: np.ndarray | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.N.size)

    @property
    def compute(self) -> np.ndarray:
        """Training compute per run: the ``flops`` column if given, else 6*N*D."""
        return self.flops if self.flops is not None else 6.0 * self.N * self.D


_REQUIRED = ("params", "tokens", "loss")
_OPTIONAL = ("non_embedding_params", "seed", "flops")


def _to_float(v) -> float:
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def load_points(path: str | Path, drop_invalid: bool = False) -> Points:
    """Read runs from a study ``results.json`` or a CSV (format in the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found (expected a study results.json or a CSV with columns params,tokens,loss)")
    rows: list[dict]
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc})") from None
        runs = doc.get("runs") if isinstance(doc, dict) else None
        if not isinstance(runs, list):
            raise DataError(f'{p}: expected a JSON object with a "runs" list (see scalelab.scaling.fit docs)')
        rows = []
        for i, r in enumerate(runs):
            if not isinstance(r, dict):
                raise DataError(f"{p}: runs[{i}] is not an object")
            if r.get("budget") is not None:  # an IsoFLOP study's planned budget groups its runs exactly
                r = dict(r, flops=r["budget"])
            rows.append(r)
        def where(i: int) -> str:
            return f"runs[{i}]"
    else:
        try:
            with p.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = [h.strip() for h in (reader.fieldnames or [])]
                missing = [c for c in _REQUIRED if c not in header]
                if missing:
                    raise DataError(
                        f"{p}: missing CSV column(s) {', '.join(missing)}; need a header with params,tokens,loss "
                        f"(optional: seed, flops, non_embedding_params); found: {', '.join(header) or '(no header)'}"
                    )
                rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{p}: not a UTF-8 text CSV ({type(exc).__name__}: {str(exc)[:80]}); give a study "
                            "results.json or a CSV with a params,tokens,loss header") from None
        except IsADirectoryError:
            raise DataError(f"{p}: is a directory; give a study's results.json or a CSV file") from None
        def where(i: int) -> str:  # 1-based file line (the header is line 1)
            return f"line {i + 2}"
    if not rows:
        raise DataError(f"{p}: no runs found")

    n = len(rows)
    cols: dict[str, np.ndarray] = {}
    for c in _REQUIRED + _OPTIONAL:
        present = [c in r and r[c] is not None and not (isinstance(r[c], str) and r[c].strip() == "") for r in rows]
        if c in _REQUIRED:
            if not all(present):
                if p.suffix.lower() == ".json":
                    bad = [i for i, ok in enumerate(present) if not ok]
                    if not drop_invalid:
                        raise DataError(
                            f'{p}: {len(bad)} run(s) lack "{c}" (' + ", ".join(where(i) for i in bad[:5])
                            + (", ..." if len(bad) > 5 else "") + "); fix them or pass --drop-invalid (drop_invalid=True)"
                        )
            cols[c] = np.array([_to_float(r.get(c)) for r in rows], dtype=float)
        elif any(present):
            cols[c] = np.array([_to_float(r.get(c)) for r in rows], dtype=float)

    valid = np.ones(n, dtype=bool)
    problems = []
    for c, arr in cols.items():
        if c == "seed":
            bad = ~np.isfinite(arr)
        else:
            bad = ~(np.isfinite(arr) & (arr > 0))
        if bad.any():
            idx = np.flatnonzero(bad)
            problems.append(
                f"{c} missing, NaN, infinite or <= 0 at " + ", ".join(where(int(i)) for i in idx[:5])
                + (f" (+{idx.size - 5} more)" if idx.size > 5 else "")
            )
            valid &= ~bad
    warn: list[str] = []
    if problems:
        if not drop_invalid:
            raise DataError(f"{p}: invalid values: " + "; ".join(problems) + ". Fix or drop those runs (--drop-invalid; drop_invalid=True in Python).")
        warn.append(f"dropped {int((~valid).sum())} invalid run(s): " + "; ".join(problems))
    if valid.sum() == 0:
        raise DataError(f"{p}: no valid runs left")
    cols = {c: a[valid] for c, a in cols.items()}
    return Points(
        N=cols["params"],
        D=cols["tokens"],
        L=cols["loss"],
        N_ne=cols.get("non_embedding_params"),
        seed=cols.get("seed"),
        flops=cols.get("flops"),
        source=str(p),
        warnings=warn,
    )


def _check_array(name: str, x, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=float).reshape(-1)
    if n is not None and arr.size != n:
        raise DataError(f"{name} has {arr.size} values, expected {n} (one per run)")
    if arr.size == 0:
        raise DataError(f"{name} is empty")
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        i = np.flatnonzero(bad)
        raise DataError(
            f"{name} must be finite and > 0; bad value(s) at index {', '.join(map(str, i[:5]))}"
            f"{' ...' if i.size > 5 else ''} (e.g. {arr[i[0]]!r})"
        )
    return arr


# --------------------------------------------------------------------------------------
# The model: log L = LSE_k(c_k - g_k * x_k [, e]) and its Huber objective
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """Parameter layout of a sum-of-power-laws law in log space.

    ``terms``: (index of log-coefficient, index of exponent, row of the feature matrix X).
    ``e_idx``: index of e = log E, or None; ``e_fixed``: fixed log E (None: no E term).
    """

    names: tuple[str, ...]
    terms: tuple[tuple[int, int, int], ...]
    e_idx: int | None = None
    e_fixed: float | None = None


def _objective(theta: np.ndarray, X: np.ndarray, y: np.ndarray, w: np.ndarray | None, delta: float, spec: _Spec,
               scale: float, grad: bool = True, block: int = 256):
    """Weighted Huber objective (times ``scale``) and its gradient for a batch of parameter vectors.

    theta: (S, p); X: (k, n) log features; y: (n,) log loss; w: (S, n) weights or None.
    Returns f (S,) and g (S, p) (g is None when ``grad`` is False). Rows are processed in
    blocks of ``block`` so the (block, n) temporaries stay in cache; ops are in place.
    """
    S = theta.shape[0]
    f = np.empty(S)
    G = np.zeros_like(theta) if grad else None
    for lo in range(0, S, block):
        hi = min(S, lo + block)
        th = theta[lo:hi]
        us = []
        for c, g, j in spec.terms:
            u = np.multiply.outer(th[:, g], X[j])
            np.subtract(th[:, c, None], u, out=u)
            us.append(u)
        if spec.e_idx is not None:
            ecol = th[:, spec.e_idx, None]
        elif spec.e_fixed is not None:
            ecol = np.full((hi - lo, 1), spec.e_fixed)
        else:
            ecol = None
        if len(us) == 1 and ecol is None:
            r = us[0] - y
            Z = None
        else:
            m = np.maximum(us[0], us[1]) if len(us) > 1 else np.maximum(us[0], ecol)
            for u in us[2:]:
                np.maximum(m, u, out=m)
            if ecol is not None and len(us) > 1:
                np.maximum(m, ecol, out=m)
            for u in us:
                u -= m
                np.exp(u, out=u)
            Z = us[0] + us[1] if len(us) > 1 else us[0].copy()
            for u in us[2:]:
                Z += u
            if ecol is not None:
                pe = ecol - m
                np.exp(pe, out=pe)
                Z += pe
            r = np.log(Z)
            r += m
            r -= y
        c = np.maximum(r, -delta)
        np.minimum(c, delta, out=c)
        r -= 0.5 * c  # r <- c * (r - c/2) is the Huber loss
        r *= c
        if w is not None:
            r *= w[lo:hi]
        f[lo:hi] = r.sum(axis=1) * scale
        if not grad:
            continue
        c *= scale
        if w is not None:
            c *= w[lo:hi]
        if Z is None:
            us[0][...] = c
        else:
            c /= Z
            for u in us:
                u *= c
        Gb = G[lo:hi]
        for (ci, gi, j), u in zip(spec.terms, us):
            Gb[:, ci] += u.sum(axis=1)
            Gb[:, gi] -= np.einsum("ij,j->i", u, X[j])
        if spec.e_idx is not None:
            pe *= c
            Gb[:, spec.e_idx] += pe.sum(axis=1)
    bad = ~np.isfinite(f)
    if bad.any():
        f[bad] = np.inf
        if grad:
            G[bad] = 0.0
    return f, G


def _batched_lbfgs(fg, x0: np.ndarray, m: int = 10, max_iter: int = 500, gtol: float = 1e-9,
                   ftol: float = 1e-10, max_ls: int = 40):
    """Minimise independent problems in a batch with L-BFGS (numpy, element-wise).

    ``fg(x, rows)`` returns (f, g) for the parameter rows ``x`` of the problems ``rows``.
    Armijo backtracking line search; curvature pairs with s.y <= 0 are skipped; a start
    leaves the batch once its gradient or its relative decrease falls below tolerance, or
    its line search fails. Returns (x, f, n_iter per start). Overflow in far-off starts
    is expected (inf objective: the step is rejected), so floating-point warnings are off.
    """
    with np.errstate(all="ignore"):
        return _batched_lbfgs_impl(fg, x0, m, max_iter, gtol, ftol, max_ls)


def _batched_lbfgs_impl(fg, x0, m, max_iter, gtol, ftol, max_ls):
    S, p = x0.shape
    x = x0.astype(float).copy()
    f, g = fg(x, np.arange(S))
    s_hist = np.zeros((m, S, p))
    y_hist = np.zeros((m, S, p))
    rho = np.zeros((m, S))
    gamma = np.ones(S)
    n_iter = np.zeros(S, dtype=int)
    active = np.isfinite(f)
    first = np.ones(S, dtype=bool)
    k = 0
    while active.any() and k < max_iter:
        idx = np.flatnonzero(active)
        gi = g[idx]
        # two-loop recursion (entries with rho == 0 are no-ops)
        q = gi.copy()
        alph = np.zeros((m, idx.size))
        order = [(k - 1 - t) % m for t in range(m)]
        for t in order:
            alph[t] = rho[t, idx] * np.einsum("ij,ij->i", s_hist[t, idx], q)
            q -= alph[t, :, None] * y_hist[t, idx]
        r = q * gamma[idx, None]
        for t in reversed(order):
            beta = rho[t, idx] * np.einsum("ij,ij->i", y_hist[t, idx], r)
            r += s_hist[t, idx] * (alph[t] - beta)[:, None]
        d = -r
        slope = np.einsum("ij,ij->i", gi, d)
        notdesc = ~(slope < 0)
        if notdesc.any():  # reset to steepest descent
            d[notdesc] = -gi[notdesc]
            slope[notdesc] = -np.einsum("ij,ij->i", gi[notdesc], gi[notdesc])
            rho[:, idx[notdesc]] = 0.0
            gamma[idx[notdesc]] = 1.0
        step = np.ones(idx.size)
        fi = first[idx]
        if fi.any():  # first step: unit length, as L-BFGS-B does
            step[fi] = 1.0 / np.maximum(np.linalg.norm(d[fi], axis=1), 1e-300)
        f_old = f[idx]
        x_new = x[idx].copy()
        f_new = f_old.copy()
        g_new = gi.copy()
        pending = np.arange(idx.size)
        for _ in range(max_ls):
            if pending.size == 0:
                break
            xt = x[idx[pending]] + step[pending, None] * d[pending]
            ft, gt = fg(xt, idx[pending])
            ok = ft <= f_old[pending] + 1e-4 * step[pending] * slope[pending]
            acc = pending[ok]
            x_new[acc] = xt[ok]
            f_new[acc] = ft[ok]
            g_new[acc] = gt[ok]
            pending = pending[~ok]
            step[pending] *= 0.5
        failed = np.zeros(idx.size, dtype=bool)
        failed[pending] = True
        s = x_new - x[idx]
        yv = g_new - gi
        sy = np.einsum("ij,ij->i", s, yv)
        yy = np.einsum("ij,ij->i", yv, yv)
        good = (sy > 1e-12 * np.sqrt(yy) * np.linalg.norm(s, axis=1)) & (sy > 0) & np.isfinite(1.0 / sy) \
            & np.isfinite(sy / np.where(yy > 0, yy, 1.0))
        slot = k % m
        s_hist[slot, idx] = s
        y_hist[slot, idx] = yv
        rho[slot, idx] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma[idx] = np.where(good, sy / np.where(yy > 0, yy, 1.0), gamma[idx])
        x[idx] = x_new
        f[idx] = f_new
        g[idx] = g_new
        first[idx] = False
        n_iter[idx] += 1
        gmax = np.abs(g_new).max(axis=1)
        rel = (f_old - f_new) / np.maximum(np.maximum(np.abs(f_old), np.abs(f_new)), 1e-300)
        done = failed | (gmax <= gtol) | ((rel <= ftol) & ~fi)
        active[idx[done]] = False
        k += 1
    return x, f, n_iter


def hoffmann_grid() -> np.ndarray:
    """Hoffmann et al.'s 4,500 starts as rows (a, b, e, alpha, beta)."""
    ab = np.arange(0.0, 25.0 + 1e-9, 5.0)
    e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
    ex = np.arange(0.0, 2.0 + 1e-9, 0.5)
    A, B, E, AL, BE = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
    return np.stack([A.ravel(), B.ravel(), E.ravel(), AL.ravel(), BE.ravel()], axis=1)


def _kaplan_grid(free_e: bool) -> np.ndarray:
    a = np.arange(0.0, 25.0 + 1e-9, 5.0)
    al = np.array([0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0])
    if free_e:
        e = np.arange(-1.0, 1.0 + 1e-9, 0.5)
        A, AL, E = np.meshgrid(a, al, e, indexing="ij")
        return np.stack([A.ravel(), E.ravel(), AL.ravel()], axis=1)
    A, AL = np.meshgrid(a, al, indexing="ij")
    return np.stack([A.ravel(), AL.ravel()], axis=1)


class _Problem:
    """Data + spec: batched objective/gradient, multistart and polish, optionally with weights.

    Public methods take and return parameters in the law's own coordinates
    (a = log A, ..., alpha, ...). Internally each log-feature is centred
    (x - mean), i.e. the optimizer works with c = a - alpha * mean(log N) instead of a:
    the same objective and optima, but a far better conditioned problem (a and alpha are
    otherwise almost collinear because log N is ~15-25 everywhere).
    """

    def __init__(self, spec: _Spec, X: np.ndarray, y: np.ndarray, delta: float):
        self.spec, self.y, self.delta = spec, y, delta
        self.mu = X.mean(axis=1)
        self.Xc = X - self.mu[:, None]
        self.n = y.size
        self.scale = 1.0 / (delta * delta * self.n)

    def to_internal(self, theta: np.ndarray) -> np.ndarray:
        t = np.array(theta, dtype=float, copy=True)
        for c, g, j in self.spec.terms:
            t[..., c] = theta[..., c] - theta[..., g] * self.mu[j]
        return t

    def from_internal(self, t: np.ndarray) -> np.ndarray:
        theta = np.array(t, dtype=float, copy=True)
        for c, g, j in self.spec.terms:
            theta[..., c] = t[..., c] + t[..., g] * self.mu[j]
        return theta

    def fg(self, weights: np.ndarray | None = None):
        """(f, g) in internal coordinates for rows ``rows`` of a batch with these weights."""
        def f(x, rows):
            w = None if weights is None else weights[rows]
            return _objective(x, self.Xc, self.y, w, self.delta, self.spec, self.scale)

        return f

    def huber_sum(self, theta: np.ndarray, w: np.ndarray | None = None) -> float:
        """Plain (unscaled) Huber sum at ``theta`` (law coordinates)."""
        fv, _ = _objective(self.to_internal(theta)[None, :], self.Xc, self.y, None if w is None else w[None, :],
                           self.delta, self.spec, 1.0, grad=False)
        return float(fv[0])

    def polish(self, theta: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """scipy L-BFGS-B from ``theta`` with tight tolerances; returns (theta, scaled objective)."""
        wb = None if w is None else w[None, :]

        def fun(t):
            fv, gv = _objective(t[None, :], self.Xc, self.y, wb, self.delta, self.spec, self.scale)
            return float(fv[0]), gv[0]

        res = minimize(fun, self.to_internal(theta), jac=True, method="L-BFGS-B",
                       options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20})
        return self.from_internal(np.asarray(res.x)), float(res.fun)

    def multistart(self, starts: np.ndarray, weights: np.ndarray | None = None, chunk: int = 1500):
        """Batched L-BFGS from every start (chunks bound memory); returns (thetas, scaled objectives)."""
        xs, fs = [], []
        internal = self.to_internal(np.asarray(starts, dtype=float))
        for lo in range(0, internal.shape[0], chunk):
            sl = slice(lo, lo + chunk)
            w = None if weights is None else weights[sl]
            x, f, _ = _batched_lbfgs(self.fg(w), internal[sl])
            xs.append(x)
            fs.append(f)
        return self.from_internal(np.concatenate(xs)), np.concatenate(fs)


def _distinct_best(x: np.ndarray, f: np.ndarray, k: int, tol: float = 1e-3) -> list[int]:
    """Indices of the k best finite rows of x whose parameters differ by more than tol."""
    order = np.argsort(np.where(np.isfinite(f), f, np.inf))
    chosen: list[int] = []
    for i in order:
        if not np.isfinite(f[i]):
            break
        if all(np.max(np.abs(x[i] - x[j])) > tol for j in chosen):
            chosen.append(int(i))
        if len(chosen) >= k:
            break
    return chosen


def _boot_weights(n: int, n_boot: int, rng: np.random.Generator, groups: np.ndarray | None) -> np.ndarray:
    """(n_boot, n) integer weights: how often each point appears in each resample."""
    if groups is None:
        idx = rng.integers(0, n, size=(n_boot, n))
        W = np.zeros((n_boot, n))
        np.add.at(W, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
        return W
    labels, inv = np.unique(groups, return_inverse=True)
    G = labels.size
    gi = rng.integers(0, G, size=(n_boot, G))
    cnt = np.zeros((n_boot, G))
    np.add.at(cnt, (np.repeat(np.arange(n_boot), G), gi.ravel()), 1.0)
    return cnt[:, inv]


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------


def chinchilla_loss(N, D, E, A, B, alpha, beta):
    """L(N, D) = E + A/N^alpha + B/D^beta (broadcasts)."""
    N = np.asarray(N, dtype=float)
    D = np.asarray(D, dtype=float)
    return E + A / N**alpha + B / D**beta


def compute_optimal(C, E, A, B, alpha, beta) -> dict:
    """Compute-optimal allocation under C = 6 N D for the Chinchilla law (broadcasts)."""
    C = np.asarray(C, dtype=float)
    E, A, B, alpha, beta = (np.asarray(v, dtype=float) for v in (E, A, B, alpha, beta))
    with np.errstate(all="ignore"):
        s = alpha + beta
        a = beta / s
        b = alpha / s
        G = (alpha * A / (beta * B)) ** (1.0 / s)
        N = G * (C / 6.0) ** a
        D = (C / 6.0) ** b / G
        L = E + A / N**alpha + B / D**beta
        tpp = D / N
    return {"a": a, "b": b, "G": G, "N_opt": N, "D_opt": D, "tokens_per_param": tpp, "loss": L}


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------


def _clean(v):
    """JSON-safe: numpy -> python, non-finite -> None."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.ndarray):
        return _clean(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    return v


@dataclass
class FitResult:
    """A fitted law: point estimates, bootstrap samples, CIs, flags.

    ``params``: natural-scale estimates (E, A, [B], alpha, [beta]); ``samples``: the same
    parameters in every bootstrap refit (arrays of length ``n_boot``); ``fixed``: parameters
    held fixed (no CI).
    """

    law: str
    params: dict[str, float]
    objective: float
    n: int
    samples: dict[str, np.ndarray]
    confidence: float = 0.95
    n_boot: int = 0
    resample: str = "points"
    delta: float = 1e-3
    fixed: dict[str, float] = field(default_factory=dict)
    degenerate: bool = False
    warnings: list[str] = field(default_factory=list)
    n_column: str = "params"
    #: compute budgets at which ``derived()["compute_optimal"]`` is reported (Chinchilla):
    #: the smallest and largest 6ND among the runs, and 10x the largest
    budgets: list[float] = field(default_factory=list)

    @classmethod
    def from_params(cls, law: str, **params: float) -> "FitResult":
        """A law with given parameters and no data (e.g. CHINCHILLA_PUBLISHED), for predictions and plots.

        No bootstrap samples, so every CI is ``nan``.
        """
        need = {"chinchilla": ("E", "A", "B", "alpha", "beta"), "kaplan": ("E", "A", "alpha")}
        if law not in need:
            raise FitError(f"unknown law {law!r}; choose chinchilla or kaplan")
        missing = [k for k in need[law] if k not in params]
        if missing:
            raise FitError(f"{law} law needs parameters {', '.join(missing)}")
        p = {k: float(params[k]) for k in need[law]}
        return cls(law=law, params=p, objective=float("nan"), n=0, samples={k: np.array([]) for k in p})

    # -- intervals -------------------------------------------------------------------
    def _ci(self, values: np.ndarray) -> list[float]:
        if self.n_boot < 2:
            return [float("nan"), float("nan")]
        lo, hi = percentile_interval(values, self.confidence)
        return [float(lo), float(hi)]

    @property
    def ci(self) -> dict[str, list[float]]:
        return {k: self._ci(v) for k, v in self.samples.items() if k not in self.fixed}

    def loss_at(self, p, N, D=None):
        """The law with parameters `p` (point estimates or arrays of draws) at (N, D)."""
        return self._loss(p, N, D)

    def _loss(self, p, N, D):
        val = p["E"] + p["A"] / np.asarray(N, dtype=float) ** p["alpha"]
        if self.law == "chinchilla":
            val = val + p["B"] / np.asarray(D, dtype=float) ** p["beta"]
        return val

    def predict(self, N, D=None) -> dict:
        """Predicted loss at (N, D) (D ignored by Kaplan) with its bootstrap CI."""
        N = float(_check_array("N", [N])[0])
        if self.law == "chinchilla":
            if D is None:
                raise FitError("the Chinchilla law needs both N and D to predict a loss (got D=None)")
            D = float(_check_array("D", [D])[0])
        loss = float(self._loss(self.params, N, D))
        with np.errstate(all="ignore"):
            draws = self._loss(self.samples, N, D) if self.n_boot else np.array([])
        lo, hi = self._ci(draws)
        out = {"N": N, "loss": loss, "lo": lo, "hi": hi}
        if self.law == "chinchilla":
            out = {"N": N, "D": D, **{k: out[k] for k in ("loss", "lo", "hi")}}
        return out

    def predict_compute(self, C: float) -> dict:
        """Compute-optimal N, D, tokens/param and loss at training compute C = 6ND, with CIs."""
        if self.law != "chinchilla":
            raise FitError("compute-optimal allocation needs the Chinchilla law L(N, D) (fit with law='chinchilla')")
        C = float(_check_array("C", [C])[0])
        pt = compute_optimal(C, **self.params)
        bs = compute_optimal(C, **self.samples) if self.n_boot else None
        out: dict = {"C": C}
        for key in ("N_opt", "D_opt", "tokens_per_param", "loss"):
            out[key] = float(pt[key])
            out[key + "_ci"] = self._ci(bs[key]) if bs is not None else [float("nan")] * 2
        return out

    def derived(self, budgets: Iterable[float] | None = None) -> dict:
        if self.law != "chinchilla":
            return {}
        pt = compute_optimal(1.0, **self.params)
        bs = compute_optimal(1.0, **self.samples) if self.n_boot else None
        out: dict = {}
        for key in ("a", "b", "G"):
            out[key] = {"value": float(pt[key]), "ci": self._ci(bs[key]) if bs is not None else [float("nan")] * 2}
        if budgets is None:
            budgets = self.budgets
        out["compute_optimal"] = [self.predict_compute(C) for C in budgets]
        return out

    @property
    def reason(self) -> str | None:
        """Why the fit is degenerate (None when it is not)."""
        if not self.degenerate:
            return None
        msgs = [w[len("degenerate fit: "):] for w in self.warnings if w.startswith("degenerate fit: ")]
        return "; ".join(msgs) or "degenerate"

    def to_dict(self, include_samples: bool = False) -> dict:
        """JSON-ready dict (non-finite numbers become null). ``include_samples`` adds the
        bootstrap parameter draws as ``"samples": {param: [...]}`` (for plotting bands)."""
        d: dict = {"law": self.law}
        for k in ("E", "A", "B", "alpha", "beta"):
            if k in self.params:
                d[k] = self.params[k]
        d.update(
            objective=self.objective,
            n=self.n,
            ci=self.ci,
            derived=self.derived(),
            degenerate=self.degenerate,
            reason=self.reason,
            warnings=list(self.warnings),
            n_boot=self.n_boot,
            confidence=self.confidence,
            resample=self.resample,
            delta=self.delta,
            fixed=dict(self.fixed),
            n_column=self.n_column,
        )
        if include_samples:
            d["samples"] = {k: v for k, v in self.samples.items() if k not in self.fixed}
        return _clean(d)


# --------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------


def _nonfinite_share(samples: dict[str, np.ndarray]) -> float:
    if not samples:
        return 0.0
    M = np.stack(list(samples.values()), axis=1)
    return float(np.mean(~np.all(np.isfinite(M), axis=1)))


def _best_per_resample(xb: np.ndarray, fb: np.ndarray, n_boot: int, k: int) -> np.ndarray:
    """Of the k refits of each bootstrap resample keep the one with the lowest objective: (n_boot, p)."""
    xb = xb.reshape(n_boot, k, -1)
    fb = fb.reshape(n_boot, k)
    best = np.argmin(np.where(np.isfinite(fb), fb, np.inf), axis=1)
    return xb[np.arange(n_boot), best]


def _fit_law(spec: _Spec, X: np.ndarray, y: np.ndarray, grid: np.ndarray, delta: float, n_boot: int, seed: int,
             groups, boot_starts: int):
    """Grid multistart + polish on the full data, then the batched bootstrap refits.

    Returns (problem, best theta, best scaled objective, bootstrap thetas or None, ties flag).
    """
    # overflow in far-off starts is expected and handled (inf objective -> rejected step)
    with _blas_single_thread(), np.errstate(all="ignore"):
        return _fit_law_inner(spec, X, y, grid, delta, n_boot, seed, groups, boot_starts)


def _fit_law_inner(spec, X, y, grid, delta, n_boot, seed, groups, boot_starts):
    prob = _Problem(spec, X, y, delta)
    xg, fg_ = prob.multistart(grid)
    if not np.isfinite(fg_).any():
        raise FitError("the optimizer found no finite objective from any start; check the data")
    cand = _distinct_best(xg, fg_, max(boot_starts, 3))
    polished = [prob.polish(xg[i]) for i in cand[:3]]
    best_x, best_f = min(polished, key=lambda t: t[1])
    # (keep the batched optimum if scipy's polish somehow did worse)
    if fg_[cand[0]] < best_f:
        best_x, best_f = xg[cand[0]], fg_[cand[0]]
    starts = [best_x] + [xg[i] for i in cand if np.max(np.abs(xg[i] - best_x)) > 1e-3][: boot_starts - 1]
    starts = np.array(starts)
    # near-ties between distinct optima: the fit is not well identified
    ties = [i for i, (xp, fp) in enumerate(polished) if np.max(np.abs(xp - best_x)) > 0.05 and fp <= best_f * (1 + 1e-6)
            + 1e-12]
    boot = None
    if n_boot >= 2:
        rng = np.random.default_rng(seed)
        W = _boot_weights(y.size, n_boot, rng, groups)
        k = starts.shape[0]
        S0 = np.repeat(starts[None, :, :], n_boot, axis=0).reshape(n_boot * k, -1)
        Wk = np.repeat(W, k, axis=0)
        xb, fb = prob.multistart(S0, Wk)
        boot = _best_per_resample(xb, fb, n_boot, k)
    return prob, best_x, best_f, boot, bool(ties)


def _natural(names, theta: np.ndarray, spec: _Spec) -> dict[str, np.ndarray]:
    """Map log-space rows (..., p) to natural parameters."""
    t = dict(zip(names, np.moveaxis(np.asarray(theta, dtype=float), -1, 0)))
    with np.errstate(over="ignore"):
        out = {}
        out["E"] = np.exp(t["e"]) if "e" in t else (np.zeros_like(t["a"]) if spec.e_fixed is None else
                                                     np.full_like(t["a"], math.exp(spec.e_fixed)))
        out["A"] = np.exp(t["a"])
        if "b" in t:
            out["B"] = np.exp(t["b"])
        out["alpha"] = t["alpha"]
        if "beta" in t:
            out["beta"] = t["beta"]
    return out


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


# --------------------------------------------------------------------------------------
# IsoFLOP (Approach 2)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Presentation and the CLI entry point
# --------------------------------------------------------------------------------------


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}"


def format_fit(result) -> str:
    """Markdown table of a fit (a FitResult or any dict from ``to_dict``/``fit_isoflop``/``run_fit``)."""
    d = result.to_dict() if isinstance(result, FitResult) else result
    law = d.get("law", "?")
    conf = d.get("confidence", 0.95)
    lines = [f"**{law} fit** on {d.get('n')} runs"
             + (f"; {d.get('n_boot')} bootstrap refits ({d.get('resample', 'points')})" if d.get("n_boot") else "")
             + (" — **DEGENERATE**" if d.get("degenerate") else ""), ""]
    lines += [f"| quantity | estimate | {conf:.0%} CI |", "|---|---|---|"]
    ci = d.get("ci") or {}
    if law in ("chinchilla", "kaplan"):
        for k in ("E", "A", "B", "alpha", "beta"):
            if k in d:
                if k in (d.get("fixed") or {}):
                    lines.append(f"| {k} (fixed) | {_fmt(d[k])} | — |")
                    continue
                lo, hi = ci.get(k, [None, None])
                lines.append(f"| {k} | {_fmt(d[k])} | {_fmt(lo)} – {_fmt(hi)} |")
        der = d.get("derived") or {}
        for k, label in (("a", "a = β/(α+β)  (N_opt ∝ C^a)"), ("b", "b = α/(α+β)  (D_opt ∝ C^b)"), ("G", "G")):
            if k in der:
                lo, hi = der[k]["ci"]
                lines.append(f"| {label} | {_fmt(der[k]['value'])} | {_fmt(lo)} – {_fmt(hi)} |")
        lines.append(f"| Huber objective (δ={d.get('delta')}) | {_fmt(d.get('objective'))} | |")
        co = der.get("compute_optimal") or []
        if co:
            lines += ["", "| C (FLOPs) | N_opt | D_opt | tokens/param | loss |", "|---|---|---|---|---|"]
            for r in co:
                cells = [f"{_fmt(r[k])} [{_fmt(r[k + '_ci'][0])}, {_fmt(r[k + '_ci'][1])}]"
                         for k in ("N_opt", "D_opt", "tokens_per_param", "loss")]
                lines.append(f"| {_fmt(r['C'])} | " + " | ".join(cells) + " |")
    elif law == "isoflop":
        for k, label in (("a", "a  (N_opt ∝ C^a)"), ("b", "b  (D_opt ∝ C^b)")):
            lo, hi = ci.get(k, [None, None])
            lines.append(f"| {label} | {_fmt(d.get(k))} | {_fmt(lo)} – {_fmt(hi)} |")
        lines += ["", "| C (FLOPs) | runs | sizes | N_opt | D_opt | loss at opt | used |", "|---|---|---|---|---|---|---|"]
        for b in d.get("budgets", []):
            lines.append(f"| {_fmt(b['C'])} | {b['n_runs']} | {b['n_sizes']} | {_fmt(b.get('N_opt'))} | "
                         f"{_fmt(b.get('D_opt'))} | {_fmt(b.get('loss_opt'))} | "
                         f"{'yes' if b.get('used') else 'no: ' + b.get('reason', '')} |")
    preds = d.get("predictions") or []
    if preds:
        lines += ["", f"| N | D | predicted loss | {conf:.0%} CI |", "|---|---|---|---|"]
        for r in preds:
            lines.append(f"| {_fmt(r.get('N'))} | {_fmt(r.get('D'))} | {_fmt(r['loss'])} | "
                         f"{_fmt(r['lo'])} – {_fmt(r['hi'])} |")
    cps = d.get("compute_predictions") or []
    if cps:
        keys = [k for k in ("N_opt", "D_opt", "tokens_per_param", "loss") if k in cps[0]]
        lines += ["", "| C (FLOPs) | " + " | ".join(f"{k} [{conf:.0%} CI]" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for r in cps:
            cells = [f"{_fmt(r[k])} [{_fmt(r[k + '_ci'][0])}, {_fmt(r[k + '_ci'][1])}]" for k in keys]
            lines.append(f"| {_fmt(r['C'])} | " + " | ".join(cells) + " |")
    ho = d.get("holdout")
    if ho:
        lines += ["", f"**Holdout** ({ho['held_out']} held out; fitted on {ho['n_fit']} runs): mean error "
                  f"{_fmt(ho['mean_error'])}, mean |error| {_fmt(ho['mean_abs_error'])}, "
                  f"{ho['coverage']:.0%} of {ho['n_held_out']} held-out runs inside their "
                  f"{ho['confidence']:.0%} prediction intervals", "",
                  "| run | N | D | observed | predicted | prediction interval | inside |", "|---|---|---|---|---|---|---|"]
        for r in ho["runs"]:
            lines.append(f"| {r['name']} | {_fmt(r['params'])} | {_fmt(r['tokens'])} | {_fmt(r['observed'])} | "
                         f"{_fmt(r['predicted'])} | [{_fmt(r['pi'][0])}, {_fmt(r['pi'][1])}] | "
                         f"{'yes' if r['inside'] else 'NO'} |")
    for w in d.get("warnings") or []:
        lines.append(f"\n> warning: {w}")
    return "\n".join(lines)


def _groups_for(points: Points, resample: str):
    if resample == "points":
        return None
    if resample == "size":
        return points.N
    if resample == "seed":
        if points.seed is None:
            raise DataError(f"{points.source}: resample='seed' needs a seed column/key in every run")
        return points.seed
    raise FitError(f"resample must be 'points', 'size' or 'seed', got {resample!r}")


def run_fit(path: str | Path, law: str = "chinchilla", fix_E: float | None = None, n_boot: int = 200, seed: int = 0,
            predict: Sequence[tuple[float, float | None]] | None = None, resample: str = "points",
            drop_invalid: bool = False, predict_compute: Sequence[float] | None = None,
            non_embedding: bool | None = None, isoflop_tol: float = 0.2,
            include_samples: bool = False, holdout: bool = False) -> dict:
    """Load runs from ``path``, fit ``law`` ("chinchilla" | "kaplan" | "isoflop"), return a JSON-ready dict.

    ``predict``: (N, D) pairs (D may be None for Kaplan) -> ``result["predictions"]``, each
    ``{N, D, loss, lo, hi}``. ``predict_compute``: budgets C -> compute-optimal N, D, loss
    with CIs (Chinchilla; IsoFLOP gives N_opt and D_opt). ``resample``: bootstrap unit
    ("points", "size" or "seed"; IsoFLOP always resamples runs within each budget).
    ``isoflop_tol``: relative FLOPs tolerance that groups runs into one budget.
    ``include_samples``: also return the bootstrap parameter draws (``"samples"``).
    ``non_embedding``: use the non-embedding N column (default: yes for Kaplan when every
    run has it, no for Chinchilla/IsoFLOP, which use total parameters like Hoffmann et al.).
    ``holdout``: also fit on all but the largest compute budget (3+ budgets in the flops
    column; else the largest size) and predict the held-out runs with prediction intervals
    (``result["holdout"]``; scaling/ladder.py).
    """
    if n_boot < 0:
        raise FitError(f"--boot must be >= 0 (0 = no confidence intervals), got {n_boot}")
    pts = load_points(path, drop_invalid=drop_invalid)
    law = law.lower()
    if law not in ("chinchilla", "kaplan", "isoflop"):
        raise FitError(f"unknown law {law!r}; choose chinchilla, kaplan or isoflop")
    if non_embedding is None:
        non_embedding = law == "kaplan" and pts.N_ne is not None
    if non_embedding and pts.N_ne is None:
        raise DataError(f"{pts.source}: non_embedding=True but the runs have no non_embedding_params")
    N = pts.N_ne if non_embedding else pts.N
    col = "non_embedding_params" if non_embedding else "params"
    if law == "isoflop":
        if predict:
            raise FitError("--predict needs a loss law; use law='chinchilla' (or 'kaplan')")
        if non_embedding:
            pts = Points(N=N, D=pts.D, L=pts.L, seed=pts.seed, flops=pts.flops, source=pts.source,
                         warnings=pts.warnings)
        out = fit_isoflop(pts, tol=isoflop_tol, n_boot=n_boot, seed=seed, predict_compute=predict_compute)
        out["source"] = pts.source
        out["n_column"] = col
        return out
    groups = _groups_for(pts, resample)
    if law == "kaplan":
        res = fit_kaplan(N, pts.L, fix_E=fix_E, n_boot=n_boot, seed=seed, groups=groups)
    else:
        if fix_E is not None:
            raise FitError("fix_E applies to the Kaplan law only")
        res = fit_chinchilla(N, pts.D, pts.L, n_boot=n_boot, seed=seed, groups=groups)
    res.resample = resample
    res.n_column = col
    res.warnings = list(pts.warnings) + res.warnings
    if law == "kaplan" and not non_embedding and pts.N_ne is None:
        res.warnings.append("Kaplan et al. use non-embedding N; these runs have only total params")
    out = res.to_dict(include_samples=include_samples)
    out["source"] = pts.source
    if predict:
        out["predictions"] = [_clean(res.predict(float(n), None if d is None else float(d))) for n, d in predict]
    if predict_compute:
        out["compute_predictions"] = [_clean(res.predict_compute(float(c))) for c in predict_compute]
    if holdout:
        out["holdout"] = _clean(_holdout_points(pts, N, law, fix_E, n_boot, seed))
    return out


def _holdout_points(pts: Points, N: np.ndarray, law: str, fix_E, n_boot: int, seed: int) -> dict:
    from scalelab.scaling.ladder import holdout

    labels = _bin_budgets(pts.compute, 0.05) if pts.flops is not None else None
    runs = []
    for i in range(len(pts)):
        r = {"params": float(N[i]), "tokens": float(pts.D[i]), "loss": float(pts.L[i]), "name": f"run {i}"}
        if labels is not None:
            r["budget"] = float(np.exp(np.mean(np.log(pts.compute[labels == labels[i]]))))
        runs.append(r)

    def fit(n, d, y, **kw):
        if law == "kaplan":
            return fit_kaplan(n, y, fix_E=fix_E, **kw)
        return fit_chinchilla(n, d, y, **kw)

    return holdout(runs, lambda r: r["loss"], fit, n_boot=n_boot, seed=seed, label="loss")
