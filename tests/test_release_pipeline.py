"""configs/100m-cpu.yaml end to end, through the CLI: train -> lr-find -> export -> report.
The same pipeline as configs/100m.yaml (docs/RELEASE.md), scaled down to run in CI on CPU."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_100m_cpu_pipeline(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    import torch

    from scalelab.config import load_config
    from scalelab.cli import main
    from scalelab.train.trainer import train

    config = str(ROOT / "configs" / "100m-cpu.yaml")
    over = [f"out_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'data'}"]
    from scalelab.eval.train_hooks import training_hooks

    summary = train(load_config(config, over), hooks=training_hooks())  # what `scalelab train CONFIG` runs
    run = tmp_path / "run"
    assert summary["steps"] == 40 and summary["val_loss"] < 6.0

    # LR range test on the same config (fresh model), into the run dir where the report finds it.
    assert main(["lr-find", config, *over, "--steps", "25", "--min-lr", "1e-5", "--max-lr", "1", "--beta", "0.9",
                 "--quiet"]) == 0
    lr = json.loads((run / "lr_find" / "lr_find.json").read_text())
    assert 1e-5 <= lr["suggested_lr"] <= 1.0

    # Export the best checkpoint; transformers loads it and agrees with us.
    out = tmp_path / "export"
    assert main(["export", str(run), "--hf", str(out), "--which", "best"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    meta = json.loads((out / "scalelab_export.json").read_text())
    assert meta["checks"]["max_abs_logit_diff"] <= 1e-4 and meta["which"] == "best"
    ids = tok("Shares in the company fell", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(hf(ids).logits).all()

    # The report: five files, numbers from the run's files, lr-find and samples included.
    assert main(["report", str(run)]) == 0
    for name in ("MODEL_CARD.md", "BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md", "WRITEUP.md"):
        assert (run / name).is_file(), name
    card = (run / "MODEL_CARD.md").read_text()
    writeup = (run / "WRITEUP.md").read_text()
    assert f"{summary['val_loss']:.4f}" in card and f"{summary['params']:,}" in card
    assert f"{lr['suggested_lr']:.2e}" in writeup and "LR range test" in card
    assert "## 1." in (run / "SAMPLES.md").read_text()
    printed = capsys.readouterr().out
    assert "suggested lr" in printed and "wrote" in printed
