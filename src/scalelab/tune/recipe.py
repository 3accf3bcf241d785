"""Analysis and outputs of a tuning study: tune.json, plots, RECIPE.md.

- The winner is the configuration with the highest *re-measured* throughput (the search
  values of the best trials are biased upward by selection). Its interval and those of
  the runners-up are t-intervals over the pooled window throughputs of the
  re-measurement (eval.stats.mean_ci); "distinguishable" means a Welch test of winner vs
  runner-up gives p < 0.05 (eval.stats.welch_t_test); the gain over the default
  configuration is a ratio of means with a delta-method interval
  (eval.stats.ratio_of_means_ci).
- Knob importance: fANOVA (Hutter et al. 2014; optuna.importance.FanovaImportanceEvaluator)
  on the completed, non-duplicate trials, or PED-ANOVA (Watanabe et al. 2023) on request.
  Each important knob is shown with the mean throughput of the trials at each value.
"""
from __future__ import annotations

import math
import shlex
import statistics
import warnings
from pathlib import Path
from typing import Any

from scalelab.eval.stats import format_ci, mean_ci, ratio_of_means_ci, welch_t_test
from scalelab.io import atomic_write_json, atomic_write_text, git_hash
from scalelab.tune.setup import merge_overrides
from scalelab.tune.space import format_value, same_value

FORMAT_VERSION = 1
ALPHA = 0.05


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def trial_record(t, default_params: dict[str, Any], space) -> dict[str, Any]:
    overrides, env = space.split(t.params) if t.params else ([], {})
    ua = t.user_attrs
    rec = {
        "number": t.number,
        "state": t.state.name,
        "params": t.params,
        "overrides": overrides,
        "env": env,
        "value": _finite(t.value) if t.value is not None else None,
        "ci": [_finite(ua.get("ci_lo")), _finite(ua.get("ci_hi"))] if "ci_lo" in ua else None,
        "stderr": _finite(ua.get("stderr")),
        "window_rates": ua.get("window_rates", []),
        "step_times": ua.get("step_times", []),
        "duration_s": ua.get("duration_s"),
        "is_default": bool(t.params) and all(same_value(t.params.get(k), v) for k, v in default_params.items()),
        "duplicate_of": ua.get("duplicate_of"),
        # A FAIL without a kind or a measurement: a dead worker's trial, failed by the heartbeat check.
        "failure_kind": ua.get("failure_kind") or ("interrupted" if t.state.name == "FAIL"
                                                   and "duration_s" not in ua else None),
        "failure": ua.get("failure") or ("interrupted: its worker stopped (no heartbeat), retried"
                                         if t.state.name == "FAIL" and "duration_s" not in ua else None),
        "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()},
        "log": ua.get("log"),
    }
    return rec


def compute_importance(study, evaluator: str = "fanova", seed: int = 0) -> dict[str, Any]:
    """Knob importances from the completed, non-duplicate trials (or the reason there are none)."""
    import optuna
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("duplicate_of") is None]
    varied = [k for k in (done[0].params if done else {}) if len({str(t.params.get(k)) for t in done}) > 1]
    if len(done) < 3 or not varied:
        return {"evaluator": None, "values": {}, "n_trials": len(done),
                "note": f"too few completed trials ({len(done)}) with varied knobs to estimate importance"}
    tmp = optuna.create_study(direction="maximize")
    tmp.add_trials(done)
    names = {"fanova": "fANOVA", "ped-anova": "PED-ANOVA"}
    order = [evaluator] + [e for e in ("fanova", "ped-anova") if e != evaluator]
    errors = []
    for ev in order:
        try:
            if ev == "fanova":
                obj = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            else:
                obj = optuna.importance.PedAnovaImportanceEvaluator()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                vals = optuna.importance.get_param_importances(tmp, evaluator=obj, params=varied)
            return {"evaluator": names[ev], "values": {k: float(v) for k, v in vals.items()},
                    "n_trials": len(done), "note": None if ev == evaluator else f"{names[evaluator]} failed: "
                    + "; ".join(errors)}
        except Exception as e:  # noqa: BLE001 -- e.g. scikit-learn missing for fANOVA
            errors.append(f"{type(e).__name__}: {e}")
    return {"evaluator": None, "values": {}, "n_trials": len(done), "note": "importance failed: " + "; ".join(errors)}


