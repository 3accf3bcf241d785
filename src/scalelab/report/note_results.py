"""NOTE.md section 3, the measurements: loss per size, the size-step check, downstream metrics,
learning curves and the compute frontier (3.1, 3.2, 3.5, 3.6; the fits, 3.3 and 3.4, are ``report.note_fits``)."""
from __future__ import annotations

import math

from scalelab.eval.stats import format_ci
from scalelab.report.markdown import count, f3, fci, finite, fmt_ratio, intc, num, sci, table
from scalelab.report.note_context import NoteContext
from scalelab.scaling.results import frontier_column, frontier_points, lower_envelope, ratio_of


def results_loss(ctx: NoteContext) -> list[str]:
    """## 3. Results, ### 3.1 Final validation loss per size (and Figure 1)."""
    results, runs, sizes, ratios, multi, prim = ctx.results, ctx.runs, ctx.sizes, ctx.ratios, ctx.multi, ctx.prim
    fams, kap_r, fig = ctx.fams, ctx.kap_r, ctx.fig
    L: list[str] = []
    L += ["## 3. Results", "", "### 3.1 Final validation loss per size", ""]
    if multi:
        L += ["Grouped by tokens-per-parameter ratio, then by size. Only rows of the same ratio are neighbouring "
              "sizes; rows of the same N at different ratios are the same model trained on different token counts.", ""]
    head = (["tokens/param"] if multi else []) + [
        "size", "non-emb. N", "tokens", "seeds", "val loss (nats/token)", "95% CI", "± (half width)",
        "bits per byte [95% CI]", "per-seed losses"]
    rrows = []
    for s in sizes:
        lo = s.get("loss") or {}
        bp = s.get("val_bpb") or {}
        per = [r for r in runs if r.get("name") == s.get("name")]
        half = (num(lo.get("hi")) - num(lo.get("lo"))) / 2
        rrows.append(([fmt_ratio(ratio_of(s, results))] if multi else []) + [
                      s.get("name"), intc(s.get("non_embedding_params")), count(s.get("tokens")),
                      intc(s.get("n_seeds", lo.get("n"))), f3(lo.get("mean")),
                      f"[{f3(lo.get('lo'))}, {f3(lo.get('hi'))}]" if finite(lo.get("lo")) else "n/a (1 seed)",
                      f3(half) if math.isfinite(half) else "n/a",
                      fci(bp.get("mean"), [bp.get("lo"), bp.get("hi")]) if bp else "n/a",
                      ", ".join(f3(r.get("loss")) for r in sorted(per, key=lambda r: num(r.get("seed"))))])
    L += table(head, rrows) + [""]
    if multi and prim is not None:
        # the D-dependence at fixed N (what the second ratio is for); not a size step
        by_n = {}
        for r, rows in fams:
            for x in rows:
                by_n.setdefault(num(x.get("non_embedding_params")), {})[r] = x
        for r in [r for r in ratios if r != prim]:
            cells = [f"{num(d[prim]['loss']['mean']) - num(d[r]['loss']['mean']):+.3f} (N = {count(n)})"
                     for n, d in sorted(by_n.items()) if prim in d and r in d]
            if cells:
                f = num(prim) / num(r)
                L.append(f"**Same model, {'more' if f > 1 else 'fewer'} tokens.** At each N, going from tokens/param = "
                         f"{fmt_ratio(r)} to {fmt_ratio(prim)} ({f:.3g}× the tokens) changes the mean loss by "
                         + ", ".join(cells) + " nats/token. This is the D-dependence that the Chinchilla fit uses "
                         "(§3.3); it is not a size step and takes no part in §3.2.")
                L.append("")
    no_band = ctx.kap_band if ctx.kst == "ok" else None  # the figure draws bands from stored samples only
    red = "red, with its 95% bootstrap band" if no_band is None else f"red; no band: {no_band}"
    if multi:
        cap1 = ("Figure 1. Final validation loss vs non-embedding parameters, one colour and marker per "
                "tokens-per-parameter ratio: single runs (hollow) and per-size means with 95% CI over seeds (filled). "
                f"The fitted L(N) = E + A·N^-α ({red}) is drawn only over the family it was "
                f"fitted on (tokens/param = {fmt_ratio(kap_r if kap_r is not None else prim)}).")
    else:
        cap1 = ("Figure 1. Final validation loss vs non-embedding parameters: single runs (hollow), per-size mean "
                "with 95% CI over seeds (black), fitted L(N) = E + A·N^-α "
                + ("with its 95% bootstrap band." if no_band is None else f"(no band: {no_band})."))
    L += fig("loss_vs_params", cap1)
    return L


