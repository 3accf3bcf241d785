"""A scaling study: plan a family, train every (size, seed), evaluate, fit, plot, write the note.

`run_study(path, overrides)` is what `scalelab study CONFIG` calls. Everything lands in
one folder (study.out_dir):

    configs/<name>-s<seed>.yaml   the exact training config of each run (runnable by hand)
    runs/<name>-s<seed>/          each run's checkpoints, metrics.jsonl, summary.json, train.log
    results.json                  plan, per-run numbers, per-size CIs, fits (docs/FORMATS.md)
    figures/, NOTE.md             plots and the research note (`scalelab report`)

Runs already finished are skipped; interrupted ones resume from their last checkpoint,
so re-running the same command after a crash continues where it stopped.
"""
from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import yaml

from scalelab.config import RunConfig, config_from_dict
from scalelab.errors import TrainingError
from scalelab.eval.stats import format_ci
from scalelab.io import atomic_write_json, atomic_write_text, git_hash, software_versions
from scalelab.scaling.executors import run_jobs
from scalelab.scaling.plan import PlanRules, attach_gpu_hours, parse_size, plan_family, plan_isoflop
from scalelab.scaling.results import check_monotone, plan_primary_ratio, summarize_sizes  # noqa: F401 - re-exported
from scalelab.scaling.study_config import (  # noqa: F401 - names callers import from here
    DESIGNS,
    EXECUTORS,
    SLURM_CLUSTERS,
    StudyConfig,
    StudyEval,
    StudyFit,
    StudyPlan,
    StudySlurm,
    base_run_config,
    load_study_config,
    planned_vocab,
)
from scalelab.scaling.study_eval import evaluate_tasks, read_ladder_point

FORMAT_VERSION = 1


def _rules(cfg: StudyConfig, base: RunConfig, vocab_size: int, data_tokens: int | None, ratio: float) -> PlanRules:
    sp = cfg.plan
    return PlanRules(vocab_size=vocab_size, seq_len=base.model.seq_len, tokens_per_param=ratio,
                     count=sp.count, lr_rule=sp.lr_rule, lr=sp.lr, batch_tokens=sp.batch_tokens,
                     max_micro_batch=sp.max_micro_batch, devices=sp.devices, warmup_frac=sp.warmup_frac,
                     aspect_ratio=sp.aspect_ratio, head_dim=sp.head_dim, mlp=base.model.mlp,
                     multiple_of=sp.multiple_of, tie_embeddings=base.model.tie_embeddings,
                     spacing=sp.spacing, data_tokens=data_tokens, n_layer=sp.n_layer, width_step=sp.width_step)


def make_plan(cfg: StudyConfig, vocab_size: int, data_tokens: int | None) -> dict[str, Any]:
    base = base_run_config(cfg)
    sp = cfg.plan
    if sp.design == "isoflop":
        plan = plan_isoflop(_rules(cfg, base, vocab_size, data_tokens, sp.prior_tokens_per_param),
                            [float(c) for c in sp.budgets], sizes_per_budget=sp.sizes_per_budget, spread=sp.spread,
                            prior_tokens_per_param=sp.prior_tokens_per_param)
        if sp.gpu_peak_tflops:
            attach_gpu_hours(plan, sp.gpu_peak_tflops * 1e12, sp.mfu, seeds=len(cfg.seeds))
        plan["total_flops"] *= len(cfg.seeds)
        plan["total_flops_exact"] *= len(cfg.seeds)
        return plan
    sizes = [parse_size(s) for s in sp.sizes] if sp.sizes else None
    models: list[dict[str, Any]] = []
    warnings: list[str] = []
    for ratio in sp.tokens_per_param:
        rules = _rules(cfg, base, vocab_size, data_tokens, ratio)
        plan = plan_family(rules, sizes=sizes, compute=sp.compute, models=sp.models)
        for m in plan["models"]:
            if len(sp.tokens_per_param) > 1:
                m["name"] = f"{m['name']}-r{ratio:g}"
            m["ratio"] = ratio
        models += plan["models"]
        warnings += plan["warnings"]
        rules_dict = plan["rules"]
    return {"design": "ratios", "rules": rules_dict, "models": models, "warnings": warnings,
            "total_flops": sum(m["flops"] for m in models) * len(cfg.seeds)}


