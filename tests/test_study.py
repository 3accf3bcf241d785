"""A miniature scaling study end to end: plan -> train (pool of 2) -> fit -> report."""
import json
import shutil

import pytest
import yaml

from scalelab.errors import ConfigError
from scalelab.report.study_note import write_report
from scalelab.scaling.study import check_monotone, load_study_config, run_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    task = root / "news_topic.jsonl"  # a user task file: query / choices / gold
    rows = [{"query": f"Article {i}: shares and profits rose. Topic:", "choices": [" business", " sport"], "gold": 0}
            for i in range(6)] + [{"query": f"Match {i}: the team won the cup. Topic:",
                                   "choices": [" business", " sport"], "gold": 1} for i in range(6)]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "name": "mini", "out_dir": str(root / "out"), "seeds": [0, 1], "parallel_runs": 2,
        "plan": {"sizes": ["3K", "7K", "14K"], "tokens_per_param": [3], "batch_tokens": 1024,
                 "max_micro_batch": 16, "aspect_ratio": 16, "head_dim": 16, "multiple_of": 16, "lr": 0.02},
        "fit": {"n_boot": 20},
        "eval": {"tasks": [str(task)], "limit": None},
        "base": {"data": {"source": "builtin:bbcnews", "max_docs": 150, "vocab_size": 384,
                          "dir": str(root / "data")},
                 "model": {"seq_len": 64},
                 "train": {"threads": 1, "eval_tokens": 4096, "tensorboard": False, "progress": False}},
    }
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_study(path, progress=False, report=write_report)
    return path, results


def test_study_results_have_runs_sizes_fits_and_report(study):
    path, results = study
    out = load_study_config(path).out_dir
    saved = json.loads(open(f"{out}/results.json").read())
    assert saved["kind"] == "scalelab.study" and len(saved["runs"]) == 6
    assert {r["seed"] for r in saved["runs"]} == {0, 1}
    for r in saved["runs"]:
        assert r["loss"] > 0 and r["tokens"] > 0 and r["curve"]
        t = r["tasks"]["news_topic"]
        assert t["n"] == 12 and 0 <= t["acc_lo"] <= t["acc"] <= t["acc_hi"] <= 1 and t["chance"] == 0.5
    sizes = saved["sizes"]
    assert len(sizes) == 3 and all(s["n_seeds"] == 2 for s in sizes)
    assert [s["non_embedding_params"] for s in sizes] == sorted(s["non_embedding_params"] for s in sizes)
    assert "kaplan" in saved["fits"] and "chinchilla" in saved["fits"]
    assert saved["fits"]["chinchilla"]["degenerate"]  # one ratio: L(N,D) not identifiable, and said so
    assert (tmp := __import__("pathlib").Path(out)) and (tmp / "NOTE.md").is_file()
    assert list((tmp / "figures").glob("*.png"))
    assert len(list((tmp / "configs").glob("*.yaml"))) == 6


def test_rerun_skips_finished_and_resumes_interrupted(study):
    path, _ = study
    out = load_study_config(path).out_dir
    victim = sorted(__import__("pathlib").Path(out, "runs").iterdir())[0]
    before = json.loads((victim / "summary.json").read_text())
    (victim / "summary.json").unlink()  # as if the run died after its last checkpoint
    results = run_study(path, progress=False, report=None)
    after = json.loads((victim / "summary.json").read_text())
    assert after["steps"] == before["steps"] and after["val_loss"] == pytest.approx(before["val_loss"])
    assert len(results["runs"]) == 6


def test_bad_study_configs(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"plan": {}, "base": {}}))
    with pytest.raises(ConfigError, match="plan.sizes"):
        load_study_config(p)
    p.write_text(yaml.safe_dump({"plan": {"sizes": ["1M"]}, "base": {"train": {"lrr": 1}}}))
    with pytest.raises(ConfigError, match="train.lrr"):
        load_study_config(p)
    p.write_text(yaml.safe_dump({"plan": {"sizes": ["1M"]}, "seedz": [1]}))
    with pytest.raises(ConfigError, match="seedz.*seeds"):
        load_study_config(p)


