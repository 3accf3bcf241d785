"""`scalelab tune` on the fine-tune job (`job: finetune`): its space, one real trial of the
job's training step on a tiny random Llama, the shipped configs, and (slow) a whole study."""
import json
from pathlib import Path

import pytest
import yaml

from ft_helpers import qa_records, tiny_llama_dir, workdir, write_jsonl
from scalelab.errors import ConfigError
from scalelab.finetune.config import load_finetune_config
from scalelab.tune.jobs import FINETUNE_KNOBS, JOBS
from scalelab.tune.search import load_tune_config
from scalelab.tune.space import Hardware, parse_space, resolve_space

ROOT = Path(__file__).resolve().parents[1]
FT = JOBS["finetune"]


def _space(tree, base, hw):
    return resolve_space(parse_space(tree, FINETUNE_KNOBS, FT.valid_keys(), FT.example), base, hw, FT)


def test_finetune_space_knobs_requirements_and_math_marks():
    base = load_finetune_config(None, ["model.lora=false", "train.batch_rows=8", "train.micro_batch=2"])
    space = _space({"train.micro_batch": [1, 2, 3, 4], "data.packing": None, "model.lora_rank": [8, 16],
                    "model.activation_checkpointing": None, "train.loader_workers": None, "train.pin_memory": None,
                    "NCCL_ALGO": None, "train.ddp_bucket_mb": None}, base, Hardware("cpu", 1))
    dropped = {d["knob"]: d["reason"] for d in space.dropped}
    assert "no loader processes" in dropped["train.loader_workers"] and "no loader" in dropped["train.pin_memory"]
    assert "only matters with LoRA" in dropped["model.lora_rank"]  # a full fine-tune has no rank
    assert "needs CUDA" in dropped["NCCL_ALGO"] and "more than one process" in dropped["train.ddp_bucket_mb"]
    mb = next(k for k in space.knobs if k.name == "train.micro_batch")
    assert mb.values == [1, 2, 4] and any("[3] excluded: train.batch_rows=8" in n for n in space.notes)
    assert space.math_knobs() == ["data.packing"]
    assert space.default_params == {"train.micro_batch": 2, "data.packing": True,
                                    "model.activation_checkpointing": False}
    # with LoRA in play (a model.lora knob) the rank is searched and marked as changing the model
    space = _space({"model.lora": [True, False], "model.lora_rank": [8, 16]}, base, Hardware("cpu", 1))
    assert space.math_knobs() == ["model.lora", "model.lora_rank"]
    with pytest.raises(ConfigError, match="Did you mean 'model.compile'"):  # the pretraining key
        parse_space({"train.compile": None}, FINETUNE_KNOBS, FT.valid_keys(), FT.example, FT.renamed)


def _ft_tune(tmp_path, **kw):
    model = tiny_llama_dir()
    data = write_jsonl(workdir() / "tune-qa.jsonl", qa_records(120))
    cfg = {"name": "ft", "job": "finetune", "out_dir": str(tmp_path / "out"), "base": {
        "data": {"source": str(data), "max_length": 128, "val_examples": 4},
        "model": {"hf": str(model), "lora": True, "lora_rank": 8},
        "train": {"micro_batch": 2, "batch_rows": 4, "threads": 1, "epochs": None, "max_steps": 10}},
        "warmup_steps": 1, "measure_steps": 4, "windows": 2, "trial_timeout_s": 180, "stall_timeout_s": 120,
        "pruner": "none", "remeasure_top": 1, "remeasure_rounds": 1, **kw}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_finetune_trial_measures_the_real_step_in_real_tokens(tmp_path):
    """One trial: `python -m scalelab.finetune.throughput` on the tiny Llama; the value is
    real tokens over time, window by window, from the job's own per-step records."""
    import numpy as np

    from scalelab.eval.stats import mean_ci
    from scalelab.tune.search import _run_config, prepare

    setup = prepare(load_tune_config(_ft_tune(tmp_path, space={"data.packing": None, "train.micro_batch": [2, 4]})),
                    progress=False)
    assert setup.job.name == "finetune" and setup.tokens_per_step is None
    cmd = setup.command(tmp_path / "run", ["data.packing=false"])
    assert cmd[1:3] == ["-m", "scalelab.finetune.throughput"] and "train.max_steps=5" in cmd
    res = _run_config(setup, {"data.packing": False, "train.micro_batch": 2}, tmp_path / "run", None)
    assert res.status == "ok", (res.kind, res.reason)
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and all(r["world"] == 1 for r in recs)
    toks = np.array([r["step_tokens"] for r in recs[1:]], float)
    times = np.array([r["step_time"] for r in recs[1:]])
    assert len(set(toks)) > 1  # padded rows: real tokens differ from step to step
    rates = [toks[:2].sum() / times[:2].sum(), toks[2:].sum() / times[2:].sum()]
    assert res.window_rates == pytest.approx(rates)
    assert res.stats["mean"] == pytest.approx(mean_ci(rates)["mean"])


