"""Figures of an IsoFLOP-design study (``plan.design: isoflop``), drawn from its ``results.json`` alone.

``plot_ladder(results, out_dir)`` writes, each as PNG (150 dpi) and SVG:

``isoflop_profiles``
    final validation loss vs total parameters N (log axis), one colour per compute budget:
    every seed (hollow), the seed mean per configuration with its 95% Student-t CI, the
    fitted parabola of approach 2 (in ln N), its vertex with the N_opt CI as a horizontal
    error bar, and approach 3's L(N, C/6N) along each budget (dotted) when that fit is usable.
``nopt_vs_compute``
    compute-optimal N_opt vs C: approach 2's vertices with their CIs and its power law with
    the band of its stored bootstrap draws; approach 1's envelope grid points (and its power
    law); approach 3's N_opt(C) with the band of its stored draws; the trained sizes.
``holdout``
    predicted vs observed for the held-out budget (loss, each task's bpb), prediction
    intervals as error bars, the diagonal y = x.
``downstream``
    per task: bits per byte vs N (per budget colour, seed means with CIs, the fitted task-bpb
    law along each budget when usable) and accuracy vs N with the chance line.

Nothing is refitted: curves are the stored parameters through ``scalelab.scaling.laws``,
bands the stored ``samples`` (queries in ``scalelab.scaling.results``); a degenerate or
missing fit is drawn as a note with its reason.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scalelab.report.markdown import count, sci
from scalelab.report.plot_common import (
    LOSS_LABEL, label_axes, new_figure, percentile_band, placeholder_figure, save_figure, size_colors, study_title, text_box,
)
from scalelab.scaling.laws import chinchilla_loss, compute_optimal
from scalelab.scaling.ladder_results import (
    accuracy_metric, approach_status, budget_configs, budget_of, by_budget, chinchilla_draws, has_parabola, parabola, power_law_draws, study_budgets, task_names,
)
from scalelab.scaling.results import chinchilla_params, finite, good_runs, num

LADDER_FIGURES = ("isoflop_profiles", "nopt_vs_compute", "holdout", "downstream")
N_TOTAL = "total parameters N (log scale)"


def _short(reason, n: int = 70) -> str:
    s = str(reason or "no reason recorded")
    return s if len(s) <= n else s[: n - 1] + "…"


def _fits(results: dict) -> dict:
    return results.get("fits") if isinstance(results.get("fits"), dict) else {}


def budget_colors(results: dict) -> dict:
    return size_colors(study_budgets(results) or [1.0])


def _iso_rows(results: dict) -> dict:
    """Approach 2's per-budget rows keyed by the planned budget."""
    iso = _fits(results).get("isoflop")
    budgets = study_budgets(results)
    rows = (iso.get("budgets") or []) if isinstance(iso, dict) else []
    return {budget_of({"budget": b.get("C")}, budgets): b for b in rows if isinstance(b, dict) and finite(b.get("C"))}


def _errbar_y(ax, x, rows, color, fmt="o", label=None, **kw):
    m = np.array([num(r["value"]["mean"]) for r in rows])
    lo = np.array([num(r["value"].get("lo")) for r in rows])
    hi = np.array([num(r["value"].get("hi")) for r in rows])
    has = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(x, m, yerr=np.vstack([np.where(has, m - lo, 0), np.where(has, hi - m, 0)]), fmt=fmt, color=color,
                capsize=3, ms=5, lw=1, label=label, **kw)


def _seed_points(ax, rows, task, metric, color):
    from scalelab.scaling.ladder_results import run_value

    xs, ys = [], []
    for r in rows:
        rs = r["runs"]
        for i, run in enumerate(rs):
            v = run_value(run, task, metric)
            if math.isfinite(v):
                xs.append(r["params"] * math.exp(0.04 * (i - (len(rs) - 1) / 2)))
                ys.append(v)
    if xs:
        ax.scatter(xs, ys, s=14, facecolor="none", edgecolor=color, lw=0.9, alpha=0.7, zorder=4)


