"""Release pipeline: the 100m configs, the published baselines file, and the run report
(MODEL_CARD.md, BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md, WRITEUP.md) of a tiny run."""
import json
import shutil
from pathlib import Path

import pytest

from scalelab.config import load_config
from scalelab.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.source=builtin:bbcnews", "data.max_docs=120", "data.vocab_size=384", "data.num_workers=1",
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "train.micro_batch=4", "train.batch_tokens=256", "train.warmup_steps=2", "train.lr=3e-3",
    "train.max_steps=12", "train.eval_every=4", "train.eval_tokens=1024", "train.ckpt_every=4", "train.log_every=2",
    "train.threads=1", "train.progress=false", "train.tensorboard=false",
]


# --------------------------------------------------------------------------------------- configs


def test_100m_config_is_the_release_recipe():
    from dataclasses import replace

    from scalelab.model.sizing import NAMED_SIZES, count_params

    cfg = load_config(ROOT / "configs" / "100m.yaml")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert {k: getattr(m, k) for k in ("n_layer", "d_model", "n_head")} == NAMED_SIZES["124m"]
    params = count_params(replace(m, vocab_size=50257))["total"]
    assert 100e6 <= params <= 130e6
    tokens = t.max_steps * t.batch_tokens
    assert 19 <= tokens / params <= 21  # ~20 tokens per parameter (Chinchilla)
    assert t.batch_tokens == 524288 and t.batch_tokens % (t.micro_batch * m.seq_len) == 0
    assert t.batch_tokens // (t.micro_batch * m.seq_len) > 1  # gradient accumulation on one GPU
    assert (d.source, d.hf_config, d.tokenizer) == ("hf:HuggingFaceFW/fineweb-edu", "sample-10BT", "gpt2")
    assert (t.optimizer, t.beta1, t.beta2, t.weight_decay) == ("adamw", 0.9, 0.95, 0.1)
    assert t.schedule == "cosine" and t.warmup_steps > 0
    assert t.dtype == "bf16" and t.activation_checkpointing and t.parallel in ("auto", "ddp", "fsdp")
    assert (t.eval_every, t.ckpt_every, t.keep_best, t.wandb) == (1000, 500, True, True)
    # The learning trajectory: a checkpoint kept every 1000 steps (4 + the final one) and samples at each save.
    assert t.ckpt_keep_every == 1000 and t.max_steps // t.ckpt_keep_every >= 4 and t.ckpt_samples
    assert m.mlp == "swiglu" and not m.qk_norm and m.logit_softcap is None  # exports to Llama
    assert t.eval_tasks == ["hellaswag"] and t.eval_tasks_limit > 0  # in-training HellaSwag subset
    assert "torchrun" in (ROOT / "configs" / "100m.yaml").read_text()  # the launch is documented


def test_100m_cpu_config_mirrors_the_recipe():
    big = load_config(ROOT / "configs" / "100m.yaml")
    cpu = load_config(ROOT / "configs" / "100m-cpu.yaml")
    for key in ("optimizer", "beta1", "beta2", "weight_decay", "grad_clip", "schedule", "min_lr_ratio",
                "activation_checkpointing", "keep_best"):
        assert getattr(cpu.train, key) == getattr(big.train, key), key
    assert cpu.model.mlp == big.model.mlp and cpu.model.tie_embeddings == big.model.tie_embeddings
    assert cpu.train.batch_tokens // (cpu.train.micro_batch * cpu.model.seq_len) > 1  # accumulation too
    assert cpu.data.source == "builtin:bbcnews" and not cpu.train.wandb


# ------------------------------------------------------------------------------------ baselines


