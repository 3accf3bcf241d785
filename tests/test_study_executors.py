"""The study's SLURM executor, exercised through submitit's local cluster (real processes)."""
import json

import pytest
import yaml

from scalelab.errors import ConfigError, TrainingError
from scalelab.scaling import executors
from scalelab.scaling.executors import SlurmRunner, run_jobs
from scalelab.scaling.study import load_study_config, run_study


def _study_tree(root):
    return {
        "name": "slurmmini", "out_dir": str(root / "out"), "seeds": [0],
        "executor": "slurm", "slurm": {"cluster": "local", "poll_s": 0.2, "time_min": 10, "array_parallelism": 2},
        "plan": {"sizes": ["3K", "7K"], "tokens_per_param": [2], "batch_tokens": 512, "max_micro_batch": 8,
                 "aspect_ratio": 16, "head_dim": 16, "multiple_of": 16, "lr": 0.02},
        "fit": {"n_boot": 5},
        "base": {"data": {"source": "builtin:bbcnews", "max_docs": 100, "vocab_size": 320, "dir": str(root / "data")},
                 "model": {"seq_len": 32},
                 "train": {"threads": 1, "eval_tokens": 1024, "tensorboard": False, "progress": False}},
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurmstudy")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(_study_tree(root)))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        results = run_study(path, progress=True, report=None)
    return path, results, buf.getvalue()


def _records(cfg):
    return json.loads((SlurmRunner(cfg).jobs_path).read_text())["runs"]


def _fresh_job(cfg, path, name, edit=None):
    """A job like the study's first one, trained into a new run folder."""
    src = next(iter(sorted((path.parent / "out" / "configs").glob("*.yaml"))))
    tree = yaml.safe_load(src.read_text())
    run_dir = path.parent / "out" / "runs" / name
    tree["out_dir"] = str(run_dir)
    if edit:
        edit(tree)
    cpath = path.parent / "out" / "configs" / f"{name}.yaml"
    cpath.write_text(yaml.safe_dump(tree))
    return ({"name": name}, 0, run_dir, cpath)


def test_slurm_study_runs_each_run_as_a_job_and_collects_results(study):
    path, results, printed = study
    cfg = load_study_config(path)
    assert len(results["runs"]) == 2 and all(r["loss"] > 0 for r in results["runs"])
    recs = _records(cfg)
    assert sorted(recs) == sorted(r["run_dir"].rsplit("/", 1)[1] for r in results["runs"])
    assert len({r["job_id"] for r in recs.values()}) == 2  # one job per run
    logs = SlurmRunner(cfg).folder
    for rec in recs.values():
        assert (logs / f"{rec['job_id']}_0_result.pkl").is_file()
        assert json.loads(open(f"{rec['run_dir']}/summary.json").read())["steps"] > 0
    assert "submitted 2 job(s) to local" in printed
    assert "slurm: 0 queued, 2 running, 0 done, 0 failed" in printed
    # a second invocation finds every run finished and submits nothing
    again = run_study(path, progress=False, report=None)
    assert len(again["runs"]) == 2 and _records(cfg) == recs


def test_rerun_reattaches_to_a_running_job_instead_of_resubmitting(study):
    path = study[0]
    cfg = load_study_config(path)
    job = _fresh_job(cfg, path, "reattach-s0")
    first = SlurmRunner(cfg, threads=1, say=lambda *a, **k: None)
    submitted = first.submit([job])  # ... and then the submitting process "dies":
    job_id = submitted["reattach-s0"].job_id
    del first, submitted
    pickles = set(SlurmRunner(cfg).folder.glob("*_submitted.pkl"))
    said, done = [], []
    run_jobs([job], cfg, lambda j, e: done.append((j[2].name, e)), threads=1, say=lambda *a, **k: said.append(a[0]))
    assert done == [("reattach-s0", None)]
    assert any("re-attached to 1 job" in s and job_id in s for s in said)
    assert not any(s.startswith("submitted") for s in said)
    assert set(SlurmRunner(cfg).folder.glob("*_submitted.pkl")) == pickles  # nothing new went out
    assert _records(cfg)["reattach-s0"]["job_id"] == job_id
    assert json.loads((job[2] / "summary.json").read_text())["steps"] > 0


def test_failed_job_reports_its_log_tail_and_is_resubmitted_once_fixed(study):
    path = study[0]
    cfg = load_study_config(path)
    job = _fresh_job(cfg, path, "broken-s0", edit=lambda t: t["train"].update(lrr=1))
    done = []
    run_jobs([job], cfg, lambda j, e: done.append(e), threads=1, say=lambda *a, **k: None)
    (err,) = done
    failed_id = _records(cfg)["broken-s0"]["job_id"]
    assert isinstance(err, TrainingError)
    msg = str(err)
    assert "broken-s0" in msg and failed_id in msg and f"{failed_id}_0_log.err" in msg
    assert "train.lrr" in msg  # the tail of the job's stderr names the bad key
    # fixed config, same command: the failed job is not re-attached but submitted again
    _fresh_job(cfg, path, "broken-s0")
    done.clear()
    run_jobs([job], cfg, lambda j, e: done.append(e), threads=1, say=lambda *a, **k: None)
    assert done == [None] and _records(cfg)["broken-s0"]["job_id"] != failed_id


def test_launcher_runs_inside_the_job_with_the_rendezvous_variables(study, tmp_path):
    import dataclasses
    import sys

    path = study[0]
    seen = tmp_path / "launcher_args.txt"
    launcher = tmp_path / "fake_torchrun.sh"  # records its expanded arguments, then trains as torchrun would
    launcher.write_text(f'#!/bin/sh\necho "$@" > {seen}\nshift 4\nexec {sys.executable} "$@"\n')
    launcher.chmod(0o755)
    cfg = dataclasses.replace(load_study_config(path), launcher=f"{launcher} --nnodes $SCALELAB_NNODES "
                                                                "--rdzv_endpoint $MASTER_ADDR:$MASTER_PORT")
    job = _fresh_job(cfg, path, "launched-s0")
    done = []
    run_jobs([job], cfg, lambda j, e: done.append(e), threads=1, say=lambda *a, **k: None)
    assert done == [None] and (job[2] / "summary.json").is_file()
    args = seen.read_text().split()
    assert args[:2] == ["--nnodes", "1"] and args[4:7] == ["-m", "scalelab", "train"]
    host, port = args[3].rsplit(":", 1)
    assert host and "$" not in host and 20000 <= int(port) <= 60000


def _fake_slurm(bin_dir, monkeypatch, sbatch_body, sacct_out=""):
    """sbatch / srun / sacct stand-ins on PATH: what submitit sends SLURM, and its answers."""
    bin_dir.mkdir()
    for name, body in [("sbatch", sbatch_body), ("srun", "exit 0"), ("sacct", f"printf '{sacct_out}'")]:
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:" + __import__("os").environ["PATH"])


def _slurm_cfg(tmp_path, **slurm):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**_study_tree(tmp_path), "slurm": {"cluster": "slurm", **slurm}}))
    return load_study_config(p)


