"""NOTE.md of an IsoFLOP-design study, sections 6-10: consistency, measured extrapolation (holdout),
downstream metrics, caveats and references (the first sections are ``report.ladder_note``).

Each section is a function of the :class:`~scalelab.report.ladder_context.LadderContext`; every
number comes from results.json (queries in ``scalelab.scaling.results``), and a check or fit
that is absent or degenerate is reported with its stored reason.
"""
from __future__ import annotations

from scalelab.report.ladder_context import (
    LadderContext, consistency_verdict, frontier_metric_rows, holdout_items, holdout_label, holdout_ok, reason_of,
    nopt_holdout, nopt_holdout_text,
)
from scalelab.eval.stats import format_ci
from scalelab.report.markdown import count, f3, fci, finite, intc, num, sci, table
from scalelab.report.note_context import CHINCHILLA_RANGE
from scalelab.scaling.ladder_results import (
    above_chance_counts, accuracy_metric, approach_status, identification, typical_ci_width,
)


def consistency(ctx: LadderContext) -> list[str]:
    """## 6. Approach 3's L_opt(C) against the best observed loss and approach 2's vertex, per budget."""
    L = ["## 6. Consistency: fitted L_opt(C) vs the data", ""]
    c = ctx.fits.get("consistency")
    rows = [b for b in ((c or {}).get("budgets") or []) if isinstance(b, dict)] if isinstance(c, dict) else []
    if rows:
        tab = [[sci(b.get("C")), fci(b.get("fit_loss_opt"), b.get("fit_ci")),
                f"{fci(b.get('best_observed'), b.get('best_observed_ci'))} (N = {count(b.get('best_N'))})",
                f3(b.get("vertex_loss")) if finite(b.get("vertex_loss")) else "no vertex",
                f"{num(b['residual']):+.3f}" if finite(b.get("residual")) else "n/a",
                f"{num(b['residual_vs_vertex']):+.3f}" if finite(b.get("residual_vs_vertex")) else "n/a",
                "**yes**" if b.get("below_data") else "no"] for b in rows]
        L += table(["budget C", "fitted L_opt [95% CI]", "best observed seed mean [95% CI]", "vertex (approach 2)",
                    "residual fit − best", "residual fit − vertex", "fit below data?"], tab) + [""]
    L.append(f"Rule: {(c or {}).get('rule') or 'n/a'}." if isinstance(c, dict) and c.get("rule") else
             "Rule: not recorded in results.json.")
    L += ["", f"**Verdict:** {consistency_verdict(ctx)}.", ""]
    return L


def holdout(ctx: LadderContext) -> list[str]:
    """## 7. Measured extrapolation: the held-out budget predicted from the others."""
    L = ["## 7. Measured extrapolation (holdout)", "",
         "L(N, D) is refitted (in the study, not here) without the held-out runs and predicts each of them with a "
         "prediction interval (curve bootstrap plus the held-in residual scatter); error = observed − predicted.", ""]
    items = holdout_items(ctx)
    if not items:
        return L + ["No holdout check in results.json.", ""]
    for key, h in items:
        label = holdout_label(key, h)
        L += [f"### {label}", ""]
        if not holdout_ok(h):
            L += [f"Not checked: {h.get('reason') or 'no numbers stored'}.", ""]
            continue
        conf = num(h.get("confidence", 0.95))
        L.append(f"Held out: {h.get('held_out', 'n/a')}; fitted on {intc(h.get('n_fit'))} runs, "
                 f"{intc(h.get('n_held_out'))} predicted. Mean error {f3(h.get('mean_error'))}, mean |error| "
                 f"**{f3(h.get('mean_abs_error'))}**, max |error| {f3(h.get('max_abs_error'))} (held-in residual sd "
                 f"{f3(h.get('residual_sd'))}); coverage **{f3(h.get('coverage'), 2)}** of the {conf:.0%} intervals "
                 f"(nominal {conf:.2f}).")
        tab = [[r.get("name", ""), r.get("seed", ""), count(r.get("params")), count(r.get("tokens")),
                f3(r.get("observed")), fci(r.get("predicted"), r.get("pi")),
                f"{num(r['error']):+.3f}" if finite(r.get("error")) else "n/a", "yes" if r.get("inside") else "**no**"]
               for r in (h.get("runs") or []) if isinstance(r, dict)]
        L += [""] + table(["run", "seed", "N", "D", "observed", f"predicted [{conf:.0%} PI]", "error", "inside"], tab)
        L.append("")
    if nopt_holdout(ctx):
        L += ["### N_opt (approach 2)", "",
              "The IsoFLOP power law fitted on the other budgets' parabola vertices, extrapolated to the held-out "
              "budget (interval: bootstrap of that power law), against the held-out budget's own vertex: "
              + nopt_holdout_text(nopt_holdout(ctx)) + ".", ""]
    L += ctx.figure("holdout", "Predicted vs observed for the held-out runs, with prediction intervals; dashed: "
                    "predicted = observed.")
    return L