def per_value_means(study, knob: str) -> list[dict[str, Any]]:
    from optuna.trial import TrialState

    groups: dict[str, list[float]] = {}
    raw: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("duplicate_of") is not None or knob not in t.params:
            continue
        key = format_value(t.params[knob])
        groups.setdefault(key, []).append(float(t.value))
        raw[key] = t.params[knob]
    out = [{"value": raw[k], "mean": statistics.fmean(v), "n": len(v)} for k, v in groups.items()]
    return sorted(out, key=lambda r: -r["mean"])


def _pooled(records: dict[str, Any], number: int) -> tuple[list[float], list[float]]:
    """(window throughputs pooled over the re-measurement rounds, the mean of each round)."""
    rates, round_means = [], []
    for rec in records.values():
        if rec.get("trial") == number and rec.get("status") == "ok" and rec.get("window_rates"):
            rates += rec["window_rates"]
            round_means.append(statistics.fmean(rec["window_rates"]))
    return rates, round_means


def _interval(rates: list[float]) -> dict[str, Any]:
    ci = mean_ci(rates)
    return {"mean": ci["mean"], "lo": _finite(ci["lo"]), "hi": _finite(ci["hi"]), "stderr": _finite(ci["stderr"]),
            "n_windows": ci["n"]}


def record_in_study(study, result: dict[str, Any]) -> dict[str, Any]:
    """RECIPE.md's winner and every candidate's re-measured throughput, as study user
    attributes ("recipe_winner", "remeasured"). The main study's "best trial" is the highest
    *search* value, which is biased upward; the side study NAME.remeasure (remeasure.py)
    holds one trial per re-measured candidate, and its best trial is this winner."""
    remeasured = {}
    for c in result["remeasure"]["candidates"]:
        r = c.get("remeasured") or {}
        remeasured[str(c["trial"])] = {"search_value": c["search_value"], "remeasured_mean": r.get("mean"),
                                       "remeasured_ci": [r.get("lo"), r.get("hi")], "rounds": c["rounds"]}
    w = result.get("winner")
    winner = None if not w else {"trial": w["trial"], "params": w["params"], "value": w["value"],
                                 "basis": result["winner_basis"], "search_value": w["search_value"],
                                 "command": w.get("command")}
    study.set_user_attr("remeasured", remeasured)
    study.set_user_attr("recipe_winner", winner)
    return {"recipe_winner": winner, "remeasured": remeasured}


def recipe_command(setup, params: dict[str, Any]) -> str:
    """A runnable line for the winner: env vars, launcher, base config, overrides."""
    overrides, env = setup.space.split(params)
    parts = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    parts += setup.job.recipe_launch(setup.hw.nproc)
    parts.append(shlex.quote(str(setup.base_path)))
    parts += [shlex.quote(o) for o in merge_overrides(setup.cfg.base_overrides, overrides)]
    return " ".join(parts)


