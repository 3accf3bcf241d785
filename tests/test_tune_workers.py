"""Several workers on one study (journal storage), and the re-measured winner being the
best trial of the side study NAME.remeasure (what optuna-dashboard shows)."""
import json
import subprocess
import sys
import time

import pytest
import yaml

from scalelab.tune.search import load_tune_config
from test_tune_loop import TINY_BASE, data_dir, write_tune  # noqa: F401 (data_dir: the fixture)


def _study(url: str, name: str):
    import optuna

    from scalelab.tune.tune_config import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url))


FAKE_WORKER = """
import random, sys, time
import scalelab.tune.search as search
from scalelab.tune.measure import RunResult

def fake_run(setup, params, run_dir, timeout_s, on_window=None):  # a measurement without training
    time.sleep(0.4)
    rates = [1000.0 * params["train.micro_batch"] + random.random() for _ in range(2)]
    if on_window:
        on_window(0, rates[0])
    return RunResult(status="ok", window_rates=rates, duration_s=0.4, stats={
        "mean": sum(rates) / 2, "lo": min(rates), "hi": max(rates), "stderr": 0.5, "n_steps": 4, "n_windows": 2})

search._run_config = fake_run
import scalelab.tune.recipe as recipe
recipe.write_plots = lambda *a, **k: {}  # figures are tested elsewhere; here they only cost time
search.run_tune(search.load_tune_config(sys.argv[1]), progress=True)
"""


def _run_workers(cmd, n=2):
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "UpdateFinishedTrialError" not in out and "Traceback" not in out
    return outs


def test_two_worker_processes_share_one_journal_study(tmp_path, data_dir):  # noqa: F811
    """The same as below with a synthetic measurement (no training; fast): two processes,
    one journal, exactly --trials measured trials in total, none stolen or lost, each
    candidate re-measured once."""
    from optuna.trial import TrialState

    from scalelab.tune.search import measured_trials

    journal = tmp_path / "shared" / "tune.log"
    path = write_tune(tmp_path, data_dir, sampler="random", pruner="none", trials=6, remeasure_top=2,
                      remeasure_rounds=1, heartbeat_s=0.5, heartbeat_grace_s=30, storage=f"journal:{journal}",
                      space={"train.micro_batch": [1, 2, 4, 8, 16], "train.threads": [1, 2]})
    outs = _run_workers([sys.executable, "-c", FAKE_WORKER, str(path)])

    study = _study(f"journal:{journal}", "t")
    ran = measured_trials(study)
    assert len(ran) == 6 and all(t.state == TrialState.COMPLETE for t in ran)
    assert not [t for t in study.trials if t.state in (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)]
    side = _study(f"journal:{journal}", "t.remeasure")
    of = [t.user_attrs["remeasure_of"] for t in side.trials if t.state == TrialState.COMPLETE]
    assert len(of) == len(set(of)) >= 2
    assert sum(out.count(" tok/s/proc [") for out in outs) >= 6  # every measured trial was run by some worker


@pytest.mark.slow
def test_two_workers_on_one_journal_measure_n_trials_in_total(tmp_path, data_dir):  # noqa: F811
    """Two `scalelab tune` processes on one journal file at once: both finish (no
    UpdateFinishedTrialError), the study has exactly --trials measured trials (COMPLETE: no
    trial stolen), and each candidate is re-measured once, by one worker."""
    from optuna.trial import TrialState

    from scalelab.tune.search import measured_trials

    journal = tmp_path / "shared" / "tune.log"
    path = write_tune(tmp_path, data_dir, sampler="random", pruner="none", trials=4, measure_steps=4, windows=2,
                      remeasure_top=1, remeasure_rounds=1, heartbeat_s=1, heartbeat_grace_s=30,
                      storage=f"journal:{journal}", space={"train.micro_batch": [1, 2, 4, 8, 16],
                                                           "train.threads": [1]})
    t0 = time.monotonic()
    _run_workers([sys.executable, "-m", "scalelab", "tune", str(path)])
    study = _study(f"journal:{journal}", "t")
    ran = measured_trials(study)
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE for t in ran)
    assert not [t for t in study.trials if t.state in (TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)]
    side = _study(f"journal:{journal}", "t.remeasure")
    done = [t for t in side.trials if t.state == TrialState.COMPLETE]
    of = [t.user_attrs["remeasure_of"] for t in done]
    assert len(of) == len(set(of)) >= 1  # each candidate once
    saved = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert saved["winner"]["trial"] == side.best_trial.user_attrs["remeasure_of"]
    print(f"two workers: {time.monotonic() - t0:.0f} s")


