"""NOTE.md section 2, the setup: data and tokenizer, models, hyper-parameters, compute and hardware."""
from __future__ import annotations

from scalelab.report.markdown import duration, f3, finite, fmt_ratio, intc, num, sci, table
from scalelab.report.note_context import NoteContext
from scalelab.scaling.results import ratio_of


def setup_data(ctx: NoteContext) -> list[str]:
    """## 2. Setup, ### 2.1 Data and tokenizer."""
    data, epochs = ctx.data, ctx.epochs
    L: list[str] = []
    L += ["## 2. Setup", "", "### 2.1 Data and tokenizer", ""]
    rows = [["source", f"`{data.get('source', 'n/a')}`"],
            ["tokenizer", f"{data.get('tokenizer', 'n/a')}, vocabulary {intc(data.get('vocab_size'))}"],
            ["training tokens in the corpus", intc(data.get("train_tokens"))],
            ["validation tokens", intc(data.get("val_tokens"))]]
    if finite(data.get("bytes_per_token")):
        rows.append(["bytes per token (validation)", f3(data["bytes_per_token"], 2)])
    if epochs:
        rows.append(["passes over the corpus per run (epochs)", f"{min(epochs):.2f} – {max(epochs):.2f}"])
    if data.get("license_note"):
        rows.append(["license / provenance", str(data["license_note"])])
    L += table(["", ""], rows) + [""]
    return L


def setup_models(ctx: NoteContext) -> list[str]:
    """### 2.2 Models: the plan's shapes and budgets."""
    results, sizes, models = ctx.results, ctx.sizes, ctx.models
    L: list[str] = []
    L += ["### 2.2 Models", ""]
    if models:
        models = sorted(models, key=lambda m: (num(ratio_of(m, results)) if ratio_of(m, results) is not None else -1,
                                               num(m.get("non_embedding_params"))))
        head = ["size", "layers × width (heads)", "params", "non-emb. N", "tokens D", "D/N", "FLOPs 6ND", "peak lr",
                "batch (tokens)", "steps", "warmup", "epochs"]
        mrows = []
        for m in models:
            n = num(m.get("non_embedding_params"))
            mrows.append([m.get("name", ""), f"{m.get('n_layer', '?')} × {m.get('d_model', '?')} ({m.get('n_head', '?')})",
                          intc(m.get("params")), intc(n), intc(m.get("tokens")),
                          f"{num(m.get('tokens')) / n:.1f}" if finite(n) and n else "n/a", sci(m.get("flops")),
                          f"{num(m.get('lr')):.2e}" if finite(m.get("lr")) else "n/a", intc(m.get("batch_tokens")),
                          intc(m.get("steps")), intc(m.get("warmup_steps")),
                          f3(m.get("epochs"), 2)])
        L += table(head, mrows) + [""]
    else:
        L += ["*results.json has no plan; shapes per run:*", ""]
        L += table(["size", "params", "non-emb. N", "tokens"],
                    [[s.get("name"), intc(s.get("params")), intc(s.get("non_embedding_params")), intc(s.get("tokens"))]
                     for s in sizes]) + [""]
    return L