def plot_profiles(results: dict, out_dir: Path) -> list[Path]:
    fig = new_figure(8, 6)
    ax = fig.add_subplot()
    colors = budget_colors(results)
    iso = _iso_rows(results)
    chi = _fits(results).get("chinchilla")
    chi_ok = approach_status(chi) == "ok"
    rows = [r for r in budget_configs(results) if r["value"]]
    for C, brows in by_budget(rows):
        c = colors.get(C, "C0")
        N = np.array([r["params"] for r in brows])
        _seed_points(ax, brows, None, "loss", c)
        b = iso.get(C)
        tag = f"C = {sci(C)}"
        if has_parabola(b):
            lo, hi = min(N.min(), num(b["N_opt"])) / 1.3, max(N.max(), num(b["N_opt"])) * 1.3
            g = np.geomspace(lo, hi, 120)
            ax.plot(g, parabola(b, g), "-", color=c, lw=1.6, alpha=0.9)
            ci = b.get("N_opt_ci") or [None, None]
            xe = None
            if all(finite(v) for v in ci):
                xe = np.array([[num(b["N_opt"]) - num(ci[0])], [num(ci[1]) - num(b["N_opt"])]]).clip(min=0)
            ax.errorbar([num(b["N_opt"])], [num(b["loss_opt"])], xerr=xe, fmt="*", ms=13, color=c, mec="black",
                        mew=0.7, capsize=4, zorder=6)
            tag += f": vertex N_opt = {count(b['N_opt'])}" + ("" if b.get("used", True) else " (not used)")
        elif isinstance(b, dict):
            tag += f": no parabola ({_short(b.get('reason'), 45)})"
        _errbar_y(ax, N, brows, c, fmt="o", label=tag, zorder=5)
        if chi_ok:
            g = np.geomspace(N.min() / 1.3, N.max() * 1.3, 120)
            ax.plot(g, chinchilla_loss(g, C / (6 * g), **chinchilla_params(chi)), ":", color=c, lw=1.2, alpha=0.8)
    ax.plot([], [], "-", color="0.3", label="approach 2: parabola in ln N per budget")
    ax.plot([], [], "*", color="0.3", ms=10, label="vertex, 95% CI of N_opt (horizontal bar)")
    ax.errorbar([], [], yerr=[], fmt="o", color="0.3", label="seed mean, 95% t CI (hollow: seeds)")
    if chi_ok:
        ax.plot([], [], ":", color="0.3", label="approach 3: L(N, D = C/6N) of the L(N, D) fit")
    st = approach_status(_fits(results).get("isoflop"))
    if st != "ok":
        text_box(ax, f"IsoFLOP fit {_short(st, 90)}", loc="upper right", fontsize=7.5)
    ax.set_xscale("log")
    label_axes(ax, N_TOTAL + "; D = C / 6N", LOSS_LABEL, "IsoFLOP profiles", results)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.9)
    return save_figure(fig, out_dir, "isoflop_profiles")


def _power_band(draws, C):
    a, k = draws
    with np.errstate(all="ignore"):
        N = np.exp(k[:, None] + a[:, None] * np.log(C)[None, :])
    return percentile_band(N)


