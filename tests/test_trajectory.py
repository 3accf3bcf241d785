"""The learning trajectory: keep-every-k checkpoints, samples at each save, `eval --checkpoints`,
and the per-checkpoint table / samples trajectory in the run report -- on configs/100m-cpu.yaml
through the real commands, plus the pieces on their own."""
import json
from pathlib import Path

import pytest
import torch

from scalelab.errors import CheckpointError, ConfigError, ScalelabError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- pieces


def _save(out, step, keep_last, keep_every, best=False):
    from scalelab.train import checkpoint as ck

    ck.save_checkpoint(out, step, {"w": torch.full((2,), float(step))}, None, {"tokens_seen": step * 10},
                       is_best=best, keep_last=keep_last, keep_every=keep_every)


def test_keep_every_k_survives_pruning(tmp_path):
    from scalelab.train import checkpoint as ck

    for step in range(2, 22, 2):  # saves at 2, 4, ..., 20; best at 6
        _save(tmp_path, step, keep_last=1, keep_every=8, best=step == 6)
    kept = sorted(ck.step_of(d.name) for d in ck.list_checkpoints(tmp_path))
    assert kept == [6, 8, 16, 20]  # best, every 8th, last
    for step in (2, 4, 22):
        _save(tmp_path / "plain", step, keep_last=1, keep_every=0)
    assert [d.name for d in ck.list_checkpoints(tmp_path / "plain")] == ["step_000022"]


def test_config_keys_are_checked():
    from scalelab.config import load_config

    cfg = load_config(None, ["train.max_steps=10", "train.ckpt_keep_every=1000", "train.ckpt_samples=true"])
    assert cfg.train.ckpt_keep_every == 1000 and cfg.train.ckpt_samples
    with pytest.raises(ConfigError, match="train.ckpt_keep_every must be >= 0"):
        load_config(None, ["train.max_steps=10", "train.ckpt_keep_every=-5"])


def test_select_checkpoints_specs_and_errors(tmp_path):
    from scalelab.eval.trajectory import select_checkpoints

    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep_last=10, keep_every=0, best=step == 20)
    names = lambda spec: [p.name for p in select_checkpoints(tmp_path, spec)]  # noqa: E731
    assert names("all") == ["step_000010", "step_000020", "step_000030", "step_000040"]
    assert names("last:2") == ["step_000030", "step_000040"]
    assert names("40,step_000010,best") == ["step_000010", "step_000020", "step_000040"]
    with pytest.raises(ScalelabError, match="no checkpoint '15'.*kept: step_000010, step_000020"):
        select_checkpoints(tmp_path, "10,15")
    with pytest.raises(ScalelabError, match="last:N must be a whole number"):
        select_checkpoints(tmp_path, "last:x")
    with pytest.raises(CheckpointError, match="not a run dir with checkpoints"):
        select_checkpoints(tmp_path / "checkpoints" / "step_000010", "all")