def test_baselines_are_sourced():
    data = json.loads((ROOT / "src" / "scalelab" / "assets" / "baselines.json").read_text())
    assert set(data["models"]) == {"gpt2-124m", "pythia-70m", "pythia-160m"}
    sources = data["sources"]
    for s in sources.values():
        assert s["citation"] and s["url"].startswith("https://")
    n = 0
    for model in data["models"].values():
        for task, metrics in model["results"].items():
            assert task in {"hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada", "sciq"}
            for metric, e in metrics.items():
                assert e["source"] in sources, (task, metric)
                assert e["n"] > 0 and e["split"]
                if metric != "perplexity":
                    assert 0 < e["value"] < 1
                n += 1
    assert n >= 10
    assert data["models"]["gpt2-124m"]["results"]["hellaswag"]["acc_norm"]["value"] == 0.3114


# --------------------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from scalelab.train.trainer import train

    root = tmp_path_factory.mktemp("report")
    cfg = load_config(None, TINY + [f"data.dir={root / 'data'}", f"out_dir={root / 'run'}"])
    summary = train(cfg)
    return root / "run", summary


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


def fake_eval_results(model_name: str) -> dict:
    """The shape `scalelab eval` writes (scalelab.eval.tasks.evaluate / write_results)."""
    def mc(acc, acc_norm, n, n_total, lo_hi, lo_hi_norm):
        return {"acc": acc, "acc_stderr": (acc * (1 - acc) / n) ** 0.5, "acc_ci": lo_hi, "acc_ci_method": "wilson",
                "acc_norm": acc_norm, "acc_norm_stderr": (acc_norm * (1 - acc_norm) / n) ** 0.5,
                "acc_norm_ci": lo_hi_norm, "acc_norm_ci_method": "wilson", "n": n, "n_truncated": 0,
                "n_total": n_total}

    return {
        "results": {
            "hellaswag": mc(0.27, 0.295, 1000, 10042, [0.2434, 0.2984], [0.2680, 0.3235]),
            "arc_easy": mc(0.41, 0.38, 570, 570, [0.3704, 0.4509], [0.3409, 0.4207]),
            "lm": {"source": "data", "kind": "shards", "split": "val", "context": 32, "stride": 32,
                   "units": "windows", "n": 32, "tokens": 1024, "loss": 5.5, "loss_stderr": 0.02,
                   "loss_ci": [5.46, 5.54], "loss_ci_method": "bootstrap", "ppl": 244.69, "ppl_ci": [235.0, 254.7],
                   "ppl_stderr": 4.9, "ppl_ci_method": "bootstrap"},
        },
        "config": {"tasks": {"hellaswag": {"split": "validation"}, "arc_easy": {"split": "validation"}},
                   "limit": 1000, "fraction": None, "seed": 0, "num_fewshot": 0},
        "model": {"name": model_name, "hash": "0123456789abcdef"},
        "versions": {},
    }


