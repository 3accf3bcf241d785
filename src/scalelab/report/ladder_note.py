"""NOTE.md of an IsoFLOP-design study (``plan.design: isoflop``), generated from ``results.json`` alone.

``write_ladder_note(results, out_dir, figures)`` writes ``out_dir/NOTE.md``; ``report.study_note``
dispatches here on the design. The note is one function per section (:data:`SECTIONS`) on a
shared :class:`LadderContext`: title and summary, setup, loss per configuration (IsoFLOP
profiles), compute-optimal allocation (approaches 1-3 of Hoffmann et al. 2022), the L(N, D)
fit and its identification, consistency, measured extrapolation (holdout) and downstream
metrics (``report.ladder_sections``), caveats and references.

Every number is read from results.json or computed from it by the queries of
``scalelab.scaling.results``; nothing is refitted. A fit that is degenerate or absent is
reported with its stored reason and its parameters are never printed as estimates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scalelab.io import atomic_write_text
from scalelab.report.markdown import count, duration, f3, fci, finite, intc, num, sci, synthetic_banner, table
from scalelab.report.note_context import BESIROGLU_2024, HOFFMANN_2022, fig_link
from scalelab.scaling.ladder import CHINCHILLA_A
from scalelab.scaling.ladder_results import (
    above_chance_counts, accuracy_metric, approach_status, budget_configs, budget_of, by_budget, identification, study_budgets, task_names,
)
from scalelab.scaling.results import good_runs

APPROACH_NAMES = {"approach1": "1: envelope of training curves", "approach2": "2: IsoFLOP parabolas",
                  "approach3": "3: L(N, D) fit, a = β/(α+β)"}


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
    if not finite(v):
        return "n/a"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and finite(ci[0]) and finite(ci[1]):
        return f"{count(v)} [{count(ci[0])}, {count(ci[1])}]"
    return f"{count(v)} [no CI]"


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


def title_block(ctx: LadderContext) -> list[str]:
    """Title and provenance."""
    r = ctx.results
    prov = [f"study created {r.get('created', 'n/a')}"] + ([f"git `{r['git']}`"] if r.get("git") else []) + (
        [f"scalelab {(r.get('versions') or {})['scalelab']}"] if (r.get("versions") or {}).get("scalelab") else [])
    L = [f"# Compute-optimal scaling from IsoFLOP profiles: study `{r.get('name') or 'study'}`", "",
         f"*Generated by `scalelab report` from `results.json` ({', '.join(prov)}). Every number here is read from, "
         "or computed from, that file; the report never refits.*", ""]
    return L + synthetic_banner(r)


def summary(ctx: LadderContext) -> list[str]:
    """## Summary: design, exponents, L(N, D) identification, consistency, holdout, downstream."""
    L = ["## Summary", ""]
    n_sizes = sorted({len(rows) for _, rows in by_budget(ctx.configs)})
    seeds = sorted({r.get("seed") for r in ctx.runs if r.get("seed") is not None}, key=num)
    Ns = [c["params"] for c in ctx.configs]
    tpp = [c["tokens_per_param"] for c in ctx.configs if finite(c["tokens_per_param"])]
    L.append(f"- **Design.** {len(ctx.budgets)} compute budgets (C = {', '.join(sci(b) for b in ctx.budgets)} FLOPs) "
             f"× {'/'.join(map(str, n_sizes)) or 'n/a'} model sizes × {len(seeds)} seeds = {len(ctx.runs)} finished "
             f"runs; N from {count(min(Ns)) if Ns else 'n/a'} to {count(max(Ns)) if Ns else 'n/a'} total parameters, "
             f"D/N from {min(tpp):.2g} to {max(tpp):.3g} tokens per parameter." if tpp else "D/N n/a.")
    rows = exponent_rows(ctx)
    parts = [f"approach {r['approach'][-1]}: " + ("" if r.get("missing") or not finite(r.get("a")) else "a = ")
             + a_text(r) for r in rows]
    pub = ", ".join(f"{num(r.get('chinchilla_a')):.2f}" for r in rows if finite(r.get("chinchilla_a")))
    L.append(f"- **Compute-optimal exponent a (N_opt ∝ C^a, 95% CI).** {'; '.join(parts)}. Hoffmann et al. (2022) "
             f"report {pub} for approaches 1, 2, 3 (§4).")
    L.append(f"- **L(N, D) = E + A/N^α + B/D^β:** {identification_text(ctx)} (§5).")
    L.append(f"- **Consistency of approach 3 with the data:** {consistency_verdict(ctx)} (§6).")
    hparts = []
    for key, h in holdout_items(ctx):
        if holdout_ok(h):
            hparts.append(f"{holdout_label(key, h)}: mean |error| {f3(h['mean_abs_error'])}, coverage "
                          f"{f3(h.get('coverage'), 2)} of the {num(h.get('confidence', 0.95)):.0%} prediction intervals "
                          f"over {intc(h.get('n_held_out'))} runs")
        else:
            hparts.append(f"{holdout_label(key, h)}: not checked ({h.get('reason') or 'no numbers stored'})")
    if nopt_holdout(ctx):
        hparts.append(nopt_holdout_text(nopt_holdout(ctx)))
    held = next((h.get("held_out") for _, h in holdout_items(ctx) if h.get("held_out")), None)
    L.append(f"- **Measured extrapolation** (fitted without the {held or 'held-out runs'}): "
             + ("; ".join(hparts) if hparts else "no holdout check in results.json") + " (§7).")
    L.append(f"- **Downstream:** {downstream_verdict(ctx)} (§8).")
    L.append("")
    return L


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


