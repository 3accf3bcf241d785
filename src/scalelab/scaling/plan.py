"""Plan a compute-optimal model family from target sizes or a compute budget.

Rules (all overridable):
- tokens: D = tokens_per_param x N (Hoffmann et al. 2022, "Chinchilla": ~20 tokens per
  parameter at the compute optimum). N is the non-embedding parameter count by default
  (Kaplan et al.'s convention, the N of our scaling fits); `count="total"` counts
  embeddings too, as Chinchilla's tables do. For models of 1B+ the two barely differ;
  for tiny models with a large vocabulary they differ a lot, so say which you used.
- compute: C = 6 N D (reported next to the exact count from model/sizing.py, which adds
  the lm_head matmul and the attention term).
- batch size and peak learning rate from the compute budget, DeepSeek LLM (DeepSeek-AI
  2024, "Scaling Language Models with Longtermism", sec. 3.1):
      lr_opt = 0.3118 * C^-0.125,   B_opt = 0.2920 * C^0.3271 tokens.
  `lr_rule="fixed"` keeps the lr / batch given by the user.
- warmup: `warmup_frac` of the steps (default 2%), at least 1 step.
- a compute budget C with k models: the largest model is compute-optimal for the share of
  C it gets; sizes are spaced `spacing` x apart and the family's total 6ND equals C
  (k = 1 puts all of C in one model: 5.76e23 FLOPs gives Chinchilla's 70B / 1.4T).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab.errors import ConfigError
from scalelab.model.gpt import GPTConfig
from scalelab.model.sizing import count_params, flops_per_token, shape_for_params

DEEPSEEK_LR = (0.3118, -0.125)
DEEPSEEK_BATCH = (0.2920, 0.3271)
DATA_CONSTRAINED_EPOCHS = 4.0  # Muennighoff et al. 2023: beyond ~4 epochs repeats lose value


@dataclass
class PlanRules:
    vocab_size: int = 50257
    seq_len: int = 1024
    tokens_per_param: float = 20.0
    count: str = "non_embedding"  # which N sets the token budget: non_embedding | total
    lr_rule: str = "deepseek"  # deepseek | fixed
    lr: float | None = None  # with lr_rule=fixed (or to override)
    batch_tokens: int | None = None  # fixed batch (tokens); None = from the rule
    max_micro_batch: int = 16  # sequences per device per micro-step
    devices: int = 1  # data-parallel processes per run (the batch must split evenly over them)
    warmup_frac: float = 0.02
    aspect_ratio: float = 64.0
    head_dim: int = 64
    mlp: str = "swiglu"
    multiple_of: int = 64  # FFN width rounding (use 16 for tiny models)
    tie_embeddings: bool = True
    spacing: float = 4.0  # size ratio between neighbours in a compute-budget family
    n_layer: int | None = None  # fixed depth: every model has this many layers, widths vary (one shape family)
    width_step: int = 8  # with n_layer: widths are multiples of this
    data_tokens: int | None = None  # tokens in the training corpus (for epochs)
    model_overrides: dict[str, Any] = field(default_factory=dict)


_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_size(text: str) -> float:
    """'10M' -> 1e7, '1.5B' -> 1.5e9, '3e5' -> 3e5."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kmbgt]?)\s*", str(text).lower())
    if not m:
        raise ConfigError(f"cannot read model size '{text}'; use e.g. 10M, 1.5B or 3e5")
    value = float(m.group(1)) * _SUFFIX[m.group(2)]
    if value <= 0:
        raise ConfigError(f"model size '{text}' must be > 0")
    return value


def lr_for_compute(flops: float) -> float:
    a, b = DEEPSEEK_LR
    return a * flops**b


def batch_for_compute(flops: float) -> float:
    a, b = DEEPSEEK_BATCH
    return a * flops**b


