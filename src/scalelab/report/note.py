"""The research note of a scaling study (NOTE.md), generated from ``results.json`` alone.

``write_note(results, out_dir, figures)`` writes ``out_dir/NOTE.md``; ``write_report(study_dir)``
loads ``study_dir/results.json``, draws the figures (``report.plots``) into
``study_dir/figures/`` and writes the note next to results.json.

Every number in the note is read from results.json or computed from it here (means,
ratios, pairwise checks, comparisons with the published exponents below); nothing is
written by hand per run. Fits flagged degenerate, or absent, are reported as such and
their parameters are not printed as if they were estimates.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scalelab.errors import DataError
from scalelab.io import atomic_write_text
from scalelab.report.numbers import finite as _ok, num as _num
from scalelab.report.plots import (
    chinchilla_data_range, families, fit_status, fmt_ratio, frontier_column, frontier_points, good_runs,
    lower_envelope, plot_study, primary_ratio, ratio_of, run_n, size_rows, study_ratios,
)

# Published reference values (quoted, with their source, in the note).
KAPLAN_2020 = {"alpha_N": 0.076, "a": 0.73}  # Kaplan et al. 2020: L(N) = (N_c/N)^0.076; N_opt ~ C^0.73
HOFFMANN_2022 = {"alpha": 0.34, "beta": 0.28, "a": 0.46, "b": 0.54, "E": 1.69, "A": 406.4, "B": 410.7}
BESIROGLU_2024 = {"alpha": 0.35, "beta": 0.37}
CHINCHILLA_RANGE = "70M to 16B parameters, 5B to 500B tokens"  # Hoffmann et al. 2022, sec. 3

STUDY_COMMAND = "scalelab study CONFIG"


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def f3(x, nd: int = 3) -> str:
    """Fixed decimals, or 'n/a'."""
    return f"{_num(x):.{nd}f}" if _ok(x) else "n/a"


def fci(v, ci, nd: int = 3) -> str:
    """'0.366 [0.295, 0.391]' (estimate and 95% CI), 'n/a' parts where missing."""
    if not _ok(v):
        return "n/a"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and _ok(ci[0]) and _ok(ci[1]):
        return f"{_num(v):.{nd}f} [{_num(ci[0]):.{nd}f}, {_num(ci[1]):.{nd}f}]"
    return f"{_num(v):.{nd}f} [no CI]"


def count(n) -> str:
    """1,234,567 -> '1.23M'."""
    n = _num(n)
    if not math.isfinite(n):
        return "n/a"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def intc(n) -> str:
    return f"{int(round(_num(n))):,}" if _ok(n) else "n/a"


def sci(x) -> str:
    """3.05e11 style."""
    x = _num(x)
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    e = int(math.floor(math.log10(abs(x))))
    m = x / 10**e
    if round(m, 2) >= 10:
        m, e = m / 10, e + 1
    return f"{m:.2f}e{e}"


def duration(s) -> str:
    s = _num(s)
    if not math.isfinite(s):
        return "n/a"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _inside(x: float, ci) -> bool | None:
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and _ok(ci[0]) and _ok(ci[1])):
        return None
    return _num(ci[0]) <= x <= _num(ci[1])


def _where(x: float, ci) -> str:
    inside = _inside(x, ci)
    if inside is None:
        return "cannot be compared (no CI)"
    if inside:
        return "inside our 95% CI"
    return "below our 95% CI" if x < _num(ci[0]) else "above our 95% CI"


# --------------------------------------------------------------------------------------
# Pieces computed from results
# --------------------------------------------------------------------------------------


def pairwise_check(results: dict) -> dict:
    """Is each larger size's loss CI entirely below the next smaller size's? (neighbours within one ratio family)

    The conservative companion of the study's own check (:func:`study_check`). Sizes are
    paired only within a tokens-per-parameter family (13K-r5 and 13K-r20 are the same
    model on different token counts, not a size step). Consecutive pairs suffice: if every
    hi_{k+1} < lo_k the separation is transitive. Returns
    ``{"verdict": "yes"|"no"|"undetermined", "pairs": [...]}``.
    """
    pairs = []
    for ratio, fam in families(results):
        rows = [s for s in fam if isinstance(s.get("loss"), dict) and _ok(s["loss"].get("mean"))]
        for a, b in zip(rows, rows[1:]):
            la, lb = a["loss"], b["loss"]
            if all(_ok(v) for v in (la.get("lo"), la.get("hi"), lb.get("lo"), lb.get("hi"))):
                status = "yes" if _num(lb["hi"]) < _num(la["lo"]) else "no"
            else:
                status = "undetermined"
            pairs.append({"smaller": a.get("name"), "larger": b.get("name"), "ratio": ratio,
                          "delta": _num(lb["mean"]) - _num(la["mean"]), "smaller_ci": [la.get("lo"), la.get("hi")],
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


DEFAULT_RULE = "each drop in mean loss between neighbouring sizes > 2 x combined stderr of the seed means"


def _step(a: dict, b: dict) -> dict:
    """Drop, combined stderr and z between two size rows (the study's rule, for rows it does not list)."""
    la, lb = a.get("loss") or {}, b.get("loss") or {}
    drop = _num(la.get("mean")) - _num(lb.get("mean"))
    na, nb = (int(_num(r.get("n_seeds", (r.get("loss") or {}).get("n", 0))) or 0) for r in (a, b))
    se = math.sqrt(_num(la.get("stderr")) ** 2 + _num(lb.get("stderr")) ** 2) if na > 1 and nb > 1 else float("nan")
    z = drop / se if math.isfinite(se) and se > 0 else float("nan")
    return {"drop": drop, "stderr": se, "z": z, "beyond": bool(drop > 0 and math.isfinite(se) and drop > 2 * se)}


def study_check(results: dict) -> dict:
    """The study's own verdict on 'loss decreases with size beyond seed noise', normalised for the note.

    The verdict is ``checks.loss_decreases_beyond_noise`` and the steps are ``checks.detail``
    (missing numbers filled in from ``sizes``). A step counts for the verdict when its row
    says so (``counts_for_verdict``); rows of older results.json files, which carry no such
    flag and no ``primary_ratio``, all counted. Rows that pair different ratios are dropped
    (not a size step). Without a stored check the study's rule is applied here to the
    per-size means (``source == "recomputed"``).

    Returns ``{"verdict": bool | None, "rule", "source", "primary", "per_family", "steps", "dropped"}``
    with steps ``{"from", "to", "ratio", "counts", "drop", "stderr", "z", "beyond"}``.
    """
    sizes = size_rows(results)
    by_name = {str(s.get("name")): s for s in sizes}
    multi = len(study_ratios(results)) > 1
    prim = primary_ratio(results)
    chk = results.get("checks") if isinstance(results.get("checks"), dict) else {}
    stored = chk.get("loss_decreases_beyond_noise")
    detail = [d for d in (chk.get("detail") or []) if isinstance(d, dict)]
    steps, dropped = [], 0
    if isinstance(stored, bool) and detail:
        new_format = "primary_ratio" in chk or any("counts_for_verdict" in d for d in detail)
        for d in detail:
            a_name, b_name = str(d.get("from", d.get("smaller"))), str(d.get("to", d.get("larger")))
            a, b = by_name.get(a_name, {"name": a_name}), by_name.get(b_name, {"name": b_name})
            ra = _num(d["ratio"]) if _ok(d.get("ratio")) else ratio_of(a, results)
            rb = ratio_of(b, results) if b_name in by_name else ra
            if ra is not None and rb is not None and ra != rb:
                dropped += 1
                continue
            calc = _step(a, b) if a_name in by_name and b_name in by_name else {}
            st = {"from": a_name, "to": b_name, "ratio": ra}
            for k, key in (("drop", "drop"), ("stderr", "stderr"), ("z", "z")):
                st[k] = _num(d[key]) if _ok(d.get(key)) else calc.get(k, float("nan"))
            st["beyond"] = bool(d["beyond_noise"]) if isinstance(d.get("beyond_noise"), bool) else \
                calc.get("beyond", False)
            if isinstance(d.get("counts_for_verdict"), bool):
                st["counts"] = d["counts_for_verdict"]
            else:
                p = _num(chk.get("primary_ratio")) if _ok(chk.get("primary_ratio")) else None
                st["counts"] = p is None or ra is None or ra == p
            steps.append(st)
        verdict, source = stored, "results.json"
        per_family = new_format and multi and not all(s["counts"] for s in steps)
        rule = str(chk.get("rule") or DEFAULT_RULE)
    else:
        for ratio, fam in families(results):
            rows = [s for s in fam if isinstance(s.get("loss"), dict) and _ok(s["loss"].get("mean"))]
            for a, b in zip(rows, rows[1:]):
                steps.append({"from": str(a.get("name")), "to": str(b.get("name")), "ratio": ratio,
                              "counts": not multi or ratio == prim, **_step(a, b)})
        counted = [s for s in steps if s["counts"]]
        verdict = bool(counted) and all(s["beyond"] for s in counted) if counted else None
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
        v = [_num(r.get("flops")) for r in runs if r.get("name") == s.get("name") and _ok(r.get("flops"))]
        return sum(v) / len(v) if v else float("nan")

    fams = [(r, [s for s in rows if isinstance(s.get("loss"), dict) and _ok(s["loss"].get("mean"))])
            for r, rows in families(results) if r is not None]
    out = []
    for i, (r_lo, lo_rows) in enumerate(fams):
        for r_hi, hi_rows in fams[i + 1:]:
            for b in hi_rows:
                cb = flops(b)
                cands = [(abs(math.log(flops(a) / cb)), a) for a in lo_rows if _ok(flops(a)) and _ok(cb) and cb > 0]
                if not cands:
                    continue
                dist, a = min(cands, key=lambda t: t[0])
                if math.exp(dist) > tol:
                    continue
                st = _step(a, b)  # drop = L(a) - L(b): positive when the higher-ratio run is lower
                out.append({"high": b, "low": a, "ratio_high": r_hi, "ratio_low": r_lo, "flops_high": cb,
                            "flops_low": flops(a), "delta": -st["drop"], "z": st["z"]})
    return out


def _fit_block(name: str, fit: Any, formula: str) -> list[str]:
    """A fit as Markdown: its table (format_fit) when usable, else an explicit 'degenerate/missing'."""
    status = fit_status(fit)
    lines = [f"**{name}** — {formula}", ""]
    if status == "missing":
        return lines + ["*Not fitted: there is no such fit in results.json.*", ""]
    if status != "ok":
        lines += [f"*Degenerate fit — no parameter estimates are reported.* Reason: {status[len('degenerate: '):]}", ""]
        for w in (fit.get("warnings") or []) if isinstance(fit, dict) else []:
            lines.append(f"> warning: {w}")
        return lines + [""]
    from scalelab.scaling.fit import format_fit

    try:
        lines.append(format_fit(fit))
    except Exception as e:  # noqa: BLE001 - the note must still be written
        lines.append(f"*(the fit table could not be formatted: {e})*")
    return lines + [""]


def _fig_link(fig: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(fig).resolve(), Path(out_dir).resolve())).as_posix()


