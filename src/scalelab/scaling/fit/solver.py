"""The fitting machinery, independent of any particular law.

A law is a sum of power laws in log space, ``log L = LSE_k(c_k - g_k * x_k [, e])``
(``_Spec``); ``_objective`` is its weighted Huber loss with analytic gradient for a batch
of parameter vectors, ``_batched_lbfgs`` minimises many such problems at once, and
``_Problem`` / ``_fit_law`` add centring, grid multistart, scipy polish and the batched
bootstrap refits. The method is described in the package docstring.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from scalelab.scaling.fit.points import FitError



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

