"""Drawing kit of the study figures (``report.study_plots``): matplotlib figures written
deterministically, colours, markers and line styles per model size and ratio family, axis
ticks, legends, text boxes, and the fitted curves with their bootstrap bands.

Matplotlib is used through ``matplotlib.figure.Figure`` only (no pyplot state, no backend
switching), and files are written atomically (``scalelab.io``); SVGs carry no date and a
fixed hash salt, so the same results give the same files. Curves are evaluated with the
laws' formulas (``scalelab.scaling.laws``) from the parameters and bootstrap samples
stored in results.json; nothing is refitted here.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from scalelab.eval.stats import format_ci
from scalelab.io import atomic_write_bytes
from scalelab.report.markdown import count
from scalelab.scaling.laws import compute_optimal, kaplan_loss
from scalelab.scaling.results import (
    chinchilla_params, finite, fmt_ratio, frontier_column, num, primary_ratio, ratio_of, run_n, study_ratios,
)

FIGURES = ("loss_vs_params", "metric_vs_params", "loss_curves", "compute_frontier")
DPI = 150

# Published exponents, quoted as reference text (never drawn as curves: different data,
# tokenizers and N conventions).
KAPLAN_ALPHA_N = 0.076  # Kaplan et al. 2020, L(N) = (N_c/N)^alpha_N, non-embedding N
CHINCHILLA_ALPHA = 0.34  # Hoffmann et al. 2022, approach 3
CHINCHILLA_BETA = 0.28

LOSS_LABEL = "validation loss (nats/token)"
N_LABEL = "non-embedding parameters N"


FAMILY_COLORS = ("C0", "C2", "C1", "C4", "C5", "C6")
FAMILY_MARKERS = ("s", "o", "^", "D", "v", "P")


def family_styles(results: dict) -> dict[float | None, dict]:
    """Colour, marker and line style per ratio family (primary family: solid line)."""
    rs = study_ratios(results) or [None]
    prim = primary_ratio(results)
    out = {}
    for i, r in enumerate(rs):
        out[r] = {"color": FAMILY_COLORS[i % len(FAMILY_COLORS)], "marker": FAMILY_MARKERS[i % len(FAMILY_MARKERS)],
                  "ls": "-" if (r == prim or len(rs) == 1) else ("--", ":", "-.")[i % 3]}
    return out


def percentile_band(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    from scalelab.eval.stats import percentile_interval

    return percentile_interval(values, confidence, axis=0)


def kaplan_curve(fit: dict, N: np.ndarray, samples: dict | None = None):
    """Point curve and (lo, hi) band (or None) of L(N) = E + A N^-alpha; the band from ``samples``
    (bootstrap draws as :func:`scalelab.scaling.results.fit_samples` returns them)."""
    E = num(fit.get("E")) if finite(fit.get("E")) else 0.0
    y = kaplan_loss(N, E, num(fit["A"]), num(fit["alpha"]))
    if samples is None:
        return y, None
    Es = samples.get("E", np.zeros_like(samples["A"]))
    draws = kaplan_loss(N[None, :], Es[:, None], samples["A"][:, None], samples["alpha"][:, None])
    return y, percentile_band(draws, num(fit.get("confidence", 0.95)) or 0.95)


def chinchilla_opt_curve(fit: dict, C: np.ndarray, samples: dict | None = None):
    """Compute-optimal loss L_opt(C) of the Chinchilla fit and its (lo, hi) band (or None) from ``samples``."""
    p = chinchilla_params(fit)
    y = compute_optimal(C, **p)["loss"]
    if samples is None:
        return y, None
    s = {k: np.asarray(samples[k], float)[:, None] for k in p}
    draws = compute_optimal(C[None, :], **s)["loss"]
    return y, percentile_band(np.real(draws), num(fit.get("confidence", 0.95)) or 0.95)


def new_figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    return fig


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    import matplotlib

    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        meta = {"Date": None} if fmt == "svg" else {"Software": "scalelab (matplotlib)"}
        with matplotlib.rc_context({"svg.hashsalt": "scalelab", "svg.fonttype": "none"}):
            fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta)
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
        fig.set_layout_engine("none")  # keep the layout computed for the PNG; don't redo it for the SVG
    return paths


def placeholder_figure(out_dir: Path, stem: str, text: str) -> list[Path]:
    """A small figure that only says why there is nothing to draw (the note links every figure)."""
    fig = new_figure(6, 3)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return save_figure(fig, out_dir, stem)


def size_colors(ns: Iterable[float]) -> dict[float, Any]:
    from matplotlib import colormaps

    ns = sorted(set(float(n) for n in ns))
    cmap = colormaps["viridis"]
    if len(ns) == 1:
        return {ns[0]: cmap(0.4)}
    lo, hi = math.log(ns[0]), math.log(ns[-1])
    return {n: cmap(0.05 + 0.8 * (math.log(n) - lo) / (hi - lo)) for n in ns}


def ci_text(v, ci) -> str:
    return format_ci(v, ci, no_ci=" (no CI)")


def seed_offsets(runs: list[dict], step: float = 0.07) -> np.ndarray:
    """Multiplicative x offsets that put the seeds of one size side by side on a log axis."""
    seeds = sorted({num(r.get("seed")) for r in runs if finite(r.get("seed"))})
    if len(seeds) < 2:
        return np.ones(len(runs))
    idx = np.array([seeds.index(num(r.get("seed"))) if finite(r.get("seed")) else 0 for r in runs], float)
    return np.exp(step * (idx - (len(seeds) - 1) / 2))


def size_ticks(ax, xs) -> None:
    """Label the log x axis at the model sizes (50.4K, 101K, ...) instead of powers of ten."""
    from matplotlib.ticker import NullFormatter

    xs = sorted(set(float(x) for x in xs if math.isfinite(x)))
    if not xs:
        return
    ax.set_xticks(xs, [count(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())


def text_box(ax, text: str, loc: str = "lower left", fontsize: float = 8) -> None:
    x, ha = (0.02, "left") if "left" in loc else (0.98, "right")
    y, va = (0.03, "bottom") if "lower" in loc else (0.97, "top")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=fontsize,
            bbox=dict(boxstyle="round,pad=0.4", fc="white", ec="0.7", alpha=0.9))


def label_axes(ax, xlabel: str, ylabel: str, title: str, results: dict) -> None:
    """Axis labels, the title with the study's name, and the major / minor grid of a study figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} — {study_title(results)}")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def study_title(results: dict) -> str:
    return str(results.get("name") or "study")


