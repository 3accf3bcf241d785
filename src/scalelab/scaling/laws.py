"""The scaling laws' formulas, as pure numpy functions (no fitting, no I/O).

``kaplan_loss``      L(N)    = E + A·N^-alpha
``chinchilla_loss``  L(N, D) = E + A·N^-alpha + B·D^-beta
``compute_optimal``  the allocation of C = 6·N·D that minimises L(N, D):
                     N_opt = G·(C/6)^a, D_opt = (C/6)^b / G, with a = beta/(alpha+beta),
                     b = alpha/(alpha+beta), G = (alpha·A / (beta·B))^(1/(alpha+beta))
                     (Hoffmann et al. 2022, eq. 4)

All broadcast, so a vector of bootstrap parameter draws against a grid of N or C gives one
curve per draw. Readers of results.json (the report) evaluate stored fits with these, and
``scalelab.scaling.fit`` (its ``FitResult`` predictions, ``chinchilla_loss``,
``compute_optimal``) uses them too: one home for the formulas. The power terms are written
``A / N**alpha`` (not ``A * N**-alpha``) so the values are bit-identical to the fitter's.
"""
from __future__ import annotations

import numpy as np


def kaplan_loss(N, E, A, alpha):
    """L(N) = E + A·N^-alpha (broadcasts)."""
    N = np.asarray(N, dtype=float)
    with np.errstate(all="ignore"):
        return np.asarray(E, dtype=float) + np.asarray(A, dtype=float) / N ** np.asarray(alpha, dtype=float)


def chinchilla_loss(N, D, E, A, B, alpha, beta):
    """L(N, D) = E + A·N^-alpha + B·D^-beta (broadcasts)."""
    D = np.asarray(D, dtype=float)
    with np.errstate(all="ignore"):
        return kaplan_loss(N, E, A, alpha) + np.asarray(B, dtype=float) / D ** np.asarray(beta, dtype=float)


def compute_optimal(C, E, A, B, alpha, beta) -> dict:
    """Compute-optimal allocation under C = 6·N·D for the Chinchilla law (broadcasts).

    Returns ``{"a", "b", "G", "N_opt", "D_opt", "tokens_per_param", "loss"}``.
    """
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
