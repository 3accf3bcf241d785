"""Queries over a scaling study's ``results.json``: the one interface between study and report.

Pure functions of the loaded results dict (no plotting, no refitting, no I/O). The study
writes the file (``scalelab.scaling.study``); the report (``scalelab.report``) only reads
it, through these functions. Format: docs/FORMATS.md, "Study results".

Fields read, and how missing ones are handled (a partly failed study still reports):

``runs[]``
    ``name``, ``seed``, ``loss`` (final validation loss), ``params``,
    ``non_embedding_params``, ``tokens``, ``flops``, ``ratio`` (tokens per parameter),
    ``curve[]`` (``tokens``, ``val_loss``). A run counts (:func:`good_runs`) when its loss
    is finite and positive and it has a parameter count; ``non_embedding_params`` falls
    back to ``params``.
``sizes[]``
    per-size summaries (:func:`summarize_sizes`); rebuilt from the runs when absent.
``plan``
    ``models[]`` (``name``, ``ratio``) and ``rules.tokens_per_param``: the ratio of a run
    or size row that carries none (:func:`ratio_of`).
``checks``
    the study's size-step check (:func:`check_monotone`): ``loss_decreases_beyond_noise``,
    ``rule``, ``primary_ratio``, ``detail[]`` (``from``, ``to``, ``ratio``,
    ``counts_for_verdict``, ``drop``, ``stderr``, ``z``, ``beyond_noise``). Older files lack
    the per-family fields; without ``checks`` the rule is applied here (:func:`study_check`).
``fits.kaplan`` / ``fits.chinchilla`` / ``fits.isoflop``
    FitResult dicts: point estimates (``E``, ``A``, ``alpha``, [``B``, ``beta``]; ``a``, ``b``
    for IsoFLOP), ``degenerate`` / ``reason`` / ``error`` / ``warnings``, ``fixed``,
    ``n_column``, ``tokens_per_param`` and ``runs_used`` (Kaplan), ``derived``, and the
    bootstrap draws ``samples`` (``{param: [...]}``) that bands are drawn from
    (:func:`fit_samples`): without them no band is drawn.

Numbers are read tolerantly (:func:`num`: None or junk becomes nan, never an error).
Sizes are only ever compared within one ratio family (:func:`families`): "13K-r5" and
"13K-r20" are the same model trained on different token counts.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from scalelab.scaling.laws import compute_optimal


def num(x) -> float:
    """float(x), or nan for None / junk."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def finite(x) -> bool:
    return math.isfinite(num(x))


def fmt_ratio(r) -> str:
    """A tokens-per-parameter ratio as the study names it ('20', '5', '?' when unknown)."""
    return f"{num(r):g}" if finite(r) else "?"


# --------------------------------------------------------------------------------------
# Runs, ratio families, size rows
# --------------------------------------------------------------------------------------


def good_runs(results: dict) -> list[dict]:
    """Runs with a finite positive final loss and a parameter count (failed runs are left out)."""
    out = []
    for r in results.get("runs") or []:
        if not isinstance(r, dict):
            continue
        n = r.get("non_embedding_params", r.get("params"))
        if finite(r.get("loss")) and num(r.get("loss")) > 0 and finite(n) and num(n) > 0:
            out.append(r)
    return out


def run_n(run: dict, column: str = "non_embedding_params") -> float:
    """The run's N in ``column`` (falling back to non-embedding, then total parameters)."""
    v = run.get(column)
    if not finite(v):
        v = run.get("non_embedding_params", run.get("params"))
    return num(v)


def plan_ratios(results: dict) -> dict[str, float]:
    """``{plan model name: its ratio}`` for the plan models that record one."""
    out = {}
    for m in ((results.get("plan") or {}).get("models") or []):
        if isinstance(m, dict) and finite(m.get("ratio")):
            out[str(m.get("name"))] = num(m["ratio"])
    return out


def ratio_of(item: dict, results: dict) -> float | None:
    """The tokens-per-parameter ratio (family) of a run or ``sizes`` row.

    Its own ``ratio`` field; else the plan model of the same name; else the plan's single
    ``tokens_per_param`` (older single-ratio studies); else None.
    """
    if finite(item.get("ratio")):
        return num(item["ratio"])
    by_name = plan_ratios(results)
    if str(item.get("name")) in by_name:
        return by_name[str(item.get("name"))]
    tpp = ((results.get("plan") or {}).get("rules") or {}).get("tokens_per_param")
    return num(tpp) if finite(tpp) else None


