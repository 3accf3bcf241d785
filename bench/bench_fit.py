"""Benchmark: Chinchilla fit (full 4,500-start grid + 200 bootstrap refits) on ~250 points.

Prints, from one run on the same machine:
  * wall and CPU seconds of ``fit_chinchilla`` (grid search, polish, 200 bootstrap refits),
    and the ratio to the 60 s target;
  * the vectorized grid search alone, and the same search done naively: one ``scipy.optimize.minimize(L-BFGS-B)`` per start, in a
    Python loop, timed on a subset of starts and extrapolated to 4,500 (same objective, same
    analytic gradient, same tolerances, BLAS limited to one thread for both);
  * /proc/loadavg before and after (other processes on the box slow both sides alike).

Usage:  .venv/bin/python bench/bench_fit.py [--points 250] [--boot 200] [--naive-starts 90] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy.optimize import minimize

from scalelab.scaling import fit as F

TARGET_S = 60.0


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def synth(n: int, seed: int):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(7e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    L = F.chinchilla_loss(N, D, **F.CHINCHILLA_PUBLISHED) * np.exp(rng.normal(0, 0.01, n))
    return N, D, L


def problem(N, D, L):
    spec = F._Spec(names=("a", "b", "e", "alpha", "beta"), terms=((0, 3, 0), (1, 4, 1)), e_idx=2)
    return F._Problem(spec, np.stack([np.log(N), np.log(D)]), np.log(L), 1e-3)


def naive(N, D, L, starts: np.ndarray):
    """One scipy L-BFGS-B run per start, in a loop (what a straightforward port does)."""
    prob = problem(N, D, L)
    spec = prob.spec

    def fun(t):
        fv, gv = F._objective(t[None, :], prob.Xc, prob.y, None, prob.delta, spec, prob.scale)
        return float(fv[0]), gv[0]

    best = np.inf
    for s in prob.to_internal(starts):  # same (centred) coordinates as the vectorized search
        r = minimize(fun, s, jac=True, method="L-BFGS-B", options={"maxiter": 500, "ftol": 1e-10, "gtol": 1e-9})
        best = min(best, r.fun)
    return best / prob.scale  # plain Huber sum, comparable to FitResult.objective


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=250)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--naive-starts", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    N, D, L = synth(args.points, args.seed)
    grid = F.hoffmann_grid()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; numpy {np.__version__}")
    print(f"data: {args.points} synthetic points from the published Chinchilla law, 1% log-normal noise")
    print(f"loadavg before: {loadavg()}")

    w0, c0 = time.perf_counter(), time.process_time()
    res = F.fit_chinchilla(N, D, L, n_boot=args.boot, seed=args.seed)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    print(f"loadavg after fit: {loadavg()}")

    # the grid search alone, vectorized (same code path as inside fit_chinchilla)
    with F._blas_single_thread():
        w2, c2 = time.perf_counter(), time.process_time()
        prob = problem(N, D, L)
        _, fgrid = prob.multistart(grid)
        gwall, gcpu = time.perf_counter() - w2, time.process_time() - c2
    grid_best = float(np.min(fgrid)) / prob.scale

    step = max(1, grid.shape[0] // args.naive_starts)
    sub = grid[::step][: args.naive_starts]
    with F._blas_single_thread():
        w1, c1 = time.perf_counter(), time.process_time()
        naive_best = naive(N, D, L, sub)
        nwall, ncpu = time.perf_counter() - w1, time.process_time() - c1
    scale = grid.shape[0] / sub.shape[0]
    print(f"loadavg after naive: {loadavg()}")
    print()
    p = res.params
    print(f"fit: E={p['E']:.4f} A={p['A']:.1f} B={p['B']:.1f} alpha={p['alpha']:.4f} beta={p['beta']:.4f} "
          f"objective={res.objective:.6g} degenerate={res.degenerate}")
    print(f"     alpha CI {res.ci['alpha']}, beta CI {res.ci['beta']}")
    print()
    print(f"vectorized fit_chinchilla (4,500 starts + {args.boot} bootstrap refits): "
          f"wall {wall:.2f} s, cpu {cpu:.2f} s; target {TARGET_S:.0f} s -> ratio {wall / TARGET_S:.3f} "
          f"({'PASS' if wall <= TARGET_S else 'FAIL'})")
    print(f"vectorized grid search alone (4,500 starts): wall {gwall:.2f} s, cpu {gcpu:.2f} s; "
          f"best objective {grid_best:.6g}")
    print(f"naive scipy loop: {sub.shape[0]} starts in wall {nwall:.2f} s (cpu {ncpu:.2f} s) -> "
          f"extrapolated to 4,500 starts: wall {nwall * scale:.1f} s, cpu {ncpu * scale:.1f} s "
          f"(grid only, no bootstrap); best objective on the subset {naive_best:.6g}")
    print(f"grid search speed-up, vectorized vs naive (extrapolated): {nwall * scale / gwall:.1f}x wall, "
          f"{ncpu * scale / gcpu:.1f}x cpu")
    print(f"whole vectorized fit (grid + polish + {args.boot} refits) vs naive grid alone: "
          f"{nwall * scale / wall:.1f}x wall, {ncpu * scale / cpu:.1f}x cpu")


if __name__ == "__main__":
    main()
