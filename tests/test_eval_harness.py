"""The lm-evaluation-harness adapter ("scalelab" model): the harness's own task code,
run on our checkpoint, gives our per-example log-likelihoods. Only when lm_eval is
installed (it is an optional integration)."""
from pathlib import Path

import pytest

import lm_eval  # installed by scripts/setup.sh (extra "harness")

import eval_helpers as H

from scalelab.eval import tasks as T
from scalelab.eval.harness import register
from scalelab.eval.loading import load_model_for_eval


pytestmark = pytest.mark.usefixtures("one_thread")


def harness_task_yaml(tmp_path: Path, task: str, yaml_rel: str) -> Path:
    root = Path(lm_eval.__file__).parent / "tasks"
    (tmp_path / f"{task}.yaml").write_text(
        f"include: {root / yaml_rel}\ntask: h_{task}\ntag: []\ndataset_path: arrow\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {H.FIXTURES / H.FIXTURE_FILES[task]}\n"
        "training_split: null\nvalidation_split: validation\ntest_split: null\n")
    return tmp_path


def test_registered_and_matches_our_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    cls = register()
    assert get_model("scalelab") is cls
    em = load_model_for_eval(H.run_dir(), device="cpu")
    lm = cls(model=em)
    harness_task_yaml(tmp_path, "arc_easy", "arc/arc_easy.yaml")
    harness_task_yaml(tmp_path, "winogrande", "winogrande/default.yaml")
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["h_arc_easy", "h_winogrande"], task_manager=tm,
                                  bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    for task in ("arc_easy", "winogrande"):
        spec = H.fixture_spec(task)
        examples, _, _ = T.build_examples(spec)
        ours = {r["doc_id"]: r for r in T.score_examples(em, spec, examples)}
        for s in out["samples"][f"h_{task}"]:
            lls = [float(r[0]) for r in s["filtered_resps"]]
            assert lls == pytest.approx(ours[s["doc_id"]]["lls"], abs=1e-5)
            assert s["acc"] == ours[s["doc_id"]]["acc"]
    # the harness-facing creation path: model_args string
    lm2 = cls.create_from_arg_string(f"path={H.run_dir()},device=cpu,batch_size=4", {"batch_size": 1, "device": "cuda"})
    assert lm2.batch_size == 4 and lm2.max_length == 32 and lm2.device.type == "cpu"


def test_rolling_and_generate_until():
    from lm_eval.api.instance import Instance

    from scalelab.eval.lm import evaluate_lm

    cls = register()
    em = load_model_for_eval(H.run_dir(), device="cpu")
    lm = cls(model=em)
    text = "The match ended in a draw."  # shorter than the 32-token window: one window
    (ll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    path = H.workdir() / "one.txt"
    path.write_text(text)
    res = evaluate_lm(em, path, progress=False)
    assert ll == pytest.approx(-res["loss"] * res["tokens"], abs=1e-4)
    long_text = " ".join(["Shares in the company rose sharply on Monday."] * 12)
    (ll_long,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (long_text,), 0)], disable_tqdm=True)
    assert ll_long < ll < 0
    (gen,) = lm.generate_until([Instance("generate_until", {}, ("The match", {"until": ["\n"], "max_gen_toks": 6}), 0)],
                               disable_tqdm=True)
    ids = em.generate(em.encode("The match"), 6, temperature=0)
    assert gen == em.decode(ids).split("\n")[0]


def test_cli_on_cpu_only_takes_the_harness_default_device(tmp_path, monkeypatch, caplog):
    """`python -m scalelab.eval.harness --model scalelab ...` without --device: the harness
    passes its default cuda:0; on a machine without CUDA that falls back to the CPU (as the
    harness's hf backend does) instead of refusing. A model_args device stays strict."""
    import json

    import torch

    from scalelab.errors import ConfigError
    from scalelab.eval.harness import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CPU-only even on a GPU box
    (tmp_path / "tasks").mkdir()
    tasks = harness_task_yaml(tmp_path / "tasks", "arc_easy", "arc/arc_easy.yaml")
    out = tmp_path / "out"
    main(["--model", "scalelab", "--model_args", f"path={H.run_dir()}", "--tasks", "h_arc_easy",
          "--include_path", str(tasks), "--limit", "4", "--output_path", str(out), "--verbosity", "ERROR"])
    (res,) = out.rglob("results_*.json")
    data = json.loads(res.read_text())
    assert data["results"]["h_arc_easy"]["acc,none"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert "using cpu" in caplog.text
    cls = register()
    with pytest.raises(ConfigError, match="cuda"):
        cls.create_from_arg_string(f"path={H.run_dir()},device=cuda", {"device": "cpu"})