# --------------------------------------------------------------------------------------
# The note
# --------------------------------------------------------------------------------------


def _sections(results: dict, out_dir: Path, figures: list[Path]) -> list[str]:
    name = results.get("name") or "study"
    runs_all = [r for r in (results.get("runs") or []) if isinstance(r, dict)]
    runs = good_runs(results)
    failed = len(runs_all) - len(runs)
    sizes = size_rows(results)
    data = results.get("data") or {}
    hw = results.get("hardware") or {}
    plan = results.get("plan") or {}
    rules = plan.get("rules") or {}
    cfg = results.get("config") or {}
    train_cfg = (cfg.get("train") or (cfg.get("base") or {}).get("train") or {}) if isinstance(cfg, dict) else {}
    fits = results.get("fits") or {}
    kap, chi, iso = fits.get("kaplan"), fits.get("chinchilla"), fits.get("isoflop")
    kst, cst, ist = fit_status(kap), fit_status(chi), fit_status(iso)
    models = [m for m in (plan.get("models") or []) if isinstance(m, dict)]
    seeds = sorted({r.get("seed") for r in runs if r.get("seed") is not None}, key=lambda s: _num(s))
    n_seeds = sorted({int(_num(s.get("n_seeds", (s.get("loss") or {}).get("n", 0)) or 0)) for s in sizes})
    Ns = [run_n(r) for r in runs]
    n_lo, n_hi = (min(Ns), max(Ns)) if Ns else (float("nan"), float("nan"))
    total_flops = sum(_num(r.get("flops")) for r in runs if _ok(r.get("flops")))
    total_time = sum(_num(r.get("train_time_s")) for r in runs if _ok(r.get("train_time_s")))
    epochs = [_num(r.get("epochs")) for r in runs if _ok(r.get("epochs"))]
    check = pairwise_check(results)
    sc = study_check(results)
    ratios = study_ratios(results)
    multi = len(ratios) > 1
    prim = primary_ratio(results)
    fams = [(r, [s for s in rows if isinstance(s.get("loss"), dict) and _ok(s["loss"].get("mean"))])
            for r, rows in families(results)]
    fams = [(r, rows) for r, rows in fams if rows]
    ratio_set = "{" + ", ".join(fmt_ratio(r) for r in ratios) + "}"
    n_distinct = len({run_n(r) for r in runs})
    kap_r = kap.get("tokens_per_param") if isinstance(kap, dict) and _ok(kap.get("tokens_per_param")) else None
    kap_used = kap.get("runs_used", kap.get("n")) if isinstance(kap, dict) else None
    figs = {Path(f).stem: f for f in figures if Path(f).suffix == ".png"}
    svgs = {Path(f).stem: f for f in figures if Path(f).suffix == ".svg"}

    def fig(stem: str, caption: str) -> list[str]:
        if stem not in figs:
            return [f"*(figure `{stem}` was not drawn)*", ""]
        link = _fig_link(figs[stem], out_dir)
        extra = f" ([SVG]({_fig_link(svgs[stem], out_dir)}))" if stem in svgs else ""
        return [f"![{caption}]({link})", "", f"*{caption}*{extra}", ""]

    L: list[str] = []
    # ---- title ---------------------------------------------------------------------
    L += [f"# How does loss scale with model size? Scaling study `{name}`", ""]
    prov = [f"study created {results.get('created', 'n/a')}"]
    if results.get("git"):
        prov.append(f"git `{results['git']}`")
    ver = results.get("versions") or {}
    if ver.get("scalelab"):
        prov.append(f"scalelab {ver['scalelab']}")
    L += [f"*Generated by `scalelab report` from `results.json` ({', '.join(prov)}). Every number in this "
          "note is read from, or computed from, that file; nothing in it was written by hand for these runs.*", ""]
    syn = results.get("synthetic")
    if syn:
        L += [f"> **Synthetic results.** results.json marks these numbers as synthetic"
              f"{': ' + str(syn.get('note')) if isinstance(syn, dict) and syn.get('note') else ''}. "
              "Do not read them as measurements.", ""]

    # ---- summary -------------------------------------------------------------------
    L += ["## Summary", ""]
    seeds_txt = "/".join(map(str, n_seeds)) or "n/a"
    seed_word = "seed" if n_seeds == [1] else "seeds"
    if multi:
        shape = (f"{n_distinct} model sizes × {len(ratios)} tokens-per-parameter ratios "
                 f"({', '.join(fmt_ratio(r) for r in ratios)}) × {seeds_txt} {seed_word}")
    else:
        shape = (f"{n_distinct} model sizes" + (f" at {fmt_ratio(ratios[0])} tokens per parameter" if ratios else "")
                 + f" × {seeds_txt} {seed_word}")
    if len(n_seeds) == 1 and n_distinct * max(1, len(ratios)) * n_seeds[0] == len(runs):
        shape += f" = {len(runs)} runs"
    else:
        shape += f" per size ({len(runs)} finished runs)"
    L.append(f"- **Runs.** {shape}" + (f" ({failed} failed run(s) left out)" if failed else "")
             + f"; N from {count(n_lo)} to {count(n_hi)} non-embedding parameters ({_num(n_hi) / _num(n_lo):.1f}x "
             f"range); {sci(total_flops)} training FLOPs in total.")

    def loss_range(rows: list[dict]) -> str:
        a, b = rows[0], rows[-1]
        word = "falls" if _num(b["loss"].get("mean")) < _num(a["loss"].get("mean")) else "goes"
        bpb = ""
        if isinstance(a.get("val_bpb"), dict) and isinstance(b.get("val_bpb"), dict):
            bpb = f" ({f3(a['val_bpb'].get('mean'))} → {f3(b['val_bpb'].get('mean'))} bits per byte)"
        return (f"{word} from {f3(a['loss'].get('mean'))} nats/token ({a.get('name')}) to "
                f"{f3(b['loss'].get('mean'))} ({b.get('name')}){bpb}")

    if multi and fams:
        order = sorted(fams, key=lambda f: (f[0] != prim, -_num(f[0]) if f[0] is not None else 0))
        parts = []
        for r, rows in order:
            tag = (f"at the primary ratio (tokens/param = {fmt_ratio(r)})" if r == prim
                   else f"at tokens/param = {fmt_ratio(r)}")
            parts.append(f"{tag} it {loss_range(rows)}" if parts else f"{tag}, mean final validation loss "
                         f"{loss_range(rows)}")
        L.append(f"- **Loss.** {parts[0][0].upper() + parts[0][1:]}" + "".join(f"; {p}" for p in parts[1:]) + ".")
    elif fams:
        L.append(f"- **Loss.** Mean final validation loss {loss_range(fams[0][1])}.")
    counted = [x for x in sc["steps"] if x["counts"]]
    word = {True: "**yes**", False: "**no**"}.get(sc["verdict"], "**undetermined**")
    scope = (f"within the tokens/param = {fmt_ratio(prim)} family" if sc["per_family"]
             else "of every ratio family" if multi else "")
    src = "the study's check" if sc["source"] == "results.json" else "the study's rule, applied here"
    vline = (f"- **Loss decreases with size beyond seed noise:** {word} ({src}): "
             f"{sum(x['beyond'] for x in counted)} of {len(counted)} steps between neighbouring sizes"
             f"{' ' + scope if scope else ''} drop by more than 2 × the combined standard error of the seed means")
    fails = [x for x in counted if not x["beyond"]]
    if fails:
        vline += "; not beyond the noise: " + ", ".join(f"{x['from']} → {x['to']} (z = {f3(x['z'], 2)})" for x in fails)
    if multi and not sc["per_family"]:
        pc = [x for x in sc["steps"] if x["ratio"] == prim]
        vline += (f". This results.json's check counts every ratio family; within the primary family "
                  f"(tokens/param = {fmt_ratio(prim)}) alone {sum(x['beyond'] for x in pc)} of {len(pc)} steps pass")
    L.append(vline + " (§3.2).")
    if kst == "ok":
        ci = (kap.get("ci") or {}).get("alpha")
        on = (f", fitted on the {intc(kap_used)} runs at tokens/param = {fmt_ratio(kap_r)}," if multi and kap_r is not None
              else f", fitted on all {intc(kap_used)} runs," if multi else "")
        L.append(f"- **Fitted exponent.** L(N) = E + A·N^-α over non-embedding N{on} gives α = {fci(kap['alpha'], ci)} "
                 f"(95% bootstrap CI); Kaplan et al. (2020) report α_N = {KAPLAN_2020['alpha_N']} and Hoffmann et al. "
                 f"(2022) α = {HOFFMANN_2022['alpha']} — see §3.4 for why neither is directly comparable.")
    else:
        L.append(f"- **Fitted exponent.** Kaplan-form fit {kst}; no exponent is reported.")
    if cst == "ok":
        nw = len(chi.get("warnings") or [])
        used = chi.get("runs_used", chi.get("n"))
        ctxt = ("fitted" + (f" on all {intc(used)} runs (both ratios)" if multi and len(ratios) == 2 else
                            f" on all {intc(used)} runs" if multi else "") + " and not flagged degenerate") + (
            f", but with {nw} warning(s): poorly identified, see §3.3–3.4" if nw else "")
    else:
        ctxt = "not fitted (absent from results.json)" if cst == "missing" else cst
    itxt = "fitted" if ist == "ok" else ("not fitted" if ist == "missing" else ist)
    L.append(f"- **Chinchilla L(N, D) fit:** {ctxt}. **IsoFLOP fit:** {itxt}.")
    L.append("")

    # ---- question ------------------------------------------------------------------
    recipe = (f"each model size trained at {len(ratios)} tokens-per-parameter ratios (D = r × N, r ∈ {ratio_set}), "
              "learning rate and batch size from a published rule" if multi else
              "tokens proportional to parameters, learning rate and batch size from a published rule")
    L += ["## 1. Question", "",
          f"For one training recipe — {recipe} — how does the final validation loss of a GPT-style model depend on "
          "its non-embedding parameter count N"
          + (", and, at fixed N, on the number of training tokens D" if multi else "")
          + "? How precisely can a scaling exponent be measured from "
          f"{len(runs)} runs at this scale, and does it agree with the exponents published by Kaplan et al. (2020) "
          "and Hoffmann et al. (2022, \"Chinchilla\")? And does the loss decrease with size by more than the "
          "seed-to-seed noise, so that the trend is real rather than luck?", ""]

    # ---- setup ---------------------------------------------------------------------
    L += ["## 2. Setup", "", "### 2.1 Data and tokenizer", ""]
    rows = [["source", f"`{data.get('source', 'n/a')}`"],
            ["tokenizer", f"{data.get('tokenizer', 'n/a')}, vocabulary {intc(data.get('vocab_size'))}"],
            ["training tokens in the corpus", intc(data.get("train_tokens"))],
            ["validation tokens", intc(data.get("val_tokens"))]]
    if _ok(data.get("bytes_per_token")):
        rows.append(["bytes per token (validation)", f3(data["bytes_per_token"], 2)])
    if epochs:
        rows.append(["passes over the corpus per run (epochs)", f"{min(epochs):.2f} – {max(epochs):.2f}"])
    if data.get("license_note"):
        rows.append(["license / provenance", str(data["license_note"])])
    L += _table(["", ""], rows) + [""]

    L += ["### 2.2 Models", ""]
    if models:
        models = sorted(models, key=lambda m: (_num(ratio_of(m, results)) if ratio_of(m, results) is not None else -1,
                                               _num(m.get("non_embedding_params"))))
        head = ["size", "layers × width (heads)", "params", "non-emb. N", "tokens D", "D/N", "FLOPs 6ND", "peak lr",
                "batch (tokens)", "steps", "warmup", "epochs"]
        mrows = []
        for m in models:
            n = _num(m.get("non_embedding_params"))
            mrows.append([m.get("name", ""), f"{m.get('n_layer', '?')} × {m.get('d_model', '?')} ({m.get('n_head', '?')})",
                          intc(m.get("params")), intc(n), intc(m.get("tokens")),
                          f"{_num(m.get('tokens')) / n:.1f}" if _ok(n) and n else "n/a", sci(m.get("flops")),
                          f"{_num(m.get('lr')):.2e}" if _ok(m.get("lr")) else "n/a", intc(m.get("batch_tokens")),
                          intc(m.get("steps")), intc(m.get("warmup_steps")),
                          f3(m.get("epochs"), 2)])
        L += _table(head, mrows) + [""]
    else:
        L += ["*results.json has no plan; shapes per run:*", ""]
        L += _table(["size", "params", "non-emb. N", "tokens"],
                    [[s.get("name"), intc(s.get("params")), intc(s.get("non_embedding_params")), intc(s.get("tokens"))]
                     for s in sizes]) + [""]

    L += ["### 2.3 Hyper-parameters", ""]
    plan_ratios = sorted({ratio_of(m, results) for m in models} - {None}) or ratios
    tpp = plan_ratios[0] if len(plan_ratios) == 1 else rules.get("tokens_per_param")
    cnt = rules.get("count", "non_embedding")
    n_kind = "non-embedding" if cnt == "non_embedding" else "total"
    if len(plan_ratios) > 1:
        others = [r for r in plan_ratios if r != prim]
        rel = "; ".join(f"tokens/param = {fmt_ratio(r)} trains the same shapes on "
                        f"{(_num(prim) / _num(r)) if _num(r) < _num(prim) else (_num(r) / _num(prim)):.3g}× "
                        f"{'fewer' if _num(r) < _num(prim) else 'more'} tokens" for r in others)
        L.append(f"- **Token budget:** D = r × N for r in {{{', '.join(fmt_ratio(r) for r in plan_ratios)}}} (N counted "
                 f"as {n_kind} parameters); every model size is trained at each ratio. r = {fmt_ratio(prim)} "
                 "(Chinchilla's ~20 tokens per parameter) is the primary family: the Kaplan fit and the headline "
                 f"check use it; {rel}. Across the study N and D therefore vary independently, which is what lets "
                 "L(N, D) be fitted (§3.3). Which ratio is compute-optimal is not measured directly"
                 + (" (an IsoFLOP fit exists; see §3.3)." if ist == "ok" else " (§5)."))
    else:
        L.append(f"- **Token budget:** D = {f3(tpp, 0) if _ok(tpp) else 'n/a'} × N tokens per model "
                 f"(N counted as {n_kind} parameters), following "
                 "Chinchilla's ~20 tokens per parameter. This ratio is *assumed*, not measured here"
                 + (" (an IsoFLOP fit exists; see §3.3)." if ist == "ok" else "."))
    lr_rule = rules.get("lr_rule")
    if lr_rule == "deepseek":
        L.append("- **Peak learning rate and batch size** from the compute budget C by the DeepSeek LLM rules "
                 "(DeepSeek-AI 2024): η = 0.3118·C^-0.125, B = 0.2920·C^0.3271 tokens, batch rounded to a power of "
                 f"two sequences of {intc(rules.get('seq_len'))} tokens.")
    elif lr_rule:
        L.append(f"- **Learning rate rule:** `{lr_rule}` (lr {rules.get('lr')}, batch {rules.get('batch_tokens')} "
                 "tokens).")
    else:
        L.append("- **Learning rate rule:** not recorded in results.json (per-model values in the table above).")
    if _ok(rules.get("warmup_frac")):
        L.append(f"- **Warmup:** {100 * _num(rules['warmup_frac']):.0f}% of the steps (at least one step).")
    sched = train_cfg.get("schedule") if isinstance(train_cfg, dict) else None
    L.append(f"- **Schedule:** {sched or 'not recorded in results.json'}"
             + (f"; optimizer {train_cfg['optimizer']}" if isinstance(train_cfg, dict) and train_cfg.get("optimizer")
                else "")
             + (f", weight decay {train_cfg['weight_decay']}" if isinstance(train_cfg, dict)
                and train_cfg.get("weight_decay") is not None else "")
             + (f"; the learning rate decays to {train_cfg['min_lr_ratio']} × its peak" if isinstance(train_cfg, dict)
                and train_cfg.get("min_lr_ratio") is not None else "") + ".")
    shape_bits = [f"{k} {rules[k]}" for k in ("seq_len", "mlp", "head_dim", "aspect_ratio", "tie_embeddings")
                  if k in rules]
    if shape_bits:
        L.append(f"- **Shape rules:** {', '.join(shape_bits)}.")
    L.append(f"- **Seeds:** {', '.join(map(str, seeds)) or 'n/a'} (the seed changes the initialisation and the "
             "data order; everything else is identical).")
    L.append("")

    L += ["### 2.4 Compute and hardware", ""]
    per_size_time = {}
    for r in runs:
        if _ok(r.get("train_time_s")):
            per_size_time.setdefault(r.get("name"), []).append(_num(r["train_time_s"]))
    L.append(f"- Training compute: {sci(total_flops)} FLOPs over {len(runs)} runs (C = 6·N·D per run, N non-embedding; "
             "per-model values in §2.2).")
    if total_time:
        par = _num(hw.get("parallel_runs")) if _ok(hw.get("parallel_runs")) else 1.0
        L.append(f"- Training time: {duration(total_time)} summed over runs"
                 + (f", about {duration(total_time / par)} wall-clock with {int(par)} runs in parallel" if par > 1 else "")
                 + "; per run: " + ", ".join(f"{k} {duration(sum(v) / len(v))}" for k, v in per_size_time.items())
                 + ".")
    if hw:
        L.append("- Hardware: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in hw.items()) + ".")
    L.append("")

    # ---- results -------------------------------------------------------------------
    L += ["## 3. Results", "", "### 3.1 Final validation loss per size", ""]
    if multi:
        L += ["Grouped by tokens-per-parameter ratio, then by size. Only rows of the same ratio are neighbouring "
              "sizes; rows of the same N at different ratios are the same model trained on different token counts.", ""]
    head = (["tokens/param"] if multi else []) + [
        "size", "non-emb. N", "tokens", "seeds", "val loss (nats/token)", "95% CI", "± (half width)",
        "bits per byte [95% CI]", "per-seed losses"]
    rrows = []
    for s in sizes:
        lo = s.get("loss") or {}
        bp = s.get("val_bpb") or {}
        per = [r for r in runs if r.get("name") == s.get("name")]
        half = (_num(lo.get("hi")) - _num(lo.get("lo"))) / 2
        rrows.append(([fmt_ratio(ratio_of(s, results))] if multi else []) + [
                      s.get("name"), intc(s.get("non_embedding_params")), count(s.get("tokens")),
                      intc(s.get("n_seeds", lo.get("n"))), f3(lo.get("mean")),
                      f"[{f3(lo.get('lo'))}, {f3(lo.get('hi'))}]" if _ok(lo.get("lo")) else "n/a (1 seed)",
                      f3(half) if math.isfinite(half) else "n/a",
                      fci(bp.get("mean"), [bp.get("lo"), bp.get("hi")]) if bp else "n/a",
                      ", ".join(f3(r.get("loss")) for r in sorted(per, key=lambda r: _num(r.get("seed"))))])
    L += _table(head, rrows) + [""]
    if multi and prim is not None:
        # the D-dependence at fixed N (what the second ratio is for); not a size step
        by_n = {}
        for r, rows in fams:
            for x in rows:
                by_n.setdefault(_num(x.get("non_embedding_params")), {})[r] = x
        for r in [r for r in ratios if r != prim]:
            cells = [f"{_num(d[prim]['loss']['mean']) - _num(d[r]['loss']['mean']):+.3f} (N = {count(n)})"
                     for n, d in sorted(by_n.items()) if prim in d and r in d]
            if cells:
                f = _num(prim) / _num(r)
                L.append(f"**Same model, {'more' if f > 1 else 'fewer'} tokens.** At each N, going from tokens/param = "
                         f"{fmt_ratio(r)} to {fmt_ratio(prim)} ({f:.3g}× the tokens) changes the mean loss by "
                         + ", ".join(cells) + " nats/token. This is the D-dependence that the Chinchilla fit uses "
                         "(§3.3); it is not a size step and takes no part in §3.2.")
                L.append("")
    if multi:
        cap1 = ("Figure 1. Final validation loss vs non-embedding parameters, one colour and marker per "
                "tokens-per-parameter ratio: single runs (hollow) and per-size means with 95% CI over seeds (filled). "
                "The fitted L(N) = E + A·N^-α (red, with its 95% bootstrap band) is drawn only over the family it was "
                f"fitted on (tokens/param = {fmt_ratio(kap_r if kap_r is not None else prim)}).")
    else:
        cap1 = ("Figure 1. Final validation loss vs non-embedding parameters: single runs (hollow), per-size mean "
                "with 95% CI over seeds (black), fitted L(N) = E + A·N^-α with its 95% bootstrap band.")
    L += fig("loss_vs_params", cap1)

    L += ["### 3.2 Does the loss decrease with size beyond the seed noise?", ""]
    intro = ("The verdict is the study's own check (`checks` in results.json)" if sc["source"] == "results.json" else
             "results.json has no usable `checks`, so the study's rule was applied here to its per-size means and "
             "standard errors")
    intro += (f". Rule: *{sc['rule']}*. For two neighbouring sizes of the same family, Δ is the drop in mean loss "
              "from the smaller to the larger model, the combined standard error is √(se_small² + se_large²) of the "
              "two seed means, and z = Δ / combined stderr; a step is beyond the noise when Δ > 2 × the combined "
              "stderr (z > 2).")
    if multi:
        intro += (" Sizes are compared only within a tokens-per-parameter family: the same N at another ratio is the "
                  "same model trained on a different number of tokens, not a size step.")
        if sc["per_family"]:
            intro += (f" The verdict counts the tokens/param = {fmt_ratio(prim)} family (the primary one, also used for "
                      "the Kaplan fit); the other families are listed for information.")
        else:
            intro += (" This results.json's check carries no per-family flags (it predates them), so its verdict "
                      "counts the steps of every family.")
    L += [intro, ""]
    if sc["dropped"]:
        L += [f"*{sc['dropped']} row(s) of `checks.detail` pair sizes of different ratios; they are not size steps and "
              "are left out.*", ""]
    ci_sep = {(p["smaller"], p["larger"]): p for p in check["pairs"]}
    head = ["step", "Δ = drop in mean loss", "combined stderr", "z", "beyond noise (z > 2)?",
            "95% CIs separated? (conservative)"]
    groups: dict = {}
    for x in sc["steps"]:
        groups.setdefault(x["ratio"], []).append(x)
    for r in sorted(groups, key=lambda r: _num(r) if r is not None else -1):
        rows_ = groups[r]
        if multi:
            role = ("counts for the verdict" if all(x["counts"] for x in rows_) else
                    "for information (not in the verdict)" if not any(x["counts"] for x in rows_) else
                    "partly counted")
            L += [f"**tokens/param = {fmt_ratio(r)}** — {role}", ""]
        prow = []
        for x in rows_:
            cp = ci_sep.get((x["from"], x["to"]))
            prow.append([f"{x['from']} → {x['to']}", f"{x['drop']:+.3f}" if _ok(x["drop"]) else "n/a",
                         f3(x["stderr"]), f3(x["z"], 2), "**yes**" if x["beyond"] else "no",
                         cp["separated"] if cp else "n/a"])
        L += _table(head, prow) + [""]
    if not sc["steps"]:
        L += ["*No two sizes of one family have a loss to compare.*", ""]
    n_pass = sum(x["beyond"] for x in counted)
    vword = {True: "yes", False: "no"}.get(sc["verdict"], "undetermined")
    vl = (f"**Verdict: {vword}** — {n_pass} of {len(counted)} counted steps are beyond the noise"
          + (f" (the tokens/param = {fmt_ratio(prim)} family)" if sc["per_family"] else
             " (every family)" if multi else ""))
    if sc["source"] == "results.json":
        vl += f"; `checks.loss_decreases_beyond_noise` = {str(sc['verdict']).lower()}."
    else:
        vl += "."
    if sc["verdict"] is not None and counted and (n_pass == len(counted)) != bool(sc["verdict"]):
        vl += " (The stored verdict does not match its own rows — check results.json.)"
    L.append(vl)
    if multi and not sc["per_family"]:
        pc = [x for x in sc["steps"] if x["ratio"] == prim]
        L.append(f"Within the primary family alone (tokens/param = {fmt_ratio(prim)}), {sum(x['beyond'] for x in pc)} of "
                 f"{len(pc)} steps are beyond the noise; a study run with the current code takes its verdict on that "
                 "family only.")
    cp_counted = [ci_sep.get((x["from"], x["to"])) for x in counted]
    cp_counted = [c for c in cp_counted if c]
    if cp_counted:
        L.append(f"The conservative view (last column: the larger model's 95% t-interval lies entirely below the "
                 f"smaller's) separates {sum(c['separated'] == 'yes' for c in cp_counted)} of {len(cp_counted)} "
                 "counted steps.")
    small = [n for n in n_seeds if 2 <= n <= 5]
    if small:
        from scipy.stats import t as _t

        n = min(small)
        tq = float(_t.ppf(0.975, n - 1))
        L.append(f"With {n} seeds the t-interval uses t(0.975, {n - 1} d.f.) = {tq:.2f}, so each CI extends "
                 f"{tq:.1f} standard errors on each side of the mean: separation under these intervals is strong "
                 "evidence of a real difference, while overlap is only weak evidence of no difference.")
        t_lo, t_hi = float(_t.ppf(0.95, 2 * (n - 1))), float(_t.ppf(0.95, n - 1))
        passed = [x for x in counted if x["beyond"] and _ok(x["z"])]
        if passed:
            robust = sum(_num(x["z"]) > t_hi for x in passed)
            L.append(f"The z-rule treats each standard error as known, but with {n} seeds each rests on {n - 1} "
                     f"degree{'s' if n > 2 else ''} of freedom; a one-sided 95% Welch t-test would ask for "
                     f"t > {t_lo:.2f} to {t_hi:.2f} "
                     f"({2 * (n - 1)} to {n - 1} d.f.) rather than 2. {robust} of the {len(passed)} counted steps that "
                     f"pass have z > {t_hi:.2f}"
                     + (", so the verdict does not rest on the normal approximation." if robust == len(passed) else
                        ": those that do not are real only under the normal approximation."))
    L.append("")

    L += ["### 3.3 Fitted scaling laws", ""]
    if kap_r is not None:
        kdesc = (f"fitted on the {intc(kap_used)} runs at tokens/param = {fmt_ratio(kap_r)} (seeds as separate points)"
                 + ("; the runs at " + ", ".join(f"tokens/param = {fmt_ratio(r)}" for r in ratios if r != kap_r)
                    + " are not used" if multi else ""))
    elif multi:
        kdesc = (f"fitted on all {intc(kap_used)} runs (results.json does not record a ratio for this fit, so it mixes "
                 "the ratio families)")
    else:
        kdesc = "all runs (seeds as separate points)"
    L += _fit_block("Kaplan form", kap, f"L(N) = E + A·N^-α, N = non-embedding parameters, {kdesc}")
    ccol = chi.get("n_column") if isinstance(chi, dict) else None
    cn = {"params": "total parameters (incl. embeddings)", "non_embedding_params": "non-embedding parameters"}.get(
        ccol, "parameters")
    cused = chi.get("runs_used", chi.get("n")) if isinstance(chi, dict) else None
    L += _fit_block("Chinchilla form", chi, f"L(N, D) = E + A/N^α + B/D^β, N = {cn}, D = training tokens"
                    + (f", all {intc(cused)} runs across tokens/param ∈ {ratio_set}" if multi and cused else "")
                    + " (Hoffmann et al. 2022, approach 3: Huber loss on log loss, L-BFGS from a grid of starts)")
    if iso is not None:
        L += _fit_block("IsoFLOP", iso, "N_opt ∝ C^a, D_opt ∝ C^b from parabolas of loss vs log N per budget "
                        "(approach 2)")
    else:
        L += ["**IsoFLOP** (approach 2) — *not fitted*: it needs several model sizes trained at each of at least two "
              "compute budgets; " + ("this study's grid does not have them." if multi else
                                     "this family has one size per budget."), ""]

    L += ["### 3.4 Comparison with published exponents", ""]
    crow = []
    kci = (kap.get("ci") or {}).get("alpha") if kst == "ok" else None
    crow.append(["α, Kaplan form (non-emb. N)", fci(kap.get("alpha"), kci) if kst == "ok" else kst.split(":")[0],
                 f"{KAPLAN_2020['alpha_N']} (α_N)", "—", "—"])
    if cst == "ok":
        cci = chi.get("ci") or {}
        der = chi.get("derived") or {}
        crow.append(["α (Chinchilla form)", fci(chi.get("alpha"), cci.get("alpha")), "—",
                     str(HOFFMANN_2022["alpha"]), str(BESIROGLU_2024["alpha"])])
        crow.append(["β (Chinchilla form)", fci(chi.get("beta"), cci.get("beta")), "—",
                     str(HOFFMANN_2022["beta"]), str(BESIROGLU_2024["beta"])])
        for k, lab in (("a", "a: N_opt ∝ C^a"), ("b", "b: D_opt ∝ C^b")):
            d = der.get(k) or {}
            ref_b = BESIROGLU_2024["beta"] if k == "a" else BESIROGLU_2024["alpha"]
            bes = ref_b / (BESIROGLU_2024["alpha"] + BESIROGLU_2024["beta"])
            crow.append([lab, fci(d.get("value"), d.get("ci")), str(KAPLAN_2020["a"]) if k == "a" else "—",
                         str(HOFFMANN_2022[k]), f"{bes:.2f} (implied)"])
    else:
        word = cst.split(":")[0]
        crow += [["α (Chinchilla form)", word, "—", str(HOFFMANN_2022["alpha"]), str(BESIROGLU_2024["alpha"])],
                 ["β (Chinchilla form)", word, "—", str(HOFFMANN_2022["beta"]), str(BESIROGLU_2024["beta"])]]
    if ist == "ok":
        ici = iso.get("ci") or {}
        crow.append(["a (IsoFLOP)", fci(iso.get("a"), ici.get("a")), str(KAPLAN_2020["a"]), str(HOFFMANN_2022["a"]),
                     "—"])
    L += _table(["quantity", "this study [95% CI]", "Kaplan et al. 2020", "Hoffmann et al. 2022 (approach 3)",
                 "Besiroglu et al. 2024"], crow) + [""]
    if kst == "ok":
        a = _num(kap["alpha"])
        L.append(f"- Kaplan et al.'s α_N = {KAPLAN_2020['alpha_N']} is {_where(KAPLAN_2020['alpha_N'], kci)}; "
                 f"Chinchilla's α = {HOFFMANN_2022['alpha']} is {_where(HOFFMANN_2022['alpha'], kci)}.")
        e_fixed = "E" in (kap.get("fixed") or {})
        e_zero = not e_fixed and (abs(_num(kap.get("E"))) < 1e-6
                                  or any("E was driven to ~0" in str(w) for w in kap.get("warnings") or []))
        if e_fixed:
            floor = "our fit also fixes E, but at this scale the loss is far from any power law's asymptote"
        elif e_zero:
            floor = (f"our fit's floor E was driven to ~0 ({sci(kap.get('E'))}: no floor is visible in this range), so "
                     "it is effectively a pure power law too and the difference does not come from a floor")
        else:
            floor = ("our fit has a floor E, and subtracting a floor makes the remaining loss fall faster, i.e. "
                     "α larger")
        r_fit = kap_r if kap_r is not None else (tpp if _ok(tpp) else None)
        where = (f"within the fitted family D grows with N (D = {fmt_ratio(r_fit)}·N)" if multi and r_fit is not None
                 else f"here D grows with N (D = {fmt_ratio(r_fit) if r_fit is not None else 'k'}·N)")
        L.append("- Neither comparison is like for like. Kaplan et al. fitted a pure power law (no floor) to models "
                 f"trained with early stopping on a far larger corpus; {floor}. And {where}, so the single "
                 "Kaplan-form exponent mixes the N and D terms of the Chinchilla law: if L = E + A/N^α + B/D^β and "
                 "D ∝ N, the local slope of L − E in log-log is a weighted average of α and β (here the fitted value "
                 f"is {a:.3f}).")
    if cst == "ok":
        cci = chi.get("ci") or {}
        L.append(f"- Chinchilla form: Hoffmann et al.'s α = {HOFFMANN_2022['alpha']} is "
                 f"{_where(HOFFMANN_2022['alpha'], cci.get('alpha'))}, β = {HOFFMANN_2022['beta']} is "
                 f"{_where(HOFFMANN_2022['beta'], cci.get('beta'))}; Besiroglu et al.'s α = {BESIROGLU_2024['alpha']} "
                 f"is {_where(BESIROGLU_2024['alpha'], cci.get('alpha'))}, β = {BESIROGLU_2024['beta']} is "
                 f"{_where(BESIROGLU_2024['beta'], cci.get('beta'))}.")
        if chi.get("warnings"):
            if multi:
                L.append(f"- The Chinchilla fit carries warnings (§3.3). With {len(ratios)} tokens-per-parameter ratios "
                         "log N and log D are no longer collinear — that is what lets the fit separate the N and D terms "
                         f"at all — but {n_distinct} sizes × {len(ratios)} ratios constrain them only loosely (α "
                         f"{fci(chi.get('alpha'), cci.get('alpha'))}, β {fci(chi.get('beta'), cci.get('beta'))}), so a, b "
                         "and the compute-optimal tokens per parameter derived from them are poorly identified.")
            else:
                L.append("- The Chinchilla fit carries warnings (§3.3); with D a fixed multiple of N the N and D terms "
                         "are nearly collinear, so α, β and everything derived from them (a, b, tokens per parameter) "
                         "are poorly identified even where the CIs look finite.")
        rng = chinchilla_data_range(results)
        co = [d for d in ((chi.get("derived") or {}).get("compute_optimal") or [])
              if isinstance(d, dict) and _ok(d.get("N_opt")) and _ok(d.get("D_opt"))]
        if rng and co:
            (n0, n1), (d0, d1) = rng["N"], rng["D"]
            out = [d for d in co if not (n0 <= _num(d["N_opt"]) <= n1 and d0 <= _num(d["D_opt"]) <= d1)]
            if out:
                nname = "total" if rng["n_column"] == "params" else "non-embedding"
                Nv, Dv = [_num(d["N_opt"]) for d in co], [_num(d["D_opt"]) for d in co]
                tv = [_num(d.get("tokens_per_param")) for d in co if _ok(d.get("tokens_per_param"))]
                L.append(f"- **The compute-optimal allocations are extrapolations.** The fit's table (§3.3) puts N_opt "
                         f"at {count(min(Nv))}–{count(max(Nv))} {nname} parameters and D_opt at "
                         f"{count(min(Dv))}–{count(max(Dv))} tokens"
                         + (f" ({count(min(tv))}–{count(max(tv))} tokens per parameter)" if tv else "")
                         + f", while the runs span N = {count(n0)}–{count(n1)} and D = {count(d0)}–{count(d1)}: "
                         f"{len(out)} of {len(co)} lie outside the trained range. They follow the fitted formula where "
                         "no model was trained and are not a recommendation; Figure 4 draws the L_opt(C) curve "
                         "dotted where it "
                         "is extrapolated.")
    else:
        why = "absent from results.json" if cst == "missing" else f"flagged degenerate ({cst[len('degenerate: '):]})"
        if multi:
            L.append(f"- The Chinchilla-form fit is {why}, so no α, β, a or b are reported, although N and D do vary "
                     "independently across the ratio families here.")
        else:
            L.append(f"- The Chinchilla-form fit is {why}, so no α, β, a or b are reported. With every model trained at "
                     "the same tokens-per-parameter ratio, log N and log D move together and the two terms cannot be "
                     "separated; varying D at fixed N (or an IsoFLOP grid) is what identifies them.")
    L.append("")

    # downstream
    L += ["### 3.5 Downstream metrics", ""]
    task_names = sorted({t for r in runs for t in (r.get("tasks") or {})})
    if task_names:
        head = ["task", "metric"] + [str(s.get("name")) for s in sizes] + ["chance", "items"]
        trows = []
        for t in task_names:
            for metric in ("acc", "acc_norm"):
                cells, chance, items, any_val = [], None, set(), False
                for s in sizes:
                    vals = []
                    for r in runs:
                        d = (r.get("tasks") or {}).get(t) or {}
                        if r.get("name") == s.get("name") and _ok(d.get(metric)):
                            vals.append((_num(d[metric]), _num(d.get(f"{metric}_lo")), _num(d.get(f"{metric}_hi"))))
                            chance = d.get("chance", chance)
                            if _ok(d.get("n")):
                                items.add(int(_num(d["n"])))
                    if vals:
                        any_val = True
                        mean = sum(v[0] for v in vals) / len(vals)
                        lo = min(v[1] for v in vals)
                        hi = max(v[2] for v in vals)
                        cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi)
                                     else f"{mean:.3f}")
                    else:
                        cells.append("—")
                if any_val:
                    trows.append([t, metric] + cells + [f3(chance, 2) if chance is not None else "n/a",
                                                        "/".join(map(str, sorted(items))) or "n/a"])
        L += ["Mean over seeds; in brackets the union of the seeds' Wilson 95% intervals (they measure the sampling "
              "of task items, not seed variance).", ""]
        L += _table(head, trows) + [""]
        above = []
        for t in task_names:
            for r in runs:
                d = (r.get("tasks") or {}).get(t) or {}
                for metric in ("acc", "acc_norm"):
                    if _ok(d.get(f"{metric}_lo")) and _ok(d.get("chance")) and _num(d[f"{metric}_lo"]) > _num(d["chance"]):
                        above.append(f"{r.get('name')}/seed {r.get('seed')}/{t}/{metric}")
        L.append(f"Runs whose Wilson interval lies entirely above chance: {len(above)}"
                 + (f" ({', '.join(above[:8])}{', …' if len(above) > 8 else ''})." if above else
                    " — at this scale the task accuracies are indistinguishable from chance."))
        L.append("")
    else:
        L += ["No downstream task results in results.json (only validation loss and bits per byte).", ""]
    L += fig("metric_vs_params", "Figure 2. Downstream metrics vs model size: bits per byte (mean and 95% CI over "
             "seeds) and task accuracies per run with Wilson 95% intervals; dashed: chance.")

    L += ["### 3.6 Learning curves and the compute frontier", ""]
    fcol = frontier_column(results)
    C, Lc, who = frontier_points(results, fcol)
    if C.size:
        idx, ec, el = lower_envelope(C, Lc)
        seq = []
        for i in idx:
            if not seq or seq[-1] != who[i]:
                seq.append(who[i])
        axis = ""
        if fcol:
            axis = (" Its compute axis is C = 6·N·D with N = "
                    + ("total parameters" if fcol == "params" else fcol.replace("_", "-"))
                    + ", the convention of the Chinchilla fit whose prediction it shows"
                    + (" (§2.2 and §2.4 count non-embedding N, so their FLOPs are smaller)." if fcol == "params" else "."))
        L.append(f"Figure 3 shows every run's validation loss (and, faint, training loss) against tokens seen"
                 + ("; colour is model size, line style the tokens-per-parameter ratio" if multi else "") + ". "
                 f"Figure 4 puts the same curves on a compute axis; their lower envelope — the lowest loss any run "
                 f"reached for a given amount of compute — is made of, from low to high compute: {' → '.join(seq)}. "
                 "Intermediate points of a run are not compute-optimal runs of their own (the learning-rate schedule "
                 "had not decayed yet), so the envelope is an upper bound on the true frontier." + axis)
        if len(epochs) and max(epochs) > 1:
            L.append(f"The dotted line in Figure 3 marks one pass over the corpus; runs beyond it see repeated data "
                     f"(up to {max(epochs):.2f} epochs).")
        L.append("")
    mc = matched_compute_pairs(results) if multi else []
    if mc:
        cells = []
        for m in mc:
            b, a = m["high"], m["low"]
            cells.append(f"{b.get('name')} vs {a.get('name')} ({sci(m['flops_high'])} vs {sci(m['flops_low'])} FLOPs): "
                         f"{f3(b['loss']['mean'])} vs {f3(a['loss']['mean'])}, Δ = {m['delta']:+.3f}"
                         + (f" (z = {abs(_num(m['z'])):.1f})" if _ok(m["z"]) else ""))
        wins = sum(m["delta"] < 0 for m in mc)
        sig = sum(_ok(m["z"]) and abs(_num(m["z"])) > 2 for m in mc)
        hi_r = "/".join(fmt_ratio(r) for r in sorted({m["ratio_high"] for m in mc}))
        lo_r = "/".join(fmt_ratio(r) for r in sorted({m["ratio_low"] for m in mc}))
        if wins in (0, len(mc)) and sig == len(mc):
            concl = (f"In all {len(mc)} pairs the smaller model trained on more tokens per parameter reaches the lower "
                     f"loss, each beyond the noise (|z| > 2, the rule of §3.2): at these budgets tokens/param = {hi_r} "
                     f"is closer to compute-optimal than {lo_r}." if wins else
                     f"In all {len(mc)} pairs the larger model trained on fewer tokens per parameter reaches the lower "
                     f"loss, each beyond the noise (|z| > 2, the rule of §3.2): at these budgets tokens/param = {lo_r} "
                     f"is closer to compute-optimal than {hi_r}.")
        else:
            concl = (f"The smaller model trained on more tokens per parameter reaches the lower loss in {wins} of "
                     f"{len(mc)} pairs, and {sig} of the {len(mc)} differences are beyond the noise (|z| > 2, the rule "
                     "of §3.2): no consistent direction.")
        L.append("**Matched compute.** Sizes of different ratio families whose training FLOPs (§2.2) are within 25% of "
                 "each other, higher ratio first: " + "; ".join(cells) + ". " + concl
                 + " Two points per budget give a direction, not an optimum: locating it needs three or more sizes per "
                 "budget (an IsoFLOP grid).")
        L.append("")
    L += fig("loss_curves", "Figure 3. Validation (bold) and training (faint) loss vs tokens for every run, coloured by "
             "model size" + (f"; line style marks the tokens-per-parameter ratio ({', '.join(fmt_ratio(r) for r in ratios)})."
                             if multi else "."))
    L += fig("compute_frontier", "Figure 4. Validation loss vs training compute for every run, their lower envelope, "
             "and — when the Chinchilla fit is usable — its predicted compute-optimal loss (dotted where N_opt or D_opt "
             "lies outside the trained range).")

    # ---- what the CIs mean ---------------------------------------------------------
    L += ["## 4. What the error bars mean", ""]
    bars = "error bars in Figure 1, coloured by ratio" if multi else "black bars in Figure 1"
    L.append(f"- **Per-size loss CI (table 3.1, {bars}):** a Student-t 95% interval for the mean final "
             "loss over seeds, mean ± t(0.975, n−1)·s/√n with n the number of seeds. It captures seed-to-seed "
             "variation (initialisation and data order) only; the evaluation itself is a fixed set of "
             f"{intc(data.get('val_tokens'))} validation tokens, so its sampling error is not included.")
    L.append("- **Step check (§3.2, the study's verdict):** z = Δ / √(se_small² + se_large²), with se = s/√n the "
             "standard error of each size's mean over its n seeds; a step is beyond the noise when z > 2. Only "
             "neighbouring sizes of one tokens-per-parameter ratio are compared.")
    for law, f in (("Kaplan", kap), ("Chinchilla", chi)):
        if fit_status(f) == "ok":
            unit = {"points": "individual runs", "size": "model sizes (all seeds of a size together)",
                    "groups": "groups of runs", "seed": "seeds"}.get(f.get("resample", "points"), f.get("resample"))
            L.append(f"- **{law} fit CIs:** percentile bootstrap over {unit}, {intc(f.get('n_boot'))} refits of the "
                     f"same procedure on resampled data ({f.get('n', 'n/a')} runs). They describe the uncertainty of "
                     "the fitted curve's parameters *given this functional form and these runs*: not a prediction "
                     "interval for a new run, and blind to misspecification. With few distinct sizes, many "
                     "resamples repeat the same points, so the intervals can be too narrow.")
    L.append("- **Band in Figure 1:** the 95% percentile band of the fitted curve across the bootstrap refits "
             "(uncertainty of the mean curve, which is why it is narrower than the spread of single runs).")
    if task_names:
        L.append("- **Task accuracy CIs:** Wilson score 95% intervals for a binomial proportion over the task's items "
                 "(Wilson 1927); they cover item sampling, not seed variance.")
    L.append("")

    # ---- caveats -------------------------------------------------------------------
    L += ["## 5. Caveats", ""]
    L.append(f"- **Tiny scale.** The largest model has {count(n_hi)} non-embedding parameters; Hoffmann et al. fitted "
             f"{CHINCHILLA_RANGE}. Small models sit in a regime where the irreducible term, the embedding share and "
             "optimisation details weigh more than at scale; exponents measured here need not transfer.")
    L.append(f"- **Few seeds.** {'/'.join(map(str, n_seeds)) or 'n/a'} seed(s) per size"
             f"{' and ratio' if multi else ''}: the seed variance itself is "
             "poorly estimated, and the t-intervals are correspondingly wide.")
    if epochs:
        ep_max = max(epochs)
        if ep_max > 4:
            L.append(f"- **Data repetition.** Runs make up to {ep_max:.2f} passes over a {count(data.get('train_tokens'))}"
                     "-token corpus. Past about 4 epochs repeated tokens are worth much less than fresh ones "
                     "(Muennighoff et al. 2023, \"Scaling Data-Constrained Language Models\"), so the largest models "
                     "are data-constrained: their losses are higher than fresh data would give, which flattens the "
                     "loss-vs-size curve and biases the fitted exponent downward.")
        elif ep_max > 1:
            L.append(f"- **Data repetition.** Runs make up to {ep_max:.2f} passes over the corpus. Muennighoff et al. "
                     "(2023) find up to ~4 epochs nearly as good as fresh data, so the effect should be small but is "
                     "not zero, and it grows with model size.")
        else:
            L.append("- **Data repetition.** No run repeats the corpus (≤ 1 epoch).")
    for w in plan.get("warnings") or []:
        L.append(f"  - plan warning: {w}")
    L.append(f"- **Tokenizer dependence.** Loss in nats/token depends on the tokenizer "
             f"({data.get('tokenizer', 'n/a')}, vocabulary {intc(data.get('vocab_size'))}): a different vocabulary "
             "changes both the loss level and, at this scale, the embedding share of parameters. Bits per byte is "
             "the tokenizer-independent number to compare across setups.")
    ev = [f"validation {intc(data.get('val_tokens'))} tokens"] if _ok(data.get("val_tokens")) else []
    if task_names:
        items = sorted({int(_num(d.get("n"))) for r in runs for d in (r.get("tasks") or {}).values()
                        if isinstance(d, dict) and _ok(d.get("n"))})
        if items:
            half = 1.96 * math.sqrt(0.25 / min(items))
            ev.append(f"tasks {'/'.join(map(str, items))} items (a Wilson interval about ±{half:.3f} wide at 50% "
                      "accuracy)")
    L.append(f"- **Small evaluation sets** ({'; '.join(ev) or 'sizes not recorded'}): differences smaller than the "
             "interval widths are not resolved.")
    cover = []
    if kst == "ok":
        kr = [r for r in runs if kap_r is None or ratio_of(r, results) == kap_r]
        kn = [run_n(r) for r in kr]
        if kn:
            cover.append(f"the Kaplan fit saw non-embedding N = {count(min(kn))} – {count(max(kn))}"
                         + (f" at tokens/param = {fmt_ratio(kap_r)}" if multi and kap_r is not None else ""))
    crng = chinchilla_data_range(results)
    if crng:
        cover.append(f"the Chinchilla fit saw N = {count(crng['N'][0])} – {count(crng['N'][1])} "
                     f"{'total' if crng['n_column'] == 'params' else 'non-embedding'} parameters and "
                     f"D = {count(crng['D'][0])} – {count(crng['D'][1])} tokens")
    if not cover:
        cover.append(f"the runs cover N = {count(n_lo)} – {count(n_hi)}")
    L.append(f"- **Extrapolation.** {'; '.join(cover)[0].upper() + '; '.join(cover)[1:]}. Any prediction outside that "
             "range (the right part of Figure 4, the compute-optimal N and D of §3.3, or a loss for a larger model) "
             "extrapolates a functional form that was not tested there; the bootstrap band does not include that risk.")
    if ist == "ok":
        L.append("- **Compute-optimal ratio.** An IsoFLOP fit exists (§3.3), so the N/D allocation was measured; the "
                 "training budgets themselves still used the planned ratio(s).")
    elif multi:
        L.append(f"- **Compute-optimal ratio not measured directly.** The models were trained at tokens/param ∈ "
                 f"{ratio_set}. Fitting L(N, D) over {len(ratios)} ratios is what lets the Chinchilla fit separate the N "
                 "and D terms (at a single ratio they are collinear), but its compute-optimal allocation rests on "
                 f"{len(ratios)} ratios and a fitted functional form (§3.4)"
                 + (", and the matched-compute pairs of §3.6 give only a direction" if mc else "")
                 + ". An IsoFLOP grid — several sizes at each fixed compute budget — would measure the optimum "
                 "directly.")
    else:
        L.append(f"- **Compute-optimal ratio assumed, not measured.** Every model used "
                 f"{f3(tpp, 0) if _ok(tpp) else 'a fixed number of'} tokens per parameter (Chinchilla's rule). "
                 "Whether that is optimal for this data, tokenizer and scale was not tested; an IsoFLOP grid would "
                 "measure it.")
    flagged = [(n, s) for n, s in (("Kaplan", kst), ("Chinchilla", cst), ("IsoFLOP", ist)) if s not in ("ok", "missing")]
    if flagged:
        L.append("- **Degenerate fits:** " + "; ".join(f"{n} — {s}" for n, s in flagged) + ".")
    for n, f in (("Kaplan", kap), ("Chinchilla", chi), ("IsoFLOP", iso)):
        if isinstance(f, dict) and fit_status(f) == "ok":
            for w in f.get("warnings") or []:
                L.append(f"- **{n} fit warning:** {w}")
    if failed:
        L.append(f"- **Failed runs:** {failed} run(s) in results.json have no valid final loss and are excluded.")
    L.append("")

    # ---- reproduction --------------------------------------------------------------
    L += ["## 6. Reproduction", ""]
    cmds = results.get("commands") or []
    if cmds:
        L += ["```bash"] + [str(c) for c in cmds] + ["```", ""]
    else:
        L += ["*results.json records no commands.*", ""]
    if ver:
        L.append("Software: " + ", ".join(f"{k} {v}" for k, v in ver.items()) + "."
                 + (f" Source tree at git `{results['git']}`." if results.get("git") else ""))
        L.append("")
    L += ["### Appendix A: every run", ""]
    arow = []
    def _akey(r):
        rr = ratio_of(r, results)
        return (rr if rr is not None else -1.0, run_n(r), _num(r.get("seed")))

    for r in sorted(runs_all, key=_akey):
        arow.append([r.get("name"), r.get("seed"), f"`{r.get('run_dir', '')}`", f3(r.get("loss")),
                     f3(r.get("val_bpb")), f3(r.get("val_ppl"), 1), count(r.get("tokens")), f3(r.get("epochs"), 2),
                     duration(r.get("train_time_s"))])
    L += _table(["size", "seed", "run dir", "val loss", "bpb", "ppl", "tokens", "epochs", "train time"], arow) + [""]
    if cfg:
        L += ["### Appendix B: study configuration", "", "```json", json.dumps(cfg, indent=2, default=str), "```", ""]
    L += ["### References", "",
          "- Kaplan, J. et al. (2020). Scaling Laws for Neural Language Models. arXiv:2001.08361.",
          "- Hoffmann, J. et al. (2022). Training Compute-Optimal Large Language Models. arXiv:2203.15556.",
          "- Besiroglu, T. et al. (2024). Chinchilla Scaling: A replication attempt. arXiv:2404.10102.",
          "- Muennighoff, N. et al. (2023). Scaling Data-Constrained Language Models. arXiv:2305.16264.",
          "- DeepSeek-AI (2024). DeepSeek LLM: Scaling Open-Source Language Models with Longtermism. arXiv:2401.02954.",
          "- Wilson, E. B. (1927). Probable inference, the law of succession, and statistical inference. JASA 22.",
          ""]
    return L