def setup(ctx: LadderContext) -> list[str]:
    """## 2. Setup: data, model family, design table, training, compute, command."""
    r, data = ctx.results, ctx.results.get("data") or {}
    plan = r.get("plan") or {}
    rules = plan.get("rules") or {}
    L = ["## 2. Setup", "", "### 2.1 Data", ""]
    big = max(ctx.configs, key=lambda c: num(c["tokens"]), default=None)
    rows = [["source", f"`{data.get('source', 'n/a')}`"],
            ["tokenizer", f"{data.get('tokenizer', 'n/a')}, vocabulary {intc(data.get('vocab_size'))}"],
            ["training tokens in the corpus", intc(data.get("train_tokens"))],
            ["validation tokens", intc(data.get("val_tokens"))]]
    if big:
        rows.append(["largest-D run", f"{big['name']}: {intc(big['tokens'])} tokens = {f3(big.get('epochs'), 2)} "
                     "epochs of the corpus"])
    L += table(["", ""], rows) + [""]
    L += ["### 2.2 Model family", ""]
    shape = []
    if finite(rules.get("n_layer")):
        shape.append(f"fixed depth of {intc(rules['n_layer'])} layers; the width varies in steps of "
                     f"{intc(rules.get('width_step'))}")
    elif finite(rules.get("aspect_ratio")):
        shape.append(f"width = {f3(rules['aspect_ratio'], 0)} × depth")
    shape += [f"{k.replace('_', ' ')} {rules[k]}" for k in ("head_dim", "mlp", "seq_len", "tie_embeddings", "vocab_size")
              if k in rules]
    L.append(f"GPT-style decoder; shape rule: {', '.join(shape) or 'not recorded'}. N counts "
             f"**{'total' if rules.get('count', 'total') == 'total' else 'non-embedding'}** parameters (embeddings "
             "included), and each size trains on D = C / 6N tokens at its budget.")
    L += ["", "### 2.3 Design: budgets × sizes", ""]
    head = ["budget C", "size", "N (total)", "non-emb. N", "D tokens", "D/N", "steps", "peak lr", "batch (tokens)",
            "epochs"]
    L += table(head, [[sci(c["budget"]), c["name"], intc(c["params"]), intc(c["non_embedding_params"]),
                       intc(c["tokens"]), f3(c["tokens_per_param"], 1), intc(c.get("steps")),
                       f"{num(c['lr']):.2e}" if finite(c.get("lr")) else "n/a", intc(c.get("batch_tokens")),
                       f3(c.get("epochs"), 3)] for c in ctx.configs]) + [""]
    tr = ((r.get("config") or {}).get("base") or {}).get("train") or (r.get("config") or {}).get("train") or {}
    seeds = sorted({x.get("seed") for x in ctx.runs if x.get("seed") is not None}, key=num)
    L += ["### 2.4 Training, seeds, compute", ""]
    L.append(f"- Learning rate and batch: rule `{rules.get('lr_rule') or 'n/a'}` (per-model values above); warmup "
             f"{f3(100 * num(rules.get('warmup_frac')), 0)}% of the steps; schedule {tr.get('schedule', 'not recorded')}"
             + (f", decaying to {tr['min_lr_ratio']} × the peak" if tr.get("min_lr_ratio") is not None else "") + ".")
    L.append(f"- Seeds: {', '.join(map(str, seeds)) or 'n/a'} per configuration (initialisation and data order).")
    hw = r.get("hardware") or {}
    tt = sum(num(x.get("train_time_s")) for x in ctx.runs if finite(x.get("train_time_s")))
    L.append("- Hardware: " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in hw.items()) or "not recorded") + ".")
    L.append(f"- Compute: {sci(plan.get('total_flops'))} training FLOPs planned (6·N·D summed over runs); wall time "
             f"{duration(r.get('wall_time_s'))} for the study, {duration(tt)} of training summed over runs.")
    L += ["", "Exact commands (from results.json):", "", "```"] + [str(c) for c in (r.get("commands") or [])
                                                                  or ["(no command recorded)"]] + ["```", ""]
    return L


