"""NOTE.md sections 3.3 and 3.4: the fitted scaling laws as stored in results.json, and how their
exponents compare with the published ones. Degenerate or absent fits are reported as such; their
parameters are never printed as if they were estimates."""
from __future__ import annotations

from typing import Any

from scalelab.report.markdown import count, fci, finite, fmt_ratio, intc, num, sci, table, where_in_ci
from scalelab.report.note_context import BESIROGLU_2024, HOFFMANN_2022, KAPLAN_2020, NoteContext
from scalelab.scaling.results import chinchilla_data_range, fit_status


def fit_block(name: str, fit: Any, formula: str) -> list[str]:
    """A fit as Markdown: its table (format_fit) when usable, else an explicit 'degenerate/missing'."""
    status = fit_status(fit)
    lines = [f"**{name}** — {formula}", ""]
    if status == "missing":
        return lines + ["*Not fitted: there is no such fit in results.json.*", ""]
    if status != "ok":
        lines += [f"*Degenerate fit — no parameter estimates are reported.* Reason: {status[len('degenerate: '):]}", ""]
        for w in (fit.get("warnings") or []) if isinstance(fit, dict) else []:
            lines.append(f"> warning: {w}")
        return lines + [""]
    from scalelab.scaling.fit import format_fit

    try:
        lines.append(format_fit(fit))
    except Exception as e:  # noqa: BLE001 - the note must still be written
        lines.append(f"*(the fit table could not be formatted: {e})*")
    return lines + [""]


def results_fits(ctx: NoteContext) -> list[str]:
    """### 3.3 Fitted scaling laws."""
    kap, chi, iso, ratios, multi, ratio_set = ctx.kap, ctx.chi, ctx.iso, ctx.ratios, ctx.multi, ctx.ratio_set
    kap_r, kap_used = ctx.kap_r, ctx.kap_used
    L: list[str] = []
    L += ["### 3.3 Fitted scaling laws", ""]
    if kap_r is not None:
        kdesc = (f"fitted on the {intc(kap_used)} runs at tokens/param = {fmt_ratio(kap_r)} (seeds as separate points)"
                 + ("; the runs at " + ", ".join(f"tokens/param = {fmt_ratio(r)}" for r in ratios if r != kap_r)
                    + " are not used" if multi else ""))
    elif multi:
        kdesc = (f"fitted on all {intc(kap_used)} runs (results.json does not record a ratio for this fit, so it mixes "
                 "the ratio families)")
    else:
        kdesc = "all runs (seeds as separate points)"
    L += fit_block("Kaplan form", kap, f"L(N) = E + A·N^-α, N = non-embedding parameters, {kdesc}")
    ccol = chi.get("n_column") if isinstance(chi, dict) else None
    cn = {"params": "total parameters (incl. embeddings)", "non_embedding_params": "non-embedding parameters"}.get(
        ccol, "parameters")
    cused = chi.get("runs_used", chi.get("n")) if isinstance(chi, dict) else None
    L += fit_block("Chinchilla form", chi, f"L(N, D) = E + A/N^α + B/D^β, N = {cn}, D = training tokens"
                    + (f", all {intc(cused)} runs across tokens/param ∈ {ratio_set}" if multi and cused else "")
                    + " (Hoffmann et al. 2022, approach 3: Huber loss on log loss, L-BFGS from a grid of starts)")
    if iso is not None:
        L += fit_block("IsoFLOP", iso, "N_opt ∝ C^a, D_opt ∝ C^b from parabolas of loss vs log N per budget "
                        "(approach 2)")
    else:
        L += ["**IsoFLOP** (approach 2) — *not fitted*: it needs several model sizes trained at each of at least two "
              "compute budgets; " + ("this study's grid does not have them." if multi else
                                     "this family has one size per budget."), ""]
    return L


