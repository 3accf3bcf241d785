"""Figures of a scaling study, drawn from its ``results.json`` (format: docs/FORMATS.md).

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

Sizes are only ever compared within one ratio family (``families``): "13K-r5" and
"13K-r20" are the same model trained on different token counts.

Bootstrap bands need the fit's bootstrap samples. A fit dict may carry them
(``"samples": {"E": [...], "A": [...], "alpha": [...]}``); ``FitResult.to_dict()`` does
not, so otherwise they are recomputed from the runs with the same settings the fit
records (law, N column, fixed E, resampling unit, number of refits) and used only if the
refit reproduces the stored point estimate. Where neither works the curve is drawn
without a band and the legend says so.

Matplotlib is used through ``matplotlib.figure.Figure`` only (no pyplot state, no
backend switching), and files are written atomically (``scalelab.io``); SVGs carry no
date and a fixed hash salt, so the same results give the same files.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from scalelab.io import atomic_write_bytes
from scalelab.report.numbers import finite as _finite, num as _num

FIGURES = ("loss_vs_params", "metric_vs_params", "loss_curves", "compute_frontier")
DPI = 150

# Published exponents, quoted as reference text (never drawn as curves: different data,
# tokenizers and N conventions).
KAPLAN_ALPHA_N = 0.076  # Kaplan et al. 2020, L(N) = (N_c/N)^alpha_N, non-embedding N
CHINCHILLA_ALPHA = 0.34  # Hoffmann et al. 2022, approach 3
CHINCHILLA_BETA = 0.28

LOSS_LABEL = "validation loss (nats/token)"
N_LABEL = "non-embedding parameters N"


# --------------------------------------------------------------------------------------
# Reading results.json
# --------------------------------------------------------------------------------------






def good_runs(results: dict) -> list[dict]:
    """Runs with a finite positive final loss and a parameter count (failed runs are left out)."""
    out = []
    for r in results.get("runs") or []:
        if not isinstance(r, dict):
            continue
        n = r.get("non_embedding_params", r.get("params"))
        if _finite(r.get("loss")) and _num(r.get("loss")) > 0 and _finite(n) and _num(n) > 0:
            out.append(r)
    return out


def run_n(run: dict, column: str = "non_embedding_params") -> float:
    v = run.get(column)
    if not _finite(v):
        v = run.get("non_embedding_params", run.get("params"))
    return _num(v)


def _plan_ratios(results: dict) -> dict[str, float]:
    out = {}
    for m in ((results.get("plan") or {}).get("models") or []):
        if isinstance(m, dict) and _finite(m.get("ratio")):
            out[str(m.get("name"))] = _num(m["ratio"])
    return out


def ratio_of(item: dict, results: dict) -> float | None:
    """The tokens-per-parameter ratio (family) of a run or ``sizes`` row.

    Its own ``ratio`` field; else the plan model of the same name; else the plan's single
    ``tokens_per_param`` (older single-ratio studies); else None.
    """
    if _finite(item.get("ratio")):
        return _num(item["ratio"])
    by_name = _plan_ratios(results)
    if str(item.get("name")) in by_name:
        return by_name[str(item.get("name"))]
    tpp = ((results.get("plan") or {}).get("rules") or {}).get("tokens_per_param")
    return _num(tpp) if _finite(tpp) else None


def study_ratios(results: dict) -> list[float]:
    """The distinct tokens-per-parameter ratios of the finished runs (plan models as fallback)."""
    rs = {ratio_of(r, results) for r in good_runs(results)} - {None}
    if not rs:
        rs = set(_plan_ratios(results).values())
    return sorted(rs)


def primary_ratio(results: dict) -> float | None:
    """The ratio the study treats as primary (Kaplan fit, headline check).

    ``checks.primary_ratio``, else the Kaplan fit's ``tokens_per_param``, else the study's
    rule (20 when present, else the largest ratio); None when no ratio is known.
    """
    chk = results.get("checks")
    if isinstance(chk, dict) and _finite(chk.get("primary_ratio")):
        return _num(chk["primary_ratio"])
    kap = (results.get("fits") or {}).get("kaplan")
    if isinstance(kap, dict) and _finite(kap.get("tokens_per_param")):
        return _num(kap["tokens_per_param"])
    rs = study_ratios(results)
    if not rs:
        return None
    return 20.0 if 20.0 in rs else rs[-1]


def fmt_ratio(r) -> str:
    return f"{_num(r):g}" if _finite(r) else "?"


def size_rows(results: dict) -> list[dict]:
    """Per-size summaries sorted by ratio, then N: ``results["sizes"]``, or rebuilt from the runs if absent."""
    rows = [s for s in (results.get("sizes") or []) if isinstance(s, dict)]
    if not rows:
        from scalelab.eval.stats import mean_ci

        groups: dict[str, list[dict]] = {}
        for r in good_runs(results):
            groups.setdefault(str(r.get("name", run_n(r))), []).append(r)
        for name, rs in groups.items():
            row = {"name": name, "non_embedding_params": run_n(rs[0]), "params": rs[0].get("params"),
                   "tokens": rs[0].get("tokens"), "ratio": ratio_of(rs[0], results), "n_seeds": len(rs)}
            for key in ("loss", "val_bpb"):
                vals = [_num(r.get(key)) for r in rs if _finite(r.get(key))]
                if vals:
                    row[key] = mean_ci(vals)
            rows.append(row)

    def key(s):
        r = ratio_of(s, results)
        return (r if r is not None else -1.0, _num(s.get("non_embedding_params", s.get("params"))))

    return sorted(rows, key=key)


def families(results: dict) -> list[tuple[float | None, list[dict]]]:
    """``[(ratio, size rows sorted by N), ...]`` sorted by ratio: the sizes that may be compared with each other."""
    out: dict[float | None, list[dict]] = {}
    for s in size_rows(results):
        out.setdefault(ratio_of(s, results), []).append(s)
    return list(out.items())


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


def fit_usable(fit: Any) -> bool:
    """A fit dict with point estimates that is not flagged degenerate."""
    return (isinstance(fit, dict) and not fit.get("degenerate") and not fit.get("error")
            and all(_finite(fit.get(k)) for k in ("A", "alpha")))


def fit_status(fit: Any) -> str:
    """'ok', 'missing' or 'degenerate: <reason>'."""
    if not isinstance(fit, dict) or not fit:
        return "missing"
    if fit.get("degenerate") or fit.get("error"):
        reason = fit.get("reason") or fit.get("error") or "; ".join(
            w for w in (fit.get("warnings") or []) if "degenerate" in w) or "flagged degenerate"
        return f"degenerate: {reason}"
    law = fit.get("law")
    need = ("a", "b") if law == "isoflop" else ("A", "alpha")
    if not all(_finite(fit.get(k)) for k in need):
        return "degenerate: no finite parameter estimates"
    return "ok"


# --------------------------------------------------------------------------------------
# Bootstrap samples of a fit (for bands)
# --------------------------------------------------------------------------------------


def fit_samples(results: dict, law: str, max_boot: int = 200,
                recompute: bool = False) -> tuple[dict[str, np.ndarray] | None, str]:
    """Bootstrap parameter samples of ``results["fits"][law]`` and where they came from.

    Stored samples are used when present. Otherwise the Kaplan fit (a small grid: a few
    seconds) is refitted; the Chinchilla fit (4,500-start grid: tens of seconds on 2 cores)
    only with ``recompute=True``. Returns ``(samples, how)``; ``samples`` is None (and
    ``how`` says why) when no band can be drawn honestly.
    """
    fit = (results.get("fits") or {}).get(law)
    if not fit_usable(fit):
        return None, "no usable fit"
    stored = fit.get("samples")
    if isinstance(stored, dict) and stored:
        try:
            s = {k: np.asarray(v, dtype=float) for k, v in stored.items()}
            if len({v.size for v in s.values()}) == 1 and next(iter(s.values())).size >= 2:
                return s, f"{next(iter(s.values())).size} stored bootstrap refits"
        except (TypeError, ValueError):
            pass
    if law != "kaplan" and not recompute:
        return None, "bootstrap samples not stored in results.json"
    n_boot = int(_num(fit.get("n_boot")) if _finite(fit.get("n_boot")) else 0)
    if n_boot < 2:
        return None, "the fit has no bootstrap refits"
    n_boot = min(n_boot, max_boot)
    runs = good_runs(results)
    if law == "kaplan" and _finite(fit.get("tokens_per_param")):
        runs = [r for r in runs if ratio_of(r, results) == _num(fit["tokens_per_param"])]
    if _finite(fit.get("runs_used")) and int(_num(fit["runs_used"])) != len(runs):
        return None, f"cannot rebuild the fit's {int(_num(fit['runs_used']))} runs from results.json ({len(runs)} found)"
    col = fit.get("n_column") or ("non_embedding_params" if law == "kaplan" else "params")
    N = np.array([run_n(r, col) for r in runs])
    L = np.array([_num(r["loss"]) for r in runs])
    resample = fit.get("resample", "points")
    groups = None
    if resample in ("size", "groups"):
        groups = N
    elif resample == "seed":
        groups = np.array([_num(r.get("seed")) for r in runs])
    try:
        from scalelab.scaling.fit import fit_chinchilla, fit_kaplan

        if law == "kaplan":
            fixed = fit.get("fixed") or {}
            res = fit_kaplan(N, L, fix_E=fixed.get("E"), n_boot=n_boot, seed=0, groups=groups)
        elif law == "chinchilla":
            D = np.array([_num(r.get("tokens")) for r in runs])
            res = fit_chinchilla(N, D, L, n_boot=n_boot, seed=0, groups=groups)
        else:
            return None, f"no band for law {law!r}"
    except Exception as e:  # noqa: BLE001 - a band is optional; say why it is missing
        return None, f"refit failed ({e})"
    # Compare the curves over the data, not raw parameters: along a flat direction of the
    # objective (E traded against A, alpha) different CPUs land on different parameters
    # with the same predictions.
    D = np.array([_num(r.get("tokens")) for r in runs]) if law == "chinchilla" else None
    stored_pred = _law_prediction(fit, N, D)
    refit_pred = _law_prediction(res.params, N, D)
    if stored_pred is None or refit_pred is None:
        return None, "the stored fit lacks the parameters of its law"
    worst = float(np.max(np.abs(refit_pred - stored_pred)))
    if not worst <= 2e-3 * float(np.max(np.abs(stored_pred))):
        return None, f"refit does not reproduce the stored fit's curve (max |delta L| = {worst:.3g} over the data)"
    return {k: np.asarray(v, float) for k, v in res.samples.items()}, f"{n_boot} bootstrap refits, recomputed"


def _law_prediction(params: dict, N: np.ndarray, D: np.ndarray | None) -> np.ndarray | None:
    """L(N) (Kaplan) or L(N, D) (Chinchilla) at the given points, or None if parameters are missing."""
    def get(k, default=None):
        v = params.get(k, default)
        return _num(v) if _finite(v) else default

    E, A, alpha = get("E", 0.0), get("A"), get("alpha")
    if A is None or alpha is None:
        return None
    y = E + A * N ** (-alpha)
    if D is not None:
        B, beta = get("B"), get("beta")
        if B is None or beta is None:
            return None
        y = y + B * D ** (-beta)
    return y


def _band(values: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    from scalelab.eval.stats import percentile_interval

    return percentile_interval(values, confidence, axis=0)


def kaplan_curve(fit: dict, N: np.ndarray, samples: dict | None = None):
    """Point curve and (lo, hi) band (or None) of L(N) = E + A N^-alpha."""
    E = _num(fit.get("E")) if _finite(fit.get("E")) else 0.0
    y = E + _num(fit["A"]) * N ** (-_num(fit["alpha"]))
    if samples is None:
        return y, None
    with np.errstate(all="ignore"):
        Es = samples.get("E", np.zeros_like(samples["A"]))
        draws = Es[:, None] + samples["A"][:, None] * N[None, :] ** (-samples["alpha"][:, None])
    return y, _band(draws, _num(fit.get("confidence", 0.95)) or 0.95)


def chinchilla_opt_curve(fit: dict, C: np.ndarray, samples: dict | None = None):
    from scalelab.scaling.fit import compute_optimal

    p = {k: _num(fit[k]) for k in ("E", "A", "B", "alpha", "beta")}
    y = compute_optimal(C, **p)["loss"]
    if samples is None:
        return y, None
    with np.errstate(all="ignore"):
        s = {k: np.asarray(samples[k], float)[:, None] for k in p}
        draws = compute_optimal(C[None, :], **s)["loss"]
    return y, _band(np.real(draws), _num(fit.get("confidence", 0.95)) or 0.95)


# --------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------


def _new_figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    return fig


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
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


def _size_colors(ns: Iterable[float]) -> dict[float, Any]:
    from matplotlib import colormaps

    ns = sorted(set(float(n) for n in ns))
    cmap = colormaps["viridis"]
    if len(ns) == 1:
        return {ns[0]: cmap(0.4)}
    lo, hi = math.log(ns[0]), math.log(ns[-1])
    return {n: cmap(0.05 + 0.8 * (math.log(n) - lo) / (hi - lo)) for n in ns}


def _fmt_count(n: float) -> str:
    n = _num(n)
    if not math.isfinite(n):
        return "n/a"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _ci_text(v, ci) -> str:
    if not _finite(v):
        return "n/a"
    if ci and len(ci) == 2 and _finite(ci[0]) and _finite(ci[1]):
        return f"{_num(v):.3f} [{_num(ci[0]):.3f}, {_num(ci[1]):.3f}]"
    return f"{_num(v):.3f} (no CI)"


def _seed_offsets(runs: list[dict], step: float = 0.07) -> np.ndarray:
    """Multiplicative x offsets that put the seeds of one size side by side on a log axis."""
    seeds = sorted({_num(r.get("seed")) for r in runs if _finite(r.get("seed"))})
    if len(seeds) < 2:
        return np.ones(len(runs))
    idx = np.array([seeds.index(_num(r.get("seed"))) if _finite(r.get("seed")) else 0 for r in runs], float)
    return np.exp(step * (idx - (len(seeds) - 1) / 2))


def _size_ticks(ax, xs) -> None:
    """Label the log x axis at the model sizes (50.4K, 101K, ...) instead of powers of ten."""
    from matplotlib.ticker import NullFormatter

    xs = sorted(set(float(x) for x in xs if math.isfinite(x)))
    if not xs:
        return
    ax.set_xticks(xs, [_fmt_count(x) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _note(ax, text: str, loc: str = "lower left", fontsize: float = 8) -> None:
    x, ha = (0.02, "left") if "left" in loc else (0.98, "right")
    y, va = (0.03, "bottom") if "lower" in loc else (0.97, "top")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=fontsize,
            bbox=dict(boxstyle="round,pad=0.4", fc="white", ec="0.7", alpha=0.9))


def _title(results: dict) -> str:
    return str(results.get("name") or "study")


# --------------------------------------------------------------------------------------
# The four figures
# --------------------------------------------------------------------------------------


def plot_loss_vs_params(results: dict, out_dir: Path, logy: bool = False,
                        samples: tuple[dict | None, str] | None = None) -> list[Path]:
    """Loss vs N; with several tokens-per-parameter ratios, one colour and marker per ratio family,
    and the Kaplan curve drawn only over the family it was fitted on."""
    runs = good_runs(results)
    fit = (results.get("fits") or {}).get("kaplan")
    col = (fit.get("n_column") if isinstance(fit, dict) else None) or "non_embedding_params"
    multi = len(study_ratios(results)) > 1
    fig = _new_figure(7.5, 6.3 if multi else 5.2)
    ax = fig.add_subplot()
    Ns = np.array([run_n(r, col) for r in runs])
    Ls = np.array([_num(r["loss"]) for r in runs])
    fams = [(r, [s for s in rows if isinstance(s.get("loss"), dict) and _finite(s["loss"].get("mean"))])
            for r, rows in families(results)]
    styles = family_styles(results)
    if multi:
        for ratio in styles:
            fr = [r for r in runs if ratio_of(r, results) == ratio]
            if fr:
                st = styles[ratio]
                ax.scatter(np.array([run_n(r, col) for r in fr]) * _seed_offsets(fr), [_num(r["loss"]) for r in fr],
                           s=24, marker=st["marker"], facecolor="none", edgecolor=st["color"], linewidth=1.1,
                           alpha=0.8, zorder=5)
    else:
        colors = _size_colors(Ns)
        ax.scatter(Ns * _seed_offsets(runs), Ls, s=22, facecolor="none", edgecolor=[colors[float(n)] for n in Ns],
                   linewidth=1.2, alpha=0.8, zorder=5, label=f"single runs ({len(runs)}; seeds drawn side by side)")
    all_xs = []
    for ratio, rows in fams:
        if not rows:
            continue
        xs = np.array([_num(s.get(col, s.get("non_embedding_params", s.get("params")))) for s in rows])
        all_xs += list(xs)
        m = np.array([_num(s["loss"]["mean"]) for s in rows])
        lo = np.array([_num(s["loss"].get("lo")) for s in rows])
        hi = np.array([_num(s["loss"].get("hi")) for s in rows])
        has = np.isfinite(lo) & np.isfinite(hi)
        err = np.vstack([np.where(has, m - lo, 0), np.where(has, hi - m, 0)])
        seeds = sorted({int(_num(s.get("n_seeds", s["loss"].get("n", 0))) or 0) for s in rows})
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
        if _finite(fit.get("tokens_per_param")):
            fr = [r for r in runs if ratio_of(r, results) == _num(fit["tokens_per_param"])] or runs
            if multi:
                fam_txt = f" on the tokens/param = {fmt_ratio(fit['tokens_per_param'])} runs only"
        fN = np.array([run_n(r, col) for r in fr])
        lo_x, hi_x = (fN.min(), fN.max()) if fN.size else (1.0, 10.0)
        pad = 1.15 if multi else 1.4
        grid = np.geomspace(lo_x / pad, hi_x * pad, 200)
        smp, how = samples if samples is not None else fit_samples(results, "kaplan")
        y, band = kaplan_curve(fit, grid, smp)
        ci = (fit.get("ci") or {}).get("alpha")
        E_txt = "0 (fixed)" if "E" in (fit.get("fixed") or {}) else f"{_num(fit.get('E')):.2f}"
        ax.plot(grid, y, color="C3", lw=2, zorder=2,
                label=f"fit L = E + A·N$^{{-α}}${fam_txt}: α = {_ci_text(fit['alpha'], ci)}, E = {E_txt}")
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="C3", alpha=0.18, lw=0, zorder=1,
                            label=f"95% band of the fitted curve: {how}")
        else:
            ax.plot([], [], " ", label=f"(no band: {how})")
    else:
        _note(ax, f"Kaplan-form fit {status}\n(no curve drawn)", loc="upper right", fontsize=8)
    rows = bool(all_xs)
    xs = np.array(all_xs)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if rows:
        _size_ticks(ax, xs)
    ax.set_xlabel(N_LABEL if col == "non_embedding_params" else "total parameters N (incl. embeddings)")
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(f"Final validation loss vs model size — {_title(results)}")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    if multi:  # more entries, and the families fill the axes: legend (with the references) below the axes
        ax.plot([], [], " ", label=f"published exponents (reference only, not drawn): Kaplan et al. 2020 "
                                   f"α_N = {KAPLAN_ALPHA_N}; Hoffmann et al. 2022 α = {CHINCHILLA_ALPHA}, "
                                   f"β = {CHINCHILLA_BETA}")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=8, framealpha=0.9)
    else:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
        _note(ax, "Published exponents (reference only, not drawn):\n"
                  f"Kaplan et al. 2020  α_N = {KAPLAN_ALPHA_N}  (pure power law, N→∞ data)\n"
                  f"Hoffmann et al. 2022  α = {CHINCHILLA_ALPHA}, β = {CHINCHILLA_BETA}  (L(N,D))",
              loc="lower left", fontsize=7.5)
    return _save(fig, out_dir, "loss_vs_params")


def _metrics(results: dict) -> list[tuple[str, str, list[str]]]:
    """(panel key, title, [series]) for every downstream metric present."""
    runs = good_runs(results)
    out = []
    if any(_finite(r.get("val_bpb")) for r in runs):
        out.append(("val_bpb", "validation bits per byte (lower is better)", ["val_bpb"]))
    tasks: dict[str, list[str]] = {}
    for r in runs:
        for t, d in (r.get("tasks") or {}).items():
            if isinstance(d, dict):
                for k in ("acc", "acc_norm"):
                    if _finite(d.get(k)) and k not in tasks.setdefault(t, []):
                        tasks[t].append(k)
    for t in sorted(tasks):
        out.append((t, f"task {t}: accuracy (higher is better)", sorted(tasks[t])))
    return out


def plot_metric_vs_params(results: dict, out_dir: Path) -> list[Path]:
    runs = good_runs(results)
    metrics = _metrics(results)
    if not metrics:
        fig = _new_figure(6, 3)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no downstream metrics (val_bpb, tasks) in results.json", ha="center", va="center")
        return _save(fig, out_dir, "metric_vs_params")
    k = len(metrics)
    ncol = min(3, k)
    nrow = math.ceil(k / ncol)
    fig = _new_figure(5.0 * ncol, 4.0 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    seeds = sorted({_num(r.get("seed")) for r in runs if _finite(r.get("seed"))})
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
                rb = [r for r in runs if _finite(r.get("val_bpb")) and (not multi or ratio_of(r, results) == ratio)]
                if rb:
                    ax.scatter(np.array([run_n(r) for r in rb]) * _seed_offsets(rb), [_num(r["val_bpb"]) for r in rb],
                               s=20, marker=mk, facecolor="none", edgecolor=c_run, lw=1.1, alpha=0.8, zorder=5,
                               label=None if multi else "single runs (seeds side by side)")
                rows = [s for s in frows if isinstance(s.get("val_bpb"), dict) and _finite(s["val_bpb"].get("mean"))]
                if rows:
                    xs = np.array([_num(s.get("non_embedding_params", s.get("params"))) for s in rows])
                    m = np.array([_num(s["val_bpb"]["mean"]) for s in rows])
                    lo = np.array([_num(s["val_bpb"].get("lo")) for s in rows])
                    hi = np.array([_num(s["val_bpb"].get("hi")) for s in rows])
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
                    if _finite(d.get(metric)):
                        rr = ratio_of(r, results)
                        pts.append((run_n(r), _num(r.get("seed")), _num(d[metric]), _num(d.get(f"{metric}_lo")),
                                    _num(d.get(f"{metric}_hi")), _num(rr) if rr is not None else -1.0))
                        if _finite(d.get("chance")):
                            chance = _num(d["chance"])
                        if _finite(d.get("n")):
                            n_items.add(int(_num(d["n"])))
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
        _size_ticks(ax, [_num(s.get("non_embedding_params", s.get("params"))) for s in sizes]
                    or [run_n(r) for r in runs])
        ax.set_xlabel(N_LABEL)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.35)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[k:]:
        ax.axis("off")
    fig.suptitle(f"Downstream metrics vs model size — {_title(results)}")
    return _save(fig, out_dir, "metric_vs_params")


def _curve(run: dict) -> list[dict]:
    return [p for p in (run.get("curve") or []) if isinstance(p, dict) and _finite(p.get("tokens"))
            and _num(p["tokens"]) > 0]


def plot_loss_curves(results: dict, out_dir: Path, logy: bool = False) -> list[Path]:
    runs = [r for r in good_runs(results) if _curve(r)]
    multi, styles = len(study_ratios(results)) > 1, family_styles(results)
    fig = _new_figure(7.5, 6.2 if multi else 5.2)
    ax = fig.add_subplot()
    colors = _size_colors([run_n(r) for r in runs] or [1.0])
    seen = set()
    for r in sorted(runs, key=run_n):
        pts = _curve(r)
        t = np.array([_num(p["tokens"]) for p in pts])
        c = colors[float(run_n(r))]
        ls = _run_ls(r, results, styles, multi)
        v = np.array([_num(p.get("val_loss")) for p in pts])
        tr = np.array([_num(p.get("train_loss")) for p in pts])
        label = None
        if run_n(r) not in seen:
            seen.add(run_n(r))
            label = _size_label(r, multi)
        if np.isfinite(tr).any():
            ok = np.isfinite(tr)
            ax.plot(t[ok], tr[ok], ls, color=c, lw=0.9, alpha=0.3)
        if np.isfinite(v).any():
            ok = np.isfinite(v)
            ax.plot(t[ok], v[ok], ls, color=c, lw=1.6, alpha=0.9, marker=".", ms=3, label=label)
    # the style key
    ax.plot([], [], "-", color="0.3", lw=1.6, label="validation loss")
    ax.plot([], [], "-", color="0.3", lw=0.9, alpha=0.3, label="training loss (faint)")
    _ratio_key(ax, styles, multi, colors)
    train_tokens = _num((results.get("data") or {}).get("train_tokens"))
    if runs and math.isfinite(train_tokens) and train_tokens > 0:
        tmax = max(_num(p["tokens"]) for r in runs for p in _curve(r))
        if train_tokens < tmax:
            ax.axvline(train_tokens, ls=":", color="0.45", lw=1)
            ax.text(train_tokens, 0.98, " 1 epoch of the corpus", transform=ax.get_xaxis_transform(), fontsize=7.5,
                    va="top", ha="left", color="0.35")
    if not runs:
        _note(ax, "no learning curves in results.json", loc="upper right")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"Learning curves, all runs and seeds — {_title(results)}")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    _legend(fig, ax, multi, "lower left")
    return _save(fig, out_dir, "loss_curves")


def _run_ls(run: dict, results: dict, styles: dict, multi: bool) -> str:
    return styles.get(ratio_of(run, results), {}).get("ls", "-") if multi else "-"


def _size_label(run: dict, multi: bool) -> str | None:
    if multi:  # one colour per model size (proxy entries from _ratio_key); the ratio is the line style
        return None
    return f"{run.get('name', '')} (N = {_fmt_count(run_n(run))})"


def _ratio_key(ax, styles: dict, multi: bool, colors: dict | None = None) -> None:
    """Legend proxies for multi-ratio studies: a solid line per model size colour, a grey line per ratio style."""
    if multi:
        for n, c in sorted((colors or {}).items()):
            ax.plot([], [], "-", color=c, lw=1.6, label=f"non-emb. N = {_fmt_count(n)}")
        for ratio, st in styles.items():
            ax.plot([], [], st["ls"], color="0.3", lw=1.4, label=f"tokens/param = {fmt_ratio(ratio)}")


def _legend(fig, ax, multi: bool, loc: str) -> None:
    """Inside the axes for one ratio; below them (two columns) when several ratios make the key long."""
    if multi:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8, framealpha=0.9)
    else:
        ax.legend(fontsize=8, loc=loc, framealpha=0.9)


def _flops_per_token(run: dict, n_column: str | None = None) -> float:
    """Training FLOPs per token: 6·N with N = ``n_column`` when given, else the run's recorded FLOPs / tokens."""
    if n_column:
        return 6.0 * run_n(run, n_column)
    if _finite(run.get("flops")) and _finite(run.get("tokens")) and _num(run["tokens"]) > 0:
        return _num(run["flops"]) / _num(run["tokens"])
    return 6.0 * run_n(run)


