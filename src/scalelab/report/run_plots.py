"""LOSS_CURVE.png of a training run, drawn from its metrics.jsonl alone.

Top panel: training loss per step (faint) and its moving average (solid), validation loss
at each evaluation (markers and line), the best validation point marked; x = tokens seen.
Bottom panel: the learning-rate schedule actually used (from the same records).
Checkpoints of the learning trajectory (evaluated or sampled) are marked as vertical lines.

TRAJECTORY.png (`plot_trajectory`): validation loss, bits per byte and each task's headline
metric at each evaluated checkpoint vs tokens seen, with their 95% CIs as bands, chance
levels and published baselines as horizontal lines.
The y-range leaves out the first ~2% of steps (the initial ~ln(vocab) plateau) so the part
of the curve that matters is readable; the cut is stated on the figure.
"""
from __future__ import annotations

import io
import math
from typing import Any

import numpy as np


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` points (shorter at the start)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(v.size):
        a = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[a]) / (i + 1 - a)
    return out


def _token_formatter(x: float, _pos=None) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:g}{unit}"
    return f"{x:g}"


def plot_loss_curve(train: list[dict[str, Any]], evals: list[dict[str, Any]], title: str = "",
                    checkpoints: list[float] | None = None) -> bytes:
    """PNG bytes of the loss curve (see the module docstring)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(9.0, 6.4), dpi=150)
    gs = fig.add_gridspec(2, 1, height_ratios=[3.2, 1.0], hspace=0.08)
    ax = fig.add_subplot(gs[0])
    ax_lr = fig.add_subplot(gs[1], sharex=ax)

    tr = [r for r in train if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    x = np.array([r.get("tokens", r.get("step", 0)) for r in tr], dtype=np.float64)
    y = np.array([r["loss"] for r in tr], dtype=np.float64)
    window = max(1, min(100, len(y) // 20))
    smooth = moving_average(y, window)
    ev = [r for r in evals if isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
    ex = np.array([r.get("tokens", r.get("step", 0)) for r in ev], dtype=np.float64)
    ey = np.array([r["val_loss"] for r in ev], dtype=np.float64)

    if len(y):
        ax.plot(x, y, color="C0", alpha=0.25, lw=0.8, label="train loss (per step)")
        ax.plot(x, smooth, color="C0", lw=2.0, label=f"train loss ({window}-step moving average)")
    if len(ey):
        ax.plot(ex, ey, color="C3", lw=1.5, marker="o", ms=4, label="validation loss")
        b = int(np.argmin(ey))
        ax.scatter([ex[b]], [ey[b]], s=90, facecolors="none", edgecolors="k", zorder=5,
                   label=f"best validation {ey[b]:.4f} at {_token_formatter(ex[b])} tokens")
    # Readable y-range: ignore the first ~2% of steps (initial plateau / warmup).
    cut = max(1, len(y) // 50)
    body = np.concatenate([smooth[cut:] if len(smooth) > cut else smooth, ey[1:] if len(ey) > 2 else ey])
    if body.size:
        lo, hi = float(np.nanmin(body)), float(np.nanmax(body))
        if len(y) > cut:
            hi = max(hi, float(np.nanpercentile(y[cut:], 99)))
        pad = 0.06 * max(hi - lo, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
        if len(x) > cut and cut > 1:
            ax.text(0.99, 0.02, f"y-range excludes the first {cut} steps", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="0.4")
    for i, c in enumerate(sorted(set(checkpoints or []))):
        for a in (ax, ax_lr):
            a.axvline(c, color="0.55", lw=0.8, ls=":", zorder=0,
                      label="trajectory checkpoints" if i == 0 and a is ax else None)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    for lbl in ax.get_xticklabels():
        lbl.set_visible(False)

    lr = [(r.get("tokens", r.get("step", 0)), r["lr"]) for r in tr if isinstance(r.get("lr"), (int, float))]
    if lr:
        lx, ly = zip(*lr)
        ax_lr.plot(lx, ly, color="C2", lw=1.5)
    ax_lr.set_ylabel("learning rate", fontsize=8)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax_lr.grid(True, alpha=0.25)
    ax_lr.set_xlabel("tokens seen")
    ax_lr.xaxis.set_major_formatter(FuncFormatter(_token_formatter))
    fig.subplots_adjust(left=0.09, right=0.98, top=0.94, bottom=0.09)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _band(ax, pts, color, label):
    """Line + 95% CI band of [(tokens, value, ci), ...]."""
    x = np.array([p[0] for p in pts], dtype=np.float64)
    y = np.array([p[1] for p in pts], dtype=np.float64)
    ax.plot(x, y, color=color, marker="o", ms=4, lw=1.5, label=label)
    ci = [p[2] for p in pts]
    if all(isinstance(c, (list, tuple)) and len(c) == 2 and c[0] is not None and c[1] is not None for c in ci):
        ax.fill_between(x, [c[0] for c in ci], [c[1] for c in ci], color=color, alpha=0.18, lw=0)


def plot_trajectory(panels: list[dict[str, Any]], title: str = "") -> bytes:
    """PNG bytes: one panel per entry {"ylabel", "lines": [{"label", "points": [(tokens, value, ci)]}],
    "hlines": [{"y", "label", "style"}]}; shared x = tokens seen (log scale when it spans 10x)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(11.0, 2.6 * len(panels) + 0.6), dpi=150)
    axes = list(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    xs = [p[0] for panel in panels for line in panel["lines"] for p in line["points"]]
    for k, (ax, panel) in enumerate(zip(axes, panels)):
        for j, line in enumerate(panel["lines"]):
            _band(ax, line["points"], f"C{j}", line["label"])
        for h in panel.get("hlines", []):
            ax.axhline(h["y"], color=h.get("color", "0.4"), ls=h.get("style", "--"), lw=1.0, label=h["label"])
        ax.set_ylabel(panel["ylabel"], fontsize=9)
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: bands stay visible
        if xs and max(xs) > 10 * max(1.0, min(xs)):
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_token_formatter))
        if k < len(panels) - 1:
            for lbl in ax.get_xticklabels():
                lbl.set_visible(False)
    axes[-1].set_xlabel("tokens seen")
    if title:
        axes[0].set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.76, top=0.95, bottom=0.08, hspace=0.12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()