def results_loss(ctx: LadderContext) -> list[str]:
    """## 3. Loss per configuration, per budget, and the IsoFLOP profiles figure."""
    L = ["## 3. Results: loss per configuration", "",
         "Final validation loss (nats/token), mean over seeds with its 95% Student-t CI; **bold**: lowest mean at "
         "that budget. The vertex row is approach 2's fitted parabola minimum.", ""]
    iso = iso_budget_rows(ctx)
    for C, rows in by_budget(ctx.configs):
        best = min(rows, key=lambda c: num(c["value"]["mean"]))
        L += [f"### Budget C = {sci(C)} FLOPs", ""]
        tab = []
        for c in rows:
            bpb = [num(x.get("val_bpb")) for x in c["runs"] if finite(x.get("val_bpb"))]
            m = mci(c["value"])
            tab.append([c["name"], count(c["params"]), count(c["tokens"]), f3(c["tokens_per_param"], 1),
                        c["n_seeds"], f"**{m}**" if c is best else m, f3(sum(bpb) / len(bpb)) if bpb else "n/a"])
        b = iso.get(C)
        if isinstance(b, dict) and finite(b.get("N_opt")) and finite(b.get("loss_opt")):
            tab.append(["vertex (approach 2)", nci(b["N_opt"], b.get("N_opt_ci")), count(b.get("D_opt")),
                        f3(num(b.get("D_opt")) / num(b["N_opt"]), 1), "", f3(b["loss_opt"]), ""])
        L += table(["size", "N", "D", "D/N", "seeds", "loss [95% CI]", "val bpb (mean)"], tab) + [""]
        if isinstance(b, dict) and not b.get("used", True):
            L += [f"*This budget's parabola is not used by approach 2: {b.get('reason') or 'no reason stored'}.*", ""]
        elif isinstance(b, dict) and b.get("inside_range") is False:
            L += ["*The vertex lies outside the trained sizes: an extrapolated optimum.*", ""]
    L += ctx.figure("isoflop_profiles", "IsoFLOP profiles: validation loss vs N (log axis), one colour per budget; "
                    "hollow points are seeds, filled the seed means with 95% t CIs; solid curves are approach 2's "
                    "parabolas in ln N, stars their vertices with the 95% CI of N_opt as a horizontal bar; dotted "
                    "curves are approach 3's L(N, C/6N).")
    st = approach_status(ctx.fit("isoflop"))
    if st != "ok":
        L += [f"Approach 2 (IsoFLOP) is {reason_of(st)}.", ""]
    for w in ctx.fit("isoflop").get("warnings") or []:
        L.append(f"- IsoFLOP fit warning: {w}")
    return L + ([""] if ctx.fit("isoflop").get("warnings") else [])