def test_recipe_flags_a_winner_that_changes_what_is_trained(tmp_path):
    """Synthetic study: packing off is fastest (a knob marked changes_math); RECIPE.md says the
    winner changes what is trained and names the fastest configuration that keeps packing."""
    import numpy as np
    import optuna
    from optuna.distributions import CategoricalDistribution

    from scalelab.tune.recipe import analyze, recipe_markdown
    from scalelab.tune.search import prepare

    setup = prepare(load_tune_config(_ft_tune(tmp_path, space={"data.packing": None, "train.micro_batch": [1, 2]})),
                    progress=False)
    assert setup.space.math_knobs() == ["data.packing"]
    study = optuna.create_study(direction="maximize")
    dists = {k.name: CategoricalDistribution(k.values) for k in setup.space.knobs}
    speed = {(True, 1): 100.0, (True, 2): 120.0, (False, 1): 150.0, (False, 2): 160.0}
    rng = np.random.default_rng(0)
    for (packing, mb), v in speed.items():
        rates = list(v + rng.normal(0, 1, 3))
        study.add_trial(optuna.trial.create_trial(params={"data.packing": packing, "train.micro_batch": mb},
                                                  distributions=dists, value=float(np.mean(rates)),
                                                  user_attrs={"window_rates": rates, "duration_s": 1.0}))
    records = {f"{n}:0": {"trial": n, "round": 0, "status": "ok", "window_rates": list(speed_v + rng.normal(0, 1, 4))}
               for n, speed_v in ((3, 160.0), (1, 120.0), (0, 100.0))}
    res = analyze(setup, study, {"candidates": [3, 1, 0], "records": records}, {"stop_reason": "trials"}, 1.0, None)
    assert res["winner"]["trial"] == 3 and res["winner"]["params"]["data.packing"] is False
    assert res["same_math_winner"]["trial"] == 1 and res["same_math_winner"]["basis"] == "re-measured"
    md = recipe_markdown(res)
    assert "**Changes what is trained:** the winner sets data.packing=false" in md
    assert "Fastest with the default's data.packing: trial #1" in md and "scalelab finetune " in md
    assert "**Job:** finetune" in md and "LlamaForCausalLM" in md


@pytest.mark.parametrize("name, device, nproc", [("tune-finetune-cpu.yaml", "cpu", 1),
                                                 ("tune-finetune-7b.yaml", "cuda", 8)])
def test_shipped_finetune_tune_configs_validate(name, device, nproc):
    from scalelab.tune.setup import _resolve_base

    cfg = load_tune_config(ROOT / "configs" / name)
    assert cfg.job == "finetune" and cfg.device == device and cfg.nproc == nproc
    base = FT.load_base(_resolve_base(cfg, ROOT / "runs" / "unused"), cfg.base_overrides)
    space = _space(cfg.space, base, Hardware(device, nproc))
    assert space.knobs and "train.micro_batch" in space.names()
    mb = next(k for k in space.knobs if k.name == "train.micro_batch")
    assert all(base.train.batch_rows % (v * nproc) == 0 for v in mb.values) and len(mb.values) >= 2
    if device == "cpu":
        assert base.model.hf == "builtin:smollm2-135m-instruct" and base.model.lora
        assert cfg.trials + 2 * cfg.remeasure_top <= 8 and cfg.budget_s <= 900  # minutes, not an hour
        assert {"data.packing", "model.lora_rank"} <= set(space.math_knobs())
        assert {d["knob"] for d in space.dropped} >= {"train.loader_workers", "NCCL_ALGO"}
    else:
        assert 30 <= cfg.trials <= 60 and cfg.budget_gpu_hours
        assert base.train.parallel == "fsdp" and not base.model.lora
        assert {"NCCL_ALGO", "NCCL_PROTO", "train.fsdp_reshard_after_forward"} <= set(space.names())
        assert FT.recipe_launch(nproc) == ["torchrun", "--nproc_per_node=8", "-m", "scalelab", "finetune"]


@pytest.mark.slow
def test_a_finetune_study_writes_a_recipe_naming_the_job_and_model(tmp_path):
    from scalelab.tune.search import run_tune

    path = _ft_tune(tmp_path, trials=4, sampler="random",
                    space={"train.micro_batch": [1, 2, 4], "data.packing": None, "model.lora_rank": [4, 8]})
    res = run_tune(load_tune_config(path), progress=False, log=lambda m: None)
    assert res["job"] == "finetune" and res["model"]["architecture"] == "LlamaForCausalLM"
    assert res["budget"]["measured_trials"] == 4 and res["winner"]
    assert res["winner"]["command"].startswith("scalelab finetune ")
    assert res["math_knobs"] == ["data.packing", "model.lora_rank"]
    md = (tmp_path / "out" / "RECIPE.md").read_text()
    assert "**Job:** finetune" in md and str(tiny_llama_dir()) in md and "real (non-padding) tokens/s" in md
    assert "change what is trained" in md or "Changes what is trained" in md
