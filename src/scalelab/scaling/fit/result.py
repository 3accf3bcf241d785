"""``FitResult``: a fitted law's estimates, bootstrap draws, CIs, predictions and its JSON form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from scalelab.eval.stats import percentile_interval
from scalelab.scaling.fit.points import FitError, _check_array
from scalelab.scaling.laws import chinchilla_loss, compute_optimal, kaplan_loss


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
        if self.law == "chinchilla":
            return chinchilla_loss(N, D, p["E"], p["A"], p["B"], p["alpha"], p["beta"])
        return kaplan_loss(N, p["E"], p["A"], p["alpha"])

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

