"""End-to-end trainer behaviour on a tiny model and a slice of the embedded corpus."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalelab.config import load_config
from scalelab.errors import CheckpointError, ConfigError, TrainingError
from scalelab.train.logging import read_metrics
from scalelab.train.trainer import Trainer, train
from scalelab.train.distributed import DistInfo

TINY = [
    "data.source=builtin:bbcnews", "data.max_docs=150", "data.vocab_size=384",
    "model.n_layer=2", "model.d_model=64", "model.n_head=2", "model.seq_len=32",
    "train.micro_batch=4", "train.batch_tokens=256", "train.warmup_steps=2", "train.lr=3e-3",
    "train.eval_every=4", "train.eval_tokens=1024", "train.ckpt_every=3", "train.log_every=2",
    "train.threads=1", "train.deterministic=true", "train.progress=false", "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from scalelab.data.prepare import prepare_data

    d = tmp_path_factory.mktemp("data") / "bbc"
    cfg = load_config(None, TINY + [f"data.dir={d}", "train.max_steps=1"])
    prepare_data(cfg.data, progress=False)
    return d


def tiny_cfg(data_dir, out_dir, *extra):
    return load_config(None, TINY + [f"data.dir={data_dir}", f"out_dir={out_dir}", *extra])


def cli_args(data_dir, out_dir, *extra):
    return TINY + [f"data.dir={data_dir}", f"out_dir={out_dir}", *extra]


def losses(out_dir):
    return [r["loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl", "train")]


def run_cli(args, env_extra=None, torchrun=0):
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", "scalelab", "train", *args]
    else:
        cmd = [sys.executable, "-m", "scalelab", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_train_end_to_end(data_dir, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_cfg(data_dir, out, "train.max_steps=8"))
    assert summary["steps"] == 8 and summary["tokens"] == 8 * 256
    assert 0 < summary["val_loss"] < 7 and summary["val_bpb"] > 0
    ls = losses(out)
    assert len(ls) == 8 and ls[-1] < ls[0]
    evals = read_metrics(out / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [4, 8]
    assert (out / "checkpoints" / "last").is_file() and (out / "checkpoints" / "best").is_file()
    assert json.loads((out / "summary.json").read_text())["val_loss"] == summary["val_loss"]


def test_refuses_to_overwrite_a_run(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(data_dir, out, "train.max_steps=3"))
    with pytest.raises(ConfigError, match="resume"):
        train(tiny_cfg(data_dir, out, "train.max_steps=3"))


def test_resume_after_kill_9_is_bitwise_identical(data_dir, tmp_path):
    ref = tmp_path / "ref"
    r = run_cli(cli_args(data_dir, ref, "train.max_steps=12"))
    assert r.returncode == 0, r.stderr
    expected = losses(ref)
    assert len(expected) == 12

    # 1) killed by SIGKILL in the middle of writing the step-6 checkpoint
    crashed = tmp_path / "crash"
    r = run_cli(cli_args(data_dir, crashed, "train.max_steps=12"), {"SCALELAB_TEST_CRASH_IN_CHECKPOINT": "6"})
    assert r.returncode == -signal.SIGKILL
    # the step-6 write died half way: `last` still names the step-4 checkpoint (best at the eval)
    assert (crashed / "checkpoints" / "last").read_text().strip() == "step_000004"
    assert list((crashed / "checkpoints").glob(".tmp-step_000006*"))  # the torn write is left behind
    r = run_cli(cli_args(data_dir, crashed, "train.max_steps=12", "train.resume=true"))
    assert r.returncode == 0, r.stderr
    assert losses(crashed) == expected  # bitwise: float equality of every step's loss

    # 2) kill -9 at a random moment
    killed = tmp_path / "killed"
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "scalelab", "train",
                             *cli_args(data_dir, killed, "train.max_steps=12")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = random.Random().randint(4, 10)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(losses(killed)) >= target:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run_cli(cli_args(data_dir, killed, "train.max_steps=12", "train.resume=true"))
    assert r.returncode == 0, r.stderr
    assert losses(killed) == expected, f"killed near step {target}"


def test_ddp_two_processes_match_single_with_double_accumulation(data_dir, tmp_path):
    single = tmp_path / "single"
    r = run_cli(cli_args(data_dir, single, "train.max_steps=6"))
    assert r.returncode == 0, r.stderr
    ddp = tmp_path / "ddp"
    r = run_cli(cli_args(data_dir, ddp, "train.max_steps=6", "train.parallel=ddp"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5, abs=1e-6)
    assert json.loads((ddp / "summary.json").read_text())["world_size"] == 2


def test_fsdp_two_processes_match_single(data_dir, tmp_path):
    single = tmp_path / "single"
    r = run_cli(cli_args(data_dir, single, "train.max_steps=4"))
    assert r.returncode == 0, r.stderr
    fsdp = tmp_path / "fsdp"
    r = run_cli(cli_args(data_dir, fsdp, "train.max_steps=4", "train.parallel=fsdp"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(fsdp) == pytest.approx(losses(single), rel=1e-4, abs=1e-5)
    # the checkpoint written from shards loads back into a plain model
    from scalelab.train.checkpoint import find_checkpoint, load_weights

    weights = load_weights(find_checkpoint(fsdp) / "model.safetensors")
    assert weights["tok_emb.weight"].shape[1] == 64


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    trainer = Trainer(tiny_cfg(data_dir, out, "train.max_steps=10"), DistInfo())
    real_step = trainer._train_step
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        loss, norm = real_step()
        return (torch.tensor(float("nan")) if calls["n"] == 5 else loss), norm

    monkeypatch.setattr(trainer, "_train_step", flaky)
    with pytest.raises(TrainingError, match="step 5"):
        trainer.run()
    from scalelab.train.checkpoint import find_checkpoint

    assert find_checkpoint(out).name == "step_000004"  # best at the step-4 eval


def test_out_of_memory_names_the_knobs(data_dir, tmp_path, monkeypatch):
    trainer = Trainer(tiny_cfg(data_dir, tmp_path / "oom", "train.max_steps=3"), DistInfo())

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(trainer, "_train_step", oom)
    with pytest.raises(TrainingError, match="micro_batch.*seq_len.*activation_checkpointing"):
        trainer.run()


def test_resume_refuses_other_shape_or_tokenizer(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(data_dir, out, "train.max_steps=3"))
    with pytest.raises(CheckpointError, match="model.n_layer"):
        Trainer(tiny_cfg(data_dir, out, "train.max_steps=6", "train.resume=true", "model.n_layer=3"), DistInfo())
    from scalelab.data.prepare import prepare_data

    other = tmp_path / "sp"
    cfg = tiny_cfg(other, out, "train.max_steps=6", "train.resume=true", "data.tokenizer=sentencepiece")
    prepare_data(cfg.data, progress=False)
    with pytest.raises(CheckpointError, match="tokenizer"):
        Trainer(cfg, DistInfo())


def test_activation_checkpointing_gives_same_losses(data_dir, tmp_path):
    a = train(tiny_cfg(data_dir, tmp_path / "a", "train.max_steps=3"))
    b = train(tiny_cfg(data_dir, tmp_path / "b", "train.max_steps=3", "train.activation_checkpointing=true"))
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-6)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-6)


def test_wall_clock_cap_and_token_budget(data_dir, tmp_path):
    s = train(tiny_cfg(data_dir, tmp_path / "tok", "train.max_tokens=1000"))
    assert s["steps"] == 4  # ceil(1000 / 256)
    s = train(tiny_cfg(data_dir, tmp_path / "time", "train.max_time_s=2", "train.eval_every=1000"))
    assert s["steps"] >= 1 and s["train_time_s"] < 10


def test_muon_ema_and_loader_workers_resume_exactly(data_dir, tmp_path):
    """Muon + EMA + 2 loader workers: same losses as in-process loading, and exact resume."""
    extra = ("train.optimizer=muon", "train.ema_decay=0.9")
    ref = tmp_path / "ref"
    r = run_cli(cli_args(data_dir, ref, "train.max_steps=8", *extra))
    assert r.returncode == 0, r.stderr
    workers = tmp_path / "workers"
    r = run_cli(cli_args(data_dir, workers, "train.max_steps=8", "train.loader_workers=2", *extra))
    assert r.returncode == 0, r.stderr
    assert losses(workers) == losses(ref)
    from scalelab.train.checkpoint import find_checkpoint

    assert (find_checkpoint(ref) / "ema.safetensors").is_file()
    crashed = tmp_path / "crashed"
    r = run_cli(cli_args(data_dir, crashed, "train.max_steps=8", *extra), {"SCALELAB_TEST_CRASH_IN_CHECKPOINT": "6"})
    assert r.returncode == -signal.SIGKILL
    r = run_cli(cli_args(data_dir, crashed, "train.max_steps=8", "train.resume=true", *extra))
    assert r.returncode == 0, r.stderr
    assert losses(crashed) == losses(ref)
    evals = lambda d: [e["val_loss"] for e in read_metrics(d / "metrics.jsonl", "eval")]
    assert evals(crashed) == evals(ref)  # the EMA weights were restored too


def test_tensorboard_and_wandb_offline(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "logged"
    train(tiny_cfg(data_dir, out, "train.max_steps=2", "train.tensorboard=true", "train.wandb=true"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert list((out / "wandb").glob("offline-run-*"))


def test_compile_step_is_not_billed_to_the_time_cap(data_dir, tmp_path, monkeypatch):
    """With train.compile the first step of a process (the compiling one) counts as
    compile_time_s, not train_time_s, and opens no throughput window (compile itself is
    replaced by a no-op here: the bookkeeping is what is tested; tests/test_gpu.py compiles)."""
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    out = tmp_path / "run"
    s = train(tiny_cfg(data_dir, out, "train.max_steps=4", "train.compile=true", "train.log_every=1"))
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r.get("kind") == "train"]
    assert s["compile_time_s"] > 0
    assert train_recs[0]["time"] == 0.0 and "tok_s" not in train_recs[0]
    assert all(r["time"] > 0 and r["tok_s"] > 0 for r in train_recs[1:])
    assert s["train_time_s"] == pytest.approx(sum(r["step_time"] for r in train_recs[1:]), rel=0.2)


# -- resume: fallback, chosen checkpoint, out_dir protection ---------------------------

KEEP = "train.ckpt_keep=4"


@pytest.fixture(scope="module")
def ref_run(data_dir, tmp_path_factory):
    """A finished 12-step run (checkpoints at 3, 6, 9, 12 and best at the evals 4, 8)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_cfg(data_dir, out, "train.max_steps=12", KEEP))
    return out, losses(out)


