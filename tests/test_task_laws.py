"""The two-step downstream law: task bpb(N, D), then accuracy(bpb), chained with intervals;
external ladder points."""
import json

import numpy as np
import pytest

from scalelab.errors import ConfigError, ScalelabError
from scalelab.scaling.fit import fit_chinchilla, hoffmann_grid
from scalelab.scaling.study import read_ladder_point
from scalelab.scaling.task_laws import fit_accuracy_sigmoid, predict_accuracy, sigmoid_accuracy

BPB = {"E": 0.6, "A": 40.0, "B": 60.0, "alpha": 0.3, "beta": 0.3}
ACC = {"top": 0.85, "k": 6.0, "x0": 1.0}


def _bpb(N, D):
    return BPB["E"] + BPB["A"] / N ** BPB["alpha"] + BPB["B"] / D ** BPB["beta"]


def test_sigmoid_recovers_a_known_accuracy_law():
    rng = np.random.default_rng(0)
    x = np.linspace(0.6, 1.6, 25)
    y = sigmoid_accuracy(x, chance=0.25, **ACC) + rng.normal(0, 0.005, x.size)
    fit = fit_accuracy_sigmoid(x, y, 0.25, y > 0.3, n_boot=40)
    assert fit["fitted"] and fit["top"] == pytest.approx(0.85, abs=0.03) and fit["x0"] == pytest.approx(1.0, abs=0.05)
    lo, hi = fit["ci"]["x0"]
    assert lo <= fit["x0"] <= hi


def test_sigmoid_refuses_points_at_chance_and_says_why():
    x = np.linspace(2.5, 3.0, 20)
    fit = fit_accuracy_sigmoid(x, np.full(20, 0.25), 0.25, np.zeros(20, bool))
    assert not fit["fitted"] and "0 of 20 points" in fit["reason"] and "ladder points" in fit["reason"]


def test_chain_predicts_accuracy_at_a_target_with_an_interval():
    rng = np.random.default_rng(1)
    N = np.repeat(np.geomspace(1e6, 1e9, 8), 3)
    D = N * rng.uniform(5, 60, N.size)
    y = _bpb(N, D) * np.exp(rng.normal(0, 0.005, N.size))
    law = fit_chinchilla(N, D, y, grid=hoffmann_grid()[::9], n_boot=30).to_dict(include_samples=True)
    x = np.linspace(0.6, 1.6, 25)
    acc = fit_accuracy_sigmoid(x, sigmoid_accuracy(x, chance=0.25, **ACC), 0.25, np.ones(25, bool), n_boot=30)
    target = (3e9, 6e10)
    p = predict_accuracy(law, acc, *target)
    truth = _bpb(*target)
    assert p["bpb"] == pytest.approx(truth, rel=0.05) and p["bpb_ci"][0] <= p["bpb"] <= p["bpb_ci"][1]
    want = float(sigmoid_accuracy(truth, chance=0.25, **ACC))
    assert p["accuracy"] == pytest.approx(want, abs=0.05) and p["accuracy_ci"][0] <= p["accuracy"] <= p["accuracy_ci"][1]
    no_acc = predict_accuracy(law, {"fitted": False, "reason": "at chance"}, *target)
    assert "accuracy" not in no_acc and no_acc["accuracy_reason"] == "at chance"
    with pytest.raises(ScalelabError, match="degenerate"):
        predict_accuracy({"degenerate": True, "reason": "x"}, acc, *target)


def test_ladder_points_read_an_eval_results_file(tmp_path):
    res = {"results": {"hellaswag": {"n": 1000, "acc_norm": 0.31, "acc_norm_ci": [0.28, 0.34], "bpb": 1.1,
                                     "bpb_ci": [1.08, 1.12]}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    pt = read_ladder_point({"name": "gpt2", "params": 1.24e8, "tokens": 1e10, "results": str(path)})
    t = pt["tasks"]["hellaswag"]
    assert t["acc_norm"] == 0.31 and t["acc_norm_lo"] == 0.28 and t["bpb_hi"] == 1.12
    with pytest.raises(ConfigError, match="lacks params"):
        read_ladder_point({"name": "x", "tokens": 1, "results": str(path)})
    with pytest.raises(ConfigError, match="cannot read"):
        read_ladder_point({"name": "x", "params": 1, "tokens": 1, "results": str(tmp_path / "nope.json")})


def test_external_ladder_points_join_the_accuracy_step_and_the_chain_runs():
    from scalelab.scaling.study_fits import task_fits

    rng = np.random.default_rng(2)
    runs = []
    for N in np.geomspace(2e4, 2e5, 5):
        for D in (2e5, 8e5, 3.2e6):
            b = float(_bpb(N, D) * np.exp(rng.normal(0, 0.003)))
            runs.append({"params": N, "tokens": D, "budget": 6 * N * D, "seed": 0,
                         "tasks": {"t": {"bpb": b, "acc_norm": 0.25, "acc_norm_lo": 0.2, "chance": 0.25}}})
    x = np.linspace(0.7, 1.5, 6)  # public checkpoints: lower bpb, accuracy above chance
    ext = [{"name": f"m{i}", "params": 1e9, "tokens": 1e11,
            "tasks": {"t": {"bpb": float(b), "acc_norm": float(sigmoid_accuracy(b, chance=0.25, **ACC)),
                            "acc_norm_lo": float(sigmoid_accuracy(b, chance=0.25, **ACC)) - 0.02}}}
           for i, b in enumerate(x)]
    out = task_fits(runs, "t", 20, 0, "points", [], external=ext, predict=[[1e7, 1e9]])
    assert out["accuracy"]["fitted"] and out["accuracy"]["n_external"] == 6
    assert out["accuracy"]["n_above_chance"] >= 3
    (p,) = out["predictions"]
    assert p["N"] == 1e7 and "accuracy" in p and 0.25 <= p["accuracy"] <= 1.0