def analyze(setup, study, rm: dict[str, Any], stop: dict[str, Any], spent_s: float,
            budget_s: float | None) -> dict[str, Any]:
    default = setup.space.default_params
    trials = [trial_record(t, default, setup.space) for t in study.get_trials(deepcopy=False)]
    by_number = {t["number"]: t for t in trials}
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    failures: dict[str, int] = {}
    for t in trials:
        if t["state"] == "FAIL":
            failures[t["failure_kind"] or "unknown"] = failures.get(t["failure_kind"] or "unknown", 0) + 1

    records = rm.get("records", {})
    cands = []
    for n in rm.get("candidates", []):
        t = by_number[n]
        rates, round_means = _pooled(records, n)
        entry = {"trial": n, "params": t["params"], "is_default": t["is_default"], "search_value": t["value"],
                 "search_ci": t["ci"], "remeasured": None, "rounds": len(round_means), "round_means": round_means}
        if len(rates) >= 2:
            entry["remeasured"] = _interval(rates)
            entry["_rates"] = rates
        cands.append(entry)
    measured = [c for c in cands if c["remeasured"]]
    # Run-to-run noise: how far apart the rounds of one configuration land (each run is a new
    # process at a new moment of machine load), next to the within-run interval widths.
    spreads = [(max(c["round_means"]) - min(c["round_means"])) / statistics.fmean(c["round_means"])
               for c in measured if len(c["round_means"]) >= 2]
    halfwidths = [(c["remeasured"]["hi"] - c["remeasured"]["lo"]) / 2 / c["remeasured"]["mean"]
                  for c in measured if c["remeasured"]["lo"] is not None]
    run_to_run = None
    if spreads:
        run_to_run = {"max_round_spread": max(spreads), "mean_round_spread": statistics.fmean(spreads),
                      "mean_ci_halfwidth": statistics.fmean(halfwidths) if halfwidths else None,
                      "n_configs": len(spreads)}
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["duplicate_of"] is None]
    winner, basis = None, None
    if measured:
        measured.sort(key=lambda c: -c["remeasured"]["mean"])
        winner, basis = measured[0], "re-measured"
    elif complete:
        best = max(complete, key=lambda t: t["value"])
        winner = {"trial": best["number"], "params": best["params"], "is_default": best["is_default"],
                  "search_value": best["value"], "search_ci": best["ci"], "remeasured": None, "rounds": 0,
                  "_rates": best["window_rates"]}
        basis = "search only (not re-measured)"

    comparison = None
    if winner and len(measured) >= 2:
        second = measured[1]
        w = welch_t_test(winner["_rates"], second["_rates"])
        a, b = winner["remeasured"], second["remeasured"]
        overlap = None
        if None not in (a["lo"], a["hi"], b["lo"], b["hi"]):
            overlap = a["lo"] <= b["hi"] and b["lo"] <= a["hi"]
        comparison = {"winner": winner["trial"], "runner_up": second["trial"], "diff": w["diff"],
                      "diff_ci": [w["lo"], w["hi"]], "p_value": w["p_value"], "cis_overlap": overlap,
                      "distinguishable": w["p_value"] < ALPHA,
                      "others": [{"trial": c["trial"], "p_value": welch_t_test(winner["_rates"], c["_rates"])["p_value"]}
                                 for c in measured[1:]]}

    gain = None
    default_entry = next((c for c in cands if c["is_default"] and c.get("_rates")), None)
    if winner is not None and default_entry is not None and winner.get("_rates") and len(winner["_rates"]) >= 2:
        if default_entry["trial"] == winner["trial"]:
            gain = {"ratio": 1.0, "lo": 1.0, "hi": 1.0, "note": "the default configuration is the fastest measured"}
        else:
            r = ratio_of_means_ci(winner["_rates"], default_entry["_rates"])
            w = welch_t_test(winner["_rates"], default_entry["_rates"])
            gain = {"ratio": r["ratio"], "lo": r["lo"], "hi": r["hi"], "p_value": w["p_value"],
                    "default_trial": default_entry["trial"], "default": default_entry["remeasured"]}
    elif winner is not None:
        d = next((t for t in complete if t["is_default"]), None)
        if d is not None and d["number"] != winner["trial"] and len(d["window_rates"]) >= 2 \
                and len(winner.get("_rates") or []) >= 2:
            r = ratio_of_means_ci(winner["_rates"], d["window_rates"])
            gain = {"ratio": r["ratio"], "lo": r["lo"], "hi": r["hi"], "default_trial": d["number"],
                    "note": "from search measurements (default not re-measured)"}

    importance = compute_importance(study, setup.cfg.importance, setup.cfg.seed)
    ranked = sorted(importance["values"].items(), key=lambda kv: -kv[1])
    top_knobs = [{"knob": k, "importance": v, "best_value": winner["params"].get(k) if winner else None,
                  "by_value": per_value_means(study, k)} for k, v in ranked[:3]]
    minor = [{"knob": k, "importance": v, "values": [format_value(x) for x in setup.space.grid()[k]]}
             for k, v in ranked[3:] if v < 0.05]
    also = [{"knob": k, "importance": v, "by_value": per_value_means(study, k)} for k, v in ranked[3:] if v >= 0.05]

    math = setup.space.math_knobs()
    same_math = None  # the fastest configuration that trains what the default trains
    if winner and math:
        dflt = setup.space.default_params
        pool = [c for c in measured if all(same_value(c["params"].get(k), dflt.get(k)) for k in math)]
        if pool:
            same_math = {"trial": pool[0]["trial"], "value": pool[0]["remeasured"]["mean"], "basis": "re-measured",
                         "params": pool[0]["params"]}
        else:
            alt = [t for t in complete if all(same_value(t["params"].get(k), dflt.get(k)) for k in math)]
            if alt:
                best = max(alt, key=lambda t: t["value"])
                same_math = {"trial": best["number"], "value": best["value"], "basis": "search only",
                             "params": best["params"]}
        if same_math:
            same_math["command"] = recipe_command(setup, same_math["params"])

    mfu = None
    if winner and setup.model.get("flops_per_token") and setup.hardware.get("peak_flops"):
        val = (winner["remeasured"] or {}).get("mean") or winner["search_value"]
        mfu = val * setup.model["flops_per_token"] / setup.hardware["peak_flops"]

    for c in cands:
        c.pop("_rates", None)
    if winner:
        winner = {k: v for k, v in winner.items() if k != "_rates"}
        winner["command"] = recipe_command(setup, winner["params"])
        winner["overrides"], winner["env"] = setup.space.split(winner["params"])
        winner["value"] = (winner["remeasured"] or {}).get("mean") or winner["search_value"]
        winner["mfu"] = mfu
    batch = setup.job.batch(setup.base)
    return {
        "kind": "scalelab.tune",
        "format_version": FORMAT_VERSION,
        "name": setup.cfg.name,
        "job": setup.job.name,
        "out_dir": str(setup.out),
        "storage": setup.cfg.storage or f"sqlite:///{(setup.out / 'tune.db').resolve()}",
        "metric": setup.job.metric,
        "base_config": str(setup.base_path),
        "base_overrides": list(setup.cfg.base_overrides),
        "config": {k: v for k, v in setup.cfg.__dict__.items()},
        "hardware": setup.hardware,
        "model": {k: v for k, v in setup.model.items()},
        "batch": batch,
        "batch_tokens": batch.get("batch_tokens"),
        "seq_len": batch.get("seq_len"),
        "math_knobs": math,
        "same_math_winner": same_math,
        "space": setup.space.to_dict(),
        "measurement": {"warmup_steps": setup.settings.warmup_steps, "measure_steps": setup.settings.measure_steps,
                        "windows": setup.settings.windows, "tokens_per_step_per_process": setup.tokens_per_step},
        "budget": {"budget_s": budget_s, "spent_s": spent_s, "gpu_hours_spent": spent_s * setup.hw.nproc / 3600.0,
                   "stop_reason": stop.get("stop_reason"), "target_trials": stop.get("target_trials"),
                   "measured_trials": stop.get("measured_trials"), "new_trials": stop.get("new_trials"),
                   "remeasure_skipped_for_budget": rm.get("skipped_for_budget", [])},
        "counts": {"trials": len(trials), "states": states, "failures": failures},
        "trials": trials,
        "remeasure": {"candidates": cands, "records": records},
        "winner": winner,
        "winner_basis": basis,
        "comparison": comparison,
        "gain_over_default": gain,
        "run_to_run": run_to_run,
        "importance": importance,
        "top_knobs": top_knobs,
        "other_knobs": also,
        "minor_knobs": minor,
        "git": git_hash(),
    }