def copy_run(ref_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(ref_run[0], out)
    return out


def steps_logged(out, kind="train"):
    return [r["step"] for r in read_metrics(Path(out) / "metrics.jsonl", kind)]


def test_resume_falls_back_past_a_missing_newest_checkpoint(data_dir, tmp_path, ref_run, capsys):
    import shutil

    out = copy_run(ref_run, tmp_path)
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [
        "step_000006", "step_000008", "step_000009", "step_000012"]
    shutil.rmtree(out / "checkpoints" / "step_000012")
    capsys.readouterr()
    train(tiny_cfg(data_dir, out, "train.max_steps=12", KEEP, "train.resume=true"))
    printed = capsys.readouterr().out
    assert "note: step_000012 (named by 'last') is missing" in printed
    assert f"resumed from {out / 'checkpoints' / 'step_000009'} at step 9" in printed
    assert losses(out) == ref_run[1]  # bit for bit, each step once
    assert steps_logged(out) == list(range(1, 13)) and steps_logged(out, "eval") == [4, 8, 12]
    assert (out / "checkpoints" / "last").read_text().strip() == "step_000012"


def test_resume_skips_a_corrupt_newest_checkpoint(data_dir, tmp_path, ref_run, capsys):
    out = copy_run(ref_run, tmp_path)
    weights = out / "checkpoints" / "step_000012" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:-90] = bytes(10)  # inside the last tensor: safetensors alone would load it
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    train(tiny_cfg(data_dir, out, "train.max_steps=12", KEEP, "train.resume=last"))  # = --resume
    printed = capsys.readouterr().out
    assert "note: skipped step_000012: checkpoint file" in printed and "model.safetensors' is corrupt" in printed
    assert "resumed from" in printed and "step_000009 at step 9" in printed
    assert losses(out) == ref_run[1] and steps_logged(out) == list(range(1, 13))


