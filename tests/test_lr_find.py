"""LR range test: the sweep, the smoothing, the suggestion rule, and a real sweep on a tiny model."""
import json
import math

import numpy as np
import pytest

from scalelab.config import load_config
from scalelab.errors import ConfigError
from scalelab.train.lr_find import LRFindSettings, lr_find, lr_schedule, smooth_losses, suggest

TINY = [
    "data.source=builtin:bbcnews", "data.max_docs=120", "data.vocab_size=384", "data.num_workers=1",
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "train.micro_batch=4", "train.batch_tokens=256", "train.lr=3e-3", "train.max_steps=10",
    "train.threads=1", "train.progress=false", "train.tensorboard=false",
]


def test_schedule_is_exponential_and_inclusive():
    s = LRFindSettings(min_lr=1e-5, max_lr=1.0, steps=11)
    lrs = lr_schedule(s)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1.0)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0])  # constant factor per step: a straight line on log x


def test_smoothing_is_bias_corrected():
    # A constant loss stays exactly constant (no pull towards 0 at the start), and the
    # EMA follows fastai's recursion.
    assert np.allclose(smooth_losses([3.0] * 10, 0.98), 3.0)
    out = smooth_losses([1.0, 2.0], 0.5)
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx((0.5 * 0.5 * 1.0 + 0.5 * 2.0) / (1 - 0.25))


def test_suggestion_rules_on_a_synthetic_curve():
    s = LRFindSettings(min_lr=1e-6, max_lr=1.0, steps=61, skip_start=2)
    lrs = lr_schedule(s)
    x = np.log10(lrs)
    # Flat, then a descent centred at 1e-3, minimum at 1e-2, then divergence.
    loss = 5.0 - 2.0 / (1 + np.exp(-(x + 3) * 4)) + np.where(x > -2, 30 * (x + 2) ** 2, 0.0)
    sug = suggest(lrs, loss, s)
    assert sug["rule"] == "min/10"
    assert sug["min_loss_lr"] == pytest.approx(1e-2, rel=0.3)
    assert sug["suggested_lr"] == pytest.approx(sug["min_loss_lr"] / 10)
    assert sug["steepest_lr"] == pytest.approx(1e-3, rel=0.3)
    assert not sug["notes"]


def test_suggestion_warns_when_the_sweep_starts_too_high():
    s = LRFindSettings(min_lr=1e-2, max_lr=10.0, steps=20)
    lrs = lr_schedule(s)
    sug = suggest(lrs, np.linspace(3.0, 9.0, 20), s)
    assert s.min_lr <= sug["suggested_lr"] <= s.max_lr  # clamped into the sweep
    assert any("too high" in n for n in sug["notes"])


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="min-lr"):
        LRFindSettings(min_lr=1.0, max_lr=0.1).validate()
    with pytest.raises(ConfigError, match="steps"):
        LRFindSettings(steps=2).validate()


def test_lr_find_on_a_tiny_model(tmp_path):
    cfg = load_config(None, TINY + [f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}"])
    settings = LRFindSettings(min_lr=1e-5, max_lr=1.0, steps=30, beta=0.9)
    res = lr_find(cfg, settings, progress=False)
    out = tmp_path / "run" / "lr_find"
    data = json.loads((out / "lr_find.json").read_text())
    png = (out / "lr_find.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert data["suggested_lr"] == res["suggested_lr"]
    lrs = [r["lr"] for r in data["records"]]
    assert lrs[0] == pytest.approx(1e-5)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] <= data["suggested_lr"] <= lrs[-1]  # inside the sweep
    assert data["suggested_lr"] == pytest.approx(data["min_loss_lr"] / 10) or data["suggested_lr"] == lrs[0]
    # The smoothed curve does come down before it blows up: a real minimum, below the start.
    sm = [r["smoothed"] for r in data["records"] if r["smoothed"] is not None]
    assert min(sm) < sm[0] - 0.05
    assert data["batch_tokens"] == 256 and data["grad_accum"] == 2
    assert data["configured_lr"] == 3e-3 and math.isfinite(data["configured_vs_suggested"])
    # Nothing of a training run was written.
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_lr_find_cli(tmp_path, capsys):
    from scalelab.cli import main

    args = ["lr-find", *TINY, f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}",
            "--steps", "12", "--min-lr", "1e-4", "--max-lr", "0.5", "--beta", "0.8", "--out", str(tmp_path / "lf"),
            "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "suggested lr" in text and (tmp_path / "lf" / "lr_find.png").is_file()
    assert main(["lr-find", *TINY, "--min-lr", "1", "--max-lr", "0.1"]) == 2  # one clear error line
    assert "min-lr" in capsys.readouterr().err
