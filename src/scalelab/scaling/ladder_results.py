"""results.json queries for the IsoFLOP design (``plan.design == "isoflop"``): budgets x sizes x
seeds -- pure functions over the results dict, used by the report (report/ladder_*.py).
The ratio design's queries, and the field list both designs share, are in scaling/results.py."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from scalelab.scaling.results import LAW_PARAMS, finite, fit_status, good_runs, num, run_n, step


IDENTIFIED_MAX_WIDTH = 0.15  # L(N, D) counts as identified when the 95% CI widths of alpha and beta are <= this


def is_isoflop(results: dict) -> bool:
    """True for a study of the IsoFLOP design (``plan.design == "isoflop"``)."""
    return isinstance(results.get("plan"), dict) and results["plan"].get("design") == "isoflop"


def study_budgets(results: dict) -> list[float]:
    """The compute budgets C (6·N·D FLOPs): ``plan.budgets``, else the runs' ``budget`` values; sorted."""
    b = [num(c) for c in ((results.get("plan") or {}).get("budgets") or []) if finite(c) and num(c) > 0]
    if not b:
        b = [num(r.get("budget")) for r in good_runs(results) if finite(r.get("budget"))]
    return sorted(set(b))


def budget_of(item: dict, budgets: list[float]) -> float | None:
    """The planned budget an item (run, plan model) belongs to: its ``budget`` matched to ``budgets`` (1% tolerance)."""
    if not finite(item.get("budget")):
        return None
    c = num(item["budget"])
    near = [b for b in budgets if abs(b - c) <= 0.01 * max(abs(b), abs(c))]
    return near[0] if near else c


def _ci_of(values: list[float]) -> dict | None:
    from scalelab.eval.stats import mean_ci

    v = [num(x) for x in values if finite(x)]
    return mean_ci(v) if v else None


def run_value(run: dict, task: str | None, metric: str) -> float:
    """``run[metric]`` (``task`` None, e.g. loss, val_bpb) or ``run["tasks"][task][metric]``; nan when absent."""
    if task is None:
        return num(run.get(metric))
    return num(((run.get("tasks") or {}).get(task) or {}).get(metric))


def budget_configs(results: dict, task: str | None = None, metric: str = "loss") -> list[dict]:
    """One row per (budget, size): ``budget``, ``budget_index``, ``name``, ``params`` (total N), ``tokens``,
    ``tokens_per_param``, ``n_seeds``, ``runs`` and ``value`` (Student-t mean CI over seeds of ``metric``,
    None when no run has it). Sorted by budget, then N. The plan's ``steps`` / ``lr`` / ``batch_tokens`` /
    ``epochs`` are attached when the plan lists the model."""
    budgets = study_budgets(results)
    plan = {(str(m.get("name"))): m for m in ((results.get("plan") or {}).get("models") or []) if isinstance(m, dict)}
    groups: dict[tuple, list[dict]] = {}
    for r in good_runs(results):
        groups.setdefault((budget_of(r, budgets), run_n(r, "params"), str(r.get("name"))), []).append(r)
    out = []
    for (C, N, name), rs in groups.items():
        m = plan.get(name, {})
        D = num(rs[0].get("tokens", m.get("tokens")))
        row = {"budget": C, "budget_index": rs[0].get("budget_index", m.get("budget_index")), "name": name,
               "params": N, "non_embedding_params": run_n(rs[0]), "tokens": D,
               "tokens_per_param": D / N if finite(D) and N > 0 else float("nan"),
               "n_seeds": len(rs), "runs": rs, "value": _ci_of([run_value(r, task, metric) for r in rs])}
        for k in ("steps", "lr", "batch_tokens", "epochs"):
            row[k] = m.get(k, rs[0].get(k))
        out.append(row)
    return sorted(out, key=lambda r: (num(r["budget"]) if r["budget"] is not None else -1.0, r["params"]))


def by_budget(rows: list[dict]) -> list[tuple[float | None, list[dict]]]:
    """``[(budget, rows), ...]`` in order, for rows sorted by budget (:func:`budget_configs`)."""
    out: dict = {}
    for r in rows:
        out.setdefault(r["budget"], []).append(r)
    return list(out.items())


def approach_status(fit: Any) -> str:
    """'ok', 'missing' or 'degenerate: <reason>' for any of the design's fits (envelope, isoflop, chinchilla)."""
    if not isinstance(fit, dict) or not fit:
        return "missing"
    if fit.get("degenerate") or fit.get("error"):
        return fit_status(fit)
    law = fit.get("law")
    need = ("a",) if law in ("envelope", "isoflop") else ("E", "A", "B", "alpha", "beta")
    if not all(finite(fit.get(k)) for k in need):
        return "degenerate: no finite parameter estimates"
    return "ok"