def study_ratios(results: dict) -> list[float]:
    """The distinct tokens-per-parameter ratios of the finished runs (plan models as fallback)."""
    rs = {ratio_of(r, results) for r in good_runs(results)} - {None}
    if not rs:
        rs = set(plan_ratios(results).values())
    return sorted(rs)


def _primary_of(sorted_ratios: list[float]) -> float:
    # the study's rule: Chinchilla's 20 tokens/param when planned, else the largest ratio
    return 20.0 if 20.0 in sorted_ratios else sorted_ratios[-1]


def plan_primary_ratio(plan: dict[str, Any]) -> float:
    """The ratio the Kaplan fit and the headline check use, from the plan (models without a ratio count as 20).

    Same result as ``scalelab.scaling.study.primary_ratio(plan)``.
    """
    return _primary_of(sorted({m.get("ratio") or 20.0 for m in plan["models"]}))


def primary_ratio(results: dict) -> float | None:
    """The ratio the study treats as primary (Kaplan fit, headline check), read from results.json.

    ``checks.primary_ratio``, else the Kaplan fit's ``tokens_per_param``, else the study's
    rule (20 when present, else the largest ratio); None when no ratio is known.
    """
    chk = results.get("checks")
    if isinstance(chk, dict) and finite(chk.get("primary_ratio")):
        return num(chk["primary_ratio"])
    kap = (results.get("fits") or {}).get("kaplan")
    if isinstance(kap, dict) and finite(kap.get("tokens_per_param")):
        return num(kap["tokens_per_param"])
    rs = study_ratios(results)
    return _primary_of(rs) if rs else None


