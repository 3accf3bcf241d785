"""The whole tuning loop with real training subprocesses on a tiny model, and the analysis
(importance, distinguishability, gain, RECIPE.md) on a synthetic study."""
import json
import math

import pytest
import yaml

from scalelab.config import load_config
from scalelab.errors import ConfigError
from scalelab.tune.search import load_tune_config, run_tune

TINY_BASE = {
    "data": {"source": "builtin:bbcnews", "max_docs": 150, "vocab_size": 384},
    "model": {"n_layer": 2, "d_model": 64, "n_head": 2, "seq_len": 32},
    "train": {"micro_batch": 8, "batch_tokens": 512, "threads": 1, "warmup_steps": 2},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from scalelab.data.prepare import prepare_data

    d = tmp_path_factory.mktemp("tune-data") / "bbc"
    base = dict(TINY_BASE, data=dict(TINY_BASE["data"], dir=str(d)))
    cfg = load_config(None, [f"{s}.{k}={v}" for s, sec in base.items() for k, v in sec.items()]
                      + ["train.max_steps=1"])
    prepare_data(cfg.data, progress=False)
    return d


def write_tune(tmp_path, data_dir, **kw):
    base = json.loads(json.dumps(TINY_BASE))
    base["data"]["dir"] = str(data_dir)
    cfg = {"name": "t", "out_dir": str(tmp_path / "out"), "base": base, "warmup_steps": 2, "measure_steps": 6,
           "windows": 3, "trial_timeout_s": 120, "stall_timeout_s": 60, "remeasure_top": 2, "remeasure_rounds": 1,
           **kw}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_full_loop_writes_outputs_records_failures_and_resumes(tmp_path, data_dir):
    # Grid: micro-batch {4, 8} x prefetch_factor {2, 0}; 12 does not divide (excluded); prefetch_factor=0 is
    # rejected by the trainer's config validation in the subprocess -> FAIL trials with the reason; the study
    # goes on. Trial 0 is the default (8, 2); its grid twin is not run again (reused, not counted):
    # trials=5 is capped at the grid's 4 configurations, all measured.
    path = write_tune(tmp_path, data_dir, sampler="grid", trials=5, space={
        "train.micro_batch": [4, 8, 12],
        "train.prefetch_factor": {"values": [2, 0], "requires": []},
        "NCCL_ALGO": None,
    })
    cfg = load_tune_config(path)
    logs = []
    res = run_tune(cfg, progress=False, log=logs.append)
    out = tmp_path / "out"
    saved = json.loads((out / "tune.json").read_text())
    ran = [t for t in saved["trials"] if t["duplicate_of"] is None]
    assert saved["kind"] == "scalelab.tune" and len(ran) == 4 and len(saved["trials"]) in (4, 5)
    assert saved["budget"]["target_trials"] == 4 and saved["budget"]["measured_trials"] == 4
    assert {d["knob"] for d in saved["space"]["dropped"]} == {"NCCL_ALGO"}
    assert any("[12] excluded" in n for n in saved["space"]["notes"])
    states = [t["state"] for t in ran]
    assert states.count("FAIL") == 2 and states.count("COMPLETE") == 2
    for t in saved["trials"]:
        if t["state"] == "FAIL":
            assert t["params"]["train.prefetch_factor"] == 0
            assert t["failure_kind"] == "error" and "prefetch_factor must be >= 1" in t["failure"]
        else:
            assert t["value"] > 0 and t["ci"][0] < t["value"] < t["ci"][1]
            if t["duplicate_of"] is None:
                assert len(t["window_rates"]) == 3 and len(t["step_times"]) == 8
    assert saved["trials"][0]["is_default"]
    dups = [t for t in saved["trials"] if t["duplicate_of"] is not None]
    assert all(d["duplicate_of"] == 0 and d["state"] == "COMPLETE" for d in dups)
    assert saved["counts"]["failures"] == {"error": 2}
    # re-measurement of the 2 distinct completed configs (one is the default)
    cands = saved["remeasure"]["candidates"]
    assert len(cands) == 2 and all(c["remeasured"] and c["remeasured"]["n_windows"] == 3 for c in cands)
    w = saved["winner"]
    assert w["trial"] in (c["trial"] for c in cands) and saved["winner_basis"] == "re-measured"
    assert w["command"].startswith("scalelab train ") and "train.micro_batch=" in w["command"]
    assert saved["comparison"] is not None and 0 <= saved["comparison"]["p_value"] <= 1
    assert saved["gain_over_default"]["ratio"] >= 1.0
    assert saved["hardware"]["device"] == "cpu" and saved["hardware"]["peak_flops"] > 0
    recipe = (out / "RECIPE.md").read_text()
    assert "## Best configuration" in recipe and w["command"] in recipe and "NCCL_ALGO: not searched" in recipe
    for name in ("history", "parallel_coordinate", "remeasure"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert (out / "tune.db").is_file()
    assert any("FAILED (error)" in line for line in logs)

    # Resume: same study, nothing left to do -> no trial and no re-measurement runs again.
    trial_dirs = sorted(p.name for p in (out / "trials").iterdir())
    mtimes = {p: p.stat().st_mtime for p in (out / "trials").rglob("metrics.jsonl")}
    logs2 = []
    res2 = run_tune(load_tune_config(path), progress=False, log=logs2.append)
    assert len(res2["trials"]) == len(saved["trials"]) and sorted(p.name for p in (out / "trials").iterdir()) == trial_dirs
    assert {p: p.stat().st_mtime for p in (out / "trials").rglob("metrics.jsonl")} == mtimes
    assert not any(line.startswith(("trial ", "re-measure")) for line in logs2)
    assert res2["winner"]["trial"] == res["winner"]["trial"]

    # Resuming with a different space is refused with a clear message.
    other = write_tune(tmp_path, data_dir, sampler="grid", trials=5, space={"train.micro_batch": [4, 8]})
    with pytest.raises(ConfigError, match="different space"):
        run_tune(load_tune_config(other), progress=False, log=lambda m: None)


def test_timeouts_are_recorded_and_the_study_goes_on(tmp_path, data_dir):
    path = write_tune(tmp_path, data_dir, sampler="random", trials=2, trial_timeout_s=1.5, remeasure_rounds=0,
                      space={"train.micro_batch": [4, 8]})
    res = run_tune(load_tune_config(path), progress=False, log=lambda m: None)
    assert [t["state"] for t in res["trials"]] == ["FAIL", "FAIL"]
    assert all(t["failure_kind"] == "timeout" and "process group killed" in t["failure"] for t in res["trials"])
    assert res["winner"] is None
    assert "No configuration completed" in (tmp_path / "out" / "RECIPE.md").read_text()


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_dead_workers_trial_is_failed_and_retried_a_live_ones_is_left_alone(tmp_path, data_dir, storage):
    """Heartbeats: a RUNNING trial whose worker stopped beating (silent for longer than the
    grace period) is failed ('interrupted') and queued again with the same parameters; a
    RUNNING trial that beats is never touched (a second worker used to fail it, and the
    first worker then crashed with UpdateFinishedTrialError)."""
    import time

    import optuna

    from scalelab.tune.recipe import trial_record
    from scalelab.tune.search import fail_interrupted, open_study, prepare
    from scalelab.tune.workers import Heartbeat

    path = write_tune(tmp_path, data_dir, trials=1, space={"train.micro_batch": [4, 8]}, heartbeat_s=0.5,
                      heartbeat_grace_s=2, storage=f"journal:{tmp_path / 'tune.log'}" if storage == "journal"
                      else f"sqlite:///{tmp_path / 'tune.db'}")
    cfg = load_tune_config(path)
    setup = prepare(cfg, progress=False)
    study, _ = open_study(setup)
    dists = {"train.micro_batch": optuna.distributions.CategoricalDistribution([4, 8])}
    dead = study.ask(dists)  # its worker is gone: nobody beats for it
    live = study.ask(dists)
    other, _ = open_study(setup)  # a second worker, its own storage object on the same journal
    with Heartbeat(study, live, cfg.heartbeat_s):
        assert fail_interrupted(other, cfg) == 0  # both started within the grace period
        time.sleep(3.0)
        assert fail_interrupted(other, cfg) == 1  # only the silent one
        assert fail_interrupted(other, cfg) == 0  # nothing twice
    trials = {t.number: t for t in open_study(setup)[0].trials}
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[live.number].state == optuna.trial.TrialState.RUNNING
    rec = trial_record(trials[dead.number], setup.space.default_params, setup.space)
    assert rec["failure_kind"] == "interrupted"
    retry = [t for t in trials.values() if t.state == optuna.trial.TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == trials[dead.number].params
    assert retry[0].system_attrs["failed_trial"] == dead.number
    study.tell(live, 123.0)  # the live trial's worker finishes it normally
    assert open_study(setup)[0].trials[live.number].value == 123.0
    # retried at most stale_retries (1) times: the retry dying too is failed, not queued again
    again = other.ask(dists)
    assert again.number == retry[0].number
    time.sleep(3.0)
    assert fail_interrupted(other, cfg) == 1
    assert not [t for t in open_study(setup)[0].trials if t.state == optuna.trial.TrialState.WAITING]


def test_budget_stops_the_search(tmp_path, data_dir):
    path = write_tune(tmp_path, data_dir, trials=50, budget_s=1.0, remeasure_rounds=0,
                      space={"train.micro_batch": [4, 8]})
    res = run_tune(load_tune_config(path), progress=False, log=lambda m: None)
    # The first trial starts (nothing to estimate from) and is stopped by the budget.
    assert len(res["trials"]) == 1 and res["budget"]["stop_reason"] == "budget"
    assert res["trials"][0]["failure_kind"] == "budget"


def test_analysis_on_a_synthetic_study(tmp_path, data_dir):
    """Importance, distinguishability and gain, without running trials: a study where
    micro_batch matters a lot and loader_workers not at all."""
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution

    from scalelab.tune.recipe import analyze, recipe_markdown, write_outputs
    from scalelab.tune.search import prepare

    path = write_tune(tmp_path, data_dir, space={"train.micro_batch": [2, 4, 8, 16],
                                                 "train.loader_workers": [0, 1, 2]})
    setup = prepare(load_tune_config(path), progress=False)
    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(0)
    dists = {k.name: CategoricalDistribution(k.values) for k in setup.space.knobs}
    speed = {2: 1000.0, 4: 1500.0, 8: 2000.0, 16: 2600.0}
    for i in range(16):
        params = {"train.micro_batch": [2, 4, 8, 16][i % 4], "train.loader_workers": [0, 1, 2][(i // 4) % 3]}
        rates = list(speed[params["train.micro_batch"]] + rng.normal(0, 20, 3))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(np.mean(rates)),
                                                  user_attrs={"window_rates": rates, "duration_s": 1.0}))
    # default (micro 8, workers 0) = trial 2; best = 16 (trials 3, 7, 11, 15)
    records = {}
    for n, base_rate in ((3, 2600.0), (15, 2590.0), (2, 2000.0)):
        records[f"{n}:0"] = {"trial": n, "round": 0, "status": "ok",
                             "window_rates": list(base_rate + rng.normal(0, 20, 6))}
    rm = {"candidates": [3, 15, 2], "records": records}
    res = analyze(setup, study, rm, {"stop_reason": "trials", "target_trials": 16}, 10.0, None)
    assert res["importance"]["evaluator"] == "fANOVA"
    assert res["top_knobs"][0]["knob"] == "train.micro_batch" and res["top_knobs"][0]["best_value"] == 16
    assert res["top_knobs"][0]["by_value"][0]["value"] == 16
    assert res["winner"]["trial"] in (3, 15)
    assert res["comparison"]["distinguishable"] is False  # 2600 vs 2590 with noise 20
    g = res["gain_over_default"]
    assert g["default_trial"] == 2 and 1.2 < g["lo"] < g["ratio"] < g["hi"] < 1.4 and g["p_value"] < 1e-6
    assert math.isclose(res["winner"]["mfu"], res["winner"]["value"] * setup.model["flops_per_token"]
                        / setup.hardware["peak_flops"])
    md = recipe_markdown(res)
    assert "NOT distinguishable" in md and "**train.micro_batch**" in md and "Gain over the default" in md
    write_outputs(setup, study, res)
    assert (setup.out / "plots" / "importance.png").is_file() and (setup.out / "tune.json").is_file()


def test_tune_config_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"base": {"model": {}}, "sampler": "bayes", "space": {"train.compile": None}}))
    with pytest.raises(ConfigError, match=r"sampler \(--sampler\) must be one of"):
        load_tune_config(p)
    p.write_text(yaml.safe_dump({"base": {}, "space": {"train.compile": None}, "trails": 3}))
    with pytest.raises(ConfigError, match="trails"):
        load_tune_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_tune_config(tmp_path / "nope.yaml")
    p.write_text(yaml.safe_dump({"base": "missing.yaml", "space": {"train.compile": None}}))
    cfg = load_tune_config(p, ["trials=3", "space.train.micro_batch=[1,2]", "base.train.threads=1"])
    assert cfg.trials == 3 and cfg.space["train.micro_batch"] == [1, 2] and cfg.base_overrides == ["train.threads=1"]
    with pytest.raises(ConfigError, match="missing.yaml"):
        run_tune(cfg, progress=False)


@pytest.mark.slow
def test_tpe_study_with_two_gloo_processes_and_pruning(tmp_path, data_dir):
    """The CPU multi-process path: torchrun trials (gloo), DDP/FSDP knobs live, TPE, pruning."""
    path = write_tune(tmp_path, data_dir, nproc=2, sampler="tpe", trials=8, pruner="median", prune_startup_trials=2,
                      measure_steps=12, windows=4, remeasure_top=2, remeasure_rounds=2, space={
                          "train.micro_batch": [1, 2, 4, 8],
                          "train.parallel": ["ddp", "fsdp"],
                          "train.ddp_bucket_mb": [1, 25],
                          "train.loader_workers": [0, 1],
                          "NCCL_ALGO": None,
                      })
    res = run_tune(load_tune_config(path), progress=False, log=lambda m: None)
    assert res["hardware"]["nproc"] == 2 and "train.ddp_bucket_mb" in res["space"]["default_params"]
    ran = [t for t in res["trials"] if t["duplicate_of"] is None]  # a re-proposed configuration is reused, not counted
    assert len(ran) == 8 and res["budget"]["measured_trials"] == 8
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in res["trials"])
    assert res["winner"]["command"].startswith("torchrun --nproc_per_node=2 -m scalelab train")
    for t in ran:
        if t["state"] == "PRUNED":
            assert 1 <= len(t["intermediate_values"]) < 4
    done = [t for t in res["trials"] if t["state"] == "COMPLETE" and t["duplicate_of"] is None]
    if len(done) >= 3:
        assert res["importance"]["values"] and res["top_knobs"]
    else:
        assert "too few completed trials" in res["importance"]["note"]