def results_published(ctx: NoteContext) -> list[str]:
    """### 3.4 Comparison with published exponents."""
    results, kap, chi, iso, kst, cst, ist = ctx.results, ctx.kap, ctx.chi, ctx.iso, ctx.kst, ctx.cst, ctx.ist
    ratios, multi, n_distinct, kap_r, tpp = ctx.ratios, ctx.multi, ctx.n_distinct, ctx.kap_r, ctx.tpp
    L: list[str] = []
    L += ["### 3.4 Comparison with published exponents", ""]
    crow = []
    kci = (kap.get("ci") or {}).get("alpha") if kst == "ok" else None
    crow.append(["α, Kaplan form (non-emb. N)", fci(kap.get("alpha"), kci) if kst == "ok" else kst.split(":")[0],
                 f"{KAPLAN_2020['alpha_N']} (α_N)", "—", "—"])
    if cst == "ok":
        cci = chi.get("ci") or {}
        der = chi.get("derived") or {}
        crow.append(["α (Chinchilla form)", fci(chi.get("alpha"), cci.get("alpha")), "—",
                     str(HOFFMANN_2022["alpha"]), str(BESIROGLU_2024["alpha"])])
        crow.append(["β (Chinchilla form)", fci(chi.get("beta"), cci.get("beta")), "—",
                     str(HOFFMANN_2022["beta"]), str(BESIROGLU_2024["beta"])])
        for k, lab in (("a", "a: N_opt ∝ C^a"), ("b", "b: D_opt ∝ C^b")):
            d = der.get(k) or {}
            ref_b = BESIROGLU_2024["beta"] if k == "a" else BESIROGLU_2024["alpha"]
            bes = ref_b / (BESIROGLU_2024["alpha"] + BESIROGLU_2024["beta"])
            crow.append([lab, fci(d.get("value"), d.get("ci")), str(KAPLAN_2020["a"]) if k == "a" else "—",
                         str(HOFFMANN_2022[k]), f"{bes:.2f} (implied)"])
    else:
        word = cst.split(":")[0]
        crow += [["α (Chinchilla form)", word, "—", str(HOFFMANN_2022["alpha"]), str(BESIROGLU_2024["alpha"])],
                 ["β (Chinchilla form)", word, "—", str(HOFFMANN_2022["beta"]), str(BESIROGLU_2024["beta"])]]
    if ist == "ok":
        ici = iso.get("ci") or {}
        crow.append(["a (IsoFLOP)", fci(iso.get("a"), ici.get("a")), str(KAPLAN_2020["a"]), str(HOFFMANN_2022["a"]),
                     "—"])
    L += table(["quantity", "this study [95% CI]", "Kaplan et al. 2020", "Hoffmann et al. 2022 (approach 3)",
                 "Besiroglu et al. 2024"], crow) + [""]
    if kst == "ok":
        a = num(kap["alpha"])
        L.append(f"- Kaplan et al.'s α_N = {KAPLAN_2020['alpha_N']} is {where_in_ci(KAPLAN_2020['alpha_N'], kci)}; "
                 f"Chinchilla's α = {HOFFMANN_2022['alpha']} is {where_in_ci(HOFFMANN_2022['alpha'], kci)}.")
        e_fixed = "E" in (kap.get("fixed") or {})
        e_zero = not e_fixed and (abs(num(kap.get("E"))) < 1e-6
                                  or any("E was driven to ~0" in str(w) for w in kap.get("warnings") or []))
        if e_fixed:
            floor = "our fit also fixes E, but at this scale the loss is far from any power law's asymptote"
        elif e_zero:
            floor = (f"our fit's floor E was driven to ~0 ({sci(kap.get('E'))}: no floor is visible in this range), so "
                     "it is effectively a pure power law too and the difference does not come from a floor")
        else:
            floor = ("our fit has a floor E, and subtracting a floor makes the remaining loss fall faster, i.e. "
                     "α larger")
        r_fit = kap_r if kap_r is not None else (tpp if finite(tpp) else None)
        where = (f"within the fitted family D grows with N (D = {fmt_ratio(r_fit)}·N)" if multi and r_fit is not None
                 else f"here D grows with N (D = {fmt_ratio(r_fit) if r_fit is not None else 'k'}·N)")
        L.append("- Neither comparison is like for like. Kaplan et al. fitted a pure power law (no floor) to models "
                 f"trained with early stopping on a far larger corpus; {floor}. And {where}, so the single "
                 "Kaplan-form exponent mixes the N and D terms of the Chinchilla law: if L = E + A/N^α + B/D^β and "
                 "D ∝ N, the local slope of L − E in log-log is a weighted average of α and β (here the fitted value "
                 f"is {a:.3f}).")
    if cst == "ok":
        cci = chi.get("ci") or {}
        L.append(f"- Chinchilla form: Hoffmann et al.'s α = {HOFFMANN_2022['alpha']} is "
                 f"{where_in_ci(HOFFMANN_2022['alpha'], cci.get('alpha'))}, β = {HOFFMANN_2022['beta']} is "
                 f"{where_in_ci(HOFFMANN_2022['beta'], cci.get('beta'))}; Besiroglu et al.'s α = {BESIROGLU_2024['alpha']} "
                 f"is {where_in_ci(BESIROGLU_2024['alpha'], cci.get('alpha'))}, β = {BESIROGLU_2024['beta']} is "
                 f"{where_in_ci(BESIROGLU_2024['beta'], cci.get('beta'))}.")
        if chi.get("warnings"):
            if multi:
                L.append(f"- The Chinchilla fit carries warnings (§3.3). With {len(ratios)} tokens-per-parameter ratios "
                         "log N and log D are no longer collinear — that is what lets the fit separate the N and D terms "
                         f"at all — but {n_distinct} sizes × {len(ratios)} ratios constrain them only loosely (α "
                         f"{fci(chi.get('alpha'), cci.get('alpha'))}, β {fci(chi.get('beta'), cci.get('beta'))}), so a, b "
                         "and the compute-optimal tokens per parameter derived from them are poorly identified.")
            else:
                L.append("- The Chinchilla fit carries warnings (§3.3); with D a fixed multiple of N the N and D terms "
                         "are nearly collinear, so α, β and everything derived from them (a, b, tokens per parameter) "
                         "are poorly identified even where the CIs look finite.")
        rng = chinchilla_data_range(results)
        co = [d for d in ((chi.get("derived") or {}).get("compute_optimal") or [])
              if isinstance(d, dict) and finite(d.get("N_opt")) and finite(d.get("D_opt"))]
        if rng and co:
            (n0, n1), (d0, d1) = rng["N"], rng["D"]
            out = [d for d in co if not (n0 <= num(d["N_opt"]) <= n1 and d0 <= num(d["D_opt"]) <= d1)]
            if out:
                nname = "total" if rng["n_column"] == "params" else "non-embedding"
                Nv, Dv = [num(d["N_opt"]) for d in co], [num(d["D_opt"]) for d in co]
                tv = [num(d.get("tokens_per_param")) for d in co if finite(d.get("tokens_per_param"))]
                L.append(f"- **The compute-optimal allocations are extrapolations.** The fit's table (§3.3) puts N_opt "
                         f"at {count(min(Nv))}–{count(max(Nv))} {nname} parameters and D_opt at "
                         f"{count(min(Dv))}–{count(max(Dv))} tokens"
                         + (f" ({count(min(tv))}–{count(max(tv))} tokens per parameter)" if tv else "")
                         + f", while the runs span N = {count(n0)}–{count(n1)} and D = {count(d0)}–{count(d1)}: "
                         f"{len(out)} of {len(co)} lie outside the trained range. They follow the fitted formula where "
                         "no model was trained and are not a recommendation; Figure 4 draws the L_opt(C) curve "
                         "dotted where it "
                         "is extrapolated.")
    else:
        why = "absent from results.json" if cst == "missing" else f"flagged degenerate ({cst[len('degenerate: '):]})"
        if multi:
            L.append(f"- The Chinchilla-form fit is {why}, so no α, β, a or b are reported, although N and D do vary "
                     "independently across the ratio families here.")
        else:
            L.append(f"- The Chinchilla-form fit is {why}, so no α, β, a or b are reported. With every model trained at "
                     "the same tokens-per-parameter ratio, log N and log D move together and the two terms cannot be "
                     "separated; varying D at fixed N (or an IsoFLOP grid) is what identifies them.")
    L.append("")
    return L