def frontier_column(results: dict) -> str | None:
    """The N convention of the compute axis: the Chinchilla fit's ``n_column`` when that fit is drawn
    (its L_opt(C) assumes C = 6·N·D with that N), else None (the runs' recorded FLOPs)."""
    fit = (results.get("fits") or {}).get("chinchilla")
    if fit_status(fit) == "ok" and fit.get("n_column"):
        return str(fit["n_column"])
    return None


def compute_axis_label(results: dict) -> str:
    col = frontier_column(results)
    if col == "params":
        return "training compute C = 6 · N · D, N = total parameters (the Chinchilla fit's N)"
    if col:
        return f"training compute C = 6 · N · D, N = {col.replace('_', '-')} (the Chinchilla fit's N)"
    return "training FLOPs C (≈ 6 · N · tokens)"


def frontier_points(results: dict, n_column: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(C, L, size name) of every validation point of every run, C = tokens x FLOPs per token."""
    C, L, who = [], [], []
    for r in good_runs(results):
        per_tok = _flops_per_token(r, n_column)
        for p in _curve(r):
            if _finite(p.get("val_loss")):
                C.append(_num(p["tokens"]) * per_tok)
                L.append(_num(p["val_loss"]))
                who.append(str(r.get("name", "")))
        if not _curve(r) and _finite(r.get("tokens")):
            C.append(_num(r["tokens"]) * per_tok)
            L.append(_num(r["loss"]))
            who.append(str(r.get("name", "")))
    return np.array(C), np.array(L), who


def lower_envelope(C: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (sorted by C) of the points that set a new minimum loss: the empirical frontier."""
    order = np.argsort(C, kind="stable")
    keep, best = [], math.inf
    for i in order:
        if L[i] < best:
            best = L[i]
            keep.append(i)
    idx = np.array(keep, dtype=int)
    return idx, C[idx], L[idx]


def chinchilla_data_range(results: dict) -> dict | None:
    """The N (in the Chinchilla fit's convention) and D ranges of the runs that fit was made on."""
    fit = (results.get("fits") or {}).get("chinchilla")
    if fit_status(fit) != "ok":
        return None
    col = fit.get("n_column") or "params"
    runs = good_runs(results)
    N = [run_n(r, col) for r in runs]
    D = [_num(r.get("tokens")) for r in runs if _finite(r.get("tokens"))]
    if not N or not D:
        return None
    return {"n_column": col, "N": (min(N), max(N)), "D": (min(D), max(D))}


def opt_inside_data(results: dict, fit: dict, C) -> np.ndarray:
    """True where the fit's compute-optimal N_opt and D_opt both lie inside the trained N and D ranges."""
    from scalelab.scaling.fit import compute_optimal

    C = np.atleast_1d(np.asarray(C, float))
    rng = chinchilla_data_range(results)
    if rng is None:
        return np.zeros(C.shape, bool)
    opt = compute_optimal(C, **{k: _num(fit[k]) for k in ("E", "A", "B", "alpha", "beta")})
    N, D = np.asarray(opt["N_opt"], float), np.asarray(opt["D_opt"], float)
    (n0, n1), (d0, d1) = rng["N"], rng["D"]
    return (N >= n0 * 0.999) & (N <= n1 * 1.001) & (D >= d0 * 0.999) & (D <= d1 * 1.001)


def plot_compute_frontier(results: dict, out_dir: Path, logy: bool = False,
                          samples: tuple[dict | None, str] | None = None) -> list[Path]:
    runs = [r for r in good_runs(results)]
    multi, styles = len(study_ratios(results)) > 1, family_styles(results)
    fig = _new_figure(7.5, 6.4 if multi else 5.2)
    ax = fig.add_subplot()
    col = frontier_column(results)  # the compute axis uses the Chinchilla fit's N when its L_opt(C) is drawn
    colors = _size_colors([run_n(r) for r in runs] or [1.0])
    seen = set()
    for r in sorted(runs, key=run_n):
        per_tok = _flops_per_token(r, col)
        pts = [p for p in _curve(r) if _finite(p.get("val_loss"))]
        if not pts:
            continue
        label = None
        if run_n(r) not in seen:
            seen.add(run_n(r))
            label = _size_label(r, multi)
        ax.plot([_num(p["tokens"]) * per_tok for p in pts], [_num(p["val_loss"]) for p in pts],
                _run_ls(r, results, styles, multi), color=colors[float(run_n(r))], lw=1.2, alpha=0.75, label=label)
    _ratio_key(ax, styles, multi, colors)
    C, L, _ = frontier_points(results, col)
    if C.size:
        _, ec, el = lower_envelope(C, L)
        ax.plot(ec, el, "-", color="black", lw=5, alpha=0.22, solid_capstyle="round", zorder=1,
                label="empirical frontier: lower envelope of all runs")
    fit = (results.get("fits") or {}).get("chinchilla")
    status = fit_status(fit)
    finals = np.array([c for c in (_num(r.get("tokens")) * _flops_per_token(r, col) for r in runs)
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
                  if isinstance(d, dict) and _finite(d.get("C")) and _finite(d.get("loss"))]
            if co:
                xs = np.array([_num(d["C"]) for d in co])
                ys = np.array([_num(d["loss"]) for d in co])
                cis = np.array([[_num(v) for v in (d.get("loss_ci") or [None, None])] for d in co])
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
                _note(ax, f"Chinchilla fit has {nw} warning(s) (see NOTE.md):\npoorly identified; treat with care",
                      loc="lower left", fontsize=7.5)
    else:
        msg = status if status == "missing" else status.split(":")[0]
        _note(ax, f"Chinchilla L(N, D) fit {msg}:\nno compute-optimal prediction drawn", loc="lower left")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(compute_axis_label(results))
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(f"Loss vs training compute — {_title(results)}")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    _legend(fig, ax, multi, "upper right")
    return _save(fig, out_dir, "compute_frontier")


def plot_study(results: dict, out_dir: Path, logy: bool = False) -> list[Path]:
    """Write the four study figures (PNG + SVG each) into ``out_dir``; returns the paths written."""
    out_dir = Path(out_dir)
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