def test_recipe_winner_is_the_side_studys_best_trial(tmp_path, data_dir):  # noqa: F811
    """The search's best trial (a lucky measurement) is not RECIPE.md's winner; the side
    study NAME.remeasure holds the re-measured values as trial user attributes and its
    best_trial is the winner. A resumed session re-measures nothing again."""
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution

    from scalelab.tune.measure import RunResult
    from scalelab.tune.recipe import analyze, record_in_study, recipe_markdown
    from scalelab.tune.remeasure import recipe_view, remeasure
    from scalelab.tune.search import _Clock, open_study, prepare

    path = write_tune(tmp_path, data_dir, space={"train.micro_batch": [4, 8, 16]}, remeasure_top=2,
                      remeasure_rounds=2, storage=f"journal:{tmp_path / 'j' / 'tune.log'}")
    setup = prepare(load_tune_config(path), progress=False)
    study, storage = open_study(setup)
    dists = {"train.micro_batch": CategoricalDistribution([4, 8, 16])}
    for mb, value in ((8, 1000.0), (4, 2100.0), (16, 2000.0)):  # search: micro_batch 4 looks best
        study.add_trial(optuna.trial.create_trial(params={"train.micro_batch": mb}, distributions=dists, value=value,
                                                  user_attrs={"window_rates": [value] * 3, "duration_s": 1.0}))
    true_rate = {4: 1900.0, 16: 2050.0, 8: 1000.0}  # re-measured: 16 is the fastest
    rng = np.random.default_rng(0)
    runs = []

    def run(params, run_dir, timeout_s):
        runs.append((params["train.micro_batch"], run_dir.name))
        rates = list(true_rate[params["train.micro_batch"]] + rng.normal(0, 5, 3))
        stats = {"mean": float(np.mean(rates)), "lo": min(rates), "hi": max(rates)}
        return RunResult(status="ok", window_rates=rates, stats=stats, duration_s=0.1)

    rm = remeasure(setup, study, storage, run, _Clock(study), None, lambda m: None)
    assert sorted(runs) == sorted([(4, "0001-r0"), (4, "0001-r1"), (16, "0002-r0"), (16, "0002-r1"),
                                   (8, "0000-r0"), (8, "0000-r1")])
    side = rm.pop("side_study")
    res = analyze(setup, study, rm, {"stop_reason": "trials"}, 1.0, None)
    record_in_study(study, res)
    recipe_view(side, res["winner"])
    assert res["winner"]["trial"] == 2 and study.best_trial.number == 1  # the views differ in the main study
    again = _study(f"journal:{tmp_path / 'j' / 'tune.log'}", "t.remeasure")
    best = again.best_trial
    assert best.user_attrs["remeasure_of"] == res["winner"]["trial"] == again.user_attrs["recipe_winner"]["trial"]
    assert best.value == pytest.approx(res["winner"]["remeasured"]["mean"])
    assert best.user_attrs["remeasured_ci_lo"] == pytest.approx(res["winner"]["remeasured"]["lo"])
    assert best.user_attrs["rounds"] == 2 and best.user_attrs["search_value"] == 2000.0
    assert {t.user_attrs["remeasure_of"] for t in again.trials} == {0, 1, 2}
    assert _study(f"journal:{tmp_path / 'j' / 'tune.log'}", "t").user_attrs["recipe_winner"]["trial"] == 2
    assert "t.remeasure" in recipe_markdown(res) and f"optuna-dashboard {tmp_path / 'j' / 'tune.log'}" in \
        recipe_markdown(res)
    runs.clear()  # resumed: every round is stored, nothing runs again
    rm2 = remeasure(setup, study, storage, run, _Clock(study), None, lambda m: None)
    assert runs == [] and len(rm2["records"]) == 6


def test_tune_yaml_keys_for_workers_are_checked(tmp_path):
    from scalelab.errors import ConfigError

    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"base": dict(TINY_BASE), "space": {"train.micro_batch": [4, 8]},
                                 "heartbeat_s": 30, "heartbeat_grace_s": 40}))
    with pytest.raises(ConfigError, match=r"heartbeat_grace_s \(40.*at least 2 x heartbeat_s"):
        load_tune_config(p)
    with pytest.raises(ConfigError, match="job must be one of pretrain, finetune"):
        load_tune_config(p, ["heartbeat_grace_s=90", "job=sft"])
