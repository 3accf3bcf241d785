"""`scalelab tune`: an Optuna search for the fastest training configuration under a budget.

    run_tune(load_tune_config("configs/tune-cpu.yaml"))

1. (setup.py) Load the tune config (base training config + search space + budget), resolve the space
   against the hardware (knobs that mean nothing here are dropped with a note).
2. Open (or resume, or join) the Optuna study (`storage:`, default `sqlite:///OUT/tune.db`;
   watch it with `optuna-dashboard`). Several workers may share it (workers.py): a running
   trial beats; one whose worker died (no beat for heartbeat_grace_s) is failed
   ("interrupted") and queued again; a live worker's trial is never touched. Finished
   trials are never repeated. The base configuration is enqueued as trial 0 by the worker
   that creates the study, so the default is measured like any other.
3. Search: ask the sampler (TPE by default; random, grid) for a configuration, run it
   as a fresh subprocess (measure.py), report each window's tokens/s to the pruner, tell
   the result. Failures (OOM, timeout, crash, config error) become FAIL trials with their
   reason. A configuration already measured is not run again: its value (or its pruning,
   or its deterministic failure) is reused, as in Optuna's FAQ; one that timed out or hung
   gets another try; one another worker is measuring right now is waited for. The search
   stops at `trials` (total, over all sessions and workers: trials other workers are
   measuring count, and are waited for) or when the next trial would not fit in the search
   share of the budget.
4. Re-measure the best `remeasure_top` configurations and the default (remeasure.py).
5. Analyse and write tune.json, plots and RECIPE.md (recipe.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from scalelab.errors import ConfigError, ScalelabError
from scalelab.tune.measure import RunResult, run_measurement
from scalelab.tune.remeasure import candidates, recipe_view, remeasure  # noqa: F401 (candidates: re-exported)
from scalelab.tune.workers import Heartbeat, fail_stale, in_flight
from scalelab.tune.setup import (  # noqa: F401  (re-exported: the tune API is search.py)
    TuneSetup, describe_hardware, merge_overrides, prepare)
from scalelab.tune.space import ResolvedSpace, params_key
from scalelab.tune.tune_config import (  # noqa: F401  (re-exported: the tune API is search.py)
    DEVICES, TuneConfig, copy_config, key_name, load_tune_config, open_storage, validate_tune_config)

_TRANSIENT = ("timeout", "hang", "budget", "interrupted")  # failures worth another try


class TuneError(ScalelabError):
    """A tuning session measured nothing usable (every trial failed, or none could run)."""


# ---------------------------------------------------------------------------- study


def _sampler(name: str, space: ResolvedSpace, seed: int):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    # constant_liar: trials other workers are running count as bad guesses, so parallel
    # workers do not all propose the same configuration.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True, constant_liar=True)


def _pruner(cfg: TuneConfig):
    import optuna

    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    # Optuna's percentile is the share of trials *kept* (25 keeps the top quarter); ours is the
    # slowest share pruned, so "clearly slow" means what it says.
    keep = 50.0 if cfg.pruner == "median" else 100.0 - cfg.prune_slowest
    return optuna.pruners.PercentilePruner(keep, n_startup_trials=cfg.prune_startup_trials, n_warmup_steps=1)


def fingerprint(setup: TuneSetup) -> dict[str, Any]:
    """What makes measurements comparable: resuming with anything else is refused."""
    base = setup.job.fingerprint_base(setup.base)
    fp = {"space": setup.space.grid(), "base": base, "nproc": setup.hw.nproc, "device": setup.hw.device,
            "warmup_steps": setup.settings.warmup_steps, "measure_steps": setup.settings.measure_steps,
            "windows": setup.settings.windows}
    if setup.job.name != "pretrain":  # studies made before `job:` existed keep their digest
        fp["job"] = setup.job.name
    return fp


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def storage_url(setup: TuneSetup) -> str:
    return setup.cfg.storage or f"sqlite:///{(setup.out / 'tune.db').resolve()}"


def open_or_create(setup: TuneSetup, sampler_seed: int | None = None):
    """(study, storage, created): create the study, or load it (resume, or join other
    workers); refuse to resume one measured differently. `created`: this call made it."""
    import optuna

    cfg = setup.cfg
    url = storage_url(setup)
    storage = open_storage(url)
    seed = cfg.seed if sampler_seed is None else sampler_seed
    kw = dict(study_name=cfg.name, storage=storage, direction="maximize",
              sampler=_sampler(cfg.sampler, setup.space, seed), pruner=_pruner(cfg))
    try:  # creation is atomic in the storage: of two workers starting together, one creates
        study, created = optuna.create_study(**kw), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**{k: v for k, v in kw.items() if k != "direction"}), False
    fp = fingerprint(setup)
    old = study.user_attrs.get("fingerprint")
    if old is None:
        study.set_user_attr("fingerprint", fp)
        study.set_user_attr("fingerprint_digest", _digest(fp))
        study.set_user_attr("default_params", setup.space.default_params)
    elif _digest(old) != _digest(fp):
        diff = [k for k in fp if json.dumps(fp[k], sort_keys=True, default=str)
                != json.dumps(old.get(k), sort_keys=True, default=str)]
        raise ConfigError(f"study '{cfg.name}' in {url} was measured with a different {', '.join(diff)}; "
                          f"resume it with the same tune config, or choose another out_dir (--out)")
    return study, storage, created


def open_study(setup: TuneSetup, sampler_seed: int | None = None):
    """Create or load the study: (study, storage)."""
    study, storage, _ = open_or_create(setup, sampler_seed)
    return study, storage


def fail_interrupted(study, cfg: TuneConfig, log: Callable[[str], None] = lambda m: None) -> int:
    """Trials of dead workers (no heartbeat for heartbeat_grace_s): FAIL ("interrupted"), and
    queued again up to stale_retries times. A live worker's running trial is left alone."""
    return fail_stale(study, cfg.heartbeat_grace_s, cfg.stale_retries, log)


