"""SAMPLES.md of a training run: the fixed prompts' completions at each major checkpoint.

The completions come from RUN/samples.jsonl, written by the trainer at each checkpoint
save (train.ckpt_samples; they survive pruning). A run without it is sampled here, from
each checkpoint still on disk, with the same prompts and settings (scalelab.eval.generate:
temperature 0.8, top-k 50, 64 tokens, prompt i with seed + i). At most MAJOR checkpoints
are shown, spread evenly in log(step) with the first and the last always in.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scalelab.errors import ScalelabError
from scalelab.io import atomic_write_text
from scalelab.report.markdown import intc
from scalelab.report.run_files import RunFiles, _table

MAJOR = 8


def major(records: list[dict[str, Any]], k: int = MAJOR) -> list[dict[str, Any]]:
    """Up to k records, evenly spaced in log(step), first and last included."""
    if len(records) <= k:
        return list(records)
    logs = [math.log(max(1, r["step"])) for r in records]
    picks = {0, len(records) - 1}
    for j in range(1, k - 1):
        target = logs[0] + (logs[-1] - logs[0]) * j / (k - 1)
        picks.add(min(range(len(records)), key=lambda i: (abs(logs[i] - target), i in picks)))
    return [records[i] for i in sorted(picks)]


def _no_samples_md(run: RunFiles, reason: str) -> str:
    return "\n".join([f"# Samples: {run.name}", "", f"No samples were generated: {reason}.", "",
                      f"Generate them with `scalelab sample {run.dir} --out {run.dir}/SAMPLES.md` once the "
                      "cause is fixed.", ""])


def _sample_checkpoints(run: RunFiles, device: str | None, max_tokens: int | None) -> list[dict[str, Any]]:
    """samples.jsonl-shaped records drawn now from the checkpoints on disk (major ones only)."""
    from dataclasses import asdict

    from scalelab.eval.generate import SampleSettings, sample_prompts
    from scalelab.eval.loading import load_model_for_eval
    from scalelab.train import checkpoint as ck

    dirs = sorted(ck.list_checkpoints(run.dir), key=lambda d: ck.step_of(d.name))
    chosen = major([{"step": ck.step_of(d.name), "dir": d} for d in dirs])
    settings = SampleSettings()
    if max_tokens is not None:
        settings.max_tokens = max_tokens
    out = []
    for c in chosen:
        model = load_model_for_eval(str(c["dir"]), device=device)
        state = ck.load_state(c["dir"])
        smp = sample_prompts(model, None, settings)
        out.append({"step": c["step"], "tokens": state.get("tokens_seen"), "checkpoint": c["dir"].name,
                    "settings": asdict(settings),
                    "samples": [{"prompt": s["prompt"], "completion": s["completion"], "tokens": s["tokens"]}
                                for s in smp]})
    return out


def trajectory_md(run: RunFiles, records: list[dict[str, Any]], source: str) -> str:
    val = {r.get("step"): r.get("val_loss") for r in run.evals}
    s = records[-1].get("settings") or {}
    L = [f"# Samples: {run.name}", "",
         f"The same {len(records[-1]['samples'])} fixed prompts completed at {len(records)} checkpoints, with the "
         "same seed and decoding settings at each, so the rows differ only by how far training had got "
         f"(from {source}).", "",
         *_table(["setting", "value"], [[k, s.get(k)] for k in ("temperature", "top_k", "top_p", "max_tokens",
                                                                  "seed", "use_cache")]),
         "", f"Prompt i uses seed {s.get('seed')} + i. Generation stops at the end-of-text token or after "
         f"{s.get('max_tokens')} tokens.", "", "Checkpoints shown:", "",
         *_table(["step", "tokens", "validation loss at that step"],
                 [[intc(r["step"]), intc(r.get("tokens")),
                   f"{val[r['step']]:.4f}" if isinstance(val.get(r["step"]), float) else "not evaluated"]
                  for r in records]), ""]
    prompts = [x["prompt"] for x in records[-1]["samples"]]
    for i, prompt in enumerate(prompts, 1):
        L += [f"## {i}. {prompt.splitlines()[0][:80]}", ""]
        for r in records:
            hit = next((x for x in r["samples"] if x["prompt"] == prompt), None)
            if hit is None:
                continue
            L += [f"### step {intc(r['step'])} ({intc(r.get('tokens'))} tokens)", "", "```text",
                  prompt + hit["completion"], "```", ""]
    return "\n".join(L)


def write_samples(run: RunFiles, path: Path, device: str | None = None, max_tokens: int | None = None) -> dict[str, Any]:
    """SAMPLES.md as a trajectory (see the module docstring); returns what the documents cite."""
    records, source = run.samples_log, "samples.jsonl, written by the trainer at each checkpoint save"
    if not records:
        if not (run.dir / "checkpoints").is_dir() or (run.last_state is None and run.best_state is None):
            reason = "the run has no checkpoint and no samples.jsonl"
            atomic_write_text(path, _no_samples_md(run, reason))
            return {"ok": False, "reason": reason}
        try:
            records = _sample_checkpoints(run, device, max_tokens)
        except ImportError as e:
            reason = f"the generation module is not available ({e})"
            atomic_write_text(path, _no_samples_md(run, reason))
            return {"ok": False, "reason": reason}
        except ScalelabError as e:
            reason = f"a checkpoint could not be loaded or sampled ({e})"
            atomic_write_text(path, _no_samples_md(run, reason))
            return {"ok": False, "reason": reason}
        source = "the checkpoints on disk, sampled by `scalelab report` (the run has no samples.jsonl)"
        if not records:
            reason = "the run has no checkpoint on disk and no samples.jsonl"
            atomic_write_text(path, _no_samples_md(run, reason))
            return {"ok": False, "reason": reason}
    shown = major(records)
    atomic_write_text(path, trajectory_md(run, shown, source))
    n_prompts = len(shown[-1]["samples"])
    return {"ok": True, "n": sum(len(r["samples"]) for r in shown), "prompts": n_prompts,
            "steps": [r["step"] for r in shown], "source": "samples.jsonl" if run.samples_log else "checkpoints",
            "checkpoint": shown[-1].get("checkpoint")}