def plot_nopt(results: dict, out_dir: Path) -> list[Path]:
    fig = new_figure(8, 6)
    ax = fig.add_subplot()
    fits = _fits(results)
    budgets = study_budgets(results)
    runs = good_runs(results)
    trained = [num(r.get("params")) for r in runs if finite(r.get("params"))]
    if budgets:
        G = np.geomspace(min(budgets) / 2, max(budgets) * 2, 200)
    else:
        G = np.geomspace(1, 10, 2)
    pts = sorted({(budget_of(r, budgets), num(r.get("params"))) for r in runs if finite(r.get("budget"))})
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker="_", s=80, color="0.55", lw=1.2,
                   label="trained configurations (C, N)", zorder=2)
    notes = []
    # approach 2
    iso = fits.get("isoflop")
    st2 = approach_status(iso)
    rows = [b for b in _iso_rows(results).items() if has_parabola(b[1])]
    if rows:
        for used in (True, False):
            sel = [(C, b) for C, b in rows if bool(b.get("used", True)) == used]
            if not sel:
                continue
            x = np.array([C for C, _ in sel])
            y = np.array([num(b["N_opt"]) for _, b in sel])
            ci = np.array([[num(v) for v in (b.get("N_opt_ci") or [None, None])] for _, b in sel])
            has = np.isfinite(ci).all(axis=1)
            ax.errorbar(x, y, yerr=np.vstack([np.where(has, y - ci[:, 0], 0), np.where(has, ci[:, 1] - y, 0)]).clip(0),
                        fmt="o", ms=7, color="C0", mfc="C0" if used else "white", capsize=4, zorder=6,
                        label="approach 2: parabola vertices, 95% CI" + ("" if used else " (not used in the power law)"))
    if st2 == "ok" and finite((iso.get("coef") or {}).get("N_opt")):
        ax.plot(G, num(iso["coef"]["N_opt"]) * G ** num(iso["a"]), "-", color="C0", lw=1.8,
                label=f"approach 2: N_opt ∝ C^{num(iso['a']):.2f}")
        d = power_law_draws(iso)
        if d is not None:
            lo, hi = _power_band(d, G)
            ax.fill_between(G, lo, hi, color="C0", alpha=0.15, lw=0, label=f"approach 2: 95% band ({d[0].size} draws)")
    elif st2 != "ok":
        notes.append(f"approach 2 {st2}")
    # approach 1
    env = fits.get("envelope")
    st1 = approach_status(env)
    grid = [g for g in ((env or {}).get("grid") or []) if isinstance(g, dict) and g.get("used")
            and finite(g.get("C")) and finite(g.get("N_opt"))] if isinstance(env, dict) else []
    if grid:
        ax.scatter([num(g["C"]) for g in grid], [num(g["N_opt"]) for g in grid], s=9, color="C2", alpha=0.7,
                   label="approach 1: envelope grid points", zorder=3)
    if st1 == "ok" and finite((env.get("coef") or {}).get("N_opt")):
        ax.plot(G, num(env["coef"]["N_opt"]) * G ** num(env["a"]), "--", color="C2", lw=1.5,
                label=f"approach 1: N_opt ∝ C^{num(env['a']):.2f} (CI in NOTE.md)")
    elif st1 != "ok":
        notes.append(f"approach 1 {st1}")
    # approach 3
    chi = fits.get("chinchilla")
    st3 = approach_status(chi)
    if st3 == "ok":
        y = compute_optimal(G, **chinchilla_params(chi))["N_opt"]
        a3 = num(chi["beta"]) / (num(chi["alpha"]) + num(chi["beta"]))
        ax.plot(G, y, "-.", color="C3", lw=1.6, label=f"approach 3: N_opt(C) of the L(N, D) fit, a = {a3:.2f}")
        s = chinchilla_draws(chi)
        if s is not None:
            N = compute_optimal(G[None, :], **{k: v[:, None] for k, v in s.items()})["N_opt"]
            lo, hi = percentile_band(np.real(N))
            ax.fill_between(G, lo, hi, color="C3", alpha=0.10, lw=0,
                            label=f"approach 3: 95% band ({next(iter(s.values())).size} stored draws)")
    else:
        notes.append(f"approach 3 {st3}")
    if notes:
        text_box(ax, "\n".join(_textwrap(n, 70) for n in notes), loc="lower right", fontsize=7)
    if trained:
        ax.set_ylim(min(trained) / 8, max(trained) * 8)
    ax.set_xlim(G[0], G[-1])
    ax.set_xscale("log")
    ax.set_yscale("log")
    label_axes(ax, "compute budget C = 6·N·D (FLOPs)", "compute-optimal N_opt (total parameters)",
               "Compute-optimal model size vs compute", results)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    return save_figure(fig, out_dir, "nopt_vs_compute")


def holdout_targets(results: dict) -> list[tuple[str, dict]]:
    h = _fits(results).get("holdout")
    # per-run predictions only (approach 2's single N_opt extrapolation is a sentence in the note)
    return [(k, v) for k, v in h.items() if isinstance(v, dict) and isinstance(v.get("runs"), list)] \
        if isinstance(h, dict) else []


def plot_holdout(results: dict, out_dir: Path) -> list[Path]:
    targets = holdout_targets(results)
    k = max(1, len(targets))
    ncol = min(3, k)
    nrow = math.ceil(k / ncol)
    fig = new_figure(4.6 * ncol, 4.3 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    if not targets:
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, "no holdout check in results.json", ha="center", va="center")
    for ax, (key, h) in zip(axes, targets):
        title = str(h.get("target") or key.replace("_bpb", " bpb"))
        rr = [r for r in (h.get("runs") or []) if isinstance(r, dict) and finite(r.get("observed"))
              and finite(r.get("predicted"))]
        if h.get("degenerate") or not rr:
            ax.axis("off")
            ax.set_title(title, fontsize=10)
            ax.text(0.5, 0.5, "not checked:\n" + _textwrap(h.get("reason") or "no held-out runs"), ha="center",
                    va="center", fontsize=8, transform=ax.transAxes)
            continue
        o = np.array([num(r["observed"]) for r in rr])
        p = np.array([num(r["predicted"]) for r in rr])
        pi = np.array([[num(v) for v in (r.get("pi") or [None, None])] for r in rr])
        has = np.isfinite(pi).all(axis=1)
        inside = np.array([bool(r.get("inside")) for r in rr])
        for sel, c, lab in ((inside, "C0", "observed inside the 95% PI"), (~inside, "C3", "outside the PI")):
            if sel.any():
                ax.errorbar(o[sel], p[sel], yerr=np.vstack([np.where(has, p - pi[:, 0], 0)[sel],
                                                              np.where(has, pi[:, 1] - p, 0)[sel]]).clip(0),
                            fmt="o", ms=4, color=c, capsize=3, alpha=0.8, label=lab)
        lo = min(o.min(), np.nanmin(np.where(has, pi[:, 0], p)))
        hi = max(o.max(), np.nanmax(np.where(has, pi[:, 1], p)))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="0.4", lw=1, label="predicted = observed")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        text_box(ax, f"held out: {h.get('held_out', 'n/a')}\nmean |error| = {num(h.get('mean_abs_error')):.3f}\n"
                 f"coverage = {num(h.get('coverage')):.2f} (nominal {num(h.get('confidence', 0.95)):.2f})",
                 loc="lower right", fontsize=7)
        ax.set_xlabel(f"observed {title}")
        ax.set_ylabel(f"predicted {title}")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.35)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(targets):] if targets else []:
        ax.axis("off")
    fig.suptitle(f"Extrapolation to the held-out budget, fitted on the others — {study_title(results)}")
    return save_figure(fig, out_dir, "holdout")


