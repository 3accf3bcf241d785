"""NOTE.md sections 4 to 6: what the error bars mean, the caveats, and how to reproduce the study
(with the appendices: every run, the study configuration, the references)."""
from __future__ import annotations

import json
import math

from scalelab.report.markdown import count, duration, f3, finite, fmt_ratio, intc, num, table
from scalelab.report.note_context import CHINCHILLA_RANGE, NoteContext
from scalelab.scaling.results import chinchilla_data_range, fit_status, ratio_of, run_n


def error_bars(ctx: NoteContext) -> list[str]:
    """## 4. What the error bars mean."""
    data, kap, chi, multi, task_names = ctx.data, ctx.kap, ctx.chi, ctx.multi, ctx.task_names
    L: list[str] = []
    L += ["## 4. What the error bars mean", ""]
    bars = "error bars in Figure 1, coloured by ratio" if multi else "black bars in Figure 1"
    L.append(f"- **Per-size loss CI (table 3.1, {bars}):** a Student-t 95% interval for the mean final "
             "loss over seeds, mean ± t(0.975, n−1)·s/√n with n the number of seeds. It captures seed-to-seed "
             "variation (initialisation and data order) only; the evaluation itself is a fixed set of "
             f"{intc(data.get('val_tokens'))} validation tokens, so its sampling error is not included.")
    L.append("- **Step check (§3.2, the study's verdict):** z = Δ / √(se_small² + se_large²), with se = s/√n the "
             "standard error of each size's mean over its n seeds; a step is beyond the noise when z > 2. Only "
             "neighbouring sizes of one tokens-per-parameter ratio are compared.")
    for law, f in (("Kaplan", kap), ("Chinchilla", chi)):
        if fit_status(f) == "ok":
            unit = {"points": "individual runs", "size": "model sizes (all seeds of a size together)",
                    "groups": "groups of runs", "seed": "seeds"}.get(f.get("resample", "points"), f.get("resample"))
            L.append(f"- **{law} fit CIs:** percentile bootstrap over {unit}, {intc(f.get('n_boot'))} refits of the "
                     f"same procedure on resampled data ({f.get('n', 'n/a')} runs). They describe the uncertainty of "
                     "the fitted curve's parameters *given this functional form and these runs*: not a prediction "
                     "interval for a new run, and blind to misspecification. With few distinct sizes, many "
                     "resamples repeat the same points, so the intervals can be too narrow.")
    if ctx.kst == "ok" and ctx.kap_band is not None:
        L.append(f"- **Band in Figure 1:** not drawn: {ctx.kap_band}. The report draws bands only from the "
                 "bootstrap samples stored with a fit; it does not refit.")
    else:
        L.append("- **Band in Figure 1:** the 95% percentile band of the fitted curve across the bootstrap refits "
                 "(uncertainty of the mean curve, which is why it is narrower than the spread of single runs).")
    if task_names:
        L.append("- **Task accuracy CIs:** Wilson score 95% intervals for a binomial proportion over the task's items "
                 "(Wilson 1927); they cover item sampling, not seed variance.")
    L.append("")
    return L


