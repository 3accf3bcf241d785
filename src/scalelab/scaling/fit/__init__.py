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

# The public names (``__all__``) plus the private helpers that scaling/profile.py, the
# study fits, tests and bench/bench_fit.py use through this package.
from scalelab.scaling.fit.points import FitError, Points, _check_array, load_points
from scalelab.scaling.fit.solver import (
    _batched_lbfgs,
    _blas_single_thread,
    _fit_law,
    _kaplan_grid,
    _natural,
    _objective,
    _Problem,
    _Spec,
    hoffmann_grid,
)
from scalelab.scaling.fit.result import FitResult, _clean
from scalelab.scaling.fit.fits import CHINCHILLA_PUBLISHED, fit_chinchilla, fit_kaplan
from scalelab.scaling.fit.isoflop import fit_isoflop
from scalelab.scaling.fit.present import format_fit, run_fit
from scalelab.scaling.laws import chinchilla_loss, compute_optimal

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
