"""Logs and terminals: progress lines without carriage returns off a TTY; W&B resume continuity and
WANDB_PROJECT; the config in TensorBoard."""
import io
import os

import pytest

from scalelab.train.logging import WANDB_ID_FILE, Progress, RunLogger


class _Pipe(io.StringIO):
    def isatty(self):
        return False


def test_progress_off_a_tty_prints_plain_lines_per_interval_and_the_last_step(monkeypatch):
    monkeypatch.delenv("SCALELAB_NO_PROGRESS", raising=False)
    out = _Pipe()
    p = Progress(total=300, initial=0, enabled=True, interval_s=0.0, stream=out)
    for _ in range(300):
        p.update(1, loss=3.21, tok_s=12345.0, mfu=0.345)
    p.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.strip().splitlines()
    assert lines[-1].startswith("train step 300/300 (100%)") and "tok/s 12,345" in lines[-1] and "MFU 34.5%" in lines[-1]
    sparse = _Pipe()
    p = Progress(total=300, initial=0, enabled=True, interval_s=3600.0, stream=sparse)
    for _ in range(300):
        p.update(1, loss=1.0)
    assert len(sparse.getvalue().strip().splitlines()) == 1  # only the final step within an hour


def test_progress_respects_no_progress(monkeypatch):
    monkeypatch.setenv("SCALELAB_NO_PROGRESS", "1")
    out = _Pipe()
    p = Progress(total=10, initial=0, enabled=True, interval_s=0.0, stream=out)
    for _ in range(10):
        p.update(1, loss=1.0)
    assert out.getvalue() == ""


def test_wandb_resume_keeps_the_run_id_and_reads_wandb_project(tmp_path, monkeypatch):
    import wandb  # noqa: F401  (the [wandb] extra, installed by scripts/setup.sh; offline here)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids, projects = [], []
    for _ in range(2):  # a run and its resume
        log = RunLogger(tmp_path, True, {"train": {"lr": 1e-3}}, tensorboard=False, wandb=True)
        ids.append(log._wandb.id)
        projects.append(log._wandb.project)
        log.log({"kind": "train", "step": len(ids), "loss": 1.0})
        log.close()
    assert ids[0] == ids[1] == (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert projects == ["my-project", "my-project"]


def test_tensorboard_gets_the_config(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLogger(tmp_path, True, {"model": {"d_model": 64}, "train": {"lr": 0.01}}, tensorboard=True)
    log.log({"kind": "train", "step": 1, "loss": 2.0})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert any("config" in t for t in acc.Tags().get("tensors", [])), acc.Tags()
