"""WRITEUP.md of a training run: what was done, what worked, what didn't -- each item a check
computed from the run's files -- and how to reproduce it."""
from __future__ import annotations

from typing import Any

from scalelab.report.markdown import duration, f3, intc
from scalelab.report.numbers import finite as _ok, num as _num
from scalelab.report.run_files import (
    SUGGESTED_TASKS,
    RunFiles,
    _ci,
    _data_description,
    _lr_find_sentence,
    _pct,
    _training_task_lines,
    task_facts,
    eval_rows,
    progress,
    sizes,
    throughput,
    training_health,
    training_tasks,
)
from scalelab.report.run_trajectory import samples_sentence, trajectory_sentences


def writeup_markdown(run: RunFiles, samples_info: dict[str, Any] | None = None) -> str:
    facts = task_facts()
    p = progress(run)
    sz = sizes(run)
    h = training_health(run)
    tp = throughput(run)
    t = run.train_cfg
    desc, _ = _data_description(run)
    mc = run.model_config
    L = [f"# Write-up: {run.name}", "", "## What was done", ""]
    L.append(f"Trained a {mc.get('n_layer')} x {mc.get('d_model')} Llama-style GPT ({intc(sz.get('params'))} "
             f"parameters, {intc(sz.get('non_embedding'))} non-embedding) from scratch on {intc(p['tokens'])} "
             f"tokens of {desc}"
             + (f" ({_num(p['epochs']):.2f} epochs)" if _ok(p["epochs"]) else "")
             + f", in {intc(p['steps'])} optimizer steps of {intc(t.get('batch_tokens'))} tokens, with "
             f"{t.get('optimizer')} at a peak LR of {_num(t.get('lr')):.2e} ({t.get('schedule')} schedule, "
             f"{t.get('warmup_steps')} warmup steps), taking {duration(p['train_time_s'])} of training time."
             + ("" if p["finished"] else " The run has not finished (no summary.json); the numbers are its latest records."))
    L += ["", _lr_find_sentence(run), ""]
    ev = eval_rows(run)
    L.append("Evaluated zero-shot on " + ", ".join(sorted({r['task'] for r in ev})) + "." if ev else
             "No downstream evaluation has been run on it yet.")
    L += ["", "## What worked", ""]
    worked, didnt = [], []
    if _ok(p["first_train_loss"]) and _ok(p.get("final_train_loss")):
        worked.append(f"Training loss fell from {f3(p['first_train_loss'], 4)} at step 1 to "
                      f"{f3(p['final_train_loss'], 4)} (mean of the last {p.get('final_train_window')} steps).")
    if _ok(p["first_val_loss"]) and _ok(p["val_loss"]):
        msg = (f"Validation loss went from {f3(p['first_val_loss'], 4)} at the first evaluation to "
               f"{f3(p['val_loss'], 4)} at the end (perplexity {f3(p['val_ppl'], 2)}"
               + (f", {f3(p['val_bpb'], 4)} bits/byte" if _ok(p['val_bpb']) else "") + ").")
        (worked if _num(p["val_loss"]) < _num(p["first_val_loss"]) else didnt).append(msg)
    rise = h.get("val_rise")
    if _ok(rise):
        if _num(rise) <= 0.01 * max(1.0, abs(_num(p["best_val_loss"]))):
            worked.append(f"No sign of overfitting: the final validation loss is within {abs(_num(rise)):.4f} of the "
                          f"best ({f3(p['best_val_loss'], 4)}"
                          + (f" at step {intc(p['best_step'])}" if p["best_step"] else "") + ").")
        else:
            didnt.append(f"Validation loss rose {_num(rise):.4f} above its best ({f3(p['best_val_loss'], 4)} at step "
                         f"{intc(p['best_step'])}) by the end: the model started to overfit; the `best` checkpoint "
                         "is the one to use.")
    if _ok(h.get("gap")):
        worked.append(f"Generalisation gap at the end (validation loss − recent training loss): {h['gap']:+.4f} nats.")
    if not h["spikes"] and len(run.train) > 20:
        worked.append("No loss spikes (no step above 1.3x the median of the preceding 50 steps after warmup).")
    if _ok(h.get("clipped_frac")):
        frac = h["clipped_frac"]
        (worked if frac < 0.5 else didnt).append(
            f"Gradient norm: median {f3(h['grad_norm_median'], 3)}, max {f3(h['grad_norm_max'], 3)}; clipping at "
            f"{t.get('grad_clip')} was active on {_pct(frac)} of steps ({_pct(h.get('clipped_frac_late'))} in the "
            "second half)" + ("." if frac < 0.5 else " — the updates were mostly clipped, so the effective LR was "
                              "lower than configured; consider a lower LR or a higher clip."))
    for r in ev:
        if r["metric"] not in ("acc", "acc_norm") or not isinstance(r.get("ci"), list) or not _ok(r["ci"][0]):
            continue
        task = facts.canonical_task(r["task"])
        ch = facts.chance_level(task)
        if ch is None:
            continue
        if task == "lambada":
            (worked if _num(r["value"]) > 0 else didnt).append(
                f"LAMBADA last-word accuracy {_ci(r['value'], r['ci'])} (n={intc(r['n'])}).")
        elif _num(r["ci"][0]) > ch:
            worked.append(f"{r['task']} {r['metric']} {_ci(r['value'], r['ci'])} is above chance ({ch:.2f}): the "
                          f"95% CI excludes it (n={intc(r['n'])}).")
        else:
            didnt.append(f"{r['task']} {r['metric']} {_ci(r['value'], r['ci'])} is not distinguishable from chance "
                         f"({ch:.2f}) at n={intc(r['n'])}.")
    task_lines = _training_task_lines(run)
    for name, d in training_tasks(run).items():
        (worked if d["last"] > d["first"] else didnt).append(task_lines[name])
    if _ok(tp.get("tok_s_median")):
        worked.append(f"Throughput: {intc(tp['tok_s_median'])} tokens/s median"
                      + (f", MFU {_pct(tp.get('mfu_median'))}" if _ok(tp.get("mfu_median")) else "") + ".")
    if samples_info and samples_info.get("ok"):
        worked.append(samples_sentence(run, samples_info)
                      or f"Sampling works: {samples_info['n']} completions of the fixed prompts are in SAMPLES.md.")
    worked += trajectory_sentences(run)
    # What didn't work / what is missing.
    for s in h["spikes"][:5]:
        didnt.append(f"Loss spike at step {s['step']}: {s['loss']:.3f} vs a recent median of {s['ref']:.3f}.")
    if len(h["spikes"]) > 5:
        didnt.append(f"... {len(h['spikes'])} loss spikes in total.")
    if _ok(p["epochs"]) and _num(p["epochs"]) > 4:
        didnt.append(f"The training data was repeated {_num(p['epochs']):.1f} times; past ~4 epochs repeated tokens "
                     "are worth much less than fresh ones (Muennighoff et al. 2023): the corpus is too small for "
                     "this model and token budget.")
    lr = run.lr_find
    if lr and _ok(t.get("lr")):
        ratio = _num(t["lr"]) / lr["suggested_lr"]
        if ratio > 3:
            didnt.append(f"The configured LR is {ratio:.1f}x the LR range test's suggestion: it may be too high "
                         "(check the loss spikes and clipping above).")
        elif ratio < 1 / 10:
            didnt.append(f"The configured LR is {1 / ratio:.1f}x below the LR range test's suggestion: training may "
                         "have been slower than necessary.")
    if _ok(tp.get("mfu_median")) and tp["mfu_median"] < 0.1 and (p.get("world_size") or 1) >= 1 and \
            str(t.get("dtype")) != "fp32":
        didnt.append(f"MFU was only {_pct(tp['mfu_median'])}: the step is dominated by something other than the "
                     "model's matmuls (small micro-batch, data loading, no torch.compile, communication).")
    if not ev:
        didnt.append("Downstream tasks not measured (no eval/results.json).")
    if not lr:
        didnt.append("The learning rate was not justified by an LR range test (no lr_find.json).")
    if samples_info and not samples_info.get("ok"):
        didnt.append(f"No samples: {samples_info.get('reason')}.")
    L += [f"- {x}" for x in worked] or ["- (nothing measurable yet)"]
    L += ["", "## What didn't work (or is missing)", ""]
    L += [f"- {x}" for x in didnt] or ["- Nothing flagged: no loss spikes, no overfitting, no heavy clipping, and "
                                       "all optional measurements are present."]
    L += ["", "## Reproduce", "", "```bash",
          "scalelab train config.yaml            # the resolved config saved in this run dir",
          f"scalelab lr-find config.yaml --steps 100 --out {run.dir}/lr_find",
          f"scalelab eval {run.dir} --tasks {SUGGESTED_TASKS}",
          f"scalelab eval {run.dir} --checkpoints all   # the learning trajectory (one row per checkpoint)",
          f"scalelab report {run.dir}", "```", "",
          f"Every number above was read from or computed from: {', '.join(f'`{x}`' for x in run.read)}.", ""]
    return "\n".join(L)