def test_resume_from_a_chosen_checkpoint(data_dir, tmp_path, ref_run, capsys):
    out = copy_run(ref_run, tmp_path)
    capsys.readouterr()
    train(tiny_cfg(data_dir, out, "train.max_steps=12", KEEP, "train.resume=step_000006"))
    printed = capsys.readouterr().out
    assert "at step 6" in printed and "dropped 8 metrics records after step 6" in printed  # 6 train + 2 eval
    assert losses(out) == ref_run[1] and steps_logged(out) == list(range(1, 13))
    with pytest.raises(CheckpointError, match="no checkpoint 'step_000005'.*choose one of step_000012"):
        Trainer(tiny_cfg(data_dir, out, "train.max_steps=12", "train.resume=5"), DistInfo())


def test_resume_needs_a_run(data_dir, tmp_path, capsys):
    with pytest.raises(CheckpointError, match=f"nothing to resume in out_dir '{tmp_path / 'typo'}'.*drop --resume"):
        Trainer(tiny_cfg(data_dir, tmp_path / "typo", "train.max_steps=3", "train.resume=last"), DistInfo())
    assert not (tmp_path / "typo" / "metrics.jsonl").exists()
    # train.resume=true is for relaunching the same command: it starts a run that is not there yet
    s = train(tiny_cfg(data_dir, tmp_path / "new", "train.max_steps=2", "train.resume=true"))
    assert s["steps"] == 2
    from scalelab.cli import main

    capsys.readouterr()
    rc = main(["train", *cli_args(data_dir, tmp_path / "typo2", "train.max_steps=3"), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: nothing to resume in out_dir") and err.count("\n") == 1


def test_refuses_a_users_folder_unless_told_to_reuse_it(data_dir, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text("# my notes on this experiment\ntrain:\n  lr: 0.003\n")
    (exp / "summary.json").write_text('{"mine": true}')
    for resume in ("false", "true"):
        with pytest.raises(ConfigError, match=f"out_dir '{exp}' is not empty and holds no scalelab run "
                                              r"\(config.yaml, summary.json\); training would replace config.yaml, "
                                              "summary.json.*train.reuse_out_dir=true"):
            Trainer(tiny_cfg(data_dir, exp, "train.max_steps=2", f"train.resume={resume}"), DistInfo())
    assert (exp / "config.yaml").read_text().startswith("# my notes") and sorted(os.listdir(exp)) == [
        "config.yaml", "summary.json"]
    train(tiny_cfg(data_dir, exp, "train.max_steps=2", "train.reuse_out_dir=true"))
    assert steps_logged(exp) == [1, 2] and json.loads((exp / "summary.json").read_text())["steps"] == 2
    # a launcher's log put there first (the study's train.log, tune's trial.log) is no user folder
    launched = tmp_path / "launched"
    launched.mkdir()
    (launched / "train.log").write_text("starting\n")
    train(tiny_cfg(data_dir, launched, "train.max_steps=2", "train.resume=true"))
    assert (launched / "train.log").read_text() == "starting\n" and steps_logged(launched) == [1, 2]


class Stop(Exception):
    """Ends a run between two steps (an in-process stand-in for a crash)."""


def stop_after(trainer, monkeypatch, n):
    real, calls = trainer._train_step, {"n": 0}

    def step():
        if calls["n"] == n:
            raise Stop()
        calls["n"] += 1
        return real()

    monkeypatch.setattr(trainer, "_train_step", step)


def test_run_stopped_before_its_first_checkpoint_starts_over_cleanly(data_dir, tmp_path, ref_run, monkeypatch, capsys):
    out = tmp_path / "run"
    trainer = Trainer(tiny_cfg(data_dir, out, "train.max_steps=12", KEEP), DistInfo())
    stop_after(trainer, monkeypatch, 2)  # before the first checkpoint (step 3)
    with pytest.raises(Stop):
        trainer.run()
    assert steps_logged(out) == [1, 2] and not list((out / "checkpoints").glob("step_*"))
    with pytest.raises(CheckpointError, match="nothing to resume.*has no checkpoint"):
        Trainer(tiny_cfg(data_dir, out, "train.max_steps=12", "train.resume=last"), DistInfo())
    torn = out / "checkpoints" / ".tmp-step_000003-99999"  # as a kill -9 in the first save leaves it
    torn.mkdir(parents=True)
    (torn / "model.safetensors").write_bytes(b"\0" * 100)
    capsys.readouterr()
    train(tiny_cfg(data_dir, out, "train.max_steps=12", KEEP))
    assert "stopped before its first checkpoint; starting it over" in capsys.readouterr().out
    assert not torn.exists()
    assert losses(out) == ref_run[1] and steps_logged(out) == list(range(1, 13))


def test_keeps_train_ckpt_keep_checkpoints(data_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(data_dir, out, "train.max_steps=9", "train.ckpt_keep=1", "train.keep_best=false"))
    assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_000009"]