def _steps_text(m: dict) -> list[list[str]]:
    out = []
    for s in m.get("steps") or []:
        if isinstance(s, dict):
            out.append([f"{m.get('task')}", m.get("metric", ""), f"{s.get('from')} → {s.get('to')}", f3(s.get("gain"), 4),
                        f3(s.get("stderr"), 4), f3(s.get("z"), 1), "yes" if s.get("beyond_noise") else "**no**"])
    return out


def downstream(ctx: LadderContext) -> list[str]:
    """## 8. Downstream: task bpb and accuracy vs N, the frontier check, accuracy at chance, the two-step law."""
    L = ["## 8. Downstream metrics", ""]
    L += ctx.figure("downstream", "Per task: bits per byte of the correct answer vs N (left; dotted: the task-bpb "
                    "law along each budget) and accuracy vs N (right; dashed: chance), one colour per budget, seed "
                    "means with 95% t CIs, hollow points the seeds.")
    chk = ctx.results.get("checks") if isinstance(ctx.results.get("checks"), dict) else {}
    front = [f for f in (chk.get("frontier") or []) if isinstance(f, dict)]
    L += ["### 8.1 Along the frontier", ""]
    if front:
        L.append("Frontier (lowest seed-mean loss per budget): " + ", ".join(
            f"C = {sci(f.get('budget'))}: {f.get('name')} (N = {count(f.get('params'))})" for f in front) + ".")
    L.append(f"Rule: {chk.get('rule') or 'not recorded'}.")
    ms = frontier_metric_rows(ctx)
    if ms:
        L += [""] + table(["task", "metric", "step", "gain", "stderr", "z", "beyond noise"],
                          [row for m in ms for row in _steps_text(m)]) + [""]
        sep = [f"{m.get('task')} {m.get('metric')}" for m in ms if m.get("separates")]
        L.append("Separates at every step: " + (", ".join(sep) or "none") + ".")
    else:
        L.append("No frontier check in results.json.")
    L += ["", "### 8.2 Accuracy vs chance", ""]
    for t in ctx.tasks:
        metric = accuracy_metric(ctx.results, t)
        k = above_chance_counts(ctx.results, t, metric)
        if not k["n"]:
            L.append(f"- **{t}:** no {metric} scores stored.")
            continue
        at = k["k"] < 3
        L.append(f"- **{t}** ({metric}): {k['k']} of {k['n']} runs have a 95% interval above chance "
                 f"({f3(k['chance'], 2)}); the best run scores {f3(k['max_acc'], 3)}. "
                 + ("**Accuracy is at chance at this scale**: it cannot rank these models, while bpb can (§8.1)."
                    if at else "Accuracy rises above chance for part of the ladder."))
    L += ["", "### 8.3 The two-step law (task bpb(N, D), then accuracy(bpb))", ""]
    tf = ctx.fits.get("tasks") if isinstance(ctx.fits.get("tasks"), dict) else {}
    for t in ctx.tasks:
        d = tf.get(t) if isinstance(tf.get(t), dict) else {}
        law, acc = d.get("bpb_law"), d.get("accuracy")
        st = approach_status(law)
        if st == "ok":
            ci = law.get("ci") or {}
            idn = identification(law)
            L.append(f"- **{t}, step 1:** bpb = E + A/N^α + B/D^β with E = {fci(law.get('E'), ci.get('E'))}, "
                     f"α = {fci(law.get('alpha'), ci.get('alpha'))}, β = {fci(law.get('beta'), ci.get('beta'))} "
                     f"({'identified' if idn['identified'] else 'poorly identified'}: CI widths α "
                     f"{f3(idn['widths']['alpha'], 2)}, β {f3(idn['widths']['beta'], 2)}).")
        else:
            L.append(f"- **{t}, step 1:** task-bpb law {reason_of(st)}.")
        if isinstance(acc, dict) and acc.get("fitted"):
            ci = acc.get("ci") or {}
            L.append(f"- **{t}, step 2:** {acc.get('metric', 'accuracy')} = chance + (top − chance) / (1 + "
                     f"exp(k·(bpb − x0))) with top = {fci(acc.get('top'), ci.get('top'))}, k = "
                     f"{fci(acc.get('k'), ci.get('k'), 2)}, x0 = {fci(acc.get('x0'), ci.get('x0'))}, on "
                     f"{intc(acc.get('n_above_chance'))} of {intc(acc.get('n'))} points above chance.")
        elif isinstance(acc, dict):
            L.append(f"- **{t}, step 2:** sigmoid not fitted: {acc.get('reason') or 'no reason stored'}.")
        else:
            L.append(f"- **{t}, step 2:** no accuracy law in results.json.")
        if isinstance(acc, dict) and acc.get("n_external"):
            L.append(f"  ({intc(acc['n_external'])} of its points are externally scored ladder models.)")
        for p in d.get("predictions") or []:
            if not isinstance(p, dict):
                continue
            where = f"N = {sci(p.get('N'))}, D = {sci(p.get('D'))}"
            if finite(p.get("bpb")):
                acc_txt = (format_ci(p.get("accuracy"), p.get("accuracy_ci"))
                           if finite(p.get("accuracy")) else f"not predicted ({p.get('accuracy_reason')})")
                L.append(f"  - chained prediction at {where}: bpb {fci(p['bpb'], p.get('bpb_ci'))}, accuracy {acc_txt}")
            else:
                L.append(f"  - chained prediction at {where}: not made ({p.get('reason')})")
    return L + [""]