def _distributions(space: ResolvedSpace):
    from optuna.distributions import CategoricalDistribution

    return {k.name: CategoricalDistribution(k.values) for k in space.knobs}


def _fmt_params(params: dict[str, Any], default: dict[str, Any]) -> str:
    from scalelab.tune.space import format_value, same_value

    changed = [f"{k.replace('train.', '')}={format_value(v)}" for k, v in params.items()
               if not same_value(v, default.get(k))]
    return " ".join(changed) if changed else "(default config)"


class _Clock:
    """Wall time spent on the study over all sessions (stored in the study)."""

    def __init__(self, study):
        self.study = study
        self.before = float(study.user_attrs.get("spent_s", 0.0))
        self.t0 = time.monotonic()

    def spent(self) -> float:
        return self.before + time.monotonic() - self.t0

    def save(self) -> None:
        self.study.set_user_attr("spent_s", self.spent())


def budget_seconds(cfg: TuneConfig, nproc: int) -> float | None:
    if cfg.budget_s is not None:
        return float(cfg.budget_s)
    if cfg.budget_gpu_hours is not None:
        return cfg.budget_gpu_hours * 3600.0 / max(1, nproc)
    return None


def _attrs_from_result(res: RunResult) -> dict[str, Any]:
    attrs: dict[str, Any] = {"duration_s": round(res.duration_s, 3), "window_rates": res.window_rates,
                             "step_times": res.step_times, "log": res.log}
    if res.stats:
        attrs.update({"ci_lo": res.stats["lo"], "ci_hi": res.stats["hi"], "stderr": res.stats["stderr"],
                      "n_steps": res.stats["n_steps"], "n_windows": res.stats["n_windows"]})
    if res.status != "ok":
        attrs["failure_kind"] = res.kind
        attrs["failure"] = res.reason
    return attrs


def _run_config(setup: TuneSetup, params: dict[str, Any], run_dir: Path, timeout_s: float | None,
                on_window: Callable[[int, float], bool] | None = None) -> RunResult:
    overrides, env = setup.space.split(params)
    try:
        res = run_measurement(setup.command(run_dir, overrides), run_dir, setup.tokens_per_step, setup.settings,
                              env=env, on_window=on_window, timeout_s=timeout_s)
    except (OSError, ValueError, subprocess.SubprocessError) as e:  # could not even start: still a failed trial
        return RunResult(status="failed", kind="crash", reason=f"could not run the trial: {type(e).__name__}: {e}")
    if res.kind == "timeout" and timeout_s is not None and timeout_s < setup.settings.timeout_s:
        res.kind = "budget"
        res.reason = f"budget: stopped after {res.duration_s:.0f} s, when the study's budget ran out"
    return res


