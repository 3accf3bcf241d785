"""The shared state of an IsoFLOP study's NOTE.md: :class:`LadderContext` (results.json
and the figures), the small queries and texts several sections use, and the verdicts that
both the summary and a later section state (``report.ladder_note``, ``report.ladder_sections``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scalelab.eval.stats import format_ci
from scalelab.report.markdown import count, f3, fci, finite, num, sci
from scalelab.report.note_context import fig_link
from scalelab.scaling.ladder import CHINCHILLA_A
from scalelab.scaling.ladder_results import (
    above_chance_counts, accuracy_metric, approach_status, budget_configs, budget_of, identification, study_budgets,
    task_names,
)
from scalelab.scaling.results import good_runs


@dataclass
class LadderContext:
    results: dict
    out_dir: Path
    figs: dict  # stem -> PNG
    svgs: dict
    fits: dict
    runs: list
    budgets: list
    configs: list  # budget_configs(results) with a loss
    tasks: list

    def fit(self, key: str):
        v = self.fits.get(key)
        return v if isinstance(v, dict) else {}

    def figure(self, stem: str, caption: str) -> list[str]:
        if stem not in self.figs:
            return [f"*(figure `{stem}` was not drawn)*", ""]
        extra = f" ([SVG]({fig_link(self.svgs[stem], self.out_dir)}))" if stem in self.svgs else ""
        return [f"![{caption}]({fig_link(self.figs[stem], self.out_dir)})", "", f"**Figure.** *{caption}*{extra}", ""]


def build_ladder_context(results: dict, out_dir: Path, figures: list[Path]) -> LadderContext:
    fits = results.get("fits") if isinstance(results.get("fits"), dict) else {}
    return LadderContext(
        results=results, out_dir=Path(out_dir),
        figs={Path(f).stem: Path(f) for f in figures if Path(f).suffix == ".png"},
        svgs={Path(f).stem: Path(f) for f in figures if Path(f).suffix == ".svg"},
        fits=fits, runs=good_runs(results), budgets=study_budgets(results),
        configs=[c for c in budget_configs(results) if c["value"]], tasks=task_names(results))


# ------------------------------------------------------------------------- formatting


def reason_of(status: str) -> str:
    """'degenerate: X' -> 'degenerate (X)'; 'missing' -> 'absent from results.json'."""
    if status == "missing":
        return "absent from results.json"
    return status.replace("degenerate: ", "degenerate (", 1) + ")" if status.startswith("degenerate: ") else status


def nci(v, ci) -> str:
    """A parameter count with its CI: '25.3K [2.66K, 43.5K]'."""
    return format_ci(v, ci, count)


def mci(value: dict | None, nd: int = 3) -> str:
    """A seed mean with its 95% t CI (or the single value when one seed)."""
    if not value or not finite(value.get("mean")):
        return "n/a"
    if finite(value.get("lo")) and finite(value.get("hi")):
        return fci(value["mean"], [value["lo"], value["hi"]], nd)
    return f"{num(value['mean']):.{nd}f} (1 seed, no CI)"


def exponent_rows(ctx: LadderContext) -> list[dict]:
    """fits.exponents, or rows rebuilt from the three fits when absent."""
    rows = [r for r in (ctx.fits.get("exponents") or []) if isinstance(r, dict)]
    if rows:
        return rows
    out = []
    for name, law in (("approach1", "envelope"), ("approach2", "isoflop"), ("approach3", "chinchilla")):
        f = ctx.fit(law)
        a, ci = (f.get("a"), (f.get("ci") or {}).get("a")) if law != "chinchilla" else (
            ((f.get("derived") or {}).get("a") or {}).get("value"), ((f.get("derived") or {}).get("a") or {}).get("ci"))
        st = approach_status(f)
        row = {"approach": name, "law": law, "a": a, "ci": ci, "chinchilla_a": CHINCHILLA_A[name][0],
               "chinchilla_ci": CHINCHILLA_A[name][1]}
        if st != "ok" or not finite(a):
            row["missing"] = (f.get("reason") if f else None) or ("absent from results.json" if not f else st)
        out.append(row)
    return out


def a_text(row: dict) -> str:
    if row.get("missing") or not finite(row.get("a")):
        return f"not measured ({row.get('missing') or 'no estimate'})"
    return fci(row["a"], row.get("ci"), 2)


NOPT_HOLDOUT = "isoflop_N_opt"  # approach 2's extrapolation of N_opt: one number, not per-run predictions


def holdout_items(ctx: LadderContext) -> list[tuple[str, dict]]:
    h = ctx.fits.get("holdout")
    return [(k, v) for k, v in h.items() if isinstance(v, dict) and k != NOPT_HOLDOUT] if isinstance(h, dict) else []


def nopt_holdout(ctx: LadderContext) -> dict | None:
    h = (ctx.fits.get("holdout") or {}).get(NOPT_HOLDOUT)
    return h if isinstance(h, dict) else None


def nopt_holdout_text(h: dict) -> str:
    if h.get("degenerate") or not finite(h.get("predicted")):
        return f"approach 2's N_opt: not checked ({h.get('reason') or 'no numbers stored'})"
    return (f"approach 2's N_opt at the {h.get('held_out', 'held-out budget')}: predicted {fci(h['predicted'], h.get('pi'), 0)}"
            f" from the other budgets, observed vertex {fci(h.get('observed'), h.get('observed_ci'), 0)} "
            f"({'inside' if h.get('inside') else '**outside**'} the predicted interval)")


def holdout_label(key: str, h: dict) -> str:
    return str(h.get("target") or key.replace("_bpb", " bpb"))


def holdout_ok(h: dict) -> bool:
    return not h.get("degenerate") and finite(h.get("mean_abs_error"))


def iso_budget_rows(ctx: LadderContext) -> dict:
    return {budget_of({"budget": b.get("C")}, ctx.budgets): b for b in (ctx.fit("isoflop").get("budgets") or [])
            if isinstance(b, dict) and finite(b.get("C"))}


def frontier_metric_rows(ctx: LadderContext) -> list[dict]:
    chk = ctx.results.get("checks")
    return [m for m in (chk.get("metrics") or []) if isinstance(m, dict)] if isinstance(chk, dict) else []


def _yes_no(v) -> str:
    return {True: "yes", False: "no"}.get(v, "undetermined")


# ------------------------------------------------------------------------- sections

def identification_text(ctx: LadderContext) -> str:
    chi = ctx.fit("chinchilla")
    idn = identification(chi)
    if idn["status"] != "ok":
        return f"not identified: the fit is {reason_of(idn['status'])}"
    w = idn["widths"]
    wt = f"95% CI widths α {f3(w['alpha'], 2)}, β {f3(w['beta'], 2)} (threshold {idn['max_width']:.2f})"
    ci = chi.get("ci") or {}
    est = f"α = {fci(chi.get('alpha'), ci.get('alpha'))}, β = {fci(chi.get('beta'), ci.get('beta'))}"
    if idn["identified"]:
        return f"**identified**: {est}; {wt}"
    return f"**poorly identified**: {est}; {wt}"


def consistency_verdict(ctx: LadderContext) -> str:
    c = ctx.fits.get("consistency")
    if not isinstance(c, dict) or not c:
        return "not checked (absent from results.json)"
    if not c.get("checked"):
        return f"not checked ({c.get('reason') or 'no reason stored'})"
    rows = [b for b in (c.get("budgets") or []) if isinstance(b, dict)]
    flagged = [b for b in rows if b.get("below_data")]
    mx = f"max |fitted L_opt − best observed| = {f3(c.get('max_abs_residual'))} nats"
    if c.get("flagged") or flagged:
        return (f"**flagged**: the fitted L_opt(C) lies below the data beyond the CIs at "
                f"{', '.join('C = ' + sci(b.get('C')) for b in flagged) or 'some budget'}; {mx}")
    return f"**consistent**: at none of the {len(rows)} budgets is the fitted L_opt(C) below the data beyond the CIs; {mx}"


def downstream_verdict(ctx: LadderContext) -> str:
    chk = ctx.results.get("checks") if isinstance(ctx.results.get("checks"), dict) else {}
    ms = frontier_metric_rows(ctx)
    if not ms:
        return "no frontier check in results.json"
    sep = [m for m in ms if m.get("metric") != "loss" and m.get("separates")]
    txt = (f"along the frontier the loss decreases beyond seed noise: **{_yes_no(chk.get('loss_decreases_beyond_noise'))}**; "
           "metrics that separate neighbouring budgets beyond noise: "
           + (", ".join(f"{m.get('task')} {m.get('metric')}" for m in sep) or "none"))
    acc = []
    for t in ctx.tasks:
        metric = accuracy_metric(ctx.results, t)
        k = above_chance_counts(ctx.results, t, metric)
        if k["n"]:
            acc.append(f"{t} {metric} {k['k']} of {k['n']} runs' 95% intervals above chance ({f3(k['chance'], 2)})")
    if acc:
        txt += "; accuracy: " + "; ".join(acc)
    return txt
