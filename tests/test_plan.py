import math

import pytest
import yaml

from scalelab.config import load_config
from scalelab.errors import ConfigError
from scalelab.scaling.plan import PlanRules, batch_for_compute, lr_for_compute, parse_size, plan_family, write_configs


def test_chinchilla_70b_regime():
    plan = plan_family(PlanRules(), compute=5.76e23, models=1)
    m = plan["models"][0]
    assert 6e10 < m["params"] < 8e10
    assert 1.2e12 < m["tokens"] < 1.6e12
    assert m["tokens"] == pytest.approx(20 * m["non_embedding_params"], rel=0.01)
    assert m["flops"] == pytest.approx(5.76e23, rel=0.1)


def test_sizes_family_is_monotone_and_20x():
    plan = plan_family(PlanRules(), sizes=[parse_size(s) for s in ["10M", "50M", "200M", "600M"]])
    ms = plan["models"]
    assert [m["non_embedding_params"] for m in ms] == sorted(m["non_embedding_params"] for m in ms)
    for m, target in zip(ms, [1e7, 5e7, 2e8, 6e8]):
        assert m["non_embedding_params"] == pytest.approx(target, rel=0.15)
        assert m["tokens_per_param"] == pytest.approx(20, rel=0.01)
        assert m["batch_tokens"] % (m["micro_batch"] * m["seq_len"]) == 0
        assert m["flops_exact"] > m["flops"]  # lm_head + attention on top of 6ND
    # larger compute -> smaller lr, larger batch (DeepSeek rule)
    assert [m["lr"] for m in ms] == sorted((m["lr"] for m in ms), reverse=True)
    assert ms[-1]["batch_tokens"] >= ms[0]["batch_tokens"]


def test_deepseek_rules_values():
    assert lr_for_compute(1e19) == pytest.approx(0.3118 * 1e19 ** -0.125)
    assert batch_for_compute(1e19) == pytest.approx(0.2920 * 1e19 ** 0.3271)


def test_compute_budget_family_sums_to_budget():
    plan = plan_family(PlanRules(), compute=1e19, models=4)
    assert len(plan["models"]) == 4
    assert plan["total_flops"] == pytest.approx(1e19, rel=0.25)  # shapes are discrete


def test_epoch_warning_and_bad_input():
    plan = plan_family(PlanRules(data_tokens=1e6, vocab_size=512, seq_len=128), sizes=[1e6])
    assert plan["models"][0]["epochs"] > 4 and "repeats the corpus" in plan["warnings"][0]
    with pytest.raises(ConfigError):
        parse_size("ten million")
    with pytest.raises(ConfigError):
        plan_family(PlanRules())


def test_written_configs_are_runnable(tmp_path):
    plan = plan_family(PlanRules(vocab_size=512, seq_len=64, head_dim=32, aspect_ratio=32, multiple_of=16),
                       sizes=[5e4, 2e5])
    base = {"data": {"source": "builtin:bbcnews", "dir": "data/x"}, "train": {"max_tokens": 1000}}
    paths = write_configs(plan, base, tmp_path, runs_dir="runs/fam")
    assert len(paths) == 2
    cfg = load_config(paths[1])
    m = plan["models"][1]
    assert (cfg.model.n_layer, cfg.model.d_model) == (m["n_layer"], m["d_model"])
    assert cfg.train.max_steps == m["steps"] and cfg.train.max_tokens is None
    assert cfg.out_dir == f"runs/fam/{m['name']}"


def test_batch_splits_evenly_over_devices():
    plan = plan_family(PlanRules(devices=8, max_micro_batch=16), sizes=[1e7, 6e8])
    for m in plan["models"]:
        assert m["batch_tokens"] % (m["micro_batch"] * m["seq_len"] * 8) == 0
