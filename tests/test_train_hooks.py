"""The trainer's in-training task scores and samples arrive as hooks (train/hooks.py), so
train never imports eval; eval.train_hooks builds the real ones."""
import pytest

from scalelab.config import load_config
from scalelab.errors import ConfigError
from scalelab.eval.train_hooks import training_hooks
from scalelab.train.hooks import TrainHooks, check_hooks
from scalelab.train.logging import read_metrics
from scalelab.train.samples import read_samples
from scalelab.train.trainer import train

TINY = [
    "data.source=builtin:bbcnews", "data.max_docs=150", "data.vocab_size=384",
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "train.micro_batch=4", "train.batch_tokens=256", "train.warmup_steps=2", "train.max_steps=4",
    "train.eval_every=4", "train.eval_tokens=512", "train.ckpt_every=4", "train.log_every=2",
    "train.threads=1", "train.progress=false", "train.tensorboard=false",
]


def test_a_config_that_needs_a_missing_hook_fails_before_any_work(tmp_path):
    cfg = load_config(None, TINY + [f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}",
                                    "train.ckpt_samples=true", "train.eval_tasks=[hellaswag]"])
    with pytest.raises(ConfigError, match="train.eval_tasks and train.ckpt_samples need eval's training hooks"):
        train(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="train.ckpt_samples need"):
        check_hooks(cfg, TrainHooks(task_scores=lambda *a, **k: {}))
    hooks = training_hooks()
    assert check_hooks(cfg, hooks) is hooks and hooks.task_scores and hooks.sample


def test_the_trainer_calls_the_hooks_it_is_given(tmp_path):
    calls = []

    def task_scores(model, tokenizer, names, **kw):
        calls.append(("tasks", list(names), kw["limit"], kw["seed"]))
        return {"fake": 0.25}

    real = training_hooks()
    cfg = load_config(None, TINY + [f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}",
                                    "train.ckpt_samples=true", "train.eval_tasks=[fake]", "train.eval_tasks_limit=7"])
    train(cfg, hooks=TrainHooks(task_scores=task_scores, sample=real.sample))
    assert calls == [("tasks", ["fake"], 7, cfg.seed)]
    evals = read_metrics(tmp_path / "run" / "metrics.jsonl", "eval")
    assert evals[-1]["task_fake"] == 0.25
    recs = read_samples(tmp_path / "run")  # eval's real sampler, through the hook
    assert [r["step"] for r in recs] == [4] and recs[0]["samples"][0]["completion"] is not None