def neighbour_gaps(ctx: LadderContext) -> float:
    """Median |difference| of the seed-mean loss between neighbouring sizes at one budget (nan when none)."""
    import numpy as np

    from scalelab.scaling.ladder_results import by_budget

    g = [abs(num(a["value"]["mean"]) - num(b["value"]["mean"])) for _, rows in by_budget(ctx.configs)
         for a, b in zip(rows, rows[1:])]
    return float(np.median(g)) if g else float("nan")


def caveats(ctx: LadderContext) -> list[str]:
    """## 9. Caveats, each with the measured number behind it."""
    L = ["## 9. Caveats", ""]
    hs = [(holdout_label(k, h), h) for k, h in holdout_items(ctx) if holdout_ok(h)]
    if hs:
        L.append("- **Extrapolation error (measured).** Predicting the held-out budget from the others: "
                 + "; ".join(f"{lab} mean |error| {f3(h['mean_abs_error'])} (max {f3(h.get('max_abs_error'))}), "
                             f"coverage {f3(h.get('coverage'), 2)}" for lab, h in hs)
                 + ". Predictions further out than one budget step should be expected to miss by more.")
    c = ctx.fits.get("consistency") if isinstance(ctx.fits.get("consistency"), dict) else {}
    if c.get("checked"):
        L.append(f"- **Fit vs data.** Approach 3's L_opt(C) differs from the best observed loss by up to "
                 f"{f3(c.get('max_abs_residual'))} nats within the trained range (§6).")
    noise = typical_ci_width(ctx.configs)
    gaps = neighbour_gaps(ctx)
    L.append(f"- **Seed noise.** The typical (median) 95% CI width of a configuration's seed mean is {f3(noise)} nats "
             f"with {'/'.join(sorted({str(x['n_seeds']) for x in ctx.configs}))} seeds"
             + (f", against a median |loss difference| of {f3(gaps)} nats between neighbouring sizes at one budget"
                + (": the profiles are flatter than the noise, so the vertices are uncertain." if finite(noise)
                   and gaps < noise else ".") if finite(gaps) else "."))
    ep = [num(x.get("epochs")) for x in ctx.runs if finite(x.get("epochs"))]
    if ep:
        mx = max(ep)
        if mx <= 1:
            tail = " (no run repeats a token)."
        elif mx <= 4:
            tail = " (≤ 4 epochs, where Muennighoff et al. 2023 find repeated data nearly as good as fresh)."
        else:
            tail = (" — past ~4 epochs repeated tokens are worth much less than fresh ones (Muennighoff et al. 2023), "
                    "so the large-D side of each profile is biased upward.")
        L.append(f"- **Data repetition.** The largest-D run makes {mx:.2f} passes over the corpus{tail}")
    env = ctx.fit("envelope")
    for w in env.get("warnings") or []:
        if "cosine" in str(w) or "anneal" in str(w):
            L.append(f"- **Approach 1 and the cosine schedule.** {str(w)[:1].upper() + str(w)[1:]}. Each run here has one schedule length, so "
                     "approach 1's envelope is biased and is reported for comparison; approaches 2 and 3 use only "
                     "end-of-run losses.")
    Ns = [x["params"] for x in ctx.configs]
    if Ns:
        L.append(f"- **Scale.** N spans {count(min(Ns))}–{count(max(Ns))} parameters and C "
                 f"{sci(min(ctx.budgets)) if ctx.budgets else 'n/a'}–{sci(max(ctx.budgets)) if ctx.budgets else 'n/a'} "
                 f"FLOPs, far below Chinchilla's {CHINCHILLA_RANGE}; exponents measured here need not carry over.")
    share = [1 - x["non_embedding_params"] / x["params"] for x in ctx.configs
             if finite(x.get("non_embedding_params")) and x["params"] > 0]
    vocab = ((ctx.results.get("plan") or {}).get("rules") or {}).get("vocab_size") or \
        (ctx.results.get("data") or {}).get("vocab_size")
    if share:
        L.append(f"- **Embeddings in N.** With a vocabulary of {intc(vocab)}, embeddings are {100 * min(share):.0f}–"
                 f"{100 * max(share):.0f}% of total N; N_opt ∝ C^a with total N is not comparable one-to-one with "
                 "fits on non-embedding N (Kaplan et al. 2020) — see Pearce & Song 2024 on this difference.")
    chi = ctx.fit("chinchilla")
    idn = identification(chi)
    if idn["status"] == "ok" and not idn["identified"]:
        L.append(f"- **L(N, D) poorly identified** (α CI width {f3(idn['widths']['alpha'], 2)}, β "
                 f"{f3(idn['widths']['beta'], 2)}): approach 3's a and its N_opt(C) band inherit that uncertainty.")
    return L + [""]


def references(ctx: LadderContext) -> list[str]:
    """## References."""
    return ["## References", "",
            "- Hoffmann et al. 2022, *Training Compute-Optimal Large Language Models* (\"Chinchilla\"), arXiv:2203.15556.",
            "- Besiroglu et al. 2024, *Chinchilla Scaling: A replication attempt*, arXiv:2404.10102.",
            "- Bhagia et al. 2024, *Establishing Task Scaling Laws via Compute-Efficient Model Ladders*, "
            "arXiv:2412.04403.",
            "- Muennighoff et al. 2023, *Scaling Data-Constrained Language Models*, arXiv:2305.16264.",
            "- Kaplan et al. 2020, *Scaling Laws for Neural Language Models*, arXiv:2001.08361.",
            "- Pearce & Song 2024, *Reconciling Kaplan and Chinchilla Scaling Laws*, arXiv:2406.12907.", ""]


SECTIONS_TAIL = (consistency, holdout, downstream, caveats, references)