def test_pruner_stops_only_the_slowest_share():
    import optuna

    from scalelab.tune.search import TuneConfig, _pruner

    study = optuna.create_study(direction="maximize", pruner=_pruner(TuneConfig(prune_slowest=25,
                                                                                prune_startup_trials=4)))
    for v in (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0):
        t = study.ask()
        t.report(v, 0)
        t.report(v, 1)
        study.tell(t, v)

    def pruned_at(v):
        t = study.ask()
        t.report(v, 0)
        t.report(v, 1)
        out = t.should_prune()
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
        return out

    assert pruned_at(150.0)  # slowest quarter
    assert not pruned_at(350.0)  # below the median, but not clearly slow


def _tune_parser():
    import argparse

    from scalelab.cli.tune import register

    parser = argparse.ArgumentParser(prog="scalelab")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_trials_n_means_n_measured_trials_and_resume_adds_up_to_the_total(tmp_path, data_dir, capsys):
    # `--trials 1` used to run nothing: the queued default counted as a trial before it ran.
    path = write_tune(tmp_path, data_dir, sampler="random", trials=30, remeasure_rounds=0,
                      space={"train.micro_batch": [4, 8]})
    args = _tune_parser().parse_args(["tune", str(path), "--trials", "1", "--quiet"])
    assert args.func(args) == 0
    assert "best: trial #0" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert [(t["state"], t["is_default"]) for t in saved["trials"]] == [("COMPLETE", True)]
    assert saved["budget"]["measured_trials"] == 1 and saved["budget"]["new_trials"] == 1
    # Resumed with --trials 2: one more measured trial (2 in the study); a reused configuration
    # (micro_batch=8 again) is not measured and does not count.
    logs = []
    res = run_tune(load_tune_config(path, ["trials=2"]), progress=False, log=logs.append)
    ran = [t for t in res["trials"] if t["duplicate_of"] is None]
    assert len(ran) == 2 and {t["params"]["train.micro_batch"] for t in ran} == {4, 8}
    assert all(t["state"] == "COMPLETE" for t in ran) and res["budget"]["new_trials"] == 1
    reused = [line for line in logs if "= trial #0" in line]  # the sampler (seed 1) re-proposes micro_batch=8
    assert reused and all("(not run again, not counted)" in line for line in reused)
    assert all(t["duplicate_of"] == 0 for t in res["trials"] if t["duplicate_of"] is not None)
    assert any("(2/2)" in line for line in logs)
    # Resumed with the same total: nothing new, and the log says why.
    logs = []
    res = run_tune(load_tune_config(path, ["trials=2"]), progress=False, log=logs.append)
    assert res["budget"]["new_trials"] == 0 and any("raise --trials" in line for line in logs)