def caveats(ctx: NoteContext) -> list[str]:
    """## 5. Caveats."""
    results, runs, failed, data, plan, kap = ctx.results, ctx.runs, ctx.failed, ctx.data, ctx.plan, ctx.kap
    chi, iso, kst, cst, ist, n_seeds, n_lo = ctx.chi, ctx.iso, ctx.kst, ctx.cst, ctx.ist, ctx.n_seeds, ctx.n_lo
    n_hi, epochs, ratios, multi, ratio_set = ctx.n_hi, ctx.epochs, ctx.ratios, ctx.multi, ctx.ratio_set
    kap_r, tpp, task_names, mc = ctx.kap_r, ctx.tpp, ctx.task_names, ctx.mc
    L: list[str] = []
    L += ["## 5. Caveats", ""]
    L.append(f"- **Tiny scale.** The largest model has {count(n_hi)} non-embedding parameters; Hoffmann et al. fitted "
             f"{CHINCHILLA_RANGE}. Small models sit in a regime where the irreducible term, the embedding share and "
             "optimisation details weigh more than at scale; exponents measured here need not transfer.")
    L.append(f"- **Few seeds.** {'/'.join(map(str, n_seeds)) or 'n/a'} seed(s) per size"
             f"{' and ratio' if multi else ''}: the seed variance itself is "
             "poorly estimated, and the t-intervals are correspondingly wide.")
    if epochs:
        ep_max = max(epochs)
        if ep_max > 4:
            L.append(f"- **Data repetition.** Runs make up to {ep_max:.2f} passes over a {count(data.get('train_tokens'))}"
                     "-token corpus. Past about 4 epochs repeated tokens are worth much less than fresh ones "
                     "(Muennighoff et al. 2023, \"Scaling Data-Constrained Language Models\"), so the largest models "
                     "are data-constrained: their losses are higher than fresh data would give, which flattens the "
                     "loss-vs-size curve and biases the fitted exponent downward.")
        elif ep_max > 1:
            L.append(f"- **Data repetition.** Runs make up to {ep_max:.2f} passes over the corpus. Muennighoff et al. "
                     "(2023) find up to ~4 epochs nearly as good as fresh data, so the effect should be small but is "
                     "not zero, and it grows with model size.")
        else:
            L.append("- **Data repetition.** No run repeats the corpus (≤ 1 epoch).")
    for w in plan.get("warnings") or []:
        L.append(f"  - plan warning: {w}")
    L.append(f"- **Tokenizer dependence.** Loss in nats/token depends on the tokenizer "
             f"({data.get('tokenizer', 'n/a')}, vocabulary {intc(data.get('vocab_size'))}): a different vocabulary "
             "changes both the loss level and, at this scale, the embedding share of parameters. Bits per byte is "
             "the tokenizer-independent number to compare across setups.")
    ev = [f"validation {intc(data.get('val_tokens'))} tokens"] if finite(data.get("val_tokens")) else []
    if task_names:
        items = sorted({int(num(d.get("n"))) for r in runs for d in (r.get("tasks") or {}).values()
                        if isinstance(d, dict) and finite(d.get("n"))})
        if items:
            half = 1.96 * math.sqrt(0.25 / min(items))
            ev.append(f"tasks {'/'.join(map(str, items))} items (a Wilson interval about ±{half:.3f} wide at 50% "
                      "accuracy)")
    L.append(f"- **Small evaluation sets** ({'; '.join(ev) or 'sizes not recorded'}): differences smaller than the "
             "interval widths are not resolved.")
    cover = []
    if kst == "ok":
        kr = [r for r in runs if kap_r is None or ratio_of(r, results) == kap_r]
        kn = [run_n(r) for r in kr]
        if kn:
            cover.append(f"the Kaplan fit saw non-embedding N = {count(min(kn))} – {count(max(kn))}"
                         + (f" at tokens/param = {fmt_ratio(kap_r)}" if multi and kap_r is not None else ""))
    crng = chinchilla_data_range(results)
    if crng:
        cover.append(f"the Chinchilla fit saw N = {count(crng['N'][0])} – {count(crng['N'][1])} "
                     f"{'total' if crng['n_column'] == 'params' else 'non-embedding'} parameters and "
                     f"D = {count(crng['D'][0])} – {count(crng['D'][1])} tokens")
    if not cover:
        cover.append(f"the runs cover N = {count(n_lo)} – {count(n_hi)}")
    L.append(f"- **Extrapolation.** {'; '.join(cover)[0].upper() + '; '.join(cover)[1:]}. Any prediction outside that "
             "range (the right part of Figure 4, the compute-optimal N and D of §3.3, or a loss for a larger model) "
             "extrapolates a functional form that was not tested there; the bootstrap band does not include that risk.")
    if ist == "ok":
        L.append("- **Compute-optimal ratio.** An IsoFLOP fit exists (§3.3), so the N/D allocation was measured; the "
                 "training budgets themselves still used the planned ratio(s).")
    elif multi:
        L.append(f"- **Compute-optimal ratio not measured directly.** The models were trained at tokens/param ∈ "
                 f"{ratio_set}. Fitting L(N, D) over {len(ratios)} ratios is what lets the Chinchilla fit separate the N "
                 "and D terms (at a single ratio they are collinear), but its compute-optimal allocation rests on "
                 f"{len(ratios)} ratios and a fitted functional form (§3.4)"
                 + (", and the matched-compute pairs of §3.6 give only a direction" if mc else "")
                 + ". An IsoFLOP grid — several sizes at each fixed compute budget — would measure the optimum "
                 "directly.")
    else:
        L.append(f"- **Compute-optimal ratio assumed, not measured.** Every model used "
                 f"{f3(tpp, 0) if finite(tpp) else 'a fixed number of'} tokens per parameter (Chinchilla's rule). "
                 "Whether that is optimal for this data, tokenizer and scale was not tested; an IsoFLOP grid would "
                 "measure it.")
    flagged = [(n, s) for n, s in (("Kaplan", kst), ("Chinchilla", cst), ("IsoFLOP", ist)) if s not in ("ok", "missing")]
    if flagged:
        L.append("- **Degenerate fits:** " + "; ".join(f"{n} — {s}" for n, s in flagged) + ".")
    for n, f in (("Kaplan", kap), ("Chinchilla", chi), ("IsoFLOP", iso)):
        if isinstance(f, dict) and fit_status(f) == "ok":
            for w in f.get("warnings") or []:
                L.append(f"- **{n} fit warning:** {w}")
    if failed:
        L.append(f"- **Failed runs:** {failed} run(s) in results.json have no valid final loss and are excluded.")
    L.append("")
    return L