def write_note(results: dict, out_dir: Path, figures: list[Path]) -> Path:
    """Write ``out_dir/NOTE.md`` from ``results`` (a loaded results.json); returns its path."""
    out_dir = Path(out_dir)
    text = "\n".join(_sections(results, out_dir, [Path(f) for f in figures]))
    path = out_dir / "NOTE.md"
    atomic_write_text(path, text)
    return path


def load_results(study_dir: Path) -> dict:
    """Load and minimally validate ``study_dir/results.json`` (clear DataError otherwise)."""
    path = Path(study_dir) / "results.json"
    fix = f"run `{STUDY_COMMAND}` to produce it"
    if not path.is_file():
        raise DataError(f"{path}: no results.json in this study directory; {fix}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e}); {fix}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); re-{fix}") from None
    if not isinstance(results, dict):
        raise DataError(f"{path}: expected a JSON object (a scalelab study's results), got {type(results).__name__}; "
                        f"{fix}")
    kind = results.get("kind")
    if kind is not None and kind != "scalelab.study":
        raise DataError(f"{path}: kind is {kind!r}, not 'scalelab.study'; {fix}")
    runs = results.get("runs")
    if not isinstance(runs, list) or not runs:
        raise DataError(f"{path}: has no 'runs' list; {fix}")
    if not good_runs(results):
        raise DataError(f"{path}: none of its {len(runs)} runs has a finite final 'loss' and a parameter count; "
                        f"{fix} (or check the runs' logs)")
    return results


def write_report(study_dir: Path) -> dict:
    """Figures into ``study_dir/figures/`` and ``study_dir/NOTE.md`` from ``study_dir/results.json``.

    Returns ``{"note": Path, "figures": [Path, ...]}``.
    """
    study_dir = Path(study_dir)
    results = load_results(study_dir)
    figures = plot_study(results, study_dir / "figures")
    note = write_note(results, study_dir, figures)
    return {"note": note, "figures": figures}