def _textwrap(s: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(str(s), width))


def plot_downstream(results: dict, out_dir: Path) -> list[Path]:
    tasks = task_names(results)
    colors = budget_colors(results)
    if not tasks:
        return placeholder_figure(out_dir, "downstream", "no downstream tasks in results.json")
    fig = new_figure(11, 4.2 * len(tasks))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    tfits = _fits(results).get("tasks") if isinstance(_fits(results).get("tasks"), dict) else {}
    for (ax_b, ax_a), task in zip(axes, tasks):
        law = (tfits.get(task) or {}).get("bpb_law")
        law_ok = approach_status(law) == "ok"
        metric = accuracy_metric(results, task)
        chance = float("nan")
        for ax, m in ((ax_b, "bpb"), (ax_a, metric)):
            rows = [r for r in budget_configs(results, task, m) if r["value"]]
            groups = by_budget(rows)
            for j, (C, brows) in enumerate(groups):
                c = colors.get(C, "C0")
                N = np.array([r["params"] for r in brows]) * math.exp(0.025 * (j - (len(groups) - 1) / 2))
                _seed_points(ax, brows, task, m, c)
                _errbar_y(ax, N, brows, c, fmt="o-", label=f"C = {sci(C)}", zorder=5)
                if m == "bpb" and law_ok:
                    g = np.geomspace(N.min() / 1.2, N.max() * 1.2, 80)
                    ax.plot(g, chinchilla_loss(g, C / (6 * g), **chinchilla_params(law)), ":", color=c, lw=1.2)
                for r in brows:
                    for run in r["runs"]:
                        t = (run.get("tasks") or {}).get(task) or {}
                        if finite(t.get("chance")):
                            chance = num(t["chance"])
            ax.set_xscale("log")
            ax.set_xlabel(N_TOTAL)
            ax.grid(True, which="major", alpha=0.35)
        if law_ok:
            ax_b.plot([], [], ":", color="0.3", label="task-bpb law L(N, C/6N)")
        else:
            text_box(ax_b, f"task-bpb law {_short(approach_status(law), 60)}", loc="upper right", fontsize=7)
        ax_b.set_ylabel("bits per byte of the correct answer (lower is better)")
        ax_b.set_title(f"{task}: bpb vs N (seed means, 95% t CI)", fontsize=10)
        if math.isfinite(chance):
            ax_a.axhline(chance, ls="--", color="0.4", lw=1.2, label=f"chance ({chance:.3g})")
        lo, hi = ax_a.get_ylim()
        ax_a.set_ylim(max(lo, 0.0), min(hi, 1.0))
        ax_a.set_ylabel(f"{metric} (higher is better; axis clipped to [0, 1])")
        ax_a.set_title(f"{task}: {metric} vs N (seed means, 95% t CI)", fontsize=10)
        ax_b.legend(fontsize=7, loc="best")
        ax_a.legend(fontsize=7, loc="best")
    fig.suptitle(f"Downstream metrics vs model size, per compute budget — {study_title(results)}")
    return save_figure(fig, out_dir, "downstream")


def plot_ladder(results: dict, out_dir: Path) -> list[Path]:
    """Write the IsoFLOP-design figures (PNG + SVG each) into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for fn in (plot_profiles, plot_nopt, plot_holdout, plot_downstream):
        paths += fn(results, out_dir)
    return paths