def test_read_samples_keeps_the_newest_line_per_step(tmp_path):
    from scalelab.train.samples import read_samples

    lines = [{"step": 5, "samples": [{"prompt": "a", "completion": "old"}]}, "not json",
             {"step": 3, "samples": []}, {"step": 5, "samples": [{"prompt": "a", "completion": "new"}]}]
    (tmp_path / "samples.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    recs = read_samples(tmp_path)
    assert [r["step"] for r in recs] == [3, 5] and recs[1]["samples"][0]["completion"] == "new"
    assert read_samples(tmp_path / "nowhere") == []


def test_major_checkpoints_are_log_spaced():
    from scalelab.report.run_samples import major

    recs = [{"step": s} for s in range(100, 10001, 100)]
    picked = [r["step"] for r in major(recs, 6)]
    assert picked[0] == 100 and picked[-1] == 10000 and len(picked) == 6
    assert picked[1] < 1000  # log spacing: the early, fast-changing part is not skipped
    assert [r["step"] for r in major(recs[:3], 6)] == [100, 200, 300]


# ------------------------------------------------------------ configs/100m-cpu.yaml end to end


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """`scalelab train configs/100m-cpu.yaml` (the config as is, out/data dirs redirected)."""
    from scalelab.cli import main

    root = tmp_path_factory.mktemp("traj")
    over = [f"out_dir={root / 'run'}", f"data.dir={root / 'data'}"]
    assert main(["train", str(ROOT / "configs" / "100m-cpu.yaml"), *over]) == 0
    return root / "run"


def test_cpu_run_keeps_trajectory_checkpoints_and_samples(cpu_run):
    from scalelab.eval.generate import DEFAULT_PROMPTS
    from scalelab.train import checkpoint as ck
    from scalelab.train.samples import read_samples

    kept = sorted(ck.step_of(d.name) for d in ck.list_checkpoints(cpu_run))
    assert kept == [10, 20, 30, 35, 40]  # every 10th + the 2 newest; 5, 15, 25 pruned
    recs = read_samples(cpu_run)
    assert [r["step"] for r in recs] == [5, 10, 15, 20, 25, 30, 35, 40]  # outlive the pruned checkpoints
    assert [s["prompt"] for s in recs[0]["samples"]] == DEFAULT_PROMPTS
    assert recs[-1]["tokens"] == 40 * 1024 and recs[-1]["settings"]["seed"] == 0
    assert recs[0]["samples"][0]["completion"] != recs[-1]["samples"][0]["completion"]


def test_cpu_run_eval_checkpoints_table_and_report(cpu_run, capsys):
    from scalelab.cli import main
    from scalelab.eval.trajectory import load_trajectory

    args = ["eval", str(cpu_run), "--checkpoints", "all", "--limit", "12", "--quiet"]
    assert main(args) == 0
    out = cpu_run / "eval" / "checkpoints"
    index = json.loads((out / "index.json").read_text())
    assert list(index["entries"]) == ["step_000010", "step_000020", "step_000030", "step_000035", "step_000040"]
    body = json.loads((out / "step_000040.json").read_text())
    state = json.loads((cpu_run / "checkpoints" / "step_000040" / "state.json").read_text())
    assert body["sha256"] == state["files"]["model.safetensors"]["sha256"]  # keyed by the checkpoint's checksum
    assert set(body["results"]) == {"hellaswag", "arc_easy", "piqa", "lm"}
    assert body["results"]["piqa"]["n"] == 12 and len(body["results"]["piqa"]["acc_ci"]) == 2
    lm = body["results"]["lm"]
    assert lm["loss_ci"][0] <= lm["loss"] <= lm["loss_ci"][1] and lm["bpb"] > 0
    assert load_trajectory(cpu_run)[0]["results"]["lm"]["loss"] > lm["loss"]  # it learned
    capsys.readouterr()

    # A rerun evaluates nothing; a checkpoint whose weights changed is evaluated again.
    assert main(args) == 0
    assert "evaluated 0, skipped 5" in capsys.readouterr().out
    index["entries"]["step_000020"]["sha256"] = "0" * 64
    (out / "index.json").write_text(json.dumps(index))
    assert main(["eval", str(cpu_run), "--checkpoints", "20,30", "--limit", "12", "--quiet"]) == 0
    assert "evaluated 1, skipped 1" in capsys.readouterr().out
    assert main(["eval", str(cpu_run), "--checkpoints", "7"]) == 2
    assert "no checkpoint '7'" in capsys.readouterr().err

    # The report: one row per checkpoint, the figure, and the samples trajectory.
    assert main(["report", str(cpu_run)]) == 0
    bench = (cpu_run / "BENCHMARK.md").read_text()
    section = bench.split("## Learning trajectory")[1].split("###")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [r.split(" | ")[0] for r in rows] == ["| 10", "| 20", "| 30", "| 35", "| 40"]
    assert f"{lm['loss']:.4f} [{lm['loss_ci'][0]:.4f}, {lm['loss_ci'][1]:.4f}]" in rows[-1]
    assert "HellaSwag acc_norm | ARC-Easy acc | PIQA acc" in section
    assert "GPT-2 124M | HellaSwag acc_norm | 0.3114" in bench and "Pythia-70M | PIQA acc | 0.5947" in bench
    assert (cpu_run / "TRAJECTORY.png").read_bytes()[:4] == b"\x89PNG"
    samples = (cpu_run / "SAMPLES.md").read_text()
    assert "at 8 checkpoints" in samples and "### step 5 (" in samples and "### step 40 (" in samples
    assert samples.count("## 1. ") == 1 and samples.count("### step ") == 8 * 5
    card = (cpu_run / "MODEL_CARD.md").read_text()
    writeup = (cpu_run / "WRITEUP.md").read_text()
    for doc in (card, writeup):
        assert "Learning trajectory: 5 checkpoints evaluated, from step 10" in doc
        assert "SAMPLES.md follows the 5 fixed prompts through 8 checkpoints" in doc