def results_steps(ctx: NoteContext) -> list[str]:
    """### 3.2 Does the loss decrease with size beyond the seed noise?"""
    n_seeds, check, sc, multi, prim, counted = ctx.n_seeds, ctx.check, ctx.sc, ctx.multi, ctx.prim, ctx.counted
    L: list[str] = []
    L += ["### 3.2 Does the loss decrease with size beyond the seed noise?", ""]
    intro = ("The verdict is the study's own check (`checks` in results.json)" if sc["source"] == "results.json" else
             "results.json has no usable `checks`, so the study's rule was applied here to its per-size means and "
             "standard errors")
    intro += (f". Rule: *{sc['rule']}*. For two neighbouring sizes of the same family, Δ is the drop in mean loss "
              "from the smaller to the larger model, the combined standard error is √(se_small² + se_large²) of the "
              "two seed means, and z = Δ / combined stderr; a step is beyond the noise when Δ > 2 × the combined "
              "stderr (z > 2).")
    if multi:
        intro += (" Sizes are compared only within a tokens-per-parameter family: the same N at another ratio is the "
                  "same model trained on a different number of tokens, not a size step.")
        if sc["per_family"]:
            intro += (f" The verdict counts the tokens/param = {fmt_ratio(prim)} family (the primary one, also used for "
                      "the Kaplan fit); the other families are listed for information.")
        else:
            intro += (" This results.json's check carries no per-family flags (it predates them), so its verdict "
                      "counts the steps of every family.")
    L += [intro, ""]
    if sc["dropped"]:
        L += [f"*{sc['dropped']} row(s) of `checks.detail` pair sizes of different ratios; they are not size steps and "
              "are left out.*", ""]
    ci_sep = {(p["smaller"], p["larger"]): p for p in check["pairs"]}
    head = ["step", "Δ = drop in mean loss", "combined stderr", "z", "beyond noise (z > 2)?",
            "95% CIs separated? (conservative)"]
    groups: dict = {}
    for x in sc["steps"]:
        groups.setdefault(x["ratio"], []).append(x)
    for r in sorted(groups, key=lambda r: num(r) if r is not None else -1):
        rows_ = groups[r]
        if multi:
            role = ("counts for the verdict" if all(x["counts"] for x in rows_) else
                    "for information (not in the verdict)" if not any(x["counts"] for x in rows_) else
                    "partly counted")
            L += [f"**tokens/param = {fmt_ratio(r)}** — {role}", ""]
        prow = []
        for x in rows_:
            cp = ci_sep.get((x["from"], x["to"]))
            prow.append([f"{x['from']} → {x['to']}", f"{x['drop']:+.3f}" if finite(x["drop"]) else "n/a",
                         f3(x["stderr"]), f3(x["z"], 2), "**yes**" if x["beyond"] else "no",
                         cp["separated"] if cp else "n/a"])
        L += table(head, prow) + [""]
    if not sc["steps"]:
        L += ["*No two sizes of one family have a loss to compare.*", ""]
    n_pass = sum(x["beyond"] for x in counted)
    vword = {True: "yes", False: "no"}.get(sc["verdict"], "undetermined")
    vl = (f"**Verdict: {vword}** — {n_pass} of {len(counted)} counted steps are beyond the noise"
          + (f" (the tokens/param = {fmt_ratio(prim)} family)" if sc["per_family"] else
             " (every family)" if multi else ""))
    if sc["source"] == "results.json":
        vl += f"; `checks.loss_decreases_beyond_noise` = {str(sc['verdict']).lower()}."
    else:
        vl += "."
    if sc["verdict"] is not None and counted and (n_pass == len(counted)) != bool(sc["verdict"]):
        vl += " (The stored verdict does not match its own rows — check results.json.)"
    L.append(vl)
    if multi and not sc["per_family"]:
        pc = [x for x in sc["steps"] if x["ratio"] == prim]
        L.append(f"Within the primary family alone (tokens/param = {fmt_ratio(prim)}), {sum(x['beyond'] for x in pc)} of "
                 f"{len(pc)} steps are beyond the noise; a study run with the current code takes its verdict on that "
                 "family only.")
    cp_counted = [ci_sep.get((x["from"], x["to"])) for x in counted]
    cp_counted = [c for c in cp_counted if c]
    if cp_counted:
        L.append(f"The conservative view (last column: the larger model's 95% t-interval lies entirely below the "
                 f"smaller's) separates {sum(c['separated'] == 'yes' for c in cp_counted)} of {len(cp_counted)} "
                 "counted steps.")
    small = [n for n in n_seeds if 2 <= n <= 5]
    if small:
        from scipy.stats import t as _t

        n = min(small)
        tq = float(_t.ppf(0.975, n - 1))
        L.append(f"With {n} seeds the t-interval uses t(0.975, {n - 1} d.f.) = {tq:.2f}, so each CI extends "
                 f"{tq:.1f} standard errors on each side of the mean: separation under these intervals is strong "
                 "evidence of a real difference, while overlap is only weak evidence of no difference.")
        t_lo, t_hi = float(_t.ppf(0.95, 2 * (n - 1))), float(_t.ppf(0.95, n - 1))
        passed = [x for x in counted if x["beyond"] and finite(x["z"])]
        if passed:
            robust = sum(num(x["z"]) > t_hi for x in passed)
            L.append(f"The z-rule treats each standard error as known, but with {n} seeds each rests on {n - 1} "
                     f"degree{'s' if n > 2 else ''} of freedom; a one-sided 95% Welch t-test would ask for "
                     f"t > {t_lo:.2f} to {t_hi:.2f} "
                     f"({2 * (n - 1)} to {n - 1} d.f.) rather than 2. {robust} of the {len(passed)} counted steps that "
                     f"pass have z > {t_hi:.2f}"
                     + (", so the verdict does not rest on the normal approximation." if robust == len(passed) else
                        ": those that do not are real only under the normal approximation."))
    L.append("")
    return L