def test_slurm_submission_is_one_array_with_the_configured_resources_and_reattaches_by_state(tmp_path, monkeypatch):
    _fake_slurm(tmp_path / "bin", monkeypatch, f'cp "$1" {tmp_path}/sbatch.sh\necho "Submitted batch job 4242"',
                sacct_out="JobID|State|NodeList\\n4242_0|RUNNING|n1\\n4242_1|FAILED|n2\\n")
    cfg = _slurm_cfg(tmp_path, partition="gpu", account="lm", gpus_per_node=8, tasks_per_node=8, nodes=2,
                     array_parallelism=1, time_min=90, additional={"constraint": "h100"})
    jobs = [({"name": n}, 0, tmp_path / "out" / "runs" / n, tmp_path / f"{n}.yaml") for n in ("a-s0", "b-s0")]
    handles = SlurmRunner(cfg, say=lambda *a, **k: None).submit(jobs)
    sbatch = (tmp_path / "sbatch.sh").read_text()
    for flag in ("--partition=gpu", "--account=lm", "--gpus-per-node=8", "--ntasks-per-node=8", "--nodes=2",
                 "--array=0-1%1", "--time=90", "--constraint=h100"):
        assert f"#SBATCH {flag}" in sbatch
    recs = _records(cfg)
    assert {n: r["job_id"] for n, r in recs.items()} == {"a-s0": "4242_0", "b-s0": "4242_1"}
    assert recs["a-s0"]["tasks"] == 16 and handles["a-s0"].num_tasks == 16
    # a new process: job 0 is still running (re-attached), job 1 failed (to be submitted again)
    assert sorted(SlurmRunner(cfg).attach(jobs)) == ["a-s0"]


def test_sbatch_refusal_is_one_clear_error(tmp_path, monkeypatch):
    _fake_slurm(tmp_path / "bin", monkeypatch, 'echo "sbatch: error: invalid partition specified: gpux" >&2\nexit 1')
    cfg = _slurm_cfg(tmp_path, partition="gpux")
    job = ({"name": "a"}, 0, tmp_path / "out" / "runs" / "a-s0", tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="sbatch refused.*invalid partition specified: gpux.*partition"):
        SlurmRunner(cfg).submit([job])
    assert not SlurmRunner(cfg).jobs_path.exists()


def test_executor_config_validation(tmp_path, monkeypatch):
    tree = _study_tree(tmp_path)
    p = tmp_path / "s.yaml"
    for bad, match in [({"executor": "pbs"}, r"'executor' must be one of local, slurm; got 'pbs'"),
                       ({"slurm": {"cluster": "pbs"}}, r"slurm.cluster must be one of slurm, local"),
                       ({"slurm": {"nodes": 0}}, r"slurm.nodes must be >= 1"),
                       ({"slurm": {"cluster": "local", "nodes": 2}}, r"slurm.nodes: 1"),
                       ({"slurm": {"partiton": "gpu"}}, r"slurm.partiton.*slurm.partition"),
                       ({"launcher": "torchrun --nproc_per_node 8", "slurm": {"tasks_per_node": 8}},
                        r"slurm.tasks_per_node: 1")]:
        p.write_text(yaml.safe_dump({**tree, **bad}))
        with pytest.raises(ConfigError, match=match):
            load_study_config(p)
    p.write_text(yaml.safe_dump({**tree, "slurm": {"cluster": "slurm", "partition": "gpu", "gpus_per_node": 8,
                                                    "additional": {"constraint": "h100"}}}))
    cfg = load_study_config(p)
    assert cfg.slurm.partition == "gpu" and cfg.slurm.additional == {"constraint": "h100"}
    monkeypatch.setattr(executors.shutil, "which", lambda name: None)  # a machine without SLURM
    with pytest.raises(ConfigError, match="no 'sbatch' on PATH.*slurm.cluster: local"):
        SlurmRunner(cfg).executor()