def test_a_study_with_nothing_completed_exits_non_zero_with_the_reason(tmp_path, data_dir, capsys):
    from scalelab.tune.search import TuneError

    path = write_tune(tmp_path, data_dir, sampler="random", trials=1, trial_timeout_s=1.5, remeasure_rounds=0,
                      space={"train.micro_batch": [4, 8]})
    args = _tune_parser().parse_args(["tune", str(path), "--quiet"])
    with pytest.raises(TuneError, match=r"no configuration completed in 1 measured trial.*1 timeout \(trial #0: "
                                        r"timeout: no result within .*trial_timeout_s"):
        args.func(args)
    assert (tmp_path / "out" / "tune.json").is_file()  # the outputs are still written


def test_an_invalid_device_fails_up_front_naming_the_flag(tmp_path, data_dir, monkeypatch):
    import torch

    path = write_tune(tmp_path, data_dir, space={"train.micro_batch": [4, 8]})
    with pytest.raises(SystemExit):  # argparse: invalid choice 'tpu' for --device
        _tune_parser().parse_args(["tune", str(path), "--device", "tpu"])
    with pytest.raises(ConfigError, match=r"device \(--device\) must be one of auto, cpu, cuda; got 'tpu'"):
        load_tune_config(path, ["device=tpu"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = _tune_parser().parse_args(["tune", str(path), "--device", "cuda"])
    with pytest.raises(ConfigError, match=r"device \(--device\) is cuda but .*use --device cpu"):
        args.func(args)
    assert not (tmp_path / "out").exists()  # failed before writing or preparing anything


def test_check_result_names_the_budget_when_no_trial_could_run():
    from scalelab.tune.search import TuneError, check_result

    result = {"winner": None, "trials": [], "out_dir": "runs/x",
              "budget": {"budget_s": 10.0, "spent_s": 12.0, "stop_reason": "budget"}}
    with pytest.raises(TuneError, match=r"no trial was measured: the budget \(10 s\) was spent \(12 s\) before any "
                                        r"trial ran; raise --budget-s"):
        check_result(result)
    check_result({**result, "winner": {"trial": 0}})  # a winner: nothing to report


def test_recipe_winner_is_stored_in_the_study_and_journal_storage(tmp_path, data_dir):
    """The re-measured winner (RECIPE.md) goes into the study, where optuna-dashboard and
    optuna.load_study see it even when the best *search* value is another trial; the
    storage key takes any RDB URL or journal:PATH (JournalStorage)."""
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution

    from scalelab.tune.recipe import analyze, record_in_study
    from scalelab.tune.search import open_study, prepare

    path = write_tune(tmp_path, data_dir, space={"train.micro_batch": [4, 8, 16]},
                      storage=f"journal:{tmp_path / 'j' / 'tune.log'}")
    setup = prepare(load_tune_config(path), progress=False)
    study, _ = open_study(setup)
    assert (tmp_path / "j" / "tune.log").is_file()
    dists = {"train.micro_batch": CategoricalDistribution([4, 8, 16])}
    for mb, value in ((4, 1000.0), (8, 2100.0), (16, 2000.0)):  # search: 8 looks best
        study.add_trial(optuna.trial.create_trial(params={"train.micro_batch": mb}, distributions=dists, value=value,
                                                  user_attrs={"window_rates": [value] * 3, "duration_s": 1.0}))
    rng = np.random.default_rng(0)
    records = {f"{n}:0": {"trial": n, "round": 0, "status": "ok", "window_rates": list(rate + rng.normal(0, 5, 6))}
               for n, rate in ((1, 1900.0), (2, 2050.0))}  # re-measured: 16 (trial 2) wins
    res = analyze(setup, study, {"candidates": [1, 2], "records": records}, {"stop_reason": "trials"}, 1.0, None)
    assert res["winner"]["trial"] == 2 and study.best_trial.number == 1
    record_in_study(study, res)
    again = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j" / "tune.log"))))
    w = again.user_attrs["recipe_winner"]
    assert w["trial"] == 2 and w["basis"] == "re-measured" and w["value"] == res["winner"]["value"]
    rm = again.user_attrs["remeasured"]
    assert rm["2"]["remeasured_mean"] > rm["1"]["remeasured_mean"] and rm["1"]["search_value"] == 2100.0
    (tmp_path / "b").mkdir()
    bad = write_tune(tmp_path / "b", data_dir, space={"train.micro_batch": [4, 8]}, storage="nosuchdb://x")
    with pytest.raises(ConfigError, match="storage 'nosuchdb://x' cannot be opened"):
        open_study(prepare(load_tune_config(bad), progress=False))