def results_downstream(ctx: NoteContext) -> list[str]:
    """### 3.5 Downstream metrics (and Figure 2)."""
    runs, sizes, task_names, fig = ctx.runs, ctx.sizes, ctx.task_names, ctx.fig
    L: list[str] = []
    L += ["### 3.5 Downstream metrics", ""]
    if task_names:
        head = ["task", "metric"] + [str(s.get("name")) for s in sizes] + ["chance", "items"]
        trows = []
        for t in task_names:
            for metric in ("acc", "acc_norm"):
                cells, chance, items, any_val = [], None, set(), False
                for s in sizes:
                    vals = []
                    for r in runs:
                        d = (r.get("tasks") or {}).get(t) or {}
                        if r.get("name") == s.get("name") and finite(d.get(metric)):
                            vals.append((num(d[metric]), num(d.get(f"{metric}_lo")), num(d.get(f"{metric}_hi"))))
                            chance = d.get("chance", chance)
                            if finite(d.get("n")):
                                items.add(int(num(d["n"])))
                    if vals:
                        any_val = True
                        mean = sum(v[0] for v in vals) / len(vals)
                        lo = min(v[1] for v in vals)
                        hi = max(v[2] for v in vals)
                        cells.append(format_ci(mean, (lo, hi), no_ci=""))
                    else:
                        cells.append("—")
                if any_val:
                    trows.append([t, metric] + cells + [f3(chance, 2) if chance is not None else "n/a",
                                                        "/".join(map(str, sorted(items))) or "n/a"])
        L += ["Mean over seeds; in brackets the union of the seeds' Wilson 95% intervals (they measure the sampling "
              "of task items, not seed variance).", ""]
        L += table(head, trows) + [""]
        above = []
        for t in task_names:
            for r in runs:
                d = (r.get("tasks") or {}).get(t) or {}
                for metric in ("acc", "acc_norm"):
                    if finite(d.get(f"{metric}_lo")) and finite(d.get("chance")) and num(d[f"{metric}_lo"]) > num(d["chance"]):
                        above.append(f"{r.get('name')}/seed {r.get('seed')}/{t}/{metric}")
        L.append(f"Runs whose Wilson interval lies entirely above chance: {len(above)}"
                 + (f" ({', '.join(above[:8])}{', …' if len(above) > 8 else ''})." if above else
                    " — at this scale the task accuracies are indistinguishable from chance."))
        L.append("")
    else:
        L += ["No downstream task results in results.json (only validation loss and bits per byte).", ""]
    L += fig("metric_vs_params", "Figure 2. Downstream metrics vs model size: bits per byte (mean and 95% CI over "
             "seeds) and task accuracies per run with Wilson 95% intervals; dashed: chance.")
    return L