def summarize_sizes(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per size name: shape, ``n_seeds`` and the Student-t mean CI of ``loss`` (and ``val_bpb``).

    Same rows as ``scalelab.scaling.study.summarize_sizes`` for the study's runs; a missing
    ``params`` / ``tokens`` becomes None and a non-finite ``val_bpb`` is left out of its mean.
    Sorted by ratio (None as 0), then non-embedding N.
    """
    from scalelab.eval.stats import mean_ci

    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        row = {"name": name, "non_embedding_params": rs[0]["non_embedding_params"], "params": rs[0].get("params"),
               "tokens": rs[0].get("tokens"), "ratio": rs[0].get("ratio"), "n_seeds": len(rs),
               "loss": mean_ci([r["loss"] for r in rs])}
        bpb = [num(r["val_bpb"]) for r in rs if finite(r.get("val_bpb"))]
        if bpb:
            row["val_bpb"] = mean_ci(bpb)
        out.append(row)
    return sorted(out, key=lambda r: (r.get("ratio") or 0, num(r["non_embedding_params"])))


def size_rows(results: dict) -> list[dict]:
    """Per-size summaries sorted by ratio, then N: ``results["sizes"]``, or rebuilt from the runs if absent."""
    rows = [s for s in (results.get("sizes") or []) if isinstance(s, dict)]
    if not rows:
        runs = [{**r, "name": str(r.get("name", run_n(r))), "non_embedding_params": run_n(r),
                 "loss": num(r["loss"]), "ratio": ratio_of(r, results)} for r in good_runs(results)]
        rows = summarize_sizes(runs)

    def key(s):
        r = ratio_of(s, results)
        return (r if r is not None else -1.0, num(s.get("non_embedding_params", s.get("params"))))

    return sorted(rows, key=key)


def families(results: dict) -> list[tuple[float | None, list[dict]]]:
    """``[(ratio, size rows sorted by N), ...]`` sorted by ratio: the sizes that may be compared with each other."""
    out: dict[float | None, list[dict]] = {}
    for s in size_rows(results):
        out.setdefault(ratio_of(s, results), []).append(s)
    return list(out.items())


def _with_loss(rows: list[dict]) -> list[dict]:
    return [s for s in rows if isinstance(s.get("loss"), dict) and finite(s["loss"].get("mean"))]


def loss_families(results: dict) -> list[tuple[float | None, list[dict]]]:
    """:func:`families` restricted to the rows with a finite mean loss (a family may end up empty)."""
    return [(r, _with_loss(rows)) for r, rows in families(results)]


# --------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------


def fit_usable(fit: Any) -> bool:
    """A fit dict with point estimates that is not flagged degenerate."""
    return (isinstance(fit, dict) and not fit.get("degenerate") and not fit.get("error")
            and all(finite(fit.get(k)) for k in ("A", "alpha")))


def fit_status(fit: Any) -> str:
    """'ok', 'missing' or 'degenerate: <reason>'."""
    if not isinstance(fit, dict) or not fit:
        return "missing"
    if fit.get("degenerate") or fit.get("error"):
        reason = fit.get("reason") or fit.get("error") or "; ".join(
            w for w in (fit.get("warnings") or []) if "degenerate" in w) or "flagged degenerate"
        return f"degenerate: {reason}"
    law = fit.get("law")
    need = ("a", "b") if law == "isoflop" else ("A", "alpha")
    if not all(finite(fit.get(k)) for k in need):
        return "degenerate: no finite parameter estimates"
    return "ok"


LAW_PARAMS = {"kaplan": ("E", "A", "alpha"), "chinchilla": ("E", "A", "B", "alpha", "beta")}


def fit_samples(results: dict, law: str) -> tuple[dict[str, np.ndarray] | None, str]:
    """The bootstrap parameter draws stored with ``results["fits"][law]``, and where they came from.

    Only what results.json holds (``fits[law]["samples"]``, as ``FitResult.to_dict(include_samples=True)``
    writes it): nothing is refitted. Parameters the fit held fixed are not stored; they are
    filled with their fixed value. Returns ``(samples, how)``; ``samples`` is None, and
    ``how`` says why, when no band can be drawn.
    """
    fit = (results.get("fits") or {}).get(law)
    if not fit_usable(fit):
        return None, "no usable fit"
    if law not in LAW_PARAMS:
        return None, f"no band for law {law!r}"
    stored = fit.get("samples")
    if not isinstance(stored, dict) or not stored:
        return None, "bootstrap samples not stored in results.json"
    try:
        s = {k: np.asarray(v, dtype=float) for k, v in stored.items()}
    except (TypeError, ValueError):
        return None, "the bootstrap samples in results.json are not numbers"
    sizes = {v.size for v in s.values()}
    if len(sizes) != 1 or any(v.ndim != 1 for v in s.values()):
        return None, "the bootstrap samples in results.json have unequal lengths"
    n = sizes.pop()
    if n < 2:
        return None, "fewer than 2 bootstrap samples in results.json"
    fixed = fit.get("fixed") if isinstance(fit.get("fixed"), dict) else {}
    for k in LAW_PARAMS[law]:
        if k not in s and finite(fixed.get(k)):
            s[k] = np.full(n, num(fixed[k]))
    if law == "kaplan" and "E" not in s and not finite(fit.get("E")):
        s["E"] = np.zeros(n)  # a pure power law (no floor)
    missing = [k for k in LAW_PARAMS[law] if k not in s]
    if missing:
        return None, f"the bootstrap samples in results.json lack {', '.join(missing)}"
    return s, f"{n} stored bootstrap refits"


def frontier_column(results: dict) -> str | None:
    """The N convention of the compute axis: the Chinchilla fit's ``n_column`` when that fit is usable
    (its L_opt(C) assumes C = 6·N·D with that N), else None (the runs' recorded FLOPs)."""
    fit = (results.get("fits") or {}).get("chinchilla")
    if fit_status(fit) == "ok" and fit.get("n_column"):
        return str(fit["n_column"])
    return None


def chinchilla_data_range(results: dict) -> dict | None:
    """The N (in the Chinchilla fit's convention) and D ranges of the runs that fit was made on."""
    fit = (results.get("fits") or {}).get("chinchilla")
    if fit_status(fit) != "ok":
        return None
    col = fit.get("n_column") or "params"
    runs = good_runs(results)
    N = [run_n(r, col) for r in runs]
    D = [num(r.get("tokens")) for r in runs if finite(r.get("tokens"))]
    if not N or not D:
        return None
    return {"n_column": col, "N": (min(N), max(N)), "D": (min(D), max(D))}


def chinchilla_params(fit: dict) -> dict[str, float]:
    """The Chinchilla fit's point estimates, as the keyword arguments of the laws' formulas."""
    return {k: num(fit[k]) for k in LAW_PARAMS["chinchilla"]}


def opt_inside_data(results: dict, fit: dict, C) -> np.ndarray:
    """True where the fit's compute-optimal N_opt and D_opt both lie inside the trained N and D ranges."""
    C = np.atleast_1d(np.asarray(C, float))
    rng = chinchilla_data_range(results)
    if rng is None:
        return np.zeros(C.shape, bool)
    opt = compute_optimal(C, **chinchilla_params(fit))
    N, D = np.asarray(opt["N_opt"], float), np.asarray(opt["D_opt"], float)
    (n0, n1), (d0, d1) = rng["N"], rng["D"]
    return (N >= n0 * 0.999) & (N <= n1 * 1.001) & (D >= d0 * 0.999) & (D <= d1 * 1.001)


# --------------------------------------------------------------------------------------
# Learning curves and the compute frontier
# --------------------------------------------------------------------------------------


def curve(run: dict) -> list[dict]:
    """The run's learning-curve points with a positive token count."""
    return [p for p in (run.get("curve") or []) if isinstance(p, dict) and finite(p.get("tokens"))
            and num(p["tokens"]) > 0]


def flops_per_token(run: dict, n_column: str | None = None) -> float:
    """Training FLOPs per token: 6·N with N = ``n_column`` when given, else the run's recorded FLOPs / tokens."""
    if n_column:
        return 6.0 * run_n(run, n_column)
    if finite(run.get("flops")) and finite(run.get("tokens")) and num(run["tokens"]) > 0:
        return num(run["flops"]) / num(run["tokens"])
    return 6.0 * run_n(run)


def frontier_points(results: dict, n_column: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(C, L, size name) of every validation point of every run, C = tokens x FLOPs per token."""
    C, L, who = [], [], []
    for r in good_runs(results):
        per_tok = flops_per_token(r, n_column)
        for p in curve(r):
            if finite(p.get("val_loss")):
                C.append(num(p["tokens"]) * per_tok)
                L.append(num(p["val_loss"]))
                who.append(str(r.get("name", "")))
        if not curve(r) and finite(r.get("tokens")):
            C.append(num(r["tokens"]) * per_tok)
            L.append(num(r["loss"]))
            who.append(str(r.get("name", "")))
    return np.array(C), np.array(L), who


def lower_envelope(C: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (sorted by C) of the points that set a new minimum loss: the empirical frontier."""
    order = np.argsort(C, kind="stable")
    keep, best = [], math.inf
    for i in order:
        if L[i] < best:
            best = L[i]
            keep.append(i)
    idx = np.array(keep, dtype=int)
    return idx, C[idx], L[idx]


# --------------------------------------------------------------------------------------
# The size-step rule and the checks built on it
# --------------------------------------------------------------------------------------

DEFAULT_RULE = "each drop in mean loss between neighbouring sizes > 2 x combined stderr of the seed means"


def _n_seeds(row: dict) -> int:
    n = row.get("n_seeds", (row.get("loss") or {}).get("n", 0))
    return int(num(n)) if finite(n) else 0


def step(a: dict, b: dict) -> dict:
    """The size-step rule between two size rows (a the smaller): drop in mean loss, combined stderr, z, beyond?

    ``stderr`` = sqrt(se_a^2 + se_b^2) of the two seed means (nan unless both have > 1 seed),
    ``z`` = drop / stderr, and the step is beyond the noise when drop > 2 x stderr (a ~95%
    one-sided z-test).
    """
    la, lb = a.get("loss") or {}, b.get("loss") or {}
    drop = num(la.get("mean")) - num(lb.get("mean"))
    both = _n_seeds(a) > 1 and _n_seeds(b) > 1
    se = math.sqrt(num(la.get("stderr")) ** 2 + num(lb.get("stderr")) ** 2) if both else float("nan")
    z = drop / se if math.isfinite(se) and se > 0 else float("nan")
    return {"drop": drop, "stderr": se, "z": z, "beyond": bool(drop > 0 and math.isfinite(se) and drop > 2 * se)}


def check_monotone(sizes: list[dict[str, Any]], primary: float | None = None) -> dict[str, Any]:
    """Does loss fall with size by more than seed noise? (the study's ``checks``)

    Neighbouring rows of one ``ratio`` (in the order given) are compared by :func:`step`.
    The verdict is taken on the primary ratio's family (all rows when ``primary`` is None);
    other ratios are listed in ``detail`` for information. With one seed there is no noise
    estimate, and the check fails. Same output as ``scalelab.scaling.study.check_monotone``.
    """
    detail, verdicts = [], []
    groups: dict[Any, list[dict[str, Any]]] = {}
    for s in sizes:
        groups.setdefault(s.get("ratio"), []).append(s)
    for ratio, rows in groups.items():
        counts = primary is None or ratio is None or ratio == primary
        for a, b in zip(rows, rows[1:]):
            st = step(a, b)
            if counts:
                verdicts.append(st["beyond"])
            detail.append({"from": a["name"], "to": b["name"], "ratio": ratio, "counts_for_verdict": counts,
                           "drop": st["drop"], "stderr": st["stderr"] if math.isfinite(st["stderr"]) else None,
                           "z": st["z"] if math.isfinite(st["z"]) else None, "beyond_noise": st["beyond"]})
    return {"loss_decreases_beyond_noise": bool(verdicts) and all(verdicts),
            "rule": DEFAULT_RULE + (f" (verdict on the tokens/param = {primary:g} family)" if primary else ""),
            "primary_ratio": primary, "detail": detail}


def pairwise_check(results: dict) -> dict:
    """Is each larger size's loss CI entirely below the next smaller size's? (neighbours within one ratio family)

    The conservative companion of the study's own check (:func:`study_check`). Consecutive
    pairs suffice: if every hi_{k+1} < lo_k the separation is transitive. Returns
    ``{"verdict": "yes"|"no"|"undetermined", "pairs": [...]}``.
    """
    pairs = []
    for ratio, rows in loss_families(results):
        for a, b in zip(rows, rows[1:]):
            la, lb = a["loss"], b["loss"]
            if all(finite(v) for v in (la.get("lo"), la.get("hi"), lb.get("lo"), lb.get("hi"))):
                status = "yes" if num(lb["hi"]) < num(la["lo"]) else "no"
            else:
                status = "undetermined"
            pairs.append({"smaller": a.get("name"), "larger": b.get("name"), "ratio": ratio,
                          "delta": num(lb["mean"]) - num(la["mean"]), "smaller_ci": [la.get("lo"), la.get("hi")],
                          "larger_ci": [lb.get("lo"), lb.get("hi")], "separated": status})
    if not pairs:
        verdict = "undetermined"
    elif any(p["separated"] == "no" for p in pairs):
        verdict = "no"
    elif all(p["separated"] == "yes" for p in pairs):
        verdict = "yes"
    else:
        verdict = "undetermined"
    return {"verdict": verdict, "pairs": pairs}


def _stored_steps(results: dict, chk: dict, detail: list[dict], by_name: dict) -> tuple[list[dict], int]:
    """``checks.detail`` as steps (missing numbers filled in by :func:`step`); rows pairing two ratios dropped."""
    steps, dropped = [], 0
    for d in detail:
        a_name, b_name = str(d.get("from", d.get("smaller"))), str(d.get("to", d.get("larger")))
        a, b = by_name.get(a_name, {"name": a_name}), by_name.get(b_name, {"name": b_name})
        ra = num(d["ratio"]) if finite(d.get("ratio")) else ratio_of(a, results)
        rb = ratio_of(b, results) if b_name in by_name else ra
        if ra is not None and rb is not None and ra != rb:
            dropped += 1
            continue
        calc = step(a, b) if a_name in by_name and b_name in by_name else {}
        st = {"from": a_name, "to": b_name, "ratio": ra}
        for k in ("drop", "stderr", "z"):
            st[k] = num(d[k]) if finite(d.get(k)) else calc.get(k, float("nan"))
        st["beyond"] = bool(d["beyond_noise"]) if isinstance(d.get("beyond_noise"), bool) else \
            calc.get("beyond", False)
        if isinstance(d.get("counts_for_verdict"), bool):
            st["counts"] = d["counts_for_verdict"]
        else:
            p = num(chk.get("primary_ratio")) if finite(chk.get("primary_ratio")) else None
            st["counts"] = p is None or ra is None or ra == p
        steps.append(st)
    return steps, dropped


def study_check(results: dict) -> dict:
    """The study's own verdict on 'loss decreases with size beyond seed noise', normalised for the report.

    The verdict is ``checks.loss_decreases_beyond_noise`` and the steps are ``checks.detail``
    (missing numbers filled in from ``sizes``). A step counts for the verdict when its row
    says so (``counts_for_verdict``); rows of older results.json files, which carry no such
    flag and no ``primary_ratio``, all counted. Rows that pair different ratios are dropped
    (not a size step). Without a stored check the rule (:func:`step`) is applied here to the
    per-size means (``source == "recomputed"``).

    Returns ``{"verdict": bool | None, "rule", "source", "primary", "per_family", "steps", "dropped"}``
    with steps ``{"from", "to", "ratio", "counts", "drop", "stderr", "z", "beyond"}``.
    """
    by_name = {str(s.get("name")): s for s in size_rows(results)}
    multi = len(study_ratios(results)) > 1
    prim = primary_ratio(results)
    chk = results.get("checks") if isinstance(results.get("checks"), dict) else {}
    stored = chk.get("loss_decreases_beyond_noise")
    detail = [d for d in (chk.get("detail") or []) if isinstance(d, dict)]
    if isinstance(stored, bool) and detail:
        new_format = "primary_ratio" in chk or any("counts_for_verdict" in d for d in detail)
        steps, dropped = _stored_steps(results, chk, detail, by_name)
        verdict, source = stored, "results.json"
        per_family = new_format and multi and not all(s["counts"] for s in steps)
        rule = str(chk.get("rule") or DEFAULT_RULE)
    else:
        steps, dropped = [], 0
        for ratio, rows in loss_families(results):
            for a, b in zip(rows, rows[1:]):
                steps.append({"from": str(a.get("name")), "to": str(b.get("name")), "ratio": ratio,
                              "counts": not multi or ratio == prim, **step(a, b)})
        counted = [s for s in steps if s["counts"]]
        verdict = all(s["beyond"] for s in counted) if counted else None
        source = "recomputed"
        per_family = multi
        rule = DEFAULT_RULE + (f" (verdict on the tokens/param = {fmt_ratio(prim)} family)" if multi else "")
    return {"verdict": verdict, "rule": rule, "source": source, "primary": prim, "per_family": per_family,
            "steps": steps, "dropped": dropped}


def matched_compute_pairs(results: dict, tol: float = 1.25) -> list[dict]:
    """Sizes of different ratio families trained with about the same FLOPs (within ``tol``x).

    Each higher-ratio size (a smaller model on more tokens per parameter) is paired with the
    lower-ratio size whose training FLOPs are closest. Returns dicts with both rows, their
    FLOPs and the loss difference (higher ratio minus lower) with its z.
    """
    runs = good_runs(results)

    def flops(s):
        v = [num(r.get("flops")) for r in runs if r.get("name") == s.get("name") and finite(r.get("flops"))]
        return sum(v) / len(v) if v else float("nan")

    fams = [(r, rows) for r, rows in loss_families(results) if r is not None]
    out = []
    for i, (r_lo, lo_rows) in enumerate(fams):
        for r_hi, hi_rows in fams[i + 1:]:
            for b in hi_rows:
                cb = flops(b)
                cands = [(abs(math.log(flops(a) / cb)), a) for a in lo_rows if finite(flops(a)) and finite(cb) and cb > 0]
                if not cands:
                    continue
                dist, a = min(cands, key=lambda t: t[0])
                if math.exp(dist) > tol:
                    continue
                st = step(a, b)  # drop = L(a) - L(b): positive when the higher-ratio run is lower
                out.append({"high": b, "low": a, "ratio_high": r_hi, "ratio_low": r_lo, "flops_high": cb,
                            "flops_low": flops(a), "delta": -st["drop"], "z": st["z"]})
    return out