def _tell(study, trial, *args, **kwargs) -> bool:
    """study.tell; True when the grid sampler says the grid is exhausted.

    GridSampler calls study.stop() after the last grid point, which Optuna refuses outside
    optimize(); the trial's state is stored before that (in a `finally`), so it is safe to
    catch here.
    """
    try:
        study.tell(trial, *args, **kwargs)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return True
    return False


def _finish(study, trial, attrs: dict[str, Any], log: Callable[[str], None], *args, **kwargs) -> bool:
    """Store a trial's attributes and tell its outcome; True when the grid is exhausted. A
    trial another worker failed meanwhile (this worker looked dead: no heartbeat for the
    grace period, e.g. a suspended machine) keeps that state: its measurement is dropped."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return _tell(study, trial, *args, **kwargs)
    except UpdateFinishedTrialError:
        log(f"note: trial #{trial.number} was failed by another worker while it ran (no heartbeat within "
            f"heartbeat_grace_s); its measurement is dropped and the trial is retried")
        return False


def measured_trials(study) -> list:
    """Trials that ran a measurement (complete, pruned or failed), in the order they ran. Not
    counted: the queued default before it runs, a configuration reused from an earlier trial
    ("not run again"), a trial an interrupted session left behind."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                 TrialState.FAIL))
            if "duration_s" in t.user_attrs and t.user_attrs.get("duplicate_of") is None]


def target_trials(setup: TuneSetup) -> int:
    """`trials` = measured trials of the study in total; a grid cannot measure more than its size."""
    if setup.cfg.sampler == "grid":
        return min(setup.cfg.trials, setup.space.size())
    return setup.cfg.trials


def _enqueue_default(setup: TuneSetup, study, created: bool) -> None:
    """Queue the default configuration unless it was measured, is queued, or is running on
    another worker (a session killed before its default ran left it unmeasured). On a new
    study only its creator queues it (two workers starting together would queue it twice)."""
    from optuna.trial import TrialState

    key = params_key(setup.space.default_params)
    trials = study.get_trials(deepcopy=False)
    if not created and not any(t.state.is_finished() for t in trials):
        return
    if any(params_key(t.params) == key for t in measured_trials(study)):
        return
    if any(t.state == TrialState.WAITING or (t.state == TrialState.RUNNING and params_key(t.params) == key)
           for t in trials):
        return
    study.enqueue_trial(setup.space.default_params, user_attrs={"is_default": True})


def _wait(setup: TuneSetup, clock: _Clock, budget: float | None) -> bool:
    """Sleep one poll interval while other workers measure; False when the budget is spent."""
    time.sleep(min(2.0, setup.cfg.heartbeat_s))
    return budget is None or clock.spent() < budget


def _reuse_earlier(setup: TuneSetup, study, trial, key: str, log: Callable[[str], None]):
    """The finished trial a configuration already ran as (value, pruning or deterministic
    failure reused), waiting for it when another worker is measuring it now; None: run it."""
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    cfg = setup.cfg
    said = False
    with Heartbeat(study, trial, cfg.heartbeat_s):
        while True:
            earlier = [t for t in study.get_trials(deepcopy=False, states=finished)
                       if params_key(t.params) == key and t.user_attrs.get("failure_kind") not in _TRANSIENT
                       and t.user_attrs.get("duplicate_of") is None and "duration_s" in t.user_attrs]
            if earlier:
                return earlier[0]
            # Only an older trial is waited for: two workers asking the same configuration at once
            # would otherwise wait for each other.
            running = [t for t in in_flight(study, cfg.heartbeat_grace_s, exclude=trial.number)
                       if params_key(t.params) == key and t.user_attrs.get("duplicate_of") is None
                       and t.number < trial.number]
            if not running:
                return None
            if not said:
                log(f"trial #{trial.number}: the same configuration is being measured by another worker "
                    f"(trial #{running[0].number}); waiting for its result")
                said = True
            time.sleep(min(2.0, cfg.heartbeat_s))