def results_curves(ctx: NoteContext) -> list[str]:
    """### 3.6 Learning curves, the compute frontier, matched compute (Figures 3, 4)."""
    results, epochs, ratios, multi, mc, fig = ctx.results, ctx.epochs, ctx.ratios, ctx.multi, ctx.mc, ctx.fig
    L: list[str] = []
    L += ["### 3.6 Learning curves and the compute frontier", ""]
    fcol = frontier_column(results)
    C, Lc, who = frontier_points(results, fcol)
    if C.size:
        idx, ec, el = lower_envelope(C, Lc)
        seq = []
        for i in idx:
            if not seq or seq[-1] != who[i]:
                seq.append(who[i])
        axis = ""
        if fcol:
            axis = (" Its compute axis is C = 6·N·D with N = "
                    + ("total parameters" if fcol == "params" else fcol.replace("_", "-"))
                    + ", the convention of the Chinchilla fit whose prediction it shows"
                    + (" (§2.2 and §2.4 count non-embedding N, so their FLOPs are smaller)." if fcol == "params" else "."))
        L.append(f"Figure 3 shows every run's validation loss (and, faint, training loss) against tokens seen"
                 + ("; colour is model size, line style the tokens-per-parameter ratio" if multi else "") + ". "
                 f"Figure 4 puts the same curves on a compute axis; their lower envelope — the lowest loss any run "
                 f"reached for a given amount of compute — is made of, from low to high compute: {' → '.join(seq)}. "
                 "Intermediate points of a run are not compute-optimal runs of their own (the learning-rate schedule "
                 "had not decayed yet), so the envelope is an upper bound on the true frontier." + axis)
        if len(epochs) and max(epochs) > 1:
            L.append(f"The dotted line in Figure 3 marks one pass over the corpus; runs beyond it see repeated data "
                     f"(up to {max(epochs):.2f} epochs).")
        L.append("")
    if mc:
        cells = []
        for m in mc:
            b, a = m["high"], m["low"]
            cells.append(f"{b.get('name')} vs {a.get('name')} ({sci(m['flops_high'])} vs {sci(m['flops_low'])} FLOPs): "
                         f"{f3(b['loss']['mean'])} vs {f3(a['loss']['mean'])}, Δ = {m['delta']:+.3f}"
                         + (f" (z = {abs(num(m['z'])):.1f})" if finite(m["z"]) else ""))
        wins = sum(m["delta"] < 0 for m in mc)
        sig = sum(finite(m["z"]) and abs(num(m["z"])) > 2 for m in mc)
        hi_r = "/".join(fmt_ratio(r) for r in sorted({m["ratio_high"] for m in mc}))
        lo_r = "/".join(fmt_ratio(r) for r in sorted({m["ratio_low"] for m in mc}))
        if wins in (0, len(mc)) and sig == len(mc):
            concl = (f"In all {len(mc)} pairs the smaller model trained on more tokens per parameter reaches the lower "
                     f"loss, each beyond the noise (|z| > 2, the rule of §3.2): at these budgets tokens/param = {hi_r} "
                     f"is closer to compute-optimal than {lo_r}." if wins else
                     f"In all {len(mc)} pairs the larger model trained on fewer tokens per parameter reaches the lower "
                     f"loss, each beyond the noise (|z| > 2, the rule of §3.2): at these budgets tokens/param = {lo_r} "
                     f"is closer to compute-optimal than {hi_r}.")
        else:
            concl = (f"The smaller model trained on more tokens per parameter reaches the lower loss in {wins} of "
                     f"{len(mc)} pairs, and {sig} of the {len(mc)} differences are beyond the noise (|z| > 2, the rule "
                     "of §3.2): no consistent direction.")
        L.append("**Matched compute.** Sizes of different ratio families whose training FLOPs (§2.2) are within 25% of "
                 "each other, higher ratio first: " + "; ".join(cells) + ". " + concl
                 + " Two points per budget give a direction, not an optimum: locating it needs three or more sizes per "
                 "budget (an IsoFLOP grid).")
        L.append("")
    L += fig("loss_curves", "Figure 3. Validation (bold) and training (faint) loss vs tokens for every run, coloured by "
             "model size" + (f"; line style marks the tokens-per-parameter ratio ({', '.join(fmt_ratio(r) for r in ratios)})."
                             if multi else "."))
    L += fig("compute_frontier", "Figure 4. Validation loss vs training compute for every run, their lower envelope, "
             "and — when the Chinchilla fit is usable — its predicted compute-optimal loss (dotted where N_opt or D_opt "
             "lies outside the trained range).")
    return L
