"""BENCHMARK.md of a training run: zero-shot tasks vs published baselines, the per-checkpoint
trajectory, language modelling and throughput (the baselines file: run_baselines.py)."""
from __future__ import annotations

import math
from typing import Any

from scalelab.eval.stats import format_ci
from scalelab.report.markdown import count, f3, intc, sci
from scalelab.report.run_baselines import baseline_value
from scalelab.report.numbers import finite as _ok, num as _num
from scalelab.report.run_files import (
    SUGGESTED_TASKS,
    Z95,
    RunFiles,
    _ci,
    _eval_split,
    _fmt,
    _n_cell,
    _pct,
    _se_from,
    _table,
    _training_task_lines,
    chance_cell,
    task_facts,
    eval_rows,
    lm_eval_row,
    progress,
    sizes,
    throughput,
)
from scalelab.report.run_trajectory import table_markdown

def benchmark_markdown(run: RunFiles, baselines: dict[str, Any] | None) -> str:
    facts = task_facts()
    p = progress(run)
    sz = sizes(run)
    L = [f"# Benchmark: {run.name}", "",
         f"{count(sz.get('params'))} parameters ({count(sz.get('non_embedding'))} non-embedding), "
         f"{count(p['tokens'])} training tokens.", "", "## Zero-shot tasks vs published models of similar size", ""]
    rows = eval_rows(run)
    models = (baselines or {}).get("models") or {}
    names = list(models)
    if not rows:
        L += ["No evaluation results in this run dir yet (`RUN/eval/results.json`): run "
              f"`scalelab eval {run.dir} --tasks {SUGGESTED_TASKS}`, then "
              "`scalelab report RUN` again.", ""]
    if baselines is None:
        L += ["The baselines file (scalelab/assets/baselines.json, or $SCALELAB_BASELINES) was not found, so no published "
              "numbers are shown.", ""]
    if rows:
        head = ["task", "metric", "ours [95% CI]", "n"] + [models[m].get("name", m) for m in names] + ["chance"]
        table = []
        for r in rows:
            task = facts.canonical_task(r["task"])
            nd = 2 if r["metric"] in ("perplexity", "ppl") else 4
            cells = [r["task"], r["metric"], _ci(r["value"], r["ci"], nd), _n_cell(r)]
            for m in names:
                e = ((models[m].get("results") or {}).get(task) or {}).get(r["metric"])
                if e:
                    v, se, _ = baseline_value(e)
                    cells.append(_fmt(v, nd) + (f" ± {_fmt(se, nd)}" if se is not None else "")
                                 + ("†" if e.get("split") and _eval_split(run, r["task"]) and e["split"] != _eval_split(run, r["task"]) else ""))
                else:
                    cells.append("—")
            cells.append(chance_cell(task, r["metric"]))
            table.append(cells)
        L += _table(head, table)
        L += ["", "Ours: 95% Wilson intervals (accuracies) or bootstrap intervals (perplexity) from "
              f"`{run.eval_path.relative_to(run.dir) if run.eval_path else 'results.json'}`. Published numbers: value ± "
              "standard error as reported (or sqrt(p(1-p)/n) where only n is known); sources below. "
              "— = not published for that model/metric. † = the published number is on another split of the "
              "task (e.g. ARC test vs our validation split), so the comparison is indicative only.", ""]
        diffs = []
        for r in rows:
            task = facts.canonical_task(r["task"])
            if r["metric"] not in ("acc", "acc_norm") or not _ok(r["value"]):
                continue
            for m in names:
                e = ((models[m].get("results") or {}).get(task) or {}).get(r["metric"])
                if not e:
                    continue
                v, se_b, how = baseline_value(e)
                se_o = _se_from(r)
                if se_o is None or se_b is None:
                    continue
                d = _num(r["value"]) - v
                se = math.sqrt(_num(se_o) ** 2 + se_b ** 2)
                lo, hi = d - Z95 * se, d + Z95 * se
                verdict = "ours higher" if lo > 0 else "ours lower" if hi < 0 else "no significant difference"
                diffs.append([r["task"], r["metric"], models[m].get("name", m), format_ci(d, (lo, hi), "+.4f"),
                              verdict])
        if diffs:
            L += ["### Differences (ours − published) with 95% CIs", "",
                  "Normal approximation with independent standard errors sqrt(se_ours² + se_published²), where "
                  "se_ours is the larger of the reported stderr and the Wilson half-width / 1.96 (so a 0/n score is "
                  "not treated as exact) — conservative, since both models answered (mostly) the same questions. "
                  "A subset (n < the task's total) adds no bias, only width.", ""]
            L += _table(["task", "metric", "vs", "difference [95% CI]", "verdict"], diffs) + [""]
    if models:
        L += ["### The published models", ""]
        L += _table(["model", "parameters", "training tokens", "data", "tokenizer"],
                    [[models[m].get("name", m), models[m].get("params_label", ""),
                      models[m].get("training_tokens_label", ""), models[m].get("data", ""),
                      models[m].get("tokenizer", "")] for m in names])
        L += ["", f"Our model: {count(sz.get('params'))} parameters, {count(p['tokens'])} tokens of "
              f"`{run.data_cfg.get('source')}`, tokenizer `{run.data_cfg.get('tokenizer')}`. Models trained on "
              "different data and token counts differ for reasons other than the recipe; compare shapes, not decimals.", ""]
        srcs = (baselines or {}).get("sources") or {}
        if srcs:
            L += ["Sources:", ""]
            L += [f"- **{k}**: {v.get('citation', '')}" + (f" <{v['url']}>" if v.get("url") else "")
                  for k, v in srcs.items()]
            L.append("")
    L += table_markdown(run, baselines)
    L += ["## Language modelling", ""]
    L += _table(["", "value"], [["final validation loss (nats/token)", f3(p["val_loss"], 4)],
                                ["final validation perplexity", f3(p["val_ppl"], 2)],
                                ["final validation bits/byte", f3(p["val_bpb"], 4)],
                                ["best validation loss", f3(p["best_val_loss"], 4) + (f" (step {intc(p['best_step'])})" if p["best_step"] else "")],
                                ["validation tokens per evaluation", intc(p["val_tokens"])]])
    lm = lm_eval_row(run)
    if lm:
        L += ["", f"With CIs (`scalelab eval --lm {lm.get('source')}`): loss {_ci(lm.get('loss'), lm.get('loss_ci'))}, "
              f"perplexity {_ci(lm.get('ppl'), lm.get('ppl_ci'), 2)}"
              + (f", bits/byte {_ci(lm.get('bpb'), lm.get('bpb_ci'))}" if lm.get("bpb") is not None else "") + "."]
    tt = _training_task_lines(run)
    if tt:
        L += ["", *tt.values()]
    L += ["", "Validation losses are on the held-out split of this run's own corpus and tokenizer; they are not "
          "comparable with other models' losses on other data or tokenizers (bits/byte removes the tokenizer "
          "but not the data).", "", "## Throughput", ""]
    tp = throughput(run)
    t = run.train_cfg
    L += _table(["", "value"], [
        ["tokens/s (median of logged windows, p10–p90)",
         f"{intc(tp.get('tok_s_median'))} ({intc(tp.get('tok_s_p10'))}–{intc(tp.get('tok_s_p90'))})" if tp.get("windows") else "not logged"],
        ["tokens/s over the whole run (tokens / optimizer-step time)", intc(tp.get("tok_s_overall"))],
        ["MFU (median, p10–p90)", f"{_pct(tp.get('mfu_median'))} ({_pct(tp.get('mfu_p10'))}–{_pct(tp.get('mfu_p90'))})"
         if _ok(tp.get("mfu_median")) else "not logged"],
        ["step time (median)", f"{f3(tp.get('step_time_median'), 3)} s"],
        ["processes / precision / parallel", f"{p.get('world_size') or 1} / {t.get('dtype')} / {t.get('parallel')}"],
        ["FLOPs per token (training, 6N + attention)", sci(sz.get("flops_per_token"))],
    ])
    L += ["", "From metrics.jsonl: `tok_s` and `mfu` are logged every `train.log_every` steps over the window since "
          "the previous log (the first window, with start-up and compilation, is dropped); MFU is model FLOPs per "
          "token x tokens/s per process / the device's peak (the GPU's bf16 dense peak, or a measured matmul "
          "peak on CPU). The device model is not recorded in the run files.", ""]
    return "\n".join(L)

