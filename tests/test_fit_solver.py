"""The batched L-BFGS of scaling/fit/solver.py on its own: no law, no data, a convex quadratic."""

import numpy as np

from scalelab.scaling.fit.solver import _batched_lbfgs


def test_batched_lbfgs_minimises_independent_quadratics():
    # one SPD quadratic f_s(x) = 1/2 (x - c_s)' H (x - c_s) per batch row, ill-conditioned (1 : 1000)
    rng = np.random.default_rng(0)
    p, S = 4, 7
    Q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    H = Q @ np.diag([1.0, 10.0, 100.0, 1000.0]) @ Q.T
    centres = rng.normal(scale=3.0, size=(S, p))
    seen_rows = []

    def fg(x, rows):
        seen_rows.append(np.asarray(rows).copy())
        r = x - centres[rows]
        return 0.5 * np.einsum("ij,jk,ik->i", r, H, r), r @ H

    x0 = rng.normal(scale=10.0, size=(S, p))
    x, f, n_iter = _batched_lbfgs(fg, x0, gtol=1e-10, ftol=0.0)
    assert np.allclose(x, centres, atol=1e-8)
    assert np.all(f < 1e-14)
    # converged rows leave the batch: later calls see only a subset, every row ran at least once
    assert np.all(n_iter >= 1) and np.all(n_iter < 500)
    assert any(r.size < S for r in seen_rows)
    # a start already at its optimum is not moved
    x2, f2, _ = _batched_lbfgs(fg, centres.copy())
    assert np.array_equal(x2, centres) and np.all(f2 == 0.0)