def setup_hyper(ctx: NoteContext) -> list[str]:
    """### 2.3 Hyper-parameters: token budget, learning-rate rule, schedule, seeds."""
    rules, train_cfg, ist, seeds, prim = ctx.rules, ctx.train_cfg, ctx.ist, ctx.seeds, ctx.prim
    plan_ratios, tpp = ctx.plan_ratios, ctx.tpp
    L: list[str] = []
    L += ["### 2.3 Hyper-parameters", ""]
    cnt = rules.get("count", "non_embedding")
    n_kind = "non-embedding" if cnt == "non_embedding" else "total"
    if len(plan_ratios) > 1:
        others = [r for r in plan_ratios if r != prim]
        rel = "; ".join(f"tokens/param = {fmt_ratio(r)} trains the same shapes on "
                        f"{(num(prim) / num(r)) if num(r) < num(prim) else (num(r) / num(prim)):.3g}× "
                        f"{'fewer' if num(r) < num(prim) else 'more'} tokens" for r in others)
        L.append(f"- **Token budget:** D = r × N for r in {{{', '.join(fmt_ratio(r) for r in plan_ratios)}}} (N counted "
                 f"as {n_kind} parameters); every model size is trained at each ratio. r = {fmt_ratio(prim)} "
                 "(Chinchilla's ~20 tokens per parameter) is the primary family: the Kaplan fit and the headline "
                 f"check use it; {rel}. Across the study N and D therefore vary independently, which is what lets "
                 "L(N, D) be fitted (§3.3). Which ratio is compute-optimal is not measured directly"
                 + (" (an IsoFLOP fit exists; see §3.3)." if ist == "ok" else " (§5)."))
    else:
        L.append(f"- **Token budget:** D = {f3(tpp, 0) if finite(tpp) else 'n/a'} × N tokens per model "
                 f"(N counted as {n_kind} parameters), following "
                 "Chinchilla's ~20 tokens per parameter. This ratio is *assumed*, not measured here"
                 + (" (an IsoFLOP fit exists; see §3.3)." if ist == "ok" else "."))
    lr_rule = rules.get("lr_rule")
    if lr_rule == "deepseek":
        L.append("- **Peak learning rate and batch size** from the compute budget C by the DeepSeek LLM rules "
                 "(DeepSeek-AI 2024): η = 0.3118·C^-0.125, B = 0.2920·C^0.3271 tokens, batch rounded to a power of "
                 f"two sequences of {intc(rules.get('seq_len'))} tokens.")
    elif lr_rule:
        L.append(f"- **Learning rate rule:** `{lr_rule}` (lr {rules.get('lr')}, batch {rules.get('batch_tokens')} "
                 "tokens).")
    else:
        L.append("- **Learning rate rule:** not recorded in results.json (per-model values in the table above).")
    if finite(rules.get("warmup_frac")):
        L.append(f"- **Warmup:** {100 * num(rules['warmup_frac']):.0f}% of the steps (at least one step).")
    sched = train_cfg.get("schedule") if isinstance(train_cfg, dict) else None
    L.append(f"- **Schedule:** {sched or 'not recorded in results.json'}"
             + (f"; optimizer {train_cfg['optimizer']}" if isinstance(train_cfg, dict) and train_cfg.get("optimizer")
                else "")
             + (f", weight decay {train_cfg['weight_decay']}" if isinstance(train_cfg, dict)
                and train_cfg.get("weight_decay") is not None else "")
             + (f"; the learning rate decays to {train_cfg['min_lr_ratio']} × its peak" if isinstance(train_cfg, dict)
                and train_cfg.get("min_lr_ratio") is not None else "") + ".")
    shape_bits = [f"{k} {rules[k]}" for k in ("seq_len", "mlp", "head_dim", "aspect_ratio", "tie_embeddings")
                  if k in rules]
    if shape_bits:
        L.append(f"- **Shape rules:** {', '.join(shape_bits)}.")
    L.append(f"- **Seeds:** {', '.join(map(str, seeds)) or 'n/a'} (the seed changes the initialisation and the "
             "data order; everything else is identical).")
    L.append("")
    return L


def setup_compute(ctx: NoteContext) -> list[str]:
    """### 2.4 Compute and hardware."""
    runs, hw, total_flops, total_time = ctx.runs, ctx.hw, ctx.total_flops, ctx.total_time
    L: list[str] = []
    L += ["### 2.4 Compute and hardware", ""]
    per_size_time = {}
    for r in runs:
        if finite(r.get("train_time_s")):
            per_size_time.setdefault(r.get("name"), []).append(num(r["train_time_s"]))
    L.append(f"- Training compute: {sci(total_flops)} FLOPs over {len(runs)} runs (C = 6·N·D per run, N non-embedding; "
             "per-model values in §2.2).")
    if total_time:
        par = num(hw.get("parallel_runs")) if finite(hw.get("parallel_runs")) else 1.0
        L.append(f"- Training time: {duration(total_time)} summed over runs"
                 + (f", about {duration(total_time / par)} wall-clock with {int(par)} runs in parallel" if par > 1 else "")
                 + "; per run: " + ", ".join(f"{k} {duration(sum(v) / len(v))}" for k, v in per_size_time.items())
                 + ".")
    if hw:
        L.append("- Hardware: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in hw.items()) + ".")
    L.append("")
    return L
