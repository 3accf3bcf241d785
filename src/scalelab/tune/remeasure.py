"""Step 4 of a tuning study: re-measure the best configurations before naming a winner.

The search values of the best trials are biased upward (the best of many noisy
measurements won partly by luck), so the best `remeasure_top` distinct configurations and
the default run again, interleaved over `remeasure_rounds` rounds (A B C A B C, against load
drift).

Each candidate's re-measurement is one trial of a side study `NAME.remeasure` in the same
storage. Its user attributes hold the re-measured numbers (`remeasure_of`: the search
trial, `remeasured_tokens_per_s`, `remeasured_ci_lo` / `_hi`, `rounds`, each round's window
throughputs) and its value is the pooled re-measured mean, so that study's best trial is
RECIPE.md's winner (the main study's trials are finished and Optuna refuses attributes on
finished trials). A side trial is claimed (RUNNING, with heartbeats) before it runs, so two
workers never re-measure the same candidate; a resumed session runs only the rounds missing.
"""
from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Callable

from scalelab.eval.stats import mean_ci
from scalelab.tune.space import params_key
from scalelab.tune.workers import Heartbeat, fail_stale, in_flight


def side_study_name(name: str) -> str:
    return f"{name}.remeasure"


def open_side_study(storage, name: str):
    import optuna

    return optuna.create_study(study_name=side_study_name(name), storage=storage, direction="maximize",
                               load_if_exists=True)


def candidates(study, default_params: dict[str, Any], top: int) -> list:
    """The best `top` distinct completed configurations, plus the default (if it completed)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("duplicate_of") is None]
    done.sort(key=lambda t: t.value, reverse=True)
    chosen, seen = [], set()
    for t in done:
        k = params_key(t.params)
        if k in seen:
            continue
        seen.add(k)
        if len(chosen) < top:
            chosen.append(t)
    dkey = params_key(default_params)
    if not any(params_key(t.params) == dkey for t in chosen):
        default = [t for t in done if params_key(t.params) == dkey]
        if default:
            chosen.append(default[0])
    return chosen


def records_of(side) -> dict[str, Any]:
    """Every finished round of the side study: {"TRIAL:ROUND": record} (the first of duplicates)."""
    from optuna.trial import TrialState

    records: dict[str, Any] = {}
    for st in side.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        for key, rec in sorted(st.user_attrs.items()):
            if key.startswith("round_") and isinstance(rec, dict):
                records.setdefault(f"{rec['trial']}:{rec['round']}", rec)
    return records


def _claim(side, t, owner: str) -> Any | None:
    """A RUNNING side trial for search trial `t`, or None when another worker holds one (the
    lower trial number wins a race)."""
    from optuna.trial import TrialState

    st = side.ask()
    for k, v in {"remeasure_of": t.number, "params": json.dumps(t.params, sort_keys=True, default=str),
                 "search_value": t.value, "worker": owner}.items():
        st.set_user_attr(k, v)
    rivals = [o for o in side.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
              if o.user_attrs.get("remeasure_of") == t.number and o.number < st.number]
    if rivals:
        st.set_user_attr("failure", f"superseded: side trial #{rivals[0].number} re-measures trial #{t.number}")
        side.tell(st, state=TrialState.FAIL)
        return None
    return st


def remeasure(setup, study, storage, run: Callable, clock, budget: float | None,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Re-measure the candidates (missing rounds only); `run(params, run_dir, timeout_s)` ->
    RunResult. Returns {"candidates", "records", "skipped_for_budget"} for recipe.analyze."""
    import uuid

    cfg = setup.cfg
    side = open_side_study(storage, cfg.name)
    fail_stale(side, cfg.heartbeat_grace_s, retries=0, log=log)
    chosen = candidates(study, setup.space.default_params, cfg.remeasure_top) if cfg.remeasure_rounds else []
    records = dict(study.user_attrs.get("remeasure", {}))  # studies from before the side study
    records.update(records_of(side))
    owner = uuid.uuid4().hex[:12]
    skipped: list[str] = []
    mine: dict[int, Any] = {}
    for t in chosen:
        missing = [r for r in range(cfg.remeasure_rounds) if f"{t.number}:{r}" not in records]
        busy = any(o.user_attrs.get("remeasure_of") == t.number for o in in_flight(side, cfg.heartbeat_grace_s))
        if missing and not busy:
            st = _claim(side, t, owner)
            if st is not None:
                mine[t.number] = st
    try:
        _run_rounds(setup, side, chosen, mine, records, skipped, run, clock, budget, log)
    except BaseException:  # Ctrl-C: free the claims now (their rounds so far stay stored)
        from optuna.trial import TrialState

        for st in mine.values():
            with contextlib.suppress(Exception):
                side.tell(st, state=TrialState.FAIL)
        raise
    for number, st in mine.items():
        _finish_side(side, st, [r for r in records.values() if r.get("trial") == number])
    waited = False  # another worker's re-measurements: wait, so this worker's recipe has them too
    while any(o.user_attrs.get("remeasure_of") in {t.number for t in chosen}
              for o in in_flight(side, cfg.heartbeat_grace_s)):
        if budget is not None and clock.spent() >= budget:
            break
        if not waited:
            log("waiting for the re-measurements other workers are running")
            waited = True
        time.sleep(min(2.0, cfg.heartbeat_s))
        fail_stale(side, cfg.heartbeat_grace_s, retries=0, log=log)
    records.update(records_of(side))
    return {"candidates": [t.number for t in chosen], "records": records, "skipped_for_budget": skipped,
            "side_study": side}