def run_config_tree(cfg: StudyConfig, model: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    tree = copy.deepcopy(cfg.base)
    tree["out_dir"] = str(run_dir)
    tree["seed"] = seed
    tree.setdefault("model", {}).update(n_layer=model["n_layer"], d_model=model["d_model"], n_head=model["n_head"],
                                       multiple_of=cfg.plan.multiple_of)
    t = tree.setdefault("train", {})
    t.update(lr=model["lr"], batch_tokens=model["batch_tokens"], micro_batch=model["micro_batch"],
             max_steps=model["steps"], warmup_steps=model["warmup_steps"], resume=True)
    t.pop("max_tokens", None)
    t.pop("max_time_s", None)
    # ~8 evaluations per run give each run a loss curve
    t.setdefault("eval_every", max(1, model["steps"] // 8))
    t.setdefault("ckpt_every", max(1, model["steps"] // 4))
    config_from_dict(copy.deepcopy(tree))
    return tree


def _run_is_done(run_dir: Path, steps: int) -> bool:
    import json

    s = run_dir / "summary.json"
    if not s.is_file():
        return False
    try:
        return json.loads(s.read_text()).get("steps") == steps
    except ValueError:
        return False


def _curve(run_dir: Path) -> list[dict[str, float]]:
    from scalelab.train.logging import read_metrics

    records = read_metrics(run_dir / "metrics.jsonl")
    curve, window = [], []
    for r in records:
        if r.get("kind") == "train":
            window.append(r["loss"])
        elif r.get("kind") == "eval":
            point = {"step": r["step"], "tokens": r["tokens"], "val_loss": r["val_loss"]}
            if window:
                point["train_loss"] = sum(window) / len(window)
            if "val_bpb" in r:
                point["val_bpb"] = r["val_bpb"]
            curve.append(point)
            window = []
    return curve


def collect_run(model: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    import json

    s = json.loads((run_dir / "summary.json").read_text())
    n = s["non_embedding_params"]
    return {
        "name": model["name"], "seed": seed, "run_dir": str(run_dir),
        "n_layer": model["n_layer"], "d_model": model["d_model"], "n_head": model["n_head"],
        "params": s["params"], "non_embedding_params": n, "tokens": s["tokens"],
        "flops": 6.0 * n * s["tokens"], "flops_exact": s["flops_per_token"] * s["tokens"],
        "loss": s["val_loss"], "val_bpb": s.get("val_bpb"), "val_ppl": s.get("val_ppl"),
        "best_val_loss": s.get("best_val_loss"), "train_time_s": s["train_time_s"], "epochs": s["epochs"],
        "lr": model["lr"], "batch_tokens": model["batch_tokens"], "ratio": model.get("ratio"),
        "budget": model.get("budget"), "budget_index": model.get("budget_index"),
        "curve": _curve(run_dir),
    }


def fit_all(results: dict[str, Any], cfg: StudyConfig) -> dict[str, Any]:
    """Every law and check of the study's design (scaling/study_fits.py)."""
    from scalelab.scaling.study_fits import fit_study

    return fit_study(results, n_boot=cfg.fit.n_boot, seed=cfg.fit.seed, resample=cfg.fit.resample,
                     predict=cfg.fit.predict)


def run_study(path: str | Path, overrides: list[str] | None = None, *, progress: bool = True,
              report: Callable[[Path], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Plan, train, evaluate and fit; results.json is written before `report` (a hook such
    as report.study_note.write_report: the report layer sits above this one) is called."""
    cfg = load_study_config(path, overrides)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_run_config(cfg)

    from scalelab.data.prepare import load_meta, prepare_data

    meta_dir = Path(base.data.dir)
    if not (meta_dir / "meta.json").is_file():
        prepare_data(base.data, progress=progress)
    meta = load_meta(meta_dir)
    tok = meta.get("tokenizer") or {}
    vocab = base.model.vocab_size or tok.get("vocab_size")
    train_tokens = (meta.get("splits", {}).get("train") or {}).get("tokens")
    plan = make_plan(cfg, int(vocab), train_tokens)

    jobs = []
    for m in plan["models"]:
        for seed in cfg.seeds:
            run_name = f"{m['name']}-s{seed}"
            run_dir = out / "runs" / run_name
            tree = run_config_tree(cfg, m, seed, run_dir)
            cpath = out / "configs" / f"{run_name}.yaml"
            atomic_write_text(cpath, yaml.safe_dump(tree, sort_keys=False))
            jobs.append((m, seed, run_dir, cpath))

    todo = [j for j in jobs if not _run_is_done(j[2], j[0]["steps"])]
    threads = base.train.threads
    say = print if progress else (lambda *a, **k: None)
    say(f"study '{cfg.name}': {len(plan['models'])} models x {len(cfg.seeds)} seeds = {len(jobs)} runs "
        f"({len(jobs) - len(todo)} done), {plan['total_flops']:.2e} FLOPs (6ND), {cfg.parallel_runs} at a time",
        flush=True)
    for w in plan["warnings"]:
        say(f"warning: {w}", flush=True)
    start = time.perf_counter()
    # Largest first: the long runs start early and the short ones fill the gaps.
    todo.sort(key=lambda j: -j[0]["flops"])
    errors = []

    def on_done(job, err):
        m, seed, run_dir, _ = job
        if err is not None:
            errors.append(str(err))
            say(f"  FAILED {run_dir.name}: {err}", flush=True)
            return
        import json

        s = json.loads((run_dir / "summary.json").read_text())
        say(f"  {run_dir.name:>14}: val loss {s['val_loss']:.4f}, trained in {s['train_time_s']:.0f}s "
            f"[{time.perf_counter() - start:.0f}s elapsed]", flush=True)

    run_jobs(todo, cfg, on_done, threads=threads, say=say)
    if errors:
        raise TrainingError(f"{len(errors)} run(s) failed; fix and re-run the same command to continue: "
                            + errors[0])

    runs = [collect_run(m, seed, run_dir) for m, seed, run_dir, _ in jobs]
    if cfg.eval.tasks:
        say(f"evaluating {', '.join(cfg.eval.tasks)} on {len(runs)} runs (limit {cfg.eval.limit})", flush=True)
        for r in runs:
            r["tasks"] = evaluate_tasks(r, cfg)
    sizes = summarize_sizes(runs)
    results = {
        "format_version": FORMAT_VERSION, "kind": "scalelab.study", "name": cfg.name,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": asdict(cfg),
        "commands": [f"scalelab study {path}" + "".join(f" {o}" for o in overrides or []),
                     f"scalelab fit {out / 'results.json'} --law kaplan",
                     f"scalelab report {out}"],
        "data": {"source": base.data.source, "dir": str(meta_dir), "tokenizer": tok.get("name"),
                 "tokenizer_identity": tok.get("identity"), "vocab_size": vocab,
                 "train_tokens": train_tokens,
                 "val_tokens": (meta.get("splits", {}).get("val") or {}).get("tokens"),
                 "train_docs": (meta.get("splits", {}).get("train") or {}).get("docs")},
        "hardware": _hardware(base, cfg),
        "ladder_points": [read_ladder_point(p) for p in cfg.eval.ladder_points],
        "plan": plan,
        "runs": runs,
        "sizes": sizes,
        "checks": _checks(sizes, plan),
        "wall_time_s": time.perf_counter() - start,
        "versions": software_versions(), "git": git_hash(),
    }
    results_path = out / "results.json"
    results["fits"] = fit_all(results, cfg)
    if plan.get("design") == "isoflop":
        from scalelab.scaling.study_fits import frontier_check

        results["checks"] = frontier_check(results)
    atomic_write_json(results_path, results)
    if report is not None:
        results["report"] = {k: [str(p) for p in v] if isinstance(v, list) else str(v)
                             for k, v in report(out).items()}
    return results


def _checks(sizes: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, Any]:
    if plan.get("design") == "isoflop":
        return {}  # filled once the runs are collected (study_fits.frontier_check)
    return check_monotone(sizes, plan_primary_ratio(plan))


def _hardware(base: RunConfig, cfg: StudyConfig) -> dict[str, Any]:
    import platform

    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    info = {"device": dev, "threads_per_run": base.train.threads, "parallel_runs": cfg.parallel_runs,
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__}
    if dev == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def _ci(v, ci) -> str:
    return format_ci(v, ci, no_ci="")


def format_isoflop_study(results: dict[str, Any]) -> str:
    """The main job's screen summary: loss per (budget, size) with CIs, the three exponents,
    the L(N, D) fit, the consistency and holdout checks, the downstream verdict."""
    lines = [f"{'budget C':>9} {'size':>10} {'params':>8} {'tokens':>9} {'tok/N':>6} {'seeds':>5} "
             f"{'val loss (95% CI)':>24}"]
    budget_of = {r["name"]: r["budget"] for r in results["runs"]}
    for s in sorted(results["sizes"], key=lambda s: (budget_of[s["name"]], s["params"])):
        run = {"budget": budget_of[s["name"]]}
        lines.append(f"{run['budget']:>9.2e} {s['name']:>10} {s['params']:>8,} {s['tokens']:>9,} "
                     f"{s['tokens'] / s['params']:>6.1f} {s['n_seeds']:>5} {_ci(s['loss']['mean'], [s['loss']['lo'], s['loss']['hi']]):>24}")
    fits = results.get("fits", {})
    for row in fits.get("exponents") or []:
        got = row.get("missing") or _ci(row.get("a"), row.get("ci"))
        lines.append(f"a = dlog N_opt / dlog C, {row['approach']} ({row['law']}): {got}   "
                     f"(Chinchilla: {row['chinchilla_a']:.2f})")
    c = fits.get("chinchilla") or {}
    if c and not c.get("degenerate"):
        ci = c.get("ci") or {}
        lines.append(f"L(N, D) = E + A/N^alpha + B/D^beta: alpha = {_ci(c['alpha'], ci.get('alpha'))}, "
                     f"beta = {_ci(c['beta'], ci.get('beta'))}, E = {_ci(c['E'], ci.get('E'))}")
    elif c:
        lines.append(f"L(N, D) fit: degenerate ({c.get('reason')})")
    con = fits.get("consistency") or {}
    if con.get("checked"):
        lines.append(f"fitted L_opt(C) vs best observed: max |residual| {con['max_abs_residual']:.3f} nats, "
                     + ("FLAGGED: the fit predicts below the data" if con["flagged"] else "consistent"))
    for name, h in (fits.get("holdout") or {}).items():
        if h.get("degenerate"):
            lines.append(f"holdout ({name}): not fitted ({h.get('reason')})")
        elif "runs" not in h:  # approach 2's N_opt extrapolation: one number
            lines.append(f"holdout ({h['target']}, {h['held_out']}): predicted {h['predicted']:,.0f} "
                         f"[{h['pi'][0]:,.0f}, {h['pi'][1]:,.0f}], observed vertex {h['observed']:,.0f} "
                         f"({'inside' if h['inside'] else 'OUTSIDE'})")
        else:
            lines.append(f"holdout ({h['target']}, {h['held_out']}): mean |error| {h['mean_abs_error']:.3f}, "
                         f"{h['coverage']:.0%} of {h['n_held_out']} inside the {h['confidence']:.0%} prediction intervals")
    chk = results.get("checks") or {}
    lines.append(f"loss falls along the compute frontier beyond seed noise: "
                 f"{'yes' if chk.get('loss_decreases_beyond_noise') else 'NO'}; a downstream metric does too: "
                 f"{'yes' if chk.get('downstream_separates') else 'NO'}")
    return "\n".join(lines)


def format_study(results: dict[str, Any]) -> str:
    if (results.get("plan") or {}).get("design") == "isoflop":
        return format_isoflop_study(results)
    lines = [f"{'size':>10} {'non-emb N':>10} {'tokens':>10} {'seeds':>5} {'val loss (95% CI)':>26} {'bpb':>7}"]
    for s in results["sizes"]:
        lo, hi = s["loss"]["lo"], s["loss"]["hi"]
        ci = f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) else "[n/a]"
        bpb = f"{s['val_bpb']['mean']:.3f}" if "val_bpb" in s else "-"
        lines.append(f"{s['name']:>10} {s['non_embedding_params']:>10,} {s['tokens']:>10,} {s['n_seeds']:>5} "
                     f"{s['loss']['mean']:>8.4f} {ci:>17} {bpb:>7}")
    k = results.get("fits", {}).get("kaplan", {})
    if k and not k.get("degenerate"):
        ci = (k.get("ci") or {}).get("alpha") or [float("nan")] * 2
        lines.append(f"Kaplan fit L(N) = E + A N^-alpha: alpha = {k['alpha']:.3f} (95% CI {ci[0]:.3f}..{ci[1]:.3f})")
    elif k:
        lines.append(f"Kaplan fit: degenerate ({k.get('reason', '')})")
    c = results.get("checks", {})
    lines.append(f"loss decreases with size beyond seed noise: {'yes' if c.get('loss_decreases_beyond_noise') else 'NO'}")
    return "\n".join(lines)