def test_monotone_check_uses_seed_noise():
    def size(name, mean, se, n=2):
        return {"name": name, "n_seeds": n, "loss": {"mean": mean, "stderr": se}}

    ok = check_monotone([size("a", 5.0, 0.01), size("b", 4.5, 0.01)])
    assert ok["loss_decreases_beyond_noise"]
    noisy = check_monotone([size("a", 5.0, 0.3), size("b", 4.9, 0.3)])
    assert not noisy["loss_decreases_beyond_noise"]


def test_gpu_study_config_plans_runnable_configs(tmp_path):
    """configs/study-gpu.yaml (not run in CI) yields valid per-run configs for 8 GPUs."""
    import pathlib

    from scalelab.config import config_from_dict
    from scalelab.scaling.study import make_plan, run_config_tree

    cfg = load_study_config(pathlib.Path(__file__).parents[1] / "configs" / "study-gpu.yaml")
    plan = make_plan(cfg, 50257, 9_900_000_000)
    assert plan["design"] == "isoflop" and len(plan["budgets"]) == 4
    assert len(plan["models"]) == 20 and cfg.launcher.startswith("torchrun")
    assert 8e6 < min(m["params"] for m in plan["models"]) and max(m["params"] for m in plan["models"]) < 7e8
    assert plan["gpu"]["hours_all_seeds"] > plan["gpu"]["hours"] > 0  # printed by `scalelab plan --study`
    for m in plan["models"]:
        tree = run_config_tree(cfg, m, 0, tmp_path / m["name"])
        rc = config_from_dict(tree)
        assert rc.train.batch_tokens % (rc.train.micro_batch * rc.model.seq_len * 8) == 0
        assert rc.data.tokenizer == "gpt2" and rc.train.dtype == "bf16"


def test_isoflop_study_end_to_end(tmp_path):
    """A miniature IsoFLOP ladder: 3 budgets x 3 sizes x 2 seeds, every fit and check stored."""
    cfg = {
        "name": "iso", "out_dir": str(tmp_path / "out"), "seeds": [0, 1], "parallel_runs": 2,
        "plan": {"design": "isoflop", "budgets": [1.5e9, 3e9, 6e9], "sizes_per_budget": 3, "spread": 2.0,
                 "count": "total", "n_layer": 2, "width_step": 8, "head_dim": 16, "multiple_of": 16,
                 "max_micro_batch": 16, "warmup_frac": 0.05},
        "fit": {"n_boot": 10},
        "base": {"data": {"source": "builtin:bbcnews", "max_docs": 150, "vocab_size": 384,
                          "dir": str(tmp_path / "data")},
                 "model": {"seq_len": 64},
                 "train": {"threads": 1, "eval_tokens": 2048, "tensorboard": False, "progress": False}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_study(path, progress=False, report=None)
    runs = results["runs"]
    assert len(runs) == 18 and {r["budget_index"] for r in runs} == {1, 2, 3}
    for C in (1.5e9, 3e9, 6e9):
        at = [r for r in runs if r["budget"] == C]
        assert len({r["params"] for r in at}) == 3
        assert all(abs(6 * r["params"] * r["tokens"] / C - 1) < 0.2 for r in at)  # D = C / 6N, whole steps
    fits = results["fits"]
    assert set(fits) >= {"chinchilla", "isoflop", "envelope", "exponents", "consistency", "holdout", "tasks"}
    assert "samples" in fits["chinchilla"] or fits["chinchilla"]["degenerate"]
    assert [r["approach"] for r in fits["exponents"]] == ["approach1", "approach2", "approach3"]
    assert "loss" in fits["holdout"]
    assert results["checks"]["rule"].startswith("along the frontier")
    assert len(results["checks"]["frontier"]) == 3