def allocation(ctx: LadderContext) -> list[str]:
    """## 4. Compute-optimal allocation: exponents side by side, the N_opt(C) figure, D_opt/N_opt per budget."""
    L = ["## 4. Compute-optimal allocation", "",
         "Exponent a of N_opt ∝ C^a (so D_opt ∝ C^(1−a)) from each of Hoffmann et al.'s three approaches, with 95% "
         "bootstrap CIs, beside the published values (Hoffmann et al. 2022, Table 2).", ""]
    rows = []
    for r in exponent_rows(ctx):
        pub = fci(r.get("chinchilla_a"), r.get("chinchilla_ci"), 3)
        ci = r.get("ci")
        where = "n/a"
        if not r.get("missing") and finite(r.get("a")) and isinstance(ci, (list, tuple)) and len(ci) == 2 \
                and finite(ci[0]) and finite(ci[1]) and finite(r.get("chinchilla_a")):
            p = num(r["chinchilla_a"])
            where = "inside" if num(ci[0]) <= p <= num(ci[1]) else ("below" if p < num(ci[0]) else "above")
            where += f" (CI width {num(ci[1]) - num(ci[0]):.2f})"
        rows.append([APPROACH_NAMES.get(r.get("approach"), str(r.get("approach"))), a_text(r), pub, where])
    L += table(["approach", "a [95% CI] (this study)", "Hoffmann et al. 2022", "published value vs our CI"], rows) + [""]
    L += ctx.figure("nopt_vs_compute", "Compute-optimal N_opt vs C: approach 2's parabola vertices with 95% CIs "
                    "(hollow: not used) and its power law with the band of its stored bootstrap draws; approach 1's "
                    "envelope grid points; approach 3's N_opt(C) with the band of its stored draws; grey ticks are the "
                    "trained (C, N).")
    env = ctx.fit("envelope")
    if approach_status(env) != "ok":
        L.append(f"- Approach 1 (envelope) is {reason_of(approach_status(env))}.")
    for w in env.get("warnings") or []:
        L.append(f"- Approach 1 warning: {w}")
    L += ["", "Tokens per parameter D_opt/N_opt at each budget (Hoffmann et al. find ≈ 20):", ""]
    iso = iso_budget_rows(ctx)
    front = {budget_of({"budget": f.get("C")}, ctx.budgets): f for f in (ctx.fit("chinchilla").get("frontier") or [])
             if isinstance(f, dict) and finite(f.get("C"))}
    chi_ok = approach_status(ctx.fit("chinchilla")) == "ok"
    tab = []
    for C, crow in by_budget(ctx.configs):
        best = min(crow, key=lambda c: num(c["value"]["mean"]))
        b, f = iso.get(C) or {}, front.get(C) or {}
        a2 = (f"{count(b['N_opt'])} / {f3(num(b.get('D_opt')) / num(b['N_opt']), 1)}" if finite(b.get("N_opt"))
              else f"none ({b.get('reason') or 'no vertex'})")
        a3 = (f"{nci(f.get('N_opt'), f.get('N_opt_ci'))} / {fci(f.get('tokens_per_param'), f.get('tokens_per_param_ci'), 1)}"
              if chi_ok and finite(f.get("N_opt")) else "n/a (no usable L(N, D) fit)")
        tab.append([sci(C), f"{best['name']}: {count(best['params'])} / {f3(best['tokens_per_param'], 1)}", a2, a3])
    L += table(["budget C", "best observed: N / D/N", "approach 2 vertex: N_opt / D/N", "approach 3: N_opt / D/N [95% CI]"],
               tab) + [""]
    return L