def _run_rounds(setup, side, chosen: list, mine: dict[int, Any], records: dict[str, Any], skipped: list[str],
                run: Callable, clock, budget: float | None, log: Callable[[str], None]) -> None:
    """The interleaved rounds (A B C A B C) of the candidates this worker claimed."""
    cfg = setup.cfg
    with contextlib.ExitStack() as beats:
        for st in mine.values():
            beats.enter_context(Heartbeat(side, st, cfg.heartbeat_s))
        for rnd in range(cfg.remeasure_rounds):
            for t in chosen:
                key = f"{t.number}:{rnd}"
                if t.number not in mine or key in records:
                    continue
                est = float(t.user_attrs.get("duration_s", 0.0))
                remaining = (budget - clock.spent()) if budget is not None else None
                if remaining is not None and est > remaining:
                    skipped.append(key)
                    continue
                res = run(t.params, setup.out / "remeasure" / f"{t.number:04d}-r{rnd}", remaining)
                rec = {"trial": t.number, "round": rnd, "status": res.status, "window_rates": res.window_rates,
                       "duration_s": round(res.duration_s, 3)}
                if res.stats:
                    rec.update({"mean": res.stats["mean"], "lo": res.stats["lo"], "hi": res.stats["hi"]})
                    log(f"re-measure trial #{t.number} (round {rnd + 1}/{cfg.remeasure_rounds}): "
                        f"{res.stats['mean']:,.0f} tok/s/proc [{res.stats['lo']:,.0f}, {res.stats['hi']:,.0f}]")
                else:
                    rec.update({"failure_kind": res.kind, "failure": res.reason})
                    log(f"re-measure trial #{t.number} (round {rnd + 1}): FAILED ({res.kind}): {res.reason}")
                records[key] = rec
                mine[t.number].set_user_attr(f"round_{rnd}", rec)
                clock.save()


def _finish_side(side, st, recs: list[dict[str, Any]]) -> None:
    """Tell a side trial its pooled re-measured mean (COMPLETE), or FAIL when no round ran."""
    from optuna.trial import TrialState

    rates = [r for rec in recs if rec.get("status") == "ok" for r in rec.get("window_rates") or []]
    rounds = sum(1 for rec in recs if rec.get("status") == "ok")
    if len(rates) < 2:
        st.set_user_attr("failure", "no re-measurement completed (budget or failures)")
        side.tell(st, state=TrialState.FAIL)
        return
    ci = mean_ci(rates)
    for k, v in {"remeasured_tokens_per_s": ci["mean"], "remeasured_ci_lo": ci["lo"],
                 "remeasured_ci_hi": ci["hi"], "rounds": rounds}.items():
        st.set_user_attr(k, v)
    side.tell(st, ci["mean"])


def recipe_view(side, winner: dict[str, Any] | None) -> None:
    """The winner, as the side study's user attribute too (the trial with the best value)."""
    if side is not None:
        side.set_user_attr("recipe_winner", None if not winner else
                           {"trial": winner["trial"], "value": winner["value"], "command": winner.get("command")})