def search(setup: TuneSetup, study, clock: _Clock, log: Callable[[str], None], created: bool = True) -> dict[str, Any]:
    """The search loop (step 3 of the module doc). Returns notes on why it stopped."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    cfg = setup.cfg
    dists = _distributions(setup.space)
    budget = budget_seconds(cfg, setup.hw.nproc)
    search_budget = budget * (1.0 - cfg.remeasure_share) if budget else None
    target = target_trials(setup)
    _enqueue_default(setup, study, created)
    stop_reason = "trials"
    dup_streak = 0
    new = 0
    waiting_said = False
    while True:
        fail_interrupted(study, cfg, log)  # a dead worker's trial comes back as WAITING
        done = measured_trials(study)
        if len(done) >= target:
            break
        flying = in_flight(study, cfg.heartbeat_grace_s)
        queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not queued and len(done) + len(flying) >= target:  # the last trials run on other workers
            if not waiting_said:
                log(f"waiting for {len(flying)} trial(s) other workers are measuring "
                    f"(#{', #'.join(str(t.number) for t in flying)}): {len(done)}/{target} measured")
                waiting_said = True
            if not _wait(setup, clock, budget):
                stop_reason = "budget"
                break
            continue
        est = statistics.median([t.user_attrs["duration_s"] for t in done]) if done else 0.0
        # The first trial always starts (nothing to estimate from; on a slow machine the set-up
        # alone may have used a tiny budget): the budget then stops it as a "budget" failure.
        if done and search_budget is not None and clock.spent() + est > search_budget:
            stop_reason = "budget"
            break
        trial = study.ask(dists)
        params = dict(trial.params)
        key = params_key(params)
        if key == params_key(setup.space.default_params):
            trial.set_user_attr("is_default", True)
        total = f"#{trial.number} ({len(done) + 1}/{target})"
        first = _reuse_earlier(setup, study, trial, key, log)
        if first is not None:  # measured before: reuse the outcome (value, pruning or deterministic failure)
            attrs = {"duplicate_of": first.number}
            attrs.update({a: first.user_attrs[a] for a in ("ci_lo", "ci_hi", "stderr", "failure_kind", "failure")
                          if a in first.user_attrs})
            if first.state == TrialState.COMPLETE:
                exhausted = _finish(study, trial, attrs, log, first.value)
            else:
                exhausted = _finish(study, trial, attrs, log, state=first.state)
            log(f"trial #{trial.number}: {_fmt_params(params, setup.space.default_params)} = trial "
                f"#{first.number} (not run again, not counted)")
            dup_streak += 1
            if dup_streak >= 20 or exhausted:
                stop_reason = "exhausted"
                break
            continue
        dup_streak = 0
        waiting_said = False
        remaining = (budget - clock.spent()) if budget is not None else None

        def on_window(i: int, rate: float) -> bool:
            try:
                trial.report(rate, i)
                return trial.should_prune()
            except UpdateFinishedTrialError:  # another worker failed it: stop, _finish says so
                return True

        try:
            with Heartbeat(study, trial, cfg.heartbeat_s):
                res = _run_config(setup, params, setup.out / "trials" / f"{trial.number:04d}", remaining, on_window)
        except BaseException:  # Ctrl-C or a crash of the tuner itself: say so now, not after the grace period
            _finish(study, trial, {"failure_kind": "interrupted", "failure": "interrupted: the tuning session "
                                   "stopped while this trial ran"}, log, state=TrialState.FAIL)
            raise
        new += 1
        attrs = _attrs_from_result(res)
        desc = _fmt_params(params, setup.space.default_params)
        if res.status == "ok":
            exhausted = _finish(study, trial, attrs, log, res.stats["mean"])
            s = res.stats
            log(f"trial {total}: {desc} -> {s['mean']:,.0f} tok/s/proc [{s['lo']:,.0f}, {s['hi']:,.0f}] "
                f"({res.duration_s:.0f} s; spent {clock.spent():.0f}"
                + (f"/{budget:.0f} s)" if budget else " s)"))
        elif res.status == "pruned":
            exhausted = _finish(study, trial, attrs, log, state=TrialState.PRUNED)
            log(f"trial {total}: {desc} -> {res.reason}")
        else:
            exhausted = _finish(study, trial, attrs, log, state=TrialState.FAIL)
            log(f"trial {total}: {desc} -> FAILED ({res.kind}): {res.reason}")
        clock.save()
        if res.kind == "budget":
            stop_reason = "budget"
            break
        if exhausted:
            stop_reason = "exhausted"
            break
    return {"stop_reason": stop_reason, "target_trials": target, "measured_trials": len(measured_trials(study)),
            "new_trials": new}


def run_tune(cfg: TuneConfig, progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a tuning study end to end; returns the tune.json dict."""
    import optuna

    from scalelab.tune.recipe import analyze, record_in_study, write_outputs

    if log is None:
        log = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    setup = prepare(cfg, progress=progress)
    for d in setup.space.dropped:
        log(f"note: knob {d['knob']} dropped: {d['reason']}")
    for n in setup.space.notes:
        log(f"note: {n}")
    study, storage, created = open_or_create(setup)
    interrupted = fail_interrupted(study, cfg, log)
    if interrupted:
        log(f"note: {interrupted} trial(s) of a stopped worker or session marked failed (no heartbeat for "
            f"{cfg.heartbeat_grace_s:.0f} s)")
    # A resumed session draws fresh random numbers (the same seed would replay the first trials);
    # a worker joining a study others are running draws its own too.
    if study.trials or not created:
        from optuna.trial import TrialState

        joined = not created and (not any(t.state.is_finished() for t in study.trials)
                                  or in_flight(study, cfg.heartbeat_grace_s)
                                  or any(t.state == TrialState.WAITING for t in study.trials))
        salt = int.from_bytes(os.urandom(4), "little") if joined else 0
        study.sampler = _sampler(cfg.sampler, setup.space, (cfg.seed + len(study.trials) + salt) % 2**32)
        if joined:
            log("note: joining a study other workers are running")
    clock = _Clock(study)
    budget = budget_seconds(cfg, setup.hw.nproc)
    log(f"tune '{cfg.name}': {len(setup.space.knobs)} knobs ({setup.space.size():,} configurations), "
        f"{setup.hw.nproc} x {setup.hw.device} per trial, {cfg.sampler} sampler, "
        + (f"budget {budget:.0f} s ({clock.spent():.0f} s spent), " if budget else "")
        + f"{len(measured_trials(study))}/{target_trials(setup)} measured trials done -> {setup.out}")
    if len(measured_trials(study)) >= target_trials(setup):
        log(f"note: all {setup.space.size()} configurations of the grid are measured: no new trial"
            if target_trials(setup) < cfg.trials else
            f"note: the study already has {len(measured_trials(study))} measured trials (trials = {cfg.trials} "
            f"counts the study's total over all sessions): no new trial; raise --trials to search further")
    try:
        stop = search(setup, study, clock, log, created)
        rm = remeasure(setup, study, storage, lambda params, run_dir, timeout_s: _run_config(
            setup, params, run_dir, timeout_s), clock, budget, log)
    finally:
        clock.save()
    setup.hardware["load_avg_end"] = list(__import__("scalelab.train.hardware", fromlist=["machine_load"])
                                          .machine_load())
    side = rm.pop("side_study", None)
    result = analyze(setup, study, rm, stop, clock.spent(), budget)
    record_in_study(study, result)  # the dashboard shows RECIPE.md's re-measured winner too
    recipe_view(side, result.get("winner"))
    write_outputs(setup, study, result)
    return result


