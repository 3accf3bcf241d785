"""What every section of NOTE.md reads: results.json and the quantities derived from it, computed once.

``build_context(results, out_dir, figures)`` returns a :class:`NoteContext`; each section
function (``report.study_note`` and the ``report.note_*`` modules) takes it and returns its
Markdown lines. The derived quantities are queries of ``scalelab.scaling.results``; the
published reference values quoted in the note are here too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalelab.scaling.results import (
    families, finite, fit_samples, fit_status, fmt_ratio, good_runs, matched_compute_pairs, num, pairwise_check,
    primary_ratio, ratio_of, run_n, size_rows, study_check, study_ratios,
)

# Published reference values (quoted, with their source, in the note).
KAPLAN_2020 = {"alpha_N": 0.076, "a": 0.73}  # Kaplan et al. 2020: L(N) = (N_c/N)^0.076; N_opt ~ C^0.73
HOFFMANN_2022 = {"alpha": 0.34, "beta": 0.28, "a": 0.46, "b": 0.54, "E": 1.69, "A": 406.4, "B": 410.7}
BESIROGLU_2024 = {"alpha": 0.35, "beta": 0.37}
CHINCHILLA_RANGE = "70M to 16B parameters, 5B to 500B tokens"  # Hoffmann et al. 2022, sec. 3


def fig_link(fig: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(fig).resolve(), Path(out_dir).resolve())).as_posix()


@dataclass
class NoteContext:
    results: dict
    out_dir: Path
    figs: dict[str, Path]  # stem -> PNG
    svgs: dict[str, Path]  # stem -> SVG
    name: str
    runs_all: list[dict]  # every run, failed ones included
    runs: list[dict]  # the runs with a final loss (good_runs)
    failed: int
    sizes: list[dict]
    data: dict
    hw: dict
    plan: dict
    rules: dict
    cfg: dict
    train_cfg: dict
    ver: dict
    kap: Any
    chi: Any
    iso: Any
    kst: str  # fit_status of each
    cst: str
    ist: str
    kap_band: str | None  # why Figure 1 has no Kaplan band (None: it has one)
    models: list[dict]
    seeds: list
    n_seeds: list[int]  # distinct seed counts per size
    n_lo: float
    n_hi: float
    total_flops: float
    total_time: float
    epochs: list[float]
    check: dict  # pairwise_check
    sc: dict  # study_check
    counted: list[dict]  # the study_check steps that count for the verdict
    ratios: list[float]
    multi: bool  # several tokens-per-parameter ratios
    prim: float | None
    fams: list[tuple]  # (ratio, size rows with a mean loss), non-empty families only
    ratio_set: str
    n_distinct: int  # distinct model sizes
    kap_r: float | None  # the ratio the Kaplan fit was made on
    kap_used: Any
    plan_ratios: list[float]
    tpp: Any  # the single planned tokens/param (or the plan rule's)
    task_names: list[str]
    mc: list[dict]  # matched_compute_pairs (multi-ratio studies)

    def fig(self, stem: str, caption: str) -> list[str]:
        """The figure ``stem`` with its caption (and SVG link), or a line saying it was not drawn."""
        if stem not in self.figs:
            return [f"*(figure `{stem}` was not drawn)*", ""]
        link = fig_link(self.figs[stem], self.out_dir)
        extra = f" ([SVG]({fig_link(self.svgs[stem], self.out_dir)}))" if stem in self.svgs else ""
        return [f"![{caption}]({link})", "", f"*{caption}*{extra}", ""]


def build_context(results: dict, out_dir: Path, figures: list[Path]) -> NoteContext:
    runs_all = [r for r in (results.get("runs") or []) if isinstance(r, dict)]
    runs = good_runs(results)
    sizes = size_rows(results)
    plan = results.get("plan") or {}
    rules = plan.get("rules") or {}
    cfg = results.get("config") or {}
    fits = results.get("fits") or {}
    kap, chi, iso = fits.get("kaplan"), fits.get("chinchilla"), fits.get("isoflop")
    models = [m for m in (plan.get("models") or []) if isinstance(m, dict)]
    Ns = [run_n(r) for r in runs]
    sc = study_check(results)
    ratios = study_ratios(results)
    fams = [(r, [s for s in rows if isinstance(s.get("loss"), dict) and finite(s["loss"].get("mean"))])
            for r, rows in families(results)]
    plan_ratios = sorted({ratio_of(m, results) for m in models} - {None}) or ratios
    multi = len(ratios) > 1
    kap_samples, kap_how = fit_samples(results, "kaplan")
    return NoteContext(
        results=results, out_dir=Path(out_dir),
        figs={Path(f).stem: f for f in figures if Path(f).suffix == ".png"},
        svgs={Path(f).stem: f for f in figures if Path(f).suffix == ".svg"},
        name=results.get("name") or "study", runs_all=runs_all, runs=runs, failed=len(runs_all) - len(runs),
        sizes=sizes, data=results.get("data") or {}, hw=results.get("hardware") or {}, plan=plan, rules=rules,
        cfg=cfg,
        train_cfg=(cfg.get("train") or (cfg.get("base") or {}).get("train") or {}) if isinstance(cfg, dict) else {},
        ver=results.get("versions") or {},
        kap=kap, chi=chi, iso=iso, kst=fit_status(kap), cst=fit_status(chi), ist=fit_status(iso),
        kap_band=None if kap_samples is not None else kap_how,
        models=models,
        seeds=sorted({r.get("seed") for r in runs if r.get("seed") is not None}, key=lambda s: num(s)),
        n_seeds=sorted({int(num(s.get("n_seeds", (s.get("loss") or {}).get("n", 0)) or 0)) for s in sizes}),
        n_lo=min(Ns) if Ns else float("nan"), n_hi=max(Ns) if Ns else float("nan"),
        total_flops=sum(num(r.get("flops")) for r in runs if finite(r.get("flops"))),
        total_time=sum(num(r.get("train_time_s")) for r in runs if finite(r.get("train_time_s"))),
        epochs=[num(r.get("epochs")) for r in runs if finite(r.get("epochs"))],
        check=pairwise_check(results), sc=sc, counted=[x for x in sc["steps"] if x["counts"]],
        ratios=ratios, multi=multi, prim=primary_ratio(results),
        fams=[(r, rows) for r, rows in fams if rows],
        ratio_set="{" + ", ".join(fmt_ratio(r) for r in ratios) + "}",
        n_distinct=len({run_n(r) for r in runs}),
        kap_r=kap.get("tokens_per_param") if isinstance(kap, dict) and finite(kap.get("tokens_per_param")) else None,
        kap_used=kap.get("runs_used", kap.get("n")) if isinstance(kap, dict) else None,
        plan_ratios=plan_ratios,
        tpp=plan_ratios[0] if len(plan_ratios) == 1 else rules.get("tokens_per_param"),
        task_names=sorted({t for r in runs for t in (r.get("tasks") or {})}),
        mc=matched_compute_pairs(results) if multi else [],
    )