def _round_batch(tokens: float, seq_len: int, max_micro: int, devices: int = 1) -> tuple[int, int]:
    """A power-of-two number of sequences near `tokens` (at least one per device), and a
    per-device micro-batch that divides it evenly across `devices`."""
    seqs = 2 ** max(0, round(math.log2(max(1.0, tokens / seq_len))))
    while seqs % devices:
        seqs *= 2 if devices % 2 == 0 else devices
    seqs = max(seqs, devices)
    micro = min(seqs // devices, 2 ** int(math.log2(max(1, max_micro))))
    while (seqs // devices) % micro:
        micro //= 2
    return seqs * seq_len, micro


def _heads_for_width(d: int, head_dim: int) -> int | None:
    """Heads of the largest even size <= head_dim (>= 8) that split d into at least two."""
    hd = head_dim
    while hd >= 8:
        if d % hd == 0 and d // hd >= 2 and hd % 2 == 0:
            return d // hd
        hd -= 2
    return None


def _fixed_depth_shape(target: float, rules: PlanRules) -> dict[str, int]:
    """Width (a multiple of width_step) whose parameter count (as rules.count counts) is nearest
    the target in log space."""
    best = None
    d = rules.width_step
    while True:
        heads = _heads_for_width(d, rules.head_dim)
        if heads:
            cfg = GPTConfig(vocab_size=rules.vocab_size, n_layer=rules.n_layer, d_model=d, n_head=heads,
                            mlp=rules.mlp, multiple_of=rules.multiple_of, tie_embeddings=rules.tie_embeddings)
            n = count_params(cfg)["total" if rules.count == "total" else "non_embedding"]
            err = abs(math.log(n / target))
            if best is None or err < best[0]:
                best = (err, d, heads)
            if n > target:
                break
        d += rules.width_step
    return {"n_layer": rules.n_layer, "d_model": best[1], "n_head": best[2]}


def _model_cfg(non_embedding: float, rules: PlanRules, target: float | None = None) -> GPTConfig:
    if rules.n_layer:  # `target` counted as rules.count
        shape = _fixed_depth_shape(target if target is not None else non_embedding, rules)
    else:
        shape = shape_for_params(non_embedding, aspect_ratio=rules.aspect_ratio, head_dim=rules.head_dim,
                                 mlp=rules.mlp, multiple_of=rules.multiple_of)
    kw = dict(vocab_size=rules.vocab_size, seq_len=rules.seq_len, mlp=rules.mlp, multiple_of=rules.multiple_of,
              tie_embeddings=rules.tie_embeddings, **shape)
    kw.update(rules.model_overrides)
    return GPTConfig(**kw)


def _non_embedding_for_total(total: float, rules: PlanRules) -> float:
    """Invert total = non_embedding + embedding(d_model(non_embedding)) by bisection in log space."""
    lo, hi = 1e3, total
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        t = count_params(_model_cfg(mid, rules))["total"]
        lo, hi = (mid, hi) if t < total else (lo, mid)
    return math.sqrt(lo * hi)


def plan_model(target: float, rules: PlanRules, name: str | None = None,
               budget: float | None = None) -> dict[str, Any]:
    """One model for a target size (counted as rules.count): compute-optimal at
    rules.tokens_per_param, or, with `budget`, trained on D = budget / (6 N) tokens
    (one point of an IsoFLOP profile; lr and batch then follow the budget, not the size)."""
    if rules.n_layer:
        cfg = _model_cfg(target, rules, target=target)
    else:
        non_emb_target = target if rules.count == "non_embedding" else _non_embedding_for_total(target, rules)
        cfg = _model_cfg(non_emb_target, rules)
    sizes = count_params(cfg)
    n = sizes["total"] if rules.count == "total" else sizes["non_embedding"]
    tokens = rules.tokens_per_param * n if budget is None else budget / (6.0 * n)
    flops = 6.0 * n * tokens
    if rules.batch_tokens:
        batch, micro = _round_batch(rules.batch_tokens, rules.seq_len, rules.max_micro_batch, rules.devices)
    elif rules.lr_rule == "deepseek":
        batch, micro = _round_batch(batch_for_compute(flops), rules.seq_len, rules.max_micro_batch, rules.devices)
    else:
        raise ConfigError("lr_rule=fixed needs batch_tokens")
    if rules.lr is not None:
        lr = rules.lr
    elif rules.lr_rule == "deepseek":
        lr = lr_for_compute(flops)
    else:
        raise ConfigError("lr_rule=fixed needs lr")
    steps = max(1, math.ceil(tokens / batch))
    tokens = steps * batch  # whole steps
    out = {
        "name": name or _size_name(n),
        "n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_head": cfg.n_head,
        "params": sizes["total"], "non_embedding_params": sizes["non_embedding"],
        "embedding_params": sizes["embedding"],
        "tokens": tokens, "tokens_per_param": tokens / n,
        "flops": 6.0 * n * tokens, "flops_exact": flops_per_token(cfg) * tokens,
        "lr": lr, "batch_tokens": batch, "micro_batch": micro, "steps": steps,
        "warmup_steps": max(1, round(rules.warmup_frac * steps)),
        "seq_len": rules.seq_len, "vocab_size": rules.vocab_size,
    }
    if rules.data_tokens:
        out["epochs"] = tokens / rules.data_tokens
    return out


def _size_name(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v >= 10 else f"{v:.1f}{unit}".replace(".0", "")
    return f"{n:.0f}"


def plan_family(rules: PlanRules, sizes: list[float] | None = None, compute: float | None = None,
                models: int = 4) -> dict[str, Any]:
    """The whole family plus warnings; exactly one of `sizes` / `compute`."""
    if (sizes is None) == (compute is None):
        raise ConfigError("give either sizes (e.g. --sizes 10M,50M) or a compute budget (--compute 1e19)")
    if rules.count not in ("total", "non_embedding"):
        raise ConfigError(f"count must be total or non_embedding, got '{rules.count}'")
    if compute is not None:
        if compute <= 0 or models < 1:
            raise ConfigError("--compute must be > 0 and --models >= 1")
        # sum_i 6 * r * N_i^2 with N_i = N_max * spacing^-(k-1-i)  ==  compute
        weights = sum(rules.spacing ** (-2 * j) for j in range(models))
        n_max = math.sqrt(compute / (6.0 * rules.tokens_per_param * weights))
        sizes = [n_max * rules.spacing ** (-(models - 1 - i)) for i in range(models)]
    family = [plan_model(s, rules) for s in sorted(sizes)]
    warnings = []
    names = [m["name"] for m in family]
    for i, m in enumerate(family):  # unique names
        if names.count(m["name"]) > 1:
            m["name"] = f"{m['name']}-{i}"
        if m.get("epochs", 0) > DATA_CONSTRAINED_EPOCHS:
            warnings.append(f"{m['name']} repeats the corpus {m['epochs']:.1f} times: past ~4 epochs extra "
                            f"repeats are worth much less than fresh data (Muennighoff et al. 2023)")
    return {
        "rules": {k: v for k, v in rules.__dict__.items()},
        "total_flops": sum(m["flops"] for m in family),
        "models": family,
        "warnings": warnings,
    }


def isoflop_targets(budget: float, sizes_per_budget: int, spread: float, prior_tokens_per_param: float) -> list[float]:
    """Model sizes for one IsoFLOP profile: geometric from N*/spread to N*·spread around the
    prior optimum N* = sqrt(C / (6 r)) (D = r N at the optimum, r = 20 for Chinchilla)."""
    n_star = math.sqrt(budget / (6.0 * prior_tokens_per_param))
    m = sizes_per_budget
    return [n_star * spread ** (-1.0 + 2.0 * i / (m - 1)) for i in range(m)] if m > 1 else [n_star]


def _distinct_sizes(planned: list[dict[str, Any]], rules: PlanRules, budget: float) -> list[dict[str, Any]]:
    """Make the planned sizes of one budget distinct: a size that rounded onto its smaller
    neighbour's shape moves up to the next shape of the family (fixed depth), so a budget
    keeps its number of sizes; without a fixed depth, duplicates are dropped."""
    out: list[dict[str, Any]] = []
    for m in planned:
        while out and (m["n_layer"], m["d_model"]) <= (out[-1]["n_layer"], out[-1]["d_model"]) \
                and m["params"] <= out[-1]["params"]:
            if not rules.n_layer:
                m = None
                break
            # next width of the family: just above the previous size
            m = plan_model(out[-1]["params" if rules.count == "total" else "non_embedding_params"] * 1.15,
                           rules, budget=budget)
            if m["params"] <= out[-1]["params"]:
                d = out[-1]["d_model"] + rules.width_step
                while not _heads_for_width(d, rules.head_dim):
                    d += rules.width_step
                cfg = GPTConfig(vocab_size=rules.vocab_size, n_layer=rules.n_layer, d_model=d,
                                n_head=_heads_for_width(d, rules.head_dim), mlp=rules.mlp,
                                multiple_of=rules.multiple_of, tie_embeddings=rules.tie_embeddings)
                target = count_params(cfg)["total" if rules.count == "total" else "non_embedding"]
                m = plan_model(target, rules, budget=budget)
        if m is not None:
            out.append(m)
    return out


def plan_isoflop(rules: PlanRules, budgets: list[float], sizes_per_budget: int = 5, spread: float = 4.0,
                 prior_tokens_per_param: float = 20.0) -> dict[str, Any]:
    """Hoffmann et al. approach-2 design: per compute budget C, `sizes_per_budget` models spaced
    around a prior law's optimum (x 1/spread ... x spread), each trained on D = C / (6 N).

    Sizes whose shapes coincide after rounding are planned once. lr and batch follow C
    (DeepSeek rules), so within a budget only the size changes. Models are named
    ``c<k>-<L>x<d>`` (k = budget index from 1)."""
    if not budgets or any(not (c > 0) for c in budgets):
        raise ConfigError("IsoFLOP budgets must be a non-empty list of positive FLOP counts, e.g. [1e11, 2e11, 4e11]")
    if sizes_per_budget < 3:
        raise ConfigError(f"sizes_per_budget must be >= 3 (a parabola needs 3 sizes; 5+ is better), got {sizes_per_budget}")
    if not spread > 1:
        raise ConfigError(f"spread must be > 1 (sizes from N*/spread to N*·spread), got {spread}")
    models, warnings = [], []
    for k, budget in enumerate(sorted(float(c) for c in budgets), start=1):
        targets = isoflop_targets(budget, sizes_per_budget, spread, prior_tokens_per_param)
        planned = _distinct_sizes([plan_model(t, rules, budget=budget) for t in targets], rules, budget)
        for m in planned:
            m.update(name=f"c{k}-{m['n_layer']}x{m['d_model']}", budget=budget, budget_index=k)
        models += planned
        if len(planned) < sizes_per_budget:
            warnings.append(f"budget {budget:.3g}: only {len(planned)} distinct sizes after rounding shapes "
                            f"(use a finer width_step or a wider spread)")
        if min(m["steps"] for m in planned) < 20:
            warnings.append(f"budget {budget:.3g}: the largest model trains for fewer than 20 steps; raise the budget")
    for m in models:
        if m.get("epochs", 0) > DATA_CONSTRAINED_EPOCHS:
            warnings.append(f"{m['name']} repeats the corpus {m['epochs']:.1f} times: past ~4 epochs extra "
                            f"repeats are worth much less than fresh data (Muennighoff et al. 2023)")
    return {
        "design": "isoflop",
        "rules": {k: v for k, v in rules.__dict__.items()},
        "budgets": sorted(float(c) for c in budgets),
        "sizes_per_budget": sizes_per_budget, "spread": spread, "prior_tokens_per_param": prior_tokens_per_param,
        "total_flops": sum(m["flops"] for m in models),
        "total_flops_exact": sum(m["flops_exact"] for m in models),
        "models": models,
        "warnings": warnings,
    }


def gpu_hours(flops_exact: float, peak_flops: float, mfu: float) -> float:
    """Wall-clock GPU-hours for a training FLOP count at a sustained fraction `mfu` of `peak_flops`."""
    return flops_exact / (peak_flops * mfu) / 3600.0


def format_plan(plan: dict[str, Any]) -> str:
    head = (f"{'name':>10} {'shape':>9} {'params':>11} {'non-emb':>11} {'tokens':>10} {'tok/N':>5} "
            f"{'C=6ND':>9} {'lr':>8} {'batch':>8} {'steps':>7} {'warmup':>6}")
    rows = [head, "-" * len(head)]
    for m in plan["models"]:
        rows.append(
            f"{m['name']:>10} {m['n_layer']:>3}x{m['d_model']:<5} {m['params']:>11,} {m['non_embedding_params']:>11,} "
            f"{m['tokens']:>10.3g} {m['tokens_per_param']:>5.1f} {m['flops']:>9.2e} {m['lr']:>8.2e} "
            f"{m['batch_tokens']:>8,} {m['steps']:>7,} {m['warmup_steps']:>6,}"
            + (f"  {m['epochs']:.2f} ep" if "epochs" in m else ""))
    gpu = plan.get("gpu")
    for k, budget in enumerate(plan.get("budgets") or [], start=1):
        ms = [m for m in plan["models"] if m.get("budget_index") == k]
        exact = sum(m["flops_exact"] for m in ms)
        line = f"budget {k}: C = {budget:.3e} FLOPs (6ND) x {len(ms)} sizes, {exact:.3e} exact FLOPs per seed"
        if gpu:
            line += f", {gpu_hours(exact, gpu['peak_flops'], gpu['mfu']):.3g} GPU-h"
        rows.append(line)
    rows.append(f"total compute (6ND): {plan['total_flops']:.3e} FLOPs")
    if gpu:
        rows.append(f"GPU-hours per seed: {gpu['hours']:.3g}, for {gpu['seeds']} seed(s): {gpu['hours_all_seeds']:.3g} "
                    f"(exact FLOPs at {gpu['mfu']:.0%} MFU of {gpu['peak_flops'] / 1e12:.0f} TFLOP/s; "
                    "measured MFU: docs/bench-gpu.md)")
    rows += [f"warning: {w}" for w in plan["warnings"]]
    return "\n".join(rows)


def attach_gpu_hours(plan: dict[str, Any], peak_flops: float, mfu: float, seeds: int = 1) -> dict[str, Any]:
    """Add the GPU-hours a plan implies (per seed, and for `seeds` seeds) to `plan`."""
    exact = plan.get("total_flops_exact") or sum(m["flops_exact"] for m in plan["models"])
    hours = gpu_hours(exact, peak_flops, mfu)
    plan["gpu"] = {"peak_flops": peak_flops, "mfu": mfu, "hours": hours, "seeds": seeds, "hours_all_seeds": hours * seeds}
    return plan


def write_configs(plan: dict[str, Any], base: dict[str, Any], out_dir: str | Path,
                  runs_dir: str = "runs/family", seed: int | None = None) -> list[Path]:
    """One runnable training config per planned model (base supplies data/train defaults)."""
    import copy

    import yaml

    from scalelab.config import config_from_dict
    from scalelab.io import atomic_write_text

    out = Path(out_dir)
    paths = []
    for m in plan["models"]:
        tree = copy.deepcopy(base)
        tree.setdefault("model", {}).update(
            n_layer=m["n_layer"], d_model=m["d_model"], n_head=m["n_head"], seq_len=m["seq_len"])
        tree["model"].update(plan["rules"].get("model_overrides") or {})
        t = tree.setdefault("train", {})
        t.update(lr=m["lr"], batch_tokens=m["batch_tokens"], micro_batch=m["micro_batch"],
                 max_steps=m["steps"], warmup_steps=m["warmup_steps"])
        t.pop("max_tokens", None)
        tree["out_dir"] = f"{runs_dir}/{m['name']}"
        if seed is not None:
            tree["seed"] = seed
        config_from_dict(tree)  # validate before writing
        path = out / f"{m['name']}.yaml"
        atomic_write_text(path, f"# planned by `scalelab plan`: {m['params']:,} params, {m['tokens']:,} tokens\n"
                          + yaml.safe_dump(tree, sort_keys=False))
        paths.append(path)
    return paths