_FIXES = {"timeout": "raise trial_timeout_s in the tune YAML (or lower measure_steps)",
          "hang": "raise stall_timeout_s in the tune YAML",
          "budget": "raise --budget-s (or --budget-gpu-hours)",
          "oom": "lower train.micro_batch in the base config or the space",
          "error": "fix the base config (`scalelab train` on it shows the error)",
          "crash": "see the trial's log"}


def check_result(result: dict[str, Any]) -> None:
    """Raise TuneError with the real reasons when the study has no completed configuration
    (the CLI exits non-zero then; tune.json and RECIPE.md are written before)."""
    if result.get("winner"):
        return
    where = f"{result['out_dir']}/tune.json"
    ran = [t for t in result["trials"] if t["duplicate_of"] is None and t.get("duration_s") is not None]
    if not ran:
        b = result["budget"]
        why = (f"the budget ({b['budget_s']:.0f} s) was spent ({b['spent_s']:.0f} s) before any trial ran; "
               f"raise --budget-s, or start a new study with another --out"
               if b.get("stop_reason") == "budget" else f"the search stopped ({b.get('stop_reason')}) before any ran")
        raise TuneError(f"tune: no trial was measured: {why}")
    kinds: dict[str, list] = {}
    for t in ran:
        kinds.setdefault(t["failure_kind"] or t["state"].lower(), []).append(t)
    parts = []
    for kind, ts in kinds.items():
        first = ts[0]
        fix = _FIXES.get(kind)
        parts.append(f"{len(ts)} {kind} (trial #{first['number']}: {first['failure'] or kind})"
                     + (f" -> {fix}" if fix else ""))
    raise TuneError(f"tune: no configuration completed in {len(ran)} measured trial(s): " + "; ".join(parts)
                    + f". Details: {where}")