def ci_width(ci: Any) -> float:
    """hi - lo of a ``[lo, hi]`` pair, nan when either end is missing."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and finite(ci[0]) and finite(ci[1]):
        return num(ci[1]) - num(ci[0])
    return float("nan")


def identification(fit: Any, max_width: float = IDENTIFIED_MAX_WIDTH) -> dict:
    """Is L(N, D) identified? Yes when the fit is usable and the 95% CI widths of alpha and beta are both
    <= ``max_width``. Returns ``{"identified": bool, "status", "widths": {alpha, beta}, "max_width"}``."""
    status = approach_status(fit)
    ci = (fit.get("ci") or {}) if isinstance(fit, dict) else {}
    widths = {k: ci_width(ci.get(k)) for k in ("alpha", "beta")}
    ok = status == "ok" and all(math.isfinite(w) and w <= max_width for w in widths.values())
    return {"identified": ok, "status": status, "widths": widths, "max_width": max_width}


def parabola(budget_row: dict, N) -> np.ndarray:
    """Approach 2's fitted profile of one budget: L = curvature·(ln N − ln N_opt)² + loss_opt."""
    N = np.asarray(N, float)
    x0 = math.log(num(budget_row["N_opt"]))
    return num(budget_row["curvature"]) * (np.log(N) - x0) ** 2 + num(budget_row["loss_opt"])


def has_parabola(budget_row: Any) -> bool:
    return (isinstance(budget_row, dict) and all(finite(budget_row.get(k)) for k in ("N_opt", "curvature", "loss_opt"))
            and num(budget_row["N_opt"]) > 0)


def power_law_draws(fit: Any, a_key: str = "a", k_key: str = "log_k_N") -> tuple[np.ndarray, np.ndarray] | None:
    """Finite bootstrap draws ``(a, log k)`` of N_opt = k·C^a stored with approach 2 (None when absent)."""
    s = fit.get("samples") if isinstance(fit, dict) else None
    if not isinstance(s, dict) or a_key not in s or k_key not in s:
        return None
    try:
        a, k = np.asarray([num(v) for v in s[a_key]]), np.asarray([num(v) for v in s[k_key]])
    except TypeError:
        return None
    if a.shape != k.shape:
        return None
    ok = np.isfinite(a) & np.isfinite(k)
    return (a[ok], k[ok]) if ok.sum() >= 2 else None


def chinchilla_draws(fit: Any) -> dict[str, np.ndarray] | None:
    """The stored bootstrap draws of an L(N, D) fit dict (E, A, B, alpha, beta), None when absent or unusable."""
    if approach_status(fit) != "ok":
        return None
    s = fit.get("samples")
    if not isinstance(s, dict) or not all(k in s for k in LAW_PARAMS["chinchilla"]):
        return None
    try:
        d = {k: np.asarray([num(v) for v in s[k]]) for k in LAW_PARAMS["chinchilla"]}
    except TypeError:
        return None
    if len({v.size for v in d.values()}) != 1 or next(iter(d.values())).size < 2:
        return None
    return d


def accuracy_metric(results: dict, task: str) -> str:
    """The accuracy metric of a task: the two-step law's ``metric``, else acc_norm when every run has it, else acc."""
    acc = (((results.get("fits") or {}).get("tasks") or {}).get(task) or {}).get("accuracy")
    if isinstance(acc, dict) and acc.get("metric") in ("acc", "acc_norm"):
        return acc["metric"]
    rows = [(r.get("tasks") or {}).get(task) for r in good_runs(results)]
    rows = [t for t in rows if isinstance(t, dict)]
    return "acc_norm" if rows and all(finite(t.get("acc_norm")) for t in rows) else "acc"


def above_chance_counts(results: dict, task: str, metric: str) -> dict:
    """How many runs' 95% accuracy intervals lie above chance: ``{"k", "n", "chance", "max_acc"}``."""
    k = n = 0
    chance, best = float("nan"), float("nan")
    for r in good_runs(results):
        t = (r.get("tasks") or {}).get(task)
        if not isinstance(t, dict) or not finite(t.get(metric)):
            continue
        n += 1
        c = num(t.get("chance"))
        chance = c if finite(c) else chance
        best = num(t[metric]) if not finite(best) else max(best, num(t[metric]))
        if finite(t.get(f"{metric}_lo")) and finite(c) and num(t[f"{metric}_lo"]) > c:
            k += 1
    return {"k": k, "n": n, "chance": chance, "max_acc": best}


def task_names(results: dict) -> list[str]:
    """Tasks scored on the runs, in first-seen order."""
    out: list[str] = []
    for r in good_runs(results):
        for t in (r.get("tasks") or {}):
            if t not in out:
                out.append(t)
    return out


def typical_ci_width(rows: list[dict]) -> float:
    """Median 95% CI width of the seed means of :func:`budget_configs` rows (nan without CIs): the seed noise."""
    w = [num(r["value"]["hi"]) - num(r["value"]["lo"]) for r in rows
         if r.get("value") and finite(r["value"].get("lo")) and finite(r["value"].get("hi"))]
    return float(np.median(w)) if w else float("nan")