def test_report_writes_five_files_from_the_run(tiny_run, tmp_path):
    from scalelab.eval.generate import DEFAULT_PROMPTS
    from scalelab.report.run_report import is_run_dir, report_run

    run = _copy(tiny_run[0], tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert is_run_dir(run)
    out = report_run(run)
    for name in ("MODEL_CARD.md", "BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md", "WRITEUP.md"):
        assert (run / name).is_file() and Path(out["files"][name]) == run / name
    assert (run / "LOSS_CURVE.png").read_bytes()[:4] == b"\x89PNG" and (run / "LOSS_CURVE.png").stat().st_size > 20_000
    card = (run / "MODEL_CARD.md").read_text()
    bench = (run / "BENCHMARK.md").read_text()
    writeup = (run / "WRITEUP.md").read_text()
    samples = (run / "SAMPLES.md").read_text()
    # Numbers are summary.json's.
    val = f"{summary['val_loss']:.4f}"
    for doc in (card, bench, writeup):
        assert val in doc
    assert f"{summary['params']:,}" in card and f"{summary['non_embedding_params']:,}" in card
    assert f"{summary['tokens']:,}" in card and f"{summary['tokens']:,}" in writeup
    assert f"{summary['val_ppl']:.2f}" in card and f"{summary['val_bpb']:.4f}" in card
    assert f"{summary['steps']:,} steps" in card
    assert out["numbers"]["val_loss"] == summary["val_loss"] and out["numbers"]["params"] == summary["params"]
    for section in ("## Model details", "## Training data", "## Training procedure", "## Evaluation",
                    "## Intended use", "## Limitations and risks"):
        assert section in card
    for section in ("## What was done", "## What worked", "## What didn't work"):
        assert section in writeup
    # Missing optional inputs are stated, not fatal.
    assert "Not evaluated yet" in card and "No evaluation results" in bench
    assert "No LR range test" in writeup and "eval/results.json" in out["missing"]
    # Samples come from the eval module's generator with its fixed prompts.
    assert samples.startswith("# Samples") and DEFAULT_PROMPTS[0] in samples and out["samples"]["ok"]
    # Throughput from metrics.jsonl.
    assert "tokens/s" in bench and "MFU" in bench


def test_report_with_eval_results_and_lr_find(tiny_run, tmp_path):
    from scalelab.report.run_report import report_run

    run = _copy(tiny_run[0], tmp_path)
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps(fake_eval_results("run/step_000012")))
    lr = {"settings": {"min_lr": 1e-6, "max_lr": 1.0, "steps": 50, "beta": 0.98}, "steps_run": 40,
          "stop_reason": "smoothed loss 9 > 4 x best 2", "stopped_early": True, "min_loss_lr": 3e-2,
          "suggested_lr": 3e-3, "steepest_lr": 1e-2, "configured_lr": 3e-3,
          "records": [{"step": 0, "lr": 1e-6, "loss": 6.0, "smoothed": 6.0}, {"step": 39, "lr": 0.2, "loss": 9.0,
                                                                             "smoothed": 9.0}]}
    (run / "lr_find").mkdir()
    (run / "lr_find" / "lr_find.json").write_text(json.dumps(lr))
    # In-training HellaSwag scores (train.eval_tasks) appear as task_hellaswag in the eval records.
    lines = (run / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    k = 0
    for r in recs:
        if r["kind"] == "eval":
            r["task_hellaswag"] = [0.25, 0.26, 0.28][k % 3]
            k += 1
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("eval_tasks_limit: 200",
                                                                               "eval_tasks_limit: 500"))
    out = report_run(run, samples=False)
    assert out["missing"] == []
    card = (run / "MODEL_CARD.md").read_text()
    bench = (run / "BENCHMARK.md").read_text()
    writeup = (run / "WRITEUP.md").read_text()
    assert "0.2950 [0.2680, 0.3235]" in card and "1,000 of 10,042" in card  # task value with its CI and n
    assert "loss 5.5000 [5.4600, 5.5400]" in card  # lm loss with its bootstrap CI
    assert "| hellaswag | acc_norm | 0.2950 [0.2680, 0.3235]" in bench
    assert "0.3114" in bench and "GPT-2 124M" in bench and "Pythia-70M" in bench  # published baselines
    assert "0.3502 ± 0.0098†" in bench  # Pythia's ARC is on the test split: flagged
    assert "Differences (ours − published)" in bench and "llm.c" in bench  # sources listed
    assert "above chance" in writeup  # hellaswag acc_norm CI excludes 0.25
    assert "In-training hellaswag (acc_norm on a fixed seeded subset of 500 examples, 3 evaluations): 0.2500" in writeup
    assert "0.2800 at step 12" in card
    assert "3.00e-03" in writeup and "1.00x the suggestion" in writeup
    assert "sampling was skipped" in (run / "SAMPLES.md").read_text()


def test_report_on_an_unfinished_run_and_on_non_runs(tiny_run, tmp_path):
    from scalelab.report.run_report import is_run_dir
    from scalelab.report.run_report import report_run

    run = _copy(tiny_run[0], tmp_path)
    (run / "summary.json").unlink()
    out = report_run(run, samples=False)
    card = (run / "MODEL_CARD.md").read_text()
    assert "has not finished" in card and "summary.json" in out["missing"]
    with pytest.raises(CheckpointError, match="not a training run"):
        report_run(_empty(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        report_run(tmp_path / "nope")
    study = tmp_path / "study"
    study.mkdir()
    (study / "results.json").write_text("{}")
    assert not is_run_dir(study)


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d