def lnd_fit(ctx: LadderContext) -> list[str]:
    """## 5. The L(N, D) fit: parameters with CIs and the identification verdict."""
    chi = ctx.fit("chinchilla")
    st = approach_status(chi)
    L = ["## 5. The L(N, D) fit (approach 3)", ""]
    if st != "ok":
        return L + [f"L(N, D) = E + A/N^α + B/D^β was not fitted usably: {reason_of(st)}. No parameters are reported.", ""]
    ci = chi.get("ci") or {}
    pub = {"E": HOFFMANN_2022["E"], "A": HOFFMANN_2022["A"], "B": HOFFMANN_2022["B"], "alpha": HOFFMANN_2022["alpha"],
           "beta": HOFFMANN_2022["beta"]}
    rows = []
    for k, sym in (("E", "E"), ("A", "A"), ("B", "B"), ("alpha", "α"), ("beta", "β")):
        v, c = chi.get(k), ci.get(k)
        big = finite(v) and abs(num(v)) >= 1000 or (isinstance(c, list) and any(finite(x) and abs(num(x)) >= 1000 for x in c))
        txt = (f"{sci(v)} [{sci(c[0]) if c else 'n/a'}, {sci(c[1]) if c else 'n/a'}]" if big else fci(v, c))
        rows.append([sym, txt, pub[k], BESIROGLU_2024.get(k, "")])
    d = chi.get("derived") or {}
    for k, sym in (("a", "a = β/(α+β)"), ("b", "b = α/(α+β)")):
        if isinstance(d.get(k), dict):
            rows.append([sym, fci(d[k].get("value"), d[k].get("ci")), HOFFMANN_2022.get(k, ""), ""])
    L.append(f"Fitted on {intc(chi.get('runs_used', chi.get('n')))} runs (N = total parameters), Huber loss on log "
             f"loss (δ = {chi.get('delta', 'n/a')}), {intc(chi.get('n_boot'))} bootstrap refits resampling "
             f"{chi.get('resample', 'n/a')}.")
    L += [""] + table(["parameter", "estimate [95% CI]", "Hoffmann et al. 2022", "Besiroglu et al. 2024"], rows) + [""]
    idn = identification(chi)
    w = idn["widths"]
    if idn["identified"]:
        L.append(f"**Verdict: identified.** The 95% CI widths of α ({f3(w['alpha'], 3)}) and β ({f3(w['beta'], 3)}) are "
                 f"both ≤ {idn['max_width']:.2f}.")
    else:
        wide = [f"{s} ({f3(w[k], 2)})" for k, s in (("alpha", "α"), ("beta", "β"))
                if not (finite(w[k]) and w[k] <= idn["max_width"])]
        L.append(f"**Verdict: poorly identified.** The 95% CI width{'s' if len(wide) > 1 else ''} of "
                 f"{' and '.join(wide)} exceed{'' if len(wide) > 1 else 's'} {idn['max_width']:.2f} (α width "
                 f"{f3(w['alpha'], 2)}, β width {f3(w['beta'], 2)}). The exponents "
                 f"trade off against each other and against E over {len(ctx.budgets)} budgets spanning "
                 f"{f3(max(ctx.budgets) / min(ctx.budgets), 1) if ctx.budgets else 'n/a'}×. What would tighten them: "
                 "more budgets over a wider range of C (a wider span separates α from β), more sizes per budget on "
                 "both sides of the optimum, and more seeds (the seed noise sets the floor on every residual).")
    for wmsg in chi.get("warnings") or []:
        L.append(f"- Fit warning: {wmsg}")
    return L + [""]


SECTIONS_HEAD = (title_block, summary, setup, results_loss, allocation, lnd_fit)


def note_lines(results: dict, out_dir: Path, figures: list[Path]) -> list[str]:
    from scalelab.report import ladder_sections

    ctx = build_ladder_context(results, Path(out_dir), [Path(f) for f in figures])
    sections = SECTIONS_HEAD + ladder_sections.SECTIONS_TAIL
    return [line for section in sections for line in section(ctx)]


def write_ladder_note(results: dict, out_dir: Path, figures: list[Path]) -> Path:
    """Write ``out_dir/NOTE.md`` for an IsoFLOP-design study; returns its path."""
    path = Path(out_dir) / "NOTE.md"
    atomic_write_text(path, "\n".join(note_lines(results, Path(out_dir), figures)))
    return path


__all__ = ["write_ladder_note", "note_lines", "build_ladder_context", "LadderContext"]