def run_ls(run: dict, results: dict, styles: dict, multi: bool) -> str:
    return styles.get(ratio_of(run, results), {}).get("ls", "-") if multi else "-"


def size_label(run: dict, multi: bool) -> str | None:
    if multi:  # one colour per model size (proxy entries from ratio_key); the ratio is the line style
        return None
    return f"{run.get('name', '')} (N = {count(run_n(run))})"


def ratio_key(ax, styles: dict, multi: bool, colors: dict | None = None) -> None:
    """Legend proxies for multi-ratio studies: a solid line per model size colour, a grey line per ratio style."""
    if multi:
        for n, c in sorted((colors or {}).items()):
            ax.plot([], [], "-", color=c, lw=1.6, label=f"non-emb. N = {count(n)}")
        for ratio, st in styles.items():
            ax.plot([], [], st["ls"], color="0.3", lw=1.4, label=f"tokens/param = {fmt_ratio(ratio)}")


def place_legend(fig, ax, multi: bool, loc: str) -> None:
    """Inside the axes for one ratio; below them (two columns) when several ratios make the key long."""
    if multi:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8, framealpha=0.9)
    else:
        ax.legend(fontsize=8, loc=loc, framealpha=0.9)


def compute_axis_label(results: dict) -> str:
    col = frontier_column(results)
    if col == "params":
        return "training compute C = 6 · N · D, N = total parameters (the Chinchilla fit's N)"
    if col:
        return f"training compute C = 6 · N · D, N = {col.replace('_', '-')} (the Chinchilla fit's N)"
    return "training FLOPs C (≈ 6 · N · tokens)"
