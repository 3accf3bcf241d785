"""Presentation and the CLI entry point: ``format_fit`` (Markdown) and ``run_fit`` (file -> JSON-ready dict)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from scalelab.errors import DataError
from scalelab.eval.stats import format_ci
from scalelab.scaling.fit.fits import fit_chinchilla, fit_kaplan
from scalelab.scaling.fit.isoflop import _bin_budgets, fit_isoflop
from scalelab.scaling.fit.points import FitError, Points, load_points
from scalelab.scaling.fit.result import FitResult, _clean



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
                cells = [format_ci(r[k], r[k + "_ci"], _fmt, no_ci=" [n/a, n/a]")
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
            cells = [format_ci(r[k], r[k + "_ci"], _fmt, no_ci=" [n/a, n/a]") for k in keys]
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
