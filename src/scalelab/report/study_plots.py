"""Figures of a scaling study, drawn from its ``results.json`` alone (format: docs/FORMATS.md).

``plot_study(results, out_dir)`` writes four figures, each as PNG (150 dpi) and SVG:

``loss_vs_params``
    final validation loss vs non-embedding parameters: one small marker per run (seed),
    the per-size mean with its 95% CI (Student-t over seeds, from ``results["sizes"]``),
    the fitted Kaplan-form law L(N) = E + A*N^-alpha with its 95% bootstrap band, and the
    published exponents (Kaplan et al. 2020, Hoffmann et al. 2022) as reference text. With
    several tokens-per-parameter ratios each ratio family has its own colour and marker, and
    the Kaplan curve is drawn only over the family it was fitted on (``tokens_per_param``).
``metric_vs_params``
    one panel per downstream metric (bits per byte; each task's acc / acc_norm with the
    Wilson CIs stored per run; chance level dashed).
``loss_curves``
    validation (solid) and training (faint) loss vs tokens for every run, colored by size
    (line style per ratio when there are several).
``compute_frontier``
    every run's validation curve vs training compute, their lower envelope, and the
    Chinchilla compute-optimal loss L_opt(C) with its band when that fit is usable (then
    the axis is C = 6·N·D with the fit's N, and L_opt is dotted where its N_opt or D_opt
    lies outside the trained range).

Bootstrap bands come only from the samples stored in results.json (``fits[law]["samples"]``,
read by ``scalelab.scaling.results.fit_samples``): the report never refits. Without them
the curve is drawn without a band and the legend says why. The queries (runs, families,
fit status, frontier) are ``scalelab.scaling.results``; the drawing kit is
``report.plot_common``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scalelab.report.plot_common import (
    CHINCHILLA_ALPHA, CHINCHILLA_BETA, KAPLAN_ALPHA_N, LOSS_LABEL, N_LABEL, chinchilla_opt_curve, ci_text,
    compute_axis_label, family_styles, kaplan_curve, label_axes, new_figure, place_legend, placeholder_figure,
    ratio_key, run_ls, save_figure, seed_offsets, size_colors, size_label, size_ticks, study_title, text_box,
)
from scalelab.scaling.ladder_results import is_isoflop
from scalelab.scaling.results import (
    families, finite, fit_samples, fit_status, flops_per_token, fmt_ratio, frontier_column, frontier_points, good_runs, lower_envelope, num, opt_inside_data, ratio_of, run_n, size_rows, study_ratios, curve,
)


def plot_loss_vs_params(results: dict, out_dir: Path, logy: bool = False,
                        samples: tuple[dict | None, str] | None = None) -> list[Path]:
    """Loss vs N; with several tokens-per-parameter ratios, one colour and marker per ratio family,
    and the Kaplan curve drawn only over the family it was fitted on."""
    runs = good_runs(results)
    fit = (results.get("fits") or {}).get("kaplan")
    col = (fit.get("n_column") if isinstance(fit, dict) else None) or "non_embedding_params"
    multi = len(study_ratios(results)) > 1
    fig = new_figure(7.5, 6.3 if multi else 5.2)
    ax = fig.add_subplot()
    Ns = np.array([run_n(r, col) for r in runs])
    Ls = np.array([num(r["loss"]) for r in runs])
    fams = [(r, [s for s in rows if isinstance(s.get("loss"), dict) and finite(s["loss"].get("mean"))])
            for r, rows in families(results)]
    styles = family_styles(results)
    if multi:
        for ratio in styles:
            fr = [r for r in runs if ratio_of(r, results) == ratio]
            if fr:
                st = styles[ratio]
                ax.scatter(np.array([run_n(r, col) for r in fr]) * seed_offsets(fr), [num(r["loss"]) for r in fr],
                           s=24, marker=st["marker"], facecolor="none", edgecolor=st["color"], linewidth=1.1,
                           alpha=0.8, zorder=5)
    else:
        colors = size_colors(Ns)
        ax.scatter(Ns * seed_offsets(runs), Ls, s=22, facecolor="none", edgecolor=[colors[float(n)] for n in Ns],
                   linewidth=1.2, alpha=0.8, zorder=5, label=f"single runs ({len(runs)}; seeds drawn side by side)")
    all_xs = []
    for ratio, rows in fams:
        if not rows:
            continue
        xs = np.array([num(s.get(col, s.get("non_embedding_params", s.get("params")))) for s in rows])
        all_xs += list(xs)
        m = np.array([num(s["loss"]["mean"]) for s in rows])
        lo = np.array([num(s["loss"].get("lo")) for s in rows])
        hi = np.array([num(s["loss"].get("hi")) for s in rows])
        has = np.isfinite(lo) & np.isfinite(hi)
        err = np.vstack([np.where(has, m - lo, 0), np.where(has, hi - m, 0)])
        seeds = sorted({int(num(s.get("n_seeds", s["loss"].get("n", 0))) or 0) for s in rows})
        st = styles.get(ratio, {"color": "black", "marker": "o"})
        color, marker = (st["color"], st["marker"]) if multi else ("black", "o")
        nr = sum(ratio_of(r, results) == ratio for r in runs)
        label = (f"tokens/param = {fmt_ratio(ratio)}: mean per size, 95% CI over seeds (n={'/'.join(map(str, seeds))});"
                 f" hollow: its {nr} runs" if multi else
                 f"mean per size, 95% CI over seeds (n={'/'.join(map(str, seeds))})")
        ax.errorbar(xs, m, yerr=err, fmt=marker, ms=6, color=color, ecolor=color, elinewidth=1.4, capsize=4,
                    zorder=4, label=label)
        for x, y, s in zip(xs, m, rows):
            ax.annotate(str(s.get("name", "")), (x, y), textcoords="offset points", xytext=(7, 6), fontsize=8,
                        color=color if multi else "0.25")
    status = fit_status(fit)
    if status == "ok" and fit.get("law", "kaplan") == "kaplan":
        fr = runs
        fam_txt = ""
        if finite(fit.get("tokens_per_param")):
            fr = [r for r in runs if ratio_of(r, results) == num(fit["tokens_per_param"])] or runs
            if multi:
                fam_txt = f" on the tokens/param = {fmt_ratio(fit['tokens_per_param'])} runs only"
        fN = np.array([run_n(r, col) for r in fr])
        lo_x, hi_x = (fN.min(), fN.max()) if fN.size else (1.0, 10.0)
        pad = 1.15 if multi else 1.4
        grid = np.geomspace(lo_x / pad, hi_x * pad, 200)
        smp, how = samples if samples is not None else fit_samples(results, "kaplan")
        y, band = kaplan_curve(fit, grid, smp)
        ci = (fit.get("ci") or {}).get("alpha")
        E_txt = "0 (fixed)" if "E" in (fit.get("fixed") or {}) else f"{num(fit.get('E')):.2f}"
        ax.plot(grid, y, color="C3", lw=2, zorder=2,
                label=f"fit L = E + A·N$^{{-α}}${fam_txt}: α = {ci_text(fit['alpha'], ci)}, E = {E_txt}")
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="C3", alpha=0.18, lw=0, zorder=1,
                            label=f"95% band of the fitted curve: {how}")
        else:
            ax.plot([], [], " ", label=f"(no band: {how})")
    else:
        text_box(ax, f"Kaplan-form fit {status}\n(no curve drawn)", loc="upper right", fontsize=8)
    rows = bool(all_xs)
    xs = np.array(all_xs)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if rows:
        size_ticks(ax, xs)
    label_axes(ax, N_LABEL if col == "non_embedding_params" else "total parameters N (incl. embeddings)", LOSS_LABEL,
               "Final validation loss vs model size", results)
    if multi:  # more entries, and the families fill the axes: legend (with the references) below the axes
        ax.plot([], [], " ", label=f"published exponents (reference only, not drawn): Kaplan et al. 2020 "
                                   f"α_N = {KAPLAN_ALPHA_N}; Hoffmann et al. 2022 α = {CHINCHILLA_ALPHA}, "
                                   f"β = {CHINCHILLA_BETA}")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8, framealpha=0.9)
    else:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
        text_box(ax, "Published exponents (reference only, not drawn):\n"
                  f"Kaplan et al. 2020  α_N = {KAPLAN_ALPHA_N}  (pure power law, N→∞ data)\n"
                  f"Hoffmann et al. 2022  α = {CHINCHILLA_ALPHA}, β = {CHINCHILLA_BETA}  (L(N,D))",
              loc="lower left", fontsize=7.5)
    return save_figure(fig, out_dir, "loss_vs_params")


def _metrics(results: dict) -> list[tuple[str, str, list[str]]]:
    """(panel key, title, [series]) for every downstream metric present."""
    runs = good_runs(results)
    out = []
    if any(finite(r.get("val_bpb")) for r in runs):
        out.append(("val_bpb", "validation bits per byte (lower is better)", ["val_bpb"]))
    tasks: dict[str, list[str]] = {}
    for r in runs:
        for t, d in (r.get("tasks") or {}).items():
            if isinstance(d, dict):
                for k in ("acc", "acc_norm"):
                    if finite(d.get(k)) and k not in tasks.setdefault(t, []):
                        tasks[t].append(k)
    for t in sorted(tasks):
        out.append((t, f"task {t}: accuracy (higher is better)", sorted(tasks[t])))
    return out


def plot_metric_vs_params(results: dict, out_dir: Path) -> list[Path]:
    runs = good_runs(results)
    metrics = _metrics(results)
    if not metrics:
        return placeholder_figure(out_dir, "metric_vs_params", "no downstream metrics (val_bpb, tasks) in results.json")
    k = len(metrics)
    ncol = min(3, k)
    nrow = math.ceil(k / ncol)
    fig = new_figure(5.0 * ncol, 4.0 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    seeds = sorted({num(r.get("seed")) for r in runs if finite(r.get("seed"))})
    sizes = size_rows(results)
    fams = families(results) or [(None, sizes)]
    styles = family_styles(results)
    for ax, (key, title, series) in zip(axes, metrics):
        if key == "val_bpb":
            multi = len(fams) > 1
            for ratio, frows in fams:
                st = styles.get(ratio, {})
                c_run, c_mean = (st["color"], st["color"]) if multi else ("C0", "black")
                mk = st["marker"] if multi else "o"
                tag = f"tokens/param = {fmt_ratio(ratio)}: " if multi else ""
                rb = [r for r in runs if finite(r.get("val_bpb")) and (not multi or ratio_of(r, results) == ratio)]
                if rb:
                    ax.scatter(np.array([run_n(r) for r in rb]) * seed_offsets(rb), [num(r["val_bpb"]) for r in rb],
                               s=20, marker=mk, facecolor="none", edgecolor=c_run, lw=1.1, alpha=0.8, zorder=5,
                               label=None if multi else "single runs (seeds side by side)")
                rows = [s for s in frows if isinstance(s.get("val_bpb"), dict) and finite(s["val_bpb"].get("mean"))]
                if rows:
                    xs = np.array([num(s.get("non_embedding_params", s.get("params"))) for s in rows])
                    m = np.array([num(s["val_bpb"]["mean"]) for s in rows])
                    lo = np.array([num(s["val_bpb"].get("lo")) for s in rows])
                    hi = np.array([num(s["val_bpb"].get("hi")) for s in rows])
                    has = np.isfinite(lo) & np.isfinite(hi)
                    ax.errorbar(xs, m, yerr=np.vstack([np.where(has, m - lo, 0), np.where(has, hi - m, 0)]),
                                fmt=mk, ls=st.get("ls", "-"), color=c_mean, capsize=4, ms=5, lw=1,
                                label=f"{tag}mean per size, 95% CI over seeds" + (" (hollow: runs)" if multi else ""))
            ax.set_ylabel("bits per byte")
        else:
            chance = None
            n_items = set()
            for j, metric in enumerate(series):
                pts = []
                for r in runs:
                    d = (r.get("tasks") or {}).get(key) or {}
                    if finite(d.get(metric)):
                        rr = ratio_of(r, results)
                        pts.append((run_n(r), num(r.get("seed")), num(d[metric]), num(d.get(f"{metric}_lo")),
                                    num(d.get(f"{metric}_hi")), num(rr) if rr is not None else -1.0))
                        if finite(d.get("chance")):
                            chance = num(d["chance"])
                        if finite(d.get("n")):
                            n_items.add(int(num(d["n"])))
                if not pts:
                    continue
                P = np.array(pts)
                # spread seeds (and the two metrics) sideways so the error bars do not overlap
                si = np.array([seeds.index(s) if s in seeds else 0 for s in P[:, 1]], float)
                off = 1.0 + 0.035 * ((si - (len(seeds) - 1) / 2) + 0.5 * (j - (len(series) - 1) / 2) * len(seeds))
                x = P[:, 0] * off
                has = np.isfinite(P[:, 3]) & np.isfinite(P[:, 4])
                yerr = np.vstack([np.where(has, P[:, 2] - P[:, 3], 0), np.where(has, P[:, 4] - P[:, 2], 0)])
                color = f"C{j}"
                ax.errorbar(x, P[:, 2], yerr=yerr, fmt="o", ms=3.5, color=color, alpha=0.6, elinewidth=0.9,
                            capsize=2, label=f"{metric} per run (95% Wilson CI)")
                fam_r = np.unique(P[:, 5])
                for rr in fam_r:  # one mean line per ratio family: never average across ratios
                    Q = P[P[:, 5] == rr]
                    uN = np.unique(Q[:, 0])
                    st = styles.get(None if rr < 0 else float(rr), {})
                    ax.plot(uN, [Q[Q[:, 0] == n, 2].mean() for n in uN], st.get("ls", "-") if len(fam_r) > 1 else "-",
                            color=color, lw=1.5, label=f"{metric}: mean over seeds"
                            + (f", tokens/param = {fmt_ratio(rr)}" if len(fam_r) > 1 else ""))
            if chance is not None:
                ax.axhline(chance, ls="--", color="0.4", lw=1.2, label=f"chance ({chance:g})")
            if n_items:
                title += f"\n(n = {'/'.join(str(n) for n in sorted(n_items))} items per run)"
            ax.set_ylabel("accuracy")
        ax.set_xscale("log")
        size_ticks(ax, [num(s.get("non_embedding_params", s.get("params"))) for s in sizes]
                    or [run_n(r) for r in runs])
        ax.set_xlabel(N_LABEL)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.35)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[k:]:
        ax.axis("off")
    fig.suptitle(f"Downstream metrics vs model size — {study_title(results)}")
    return save_figure(fig, out_dir, "metric_vs_params")




def plot_loss_curves(results: dict, out_dir: Path, logy: bool = False) -> list[Path]:
    runs = [r for r in good_runs(results) if curve(r)]
    multi, styles = len(study_ratios(results)) > 1, family_styles(results)
    fig = new_figure(7.5, 6.2 if multi else 5.2)
    ax = fig.add_subplot()
    colors = size_colors([run_n(r) for r in runs] or [1.0])
    seen = set()
    for r in sorted(runs, key=run_n):
        pts = curve(r)
        t = np.array([num(p["tokens"]) for p in pts])
        c = colors[float(run_n(r))]
        ls = run_ls(r, results, styles, multi)
        v = np.array([num(p.get("val_loss")) for p in pts])
        tr = np.array([num(p.get("train_loss")) for p in pts])
        label = None
        if run_n(r) not in seen:
            seen.add(run_n(r))
            label = size_label(r, multi)
        if np.isfinite(tr).any():
            ok = np.isfinite(tr)
            ax.plot(t[ok], tr[ok], ls, color=c, lw=0.9, alpha=0.3)
        if np.isfinite(v).any():
            ok = np.isfinite(v)
            ax.plot(t[ok], v[ok], ls, color=c, lw=1.6, alpha=0.9, marker=".", ms=3, label=label)
    # the style key
    ax.plot([], [], "-", color="0.3", lw=1.6, label="validation loss")
    ax.plot([], [], "-", color="0.3", lw=0.9, alpha=0.3, label="training loss (faint)")
    ratio_key(ax, styles, multi, colors)
    train_tokens = num((results.get("data") or {}).get("train_tokens"))
    if runs and math.isfinite(train_tokens) and train_tokens > 0:
        tmax = max(num(p["tokens"]) for r in runs for p in curve(r))
        if train_tokens < tmax:
            ax.axvline(train_tokens, ls=":", color="0.45", lw=1)
            ax.text(train_tokens, 0.98, " 1 epoch of the corpus", transform=ax.get_xaxis_transform(), fontsize=7.5,
                    va="top", ha="left", color="0.35")
    if not runs:
        text_box(ax, "no learning curves in results.json", loc="upper right")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    label_axes(ax, "training tokens seen", "loss (nats/token)", "Learning curves, all runs and seeds", results)
    place_legend(fig, ax, multi, "lower left")
    return save_figure(fig, out_dir, "loss_curves")




def plot_compute_frontier(results: dict, out_dir: Path, logy: bool = False,
                          samples: tuple[dict | None, str] | None = None) -> list[Path]:
    runs = [r for r in good_runs(results)]
    multi, styles = len(study_ratios(results)) > 1, family_styles(results)
    fig = new_figure(7.5, 6.4 if multi else 5.2)
    ax = fig.add_subplot()
    col = frontier_column(results)  # the compute axis uses the Chinchilla fit's N when its L_opt(C) is drawn
    colors = size_colors([run_n(r) for r in runs] or [1.0])
    seen = set()
    for r in sorted(runs, key=run_n):
        per_tok = flops_per_token(r, col)
        pts = [p for p in curve(r) if finite(p.get("val_loss"))]
        if not pts:
            continue
        label = None
        if run_n(r) not in seen:
            seen.add(run_n(r))
            label = size_label(r, multi)
        ax.plot([num(p["tokens"]) * per_tok for p in pts], [num(p["val_loss"]) for p in pts],
                run_ls(r, results, styles, multi), color=colors[float(run_n(r))], lw=1.2, alpha=0.75, label=label)
    ratio_key(ax, styles, multi, colors)
    C, L, _ = frontier_points(results, col)
    if C.size:
        _, ec, el = lower_envelope(C, L)
        ax.plot(ec, el, "-", color="black", lw=5, alpha=0.22, solid_capstyle="round", zorder=1,
                label="empirical frontier: lower envelope of all runs")
    fit = (results.get("fits") or {}).get("chinchilla")
    status = fit_status(fit)
    finals = np.array([c for c in (num(r.get("tokens")) * flops_per_token(r, col) for r in runs)
                       if math.isfinite(c) and c > 0])
    if finals.size and status == "ok" and C.size:
        ax.axvline(finals.max(), ls=":", color="0.45", lw=1)
        ax.text(finals.max(), 0.02, " largest run:\n beyond is\n extrapolation", transform=ax.get_xaxis_transform(),
                fontsize=7.5, va="bottom", ha="left", color="0.35")
    if status == "ok" and C.size:
        c0 = finals.min() if finals.size else C.min()
        grid = np.geomspace(c0, max(C.max(), c0) * 3, 200)
        smp, how = samples if samples is not None else fit_samples(results, "chinchilla")
        y, band = chinchilla_opt_curve(fit, grid, smp)
        inside = opt_inside_data(results, fit, grid)
        lab = "Chinchilla fit: predicted compute-optimal loss L_opt(C)"
        if inside.any():
            ax.plot(grid, np.where(inside, y, np.nan), "--", color="C3", lw=2, label=lab)
        if (~inside).any():
            ax.plot(grid, np.where(inside, np.nan, y), ":", color="C3", lw=2,
                    label=("Chinchilla fit: L_opt(C)" if not inside.any() else "L_opt(C)")
                    + ", extrapolated\n(its N_opt or D_opt lies outside the trained range)")
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="C3", alpha=0.15, lw=0, label=f"95% band ({how})")
        else:
            co = [d for d in ((fit.get("derived") or {}).get("compute_optimal") or [])
                  if isinstance(d, dict) and finite(d.get("C")) and finite(d.get("loss"))]
            if co:
                xs = np.array([num(d["C"]) for d in co])
                ys = np.array([num(d["loss"]) for d in co])
                cis = np.array([[num(v) for v in (d.get("loss_ci") or [None, None])] for d in co])
                has = np.isfinite(cis).all(axis=1)
                ax.errorbar(xs, ys, yerr=np.vstack([np.where(has, ys - cis[:, 0], 0), np.where(has, cis[:, 1] - ys, 0)]),
                            fmt="D", color="C3", ms=5, capsize=4, label="L_opt(C) with 95% bootstrap CI (from the fit)")
                grid_hi = max(grid.max(), xs.max())
                if grid_hi > grid.max():
                    g2 = np.geomspace(grid.max(), grid_hi, 50)
                    ax.plot(g2, chinchilla_opt_curve(fit, g2)[0], ":", color="C3", lw=2)
            else:
                ax.plot([], [], " ", label=f"(no band: {how})")
        if "warn" not in how:
            nw = len(fit.get("warnings") or [])
            if nw:
                text_box(ax, f"Chinchilla fit has {nw} warning(s) (see NOTE.md):\npoorly identified; treat with care",
                      loc="lower left", fontsize=7.5)
    else:
        msg = status if status == "missing" else status.split(":")[0]
        text_box(ax, f"Chinchilla L(N, D) fit {msg}:\nno compute-optimal prediction drawn", loc="lower left")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    label_axes(ax, compute_axis_label(results), LOSS_LABEL, "Loss vs training compute", results)
    place_legend(fig, ax, multi, "upper right")
    return save_figure(fig, out_dir, "compute_frontier")


def plot_study(results: dict, out_dir: Path, logy: bool = False) -> list[Path]:
    """Write the four study figures (PNG + SVG each) into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
    if is_isoflop(results):  # budgets x sizes: its own figures (report.ladder_plots)
        from scalelab.report.ladder_plots import plot_ladder

        return plot_ladder(results, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kap = fit_samples(results, "kaplan")
    chi = fit_samples(results, "chinchilla") if fit_status((results.get("fits") or {}).get("chinchilla")) == "ok" \
        else (None, "no usable fit")
    paths: list[Path] = []
    paths += plot_loss_vs_params(results, out_dir, logy=logy, samples=kap)
    paths += plot_metric_vs_params(results, out_dir)
    paths += plot_loss_curves(results, out_dir, logy=logy)
    paths += plot_compute_frontier(results, out_dir, logy=logy, samples=chi)
    return paths