# ---------------------------------------------------------------------------- plots


def write_plots(study, result: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    errors: dict[str, str] = {}

    def save(name: str, fig) -> None:
        path = plots / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written[name] = str(path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name="tokens/s/proc")
            save("history", ax.figure)
        except Exception as e:  # noqa: BLE001
            errors["history"] = f"{type(e).__name__}: {e}"
        try:
            top = [k["knob"] for k in result["top_knobs"]] or None
            ax = optuna.visualization.matplotlib.plot_parallel_coordinate(study, params=top,
                                                                          target_name="tokens/s/proc")
            save("parallel_coordinate", ax.figure)
        except Exception as e:  # noqa: BLE001
            errors["parallel_coordinate"] = f"{type(e).__name__}: {e}"
    imp = result["importance"]["values"]
    if imp:
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(imp) + 1.2))
        items = sorted(imp.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        ax.set_xlabel(f"importance ({result['importance']['evaluator']}, {result['importance']['n_trials']} trials)")
        ax.set_title("Which knobs move throughput")
        save("importance", fig)
    cands = [c for c in result["remeasure"]["candidates"] if c["remeasured"]]
    if cands:
        fig, ax = plt.subplots(figsize=(6, 0.5 * len(cands) + 1.2))
        labels, means, los, his = [], [], [], []
        for c in cands:
            r = c["remeasured"]
            labels.append(f"#{c['trial']}" + (" (default)" if c["is_default"] else ""))
            means.append(r["mean"])
            los.append(r["mean"] - (r["lo"] if r["lo"] is not None else r["mean"]))
            his.append((r["hi"] if r["hi"] is not None else r["mean"]) - r["mean"])
        ax.errorbar(means, range(len(cands)), xerr=[los, his], fmt="o", capsize=4)
        ax.set_yticks(range(len(cands)), labels)
        ax.invert_yaxis()
        ax.set_xlabel("tokens/s per process, re-measured (95% CI)")
        save("remeasure", fig)
    if errors:
        result.setdefault("plot_errors", errors)
    return written


# ---------------------------------------------------------------------------- RECIPE.md


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _ci(d: dict | None) -> str:
    return format_ci((d or {}).get("mean"), [(d or {}).get("lo"), (d or {}).get("hi")], ",.0f", no_ci=" [n/a, n/a]")


def recipe_markdown(result: dict[str, Any]) -> str:
    hw = result["hardware"]
    w = result["winner"]
    lines = [f"# Throughput recipe: {result['name']}", ""]
    def load(key: str) -> str:
        v = hw.get(key) or []
        return f"{v[0]:.2f}" if v and v[0] == v[0] else "?"

    peak = hw.get("peak_flops")
    lines.append(f"**Hardware:** {hw.get('nproc')} x {hw.get('name')} ({hw.get('device')}), {hw.get('cpu_count')} CPU "
                 f"cores; peak {_num(peak / 1e12 if peak else None, '.2f')} TFLOP/s per device "
                 f"({hw.get('peak_source')}); 1-min load average {load('load_avg_start')} at the start, "
                 f"{load('load_avg_end')} at the end; torch {hw.get('versions', {}).get('torch')}.")
    m = result.get("model") or {}
    job = result.get("job", "pretrain")
    batch = (result.get("batch") or {}).get("text") or (f"global batch {result['batch_tokens']:,} tokens of seq "
                                                       f"{result['seq_len']}")
    if job == "finetune":
        what = (f"LoRA r={m.get('lora_rank')}" if m.get("lora") else "full fine-tune")
        arch = f" ({m['architecture']}, {m.get('layers')} layers x {m.get('hidden')})" if m.get("architecture") else ""
        lines.append(f"**Job:** finetune (`scalelab finetune`'s training step) of `{m.get('hf')}`{arch}, {what} "
                     f"in the base config; {batch} (fixed in every trial). Base config `{result['base_config']}`.")
    else:
        lines.append(f"**Job:** pretrain (`scalelab train`). **Model:** {_num(m.get('total'))} parameters "
                     f"({_num(m.get('non_embedding'))} non-embedding), {batch} (fixed in every trial). "
                     f"Base config `{result['base_config']}`.")
    c = result["counts"]
    b = result["budget"]
    reused = sum(1 for t in result["trials"] if t["duplicate_of"] is not None)
    lines.append(f"**Study:** {c['trials']} trials ({', '.join(f'{v} {k.lower()}' for k, v in c['states'].items())}"
                 + (f"; {reused} reused an earlier trial's measurement" if reused else "") + "), "
                 f"{b['spent_s']:.0f} s spent" + (f" of a {b['budget_s']:.0f} s budget" if b["budget_s"] else "")
                 + f"; stopped by {b['stop_reason']}. Metric: {result['metric']}, "
                 f"{result['measurement']['measure_steps']} steps after {result['measurement']['warmup_steps']} "
                 f"warm-up steps, 95% CI by batch means over {result['measurement']['windows']} windows.")
    lines.append("")
    if not w:
        lines += ["**No configuration completed.** Failures: "
                  + ", ".join(f"{k}: {v}" for k, v in c["failures"].items()), ""]
        return "\n".join(lines) + "\n"
    lines += ["## Best configuration", "", "```", w["command"], "```", ""]
    val = w["remeasured"] or {"mean": w["search_value"], "lo": (w["search_ci"] or [None, None])[0],
                              "hi": (w["search_ci"] or [None, None])[1]}
    mfu = f", MFU {100 * w['mfu']:.1f}% of the peak above" if w.get("mfu") else ""
    lines.append(f"- Throughput: **{_ci(val)} tokens/s per process** ({result['winner_basis']}, trial "
                 f"#{w['trial']}{mfu}).")
    g = result["gain_over_default"]
    if g:
        if g.get("note") and g["ratio"] == 1.0:
            lines.append(f"- Gain over the default config: none -- {g['note']}.")
        else:
            sig = ""
            if g.get("p_value") is not None:
                sig = (" (significant, Welch p = %.3g)" if g["p_value"] < ALPHA else " (not significant, Welch p = %.3g)") \
                    % g["p_value"]
            lines.append(f"- Gain over the default config (trial #{g['default_trial']}): **{100 * (g['ratio'] - 1):+.1f}%**"
                         f" [{100 * (g['lo'] - 1):+.1f}%, {100 * (g['hi'] - 1):+.1f}%]{sig}"
                         + (f"; {g['note']}" if g.get("note") else "") + ".")
    else:
        lines.append("- Gain over the default config: n/a (the default did not complete).")
    cmp_ = result["comparison"]
    if cmp_:
        verdict = ("distinguishable: the winner is faster than the runner-up" if cmp_["distinguishable"] else
                   "NOT distinguishable from the runner-up: pick either (prefer the simpler one)")
        unmeasured = [f"#{cd['trial']}" for cd in result["remeasure"]["candidates"] if not cd["remeasured"]]
        if unmeasured:
            verdict += f" among the re-measured ones ({', '.join(unmeasured)} not re-measured: budget)"
        lines.append(f"- Top configs: {verdict} (#{cmp_['winner']} vs #{cmp_['runner_up']}: "
                     f"{_num(cmp_['diff'], '+,.0f')} tokens/s [{_num(cmp_['diff_ci'][0], '+,.0f')}, "
                     f"{_num(cmp_['diff_ci'][1], '+,.0f')}], Welch p = {cmp_['p_value']:.3g}; 95% CIs "
                     f"{'overlap' if cmp_['cis_overlap'] else 'do not overlap'}).")
    math = result.get("math_knobs") or []
    if math:
        dflt = result["space"]["default_params"]
        changed = [k for k in math if not same_value(w["params"].get(k), dflt.get(k))]
        if changed:
            sets = ", ".join(f"{k}={format_value(w['params'][k])}" for k in changed)
            lines.append(f"- **Changes what is trained:** the winner sets {sets}"
                         " -- another model or other examples per step, not only speed: check the held-out loss "
                         "before adopting it.")
        sm = result.get("same_math_winner")
        if changed and sm:
            lines.append(f"- Fastest with the default's {', '.join(math)}: trial #{sm['trial']}, "
                         f"{_num(sm['value'])} tokens/s per process ({sm['basis']}): `{sm['command']}`")
        elif not changed:
            lines.append(f"- The winner keeps the default's {', '.join(math)} (knobs that change what is trained).")
    rr = result.get("run_to_run")
    if rr:
        big = rr["mean_ci_halfwidth"] is not None and rr["max_round_spread"] > 2 * rr["mean_ci_halfwidth"]
        lines.append(f"- Run-to-run noise: the re-measurement rounds of one config differ by up to "
                     f"{100 * rr['max_round_spread']:.0f}% (mean {100 * rr['mean_round_spread']:.0f}%, "
                     f"{rr['n_configs']} configs)"
                     + (f", more than the within-run CIs (+-{100 * rr['mean_ci_halfwidth']:.0f}%): this machine's "
                        "load moves between runs; trust only differences larger than that spread, or add "
                        "remeasure_rounds." if big else "; within the CIs."))
    lines.append("")
    cands = result["remeasure"]["candidates"]
    if cands:
        lines += ["| trial | changes from default | search tokens/s | re-measured tokens/s (95% CI) |",
                  "|---|---|---|---|"]
        default = result["space"]["default_params"]
        for cd in cands:
            changes = ", ".join(f"{k}={format_value(v)}" for k, v in cd["params"].items()
                                if not same_value(v, default.get(k))) or "default"
            rm_text = _ci(cd["remeasured"]) if cd["remeasured"] else "not re-measured (budget)"
            lines.append(f"| #{cd['trial']} | {changes} | {_num(cd['search_value'])} | {rm_text} |")
        lines.append("")
    lines += ["## What mattered", ""]
    imp = result["importance"]
    if result["top_knobs"]:
        rough = (" -- few trials: a rough guide only, the per-value means are the evidence"
                 if imp["n_trials"] < 10 else "")
        lines.append(f"Importance by {imp['evaluator']} over {imp['n_trials']} completed trials "
                     f"(mean search throughput of the trials at each value){rough}:")
        lines.append("")
        for k in result["top_knobs"]:
            vals = ", ".join(f"{format_value(v['value'])}: {_num(v['mean'])} (n={v['n']})" for v in k["by_value"])
            lines.append(f"- **{k['knob']}** (importance {k['importance']:.2f}; best {format_value(k['best_value'])}): "
                         f"{vals}")
        for k in result.get("other_knobs", []):
            vals = ", ".join(f"{format_value(v['value'])}: {_num(v['mean'])} (n={v['n']})" for v in k["by_value"])
            lines.append(f"- also {k['knob']} (importance {k['importance']:.2f}): {vals}")
    else:
        lines.append(f"- {imp.get('note') or 'no importance estimate'}")
    lines += ["", "## What didn't", ""]
    if result["minor_knobs"]:
        for k in result["minor_knobs"]:
            lines.append(f"- {k['knob']} (importance {k['importance']:.2f}): any of {', '.join(k['values'])}")
    else:
        lines.append("- no knob had importance < 0.05" if imp["values"] else "- n/a")
    for d in result["space"]["dropped"]:
        lines.append(f"- {d['knob']}: not searched -- {d['reason']}")
    if c["failures"]:
        lines.append("- failed trials: " + ", ".join(f"{v} {k}" for k, v in c["failures"].items())
                     + " (reasons in tune.json)")
    lines += ["", f"Files: `tune.json` (every trial), the Optuna study `{result['name']}` in `{result['storage']}` "
              f"(`optuna-dashboard {dashboard_arg(result['storage'])}`; the study `{result['name']}.remeasure` beside it "
              "has one trial per re-measured candidate, its best trial is this winner), `plots/` (history, parallel "
              "coordinates, importance, re-measurement)."]
    return "\n".join(lines) + "\n"


def dashboard_arg(storage: str) -> str:
    """What optuna-dashboard takes for a storage: the RDB URL, or a journal's file path."""
    return storage[len("journal:"):] if storage.startswith("journal:") else storage


def write_outputs(setup, study, result: dict[str, Any]) -> None:
    out = setup.out
    result["plots"] = write_plots(study, result, out)
    atomic_write_json(out / "tune.json", result)
    atomic_write_text(out / "RECIPE.md", recipe_markdown(result))
