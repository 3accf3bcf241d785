"""MODEL_CARD.md of a training run (also the README.md of a Hugging Face export)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scalelab.report.markdown import count, duration, f3, intc, sci
from scalelab.report.numbers import finite as _ok, num as _num
from scalelab.report.run_files import (
    SUGGESTED_TASKS,
    RunFiles,
    _ci,
    _data_description,
    _lr_find_sentence,
    _n_cell,
    _pct,
    _table,
    _training_task_lines,
    chance_cell,
    eval_rows,
    lm_eval_row,
    load_run,
    progress,
    sizes,
    throughput,
)
from scalelab.report.run_trajectory import samples_sentence, trajectory_sentences

def _arch_line(run: RunFiles) -> str:
    mc = run.model_config
    sz = sizes(run)
    kv = sz.get("kv_heads")
    gqa = f", grouped-query attention with {kv} KV heads" if kv and kv != mc.get("n_head") else ""
    tie = "tied" if mc.get("tie_embeddings", True) else "untied"
    return (f"decoder-only transformer in the Llama layout: RoPE (theta {mc.get('rope_theta', 10000):g}), "
            f"RMSNorm (eps {mc.get('norm_eps', 1e-5):g}), SwiGLU MLP{gqa}, {tie} input/output embeddings, no biases"
            if mc.get("mlp", "swiglu") == "swiglu" and not mc.get("qk_norm") and mc.get("logit_softcap") is None
            else f"decoder-only transformer (mlp={mc.get('mlp')}, qk_norm={mc.get('qk_norm')}, "
                 f"logit_softcap={mc.get('logit_softcap')}; RoPE, RMSNorm), {tie} embeddings")


def _data_rows(run: RunFiles) -> list[list[str]]:
    rows = []
    meta = run.data_meta or {}
    for split, s in (meta.get("splits") or {}).items():
        rows.append([split, intc(s.get("docs")), intc(s.get("tokens")), intc(s.get("bytes"))])
    return rows


def _training_rows(run: RunFiles) -> list[list[str]]:
    t = run.train_cfg
    mc = run.model_config
    p = progress(run)
    tp = throughput(run)
    seq = mc.get("seq_len")
    world = p.get("world_size") or 1
    mb = t.get("micro_batch")
    accum = (t["batch_tokens"] // (mb * seq * world)) if (t.get("batch_tokens") and mb and seq) else None
    opt = str(t.get("optimizer", "adamw"))
    opt_line = (f"AdamW (beta1 {t.get('beta1')}, beta2 {t.get('beta2')}, eps {t.get('eps')}, weight decay "
                f"{t.get('weight_decay')} on matrices only)" if opt == "adamw"
                else f"Muon (lr {t.get('muon_lr')}, momentum {t.get('muon_momentum')}) on hidden matrices + AdamW")
    sched = str(t.get("schedule"))
    sched_line = f"{sched}, {t.get('warmup_steps')} warmup steps"
    if sched in ("cosine", "wsd"):
        sched_line += f", decay to {t.get('min_lr_ratio')} x peak"
    if sched == "wsd":
        sched_line += f" over the last {t.get('decay_frac')} of steps"
    rows = [
        ["optimizer", opt_line],
        ["peak learning rate", f"{_num(t.get('lr')):.2e}" if _ok(t.get("lr")) else "n/a"],
        ["schedule", sched_line],
        ["gradient clipping", f"global norm {t.get('grad_clip')}" if t.get("grad_clip") else "off"],
        ["batch", f"{intc(t.get('batch_tokens'))} tokens = {world} process(es) x {mb} sequences x {seq} tokens"
                  + (f" x {accum} accumulation steps" if accum else "")],
        ["steps / tokens", f"{intc(p['steps'])} steps, {intc(p['tokens'])} tokens"
                           + (f" ({_num(p['epochs']):.2f} epochs of the training split)" if _ok(p["epochs"]) else "")],
        ["precision", f"{t.get('dtype')} (auto = bf16 autocast on GPUs that have it, fp32 on CPU)"
                      if t.get("dtype") == "auto" else str(t.get("dtype"))],
        ["parallelism", f"{t.get('parallel')} (world size {world})"],
        ["activation checkpointing / compile", f"{t.get('activation_checkpointing')} / {t.get('compile')}"],
        ["EMA of weights", f"decay {t.get('ema_decay')}" if t.get("ema_decay") else "off"],
        ["seed", str(run.config.get("seed"))],
        ["training time", f"{duration(p['train_time_s'])} ({f3(p['train_time_s'], 1)} s of optimizer steps)"],
        ["throughput", f"{intc(tp.get('tok_s_median'))} tokens/s median over {tp.get('windows', 0)} logged windows"
                       + (f", MFU {_pct(tp.get('mfu_median'))}" if _ok(tp.get("mfu_median")) else "")],
    ]
    return rows


def model_card_markdown(run_dir: str | Path | RunFiles, export: dict[str, Any] | None = None,
                        samples_info: dict[str, Any] | None = None) -> str:
    """MODEL_CARD.md text (also the README.md of an export)."""
    run = run_dir if isinstance(run_dir, RunFiles) else load_run(run_dir)
    mc = run.model_config
    sz = sizes(run)
    p = progress(run)
    desc, lic = _data_description(run)
    tok = run.data_cfg.get("tokenizer")
    L: list[str] = [f"# {run.name}: a {count(sz.get('params'))}-parameter language model", ""]
    status = "" if p["finished"] else " **The run has not finished: the numbers are those of its latest records.**"
    L += [f"A {mc.get('n_layer')}-layer, {mc.get('d_model')}-wide decoder-only transformer trained from scratch "
          f"with scalelab on {count(p['tokens'])} tokens of {desc}. Final validation loss "
          f"{f3(p['val_loss'], 4)} nats/token (perplexity {f3(p['val_ppl'], 2)}"
          + (f", {f3(p['val_bpb'], 4)} bits/byte" if _ok(p["val_bpb"]) else "") + ")." + status, ""]
    if export:
        L += [f"This directory is a Hugging Face export (`LlamaForCausalLM`, fp32) of checkpoint "
              f"`{Path(export['checkpoint']).name}` ({export['which']}, {export['weights']} weights, step "
              f"{intc(export['step'])}, {intc(export.get('tokens_seen'))} tokens)."
              + (f" Export check: the logits of the exported model match the checkpoint's within "
                 f"{export['checks']['max_abs_logit_diff']:.1e} (fp32) and the tokenizer encodes identically."
                 if export.get("checks") else ""), ""]
    L += ["## Model details", ""]
    L += _table(["", ""], [
        ["architecture", _arch_line(run)],
        ["parameters", f"{intc(sz.get('params'))} total: {intc(sz.get('non_embedding'))} non-embedding + "
                       f"{intc(sz.get('embedding'))} embedding (table padded to {mc.get('pad_vocab_to')} rows)"],
        ["shape", f"{mc.get('n_layer')} layers x {mc.get('d_model')} wide, {mc.get('n_head')} heads of "
                  f"{sz.get('head_dim')}, MLP hidden {sz.get('ffn_dim')}"],
        ["context", f"{mc.get('seq_len')} tokens"],
        ["vocabulary", f"{intc(mc.get('vocab_size'))} ids, tokenizer `{tok}` ({p['tokenizer_identity']})"],
        ["training compute", f"{sci(sz.get('flops_per_token'))} FLOPs/token x {count(p['tokens'])} tokens = "
                             f"{sci(_num(sz.get('flops_per_token')) * _num(p['tokens']))} FLOPs (6N + attention)"],
        ["code", f"scalelab, git `{p['git']}`"],
    ])
    L += ["", "## Training data", "", f"{desc}." + (f" Licence of the data: {lic}." if lic else ""), ""]
    d = run.data_cfg
    caps = [f"{k} = {d[k]:,}" for k in ("max_docs", "max_bytes") if d.get(k)]
    L.append(f"Documents are split into train / validation by a seeded hash of their index "
             f"(validation fraction {d.get('val_fraction')}, seed {d.get('split_seed')})"
             + (f"; read with {', '.join(caps)}" if caps else "") + ".")
    rows = _data_rows(run)
    if rows:
        L += ["", *_table(["split", "documents", "tokens", "UTF-8 bytes"], rows)]
    else:
        L += ["", f"(The data directory `{d.get('dir')}` was not found next to the run, so document and token "
              "counts are not shown.)"]
    if _ok(p["epochs"]) and _num(p["epochs"]) > 1:
        L += ["", f"The model saw the training split {_num(p['epochs']):.2f} times (repeated data)."]
    L += ["", "## Training procedure", "", *_table(["", ""], _training_rows(run)), "", _lr_find_sentence(run), ""]
    L += ["## Evaluation", "", "### Language modelling (held-out split of the training corpus)", ""]
    lm_rows = [["final (step " + intc(p["steps"]) + ")", f3(p["val_loss"], 4), f3(p["val_ppl"], 2),
                f3(p["val_bpb"], 4), intc(p["val_tokens"])]]
    if _ok(p["best_val_loss"]):
        lm_rows.append([f"best (step {intc(p['best_step'])})", f3(p["best_val_loss"], 4),
                        f3(math.exp(min(_num(p["best_val_loss"]), 50)), 2), "", ""])
    L += _table(["checkpoint", "val loss (nats/token)", "perplexity", "bits/byte", "tokens"], lm_rows)
    lm = lm_eval_row(run)
    if lm:
        L += ["", f"`scalelab eval` on {lm.get('source')} ({lm.get('kind')}, context {lm.get('context')}, stride "
              f"{lm.get('stride')}, {intc(lm.get('tokens'))} tokens in {intc(lm.get('n'))} {lm.get('units')}), "
              "95% bootstrap CIs over " + str(lm.get("units")) + ": loss " + _ci(lm.get("loss"), lm.get("loss_ci"))
              + ", perplexity " + _ci(lm.get("ppl"), lm.get("ppl_ci"), 2)
              + (", bits/byte " + _ci(lm.get("bpb"), lm.get("bpb_ci")) if lm.get("bpb") is not None else "") + "."]
    else:
        L += ["", "The training-time validation loss is one pass over the first `train.eval_tokens` tokens of the "
              "validation split, without an interval; `scalelab eval RUN --lm DATA_DIR` adds bootstrap CIs."]
    tt = _training_task_lines(run)
    if tt:
        L += ["", *tt.values()]
    L += ["", "### Zero-shot tasks", ""]
    rows = eval_rows(run)
    if rows:
        cfg = (run.eval_results or {}).get("config") or {}
        L += [f"From `{run.eval_path.relative_to(run.dir) if run.eval_path else 'results.json'}` (model "
              f"`{((run.eval_results or {}).get('model') or {}).get('name')}`, "
              f"{'limit ' + str(cfg.get('limit')) if cfg.get('limit') else 'fraction ' + str(cfg.get('fraction')) if cfg.get('fraction') else 'full sets'}, "
              "0-shot, lm-evaluation-harness formatting). Accuracies with 95% Wilson intervals; "
              "perplexity with a bootstrap interval.", ""]
        L += _table(["task", "metric", "value [95% CI]", "n", "chance"],
                    [[r["task"], r["metric"], _ci(r["value"], r["ci"], 2 if r["metric"] == "perplexity" else 4),
                      _n_cell(r), chance_cell(r["task"], r["metric"])]
                     for r in rows])
        if any(r.get("n_truncated") for r in rows):
            L += ["", f"Truncated: examples whose context + answer exceeded the {mc.get('seq_len')}-token window and "
                  "were cut from the left (as lm-evaluation-harness does); they are scored, but the model saw less "
                  "of the question."]
        L += ["", "Comparison with published models of similar size: BENCHMARK.md."]
    else:
        L += ["Not evaluated yet: no `eval/results.json` in the run dir. Run "
              f"`scalelab eval {run.dir} --tasks {SUGGESTED_TASKS}` "
              "and regenerate this card with `scalelab report RUN`."]
    L += ["", "### Learning trajectory", ""]
    traj = trajectory_sentences(run)
    L += [" ".join(traj) if traj else
          f"No per-checkpoint evaluation yet (`scalelab eval {run.dir} --checkpoints all` adds one row per kept "
          "checkpoint to BENCHMARK.md)."]
    smp = samples_sentence(run, samples_info)
    if smp:
        L += ["", smp]
    L += ["", "## Intended use", "",
          "Research and teaching: studying pretraining, scaling and evaluation at small scale, as a baseline to "
          "compare training changes against, and as a test model for tooling. It is a base language model: it "
          "continues text; it was not instruction-tuned or aligned and is not meant to answer questions, give "
          "advice, or be deployed in products.", "", "## Limitations and risks", ""]
    lim = [f"At {count(sz.get('params'))} parameters the model produces fluent-looking but often incoherent or "
           "factually wrong text; treat every generated statement as unverified.",
           f"It only saw {desc}; it reflects that text's topics, time period, register and biases (including "
           "stereotypes present in the source) and is poor at anything else (other languages, code, math).",
           f"The context window is {mc.get('seq_len')} tokens; longer inputs must be truncated.",
           "No safety filtering beyond what the data source applied, no red-teaming; it can reproduce offensive "
           "or private content present in its training data."]
    if _ok(p["epochs"]) and _num(p["epochs"]) > 1:
        lim.append(f"The training data was repeated ({_num(p['epochs']):.1f} epochs), which raises the chance of "
                   "verbatim memorization of training passages.")
    if rows:
        lim.append("Zero-shot accuracies of models this small sit close to chance on several tasks; read them "
                   "with their confidence intervals, not as point values.")
    if not p["finished"]:
        lim.append("The run had not finished when this card was generated.")
    L += [f"- {x}" for x in lim]
    L += ["", "## How to use", "", "```bash", f"scalelab sample {run.dir} --temperature 0.8 --max-tokens 64",
          f"scalelab export {run.dir} --hf export/{run.name}    # a transformers LlamaForCausalLM directory",
          "```", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
          f"tok = AutoTokenizer.from_pretrained(\"export/{run.name}\")",
          f"model = AutoModelForCausalLM.from_pretrained(\"export/{run.name}\")",
          "ids = tok(\"The history of\", return_tensors=\"pt\").input_ids",
          "print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=True)[0]))", "```", ""]
    L += ["## Provenance", "", f"Generated by `scalelab report` from: {', '.join(f'`{x}`' for x in run.read)}.", ""]
    return "\n".join(L)