def reproduction(ctx: NoteContext) -> list[str]:
    """## 6. Reproduction, the appendices and the references."""
    results, runs_all, cfg, ver = ctx.results, ctx.runs_all, ctx.cfg, ctx.ver
    L: list[str] = []
    L += ["## 6. Reproduction", ""]
    cmds = results.get("commands") or []
    if cmds:
        L += ["```bash"] + [str(c) for c in cmds] + ["```", ""]
    else:
        L += ["*results.json records no commands.*", ""]
    if ver:
        L.append("Software: " + ", ".join(f"{k} {v}" for k, v in ver.items()) + "."
                 + (f" Source tree at git `{results['git']}`." if results.get("git") else ""))
        L.append("")
    L += ["### Appendix A: every run", ""]
    arow = []
    def _akey(r):
        rr = ratio_of(r, results)
        return (rr if rr is not None else -1.0, run_n(r), num(r.get("seed")))

    for r in sorted(runs_all, key=_akey):
        arow.append([r.get("name"), r.get("seed"), f"`{r.get('run_dir', '')}`", f3(r.get("loss")),
                     f3(r.get("val_bpb")), f3(r.get("val_ppl"), 1), count(r.get("tokens")), f3(r.get("epochs"), 2),
                     duration(r.get("train_time_s"))])
    L += table(["size", "seed", "run dir", "val loss", "bpb", "ppl", "tokens", "epochs", "train time"], arow) + [""]
    if cfg:
        L += ["### Appendix B: study configuration", "", "```json", json.dumps(cfg, indent=2, default=str), "```", ""]
    L += ["### References", "",
          "- Kaplan, J. et al. (2020). Scaling Laws for Neural Language Models. arXiv:2001.08361.",
          "- Hoffmann, J. et al. (2022). Training Compute-Optimal Large Language Models. arXiv:2203.15556.",
          "- Besiroglu, T. et al. (2024). Chinchilla Scaling: A replication attempt. arXiv:2404.10102.",
          "- Muennighoff, N. et al. (2023). Scaling Data-Constrained Language Models. arXiv:2305.16264.",
          "- DeepSeek-AI (2024). DeepSeek LLM: Scaling Open-Source Language Models with Longtermism. arXiv:2401.02954.",
          "- Wilson, E. B. (1927). Probable inference, the law of succession, and statistical inference. JASA 22.",
          ""]
    return L
