"""IsoFLOP design, approach 1 (envelope), exponent comparison, frontier consistency, holdout."""
import math

import numpy as np
import pytest

from scalelab.errors import ConfigError, ScalelabError
from scalelab.scaling.envelope import fit_envelope
from scalelab.scaling.fit import CHINCHILLA_PUBLISHED, chinchilla_loss, compute_optimal, fit_chinchilla, hoffmann_grid
from scalelab.scaling.ladder import compare_exponents, frontier_consistency, holdout, split_holdout
from scalelab.scaling.plan import PlanRules, format_plan, isoflop_targets, plan_isoflop

P = CHINCHILLA_PUBLISHED
GRID = hoffmann_grid()[::9]


def tiny_rules(**kw):
    return PlanRules(vocab_size=512, seq_len=128, count="total", n_layer=3, head_dim=16, multiple_of=16,
                     max_micro_batch=16, **kw)


def test_isoflop_plan_is_a_grid_of_budgets_each_with_distinct_sizes_and_equal_compute():
    plan = plan_isoflop(tiny_rules(), [1e11, 2e11, 4e11], sizes_per_budget=5, spread=3.0)
    assert plan["design"] == "isoflop" and plan["budgets"] == [1e11, 2e11, 4e11]
    for k, C in enumerate(plan["budgets"], start=1):
        ms = [m for m in plan["models"] if m["budget_index"] == k]
        assert len({(m["n_layer"], m["d_model"]) for m in ms}) == len(ms) >= 4
        assert all(m["n_layer"] == 3 for m in ms)  # one shape family
        for m in ms:  # D = C / 6N up to whole steps
            assert m["budget"] == C
            assert abs(m["flops"] / C - 1) < 0.02 + m["batch_tokens"] * 6 * m["params"] / C
        assert len({m["lr"] for m in ms}) == 1 and len({m["batch_tokens"] for m in ms}) == 1  # rules follow C
    text = format_plan(plan)
    assert "budget 3: C = 4.000e+11" in text


def test_isoflop_targets_are_centred_on_the_prior_optimum():
    t = isoflop_targets(1.2e12, 5, 4.0, 20.0)
    n_star = math.sqrt(1.2e12 / 120)
    assert t[2] == pytest.approx(n_star) and t[0] == pytest.approx(n_star / 4) and t[-1] == pytest.approx(n_star * 4)


@pytest.mark.parametrize("kw", [dict(budgets=[]), dict(budgets=[1e11, -1]), dict(sizes_per_budget=2),
                                dict(spread=1.0)])
def test_isoflop_plan_rejects_bad_designs(kw):
    args = dict(budgets=[1e11, 2e11], sizes_per_budget=5, spread=3.0)
    args.update(kw)
    with pytest.raises(ConfigError):
        plan_isoflop(tiny_rules(), **args)


def synth_ladder(budgets=(1e19, 3e19, 1e20, 3e20), sizes=7, seeds=3, sigma=0.004, seed=0, curve=True):
    """Runs on the published Chinchilla law: IsoFLOP grid, seeds with noise, training curves."""
    rng = np.random.default_rng(seed)
    runs = []
    for C in budgets:
        n_star = compute_optimal(C, **P)["N_opt"]
        for N in n_star * np.logspace(-0.6, 0.6, sizes):
            D = C / (6 * N)
            for s in range(seeds):
                noise = rng.normal(0, sigma)
                pts = [{"tokens": float(t), "val_loss": float(chinchilla_loss(N, t, **P) + noise)}
                       for t in D * np.linspace(0.1, 1.0, 10)] if curve else []
                runs.append({"name": f"{C:.0e}-{N:.3g}", "seed": s, "params": float(N), "tokens": float(D),
                             "budget": C, "loss": float(chinchilla_loss(N, D, **P) + noise), "curve": pts})
    return runs


def test_envelope_recovers_the_compute_optimal_exponent():
    truth = compute_optimal(1.0, **P)["a"]
    fit = fit_envelope(synth_ladder(), n_boot=50)
    assert not fit["degenerate"]
    assert abs(fit["a"] - truth) < 0.08
    assert fit["ci"]["a"][0] < fit["a"] < fit["ci"]["a"][1]
    assert any("not annealed" in w for w in fit["warnings"])


def test_envelope_needs_curves_of_several_sizes():
    with pytest.raises(ScalelabError, match="at least 3 model sizes"):
        fit_envelope(synth_ladder(curve=False))


def test_holdout_on_the_true_law_covers_the_held_out_runs():
    runs = synth_ladder()
    held_in, held_out, what = split_holdout(runs)
    assert "largest budget" in what and all(r["budget"] == 3e20 for r in held_out)
    res = holdout(runs, lambda r: r["loss"], lambda N, D, y, **kw: fit_chinchilla(N, D, y, grid=GRID, **kw),
                  n_boot=40)
    assert res["n_held_out"] == len(held_out) and res["n_fit"] == len(held_in)
    assert res["mean_abs_error"] < 0.02
    assert res["coverage"] >= 0.8


def test_holdout_flags_a_misspecified_law_by_its_errors():
    runs = synth_ladder()
    for r in runs:  # a floor that drops at the largest budget: no L(N, D) fitted below it can know
        if r["budget"] == 3e20:
            r["loss"] -= 0.1
    res = holdout(runs, lambda r: r["loss"], lambda N, D, y, **kw: fit_chinchilla(N, D, y, grid=GRID, **kw),
                  n_boot=40)
    assert res["mean_error"] < -0.05 and res["coverage"] < 0.5


def _fits_for(runs, shift=0.0):
    N = np.array([r["params"] for r in runs])
    D = np.array([r["tokens"] for r in runs])
    L = np.array([r["loss"] for r in runs])
    res = fit_chinchilla(N, D, L, grid=GRID, n_boot=40)
    out = res.to_dict()
    out["frontier"] = [res.predict_compute(C) for C in sorted({r["budget"] for r in runs})]
    for row in out["frontier"]:
        row["loss"] += shift
        row["loss_ci"] = [row["loss_ci"][0] + shift, row["loss_ci"][1] + shift]
    return {"chinchilla": out}


def test_frontier_consistency_passes_on_the_true_law_and_flags_a_fit_below_the_data():
    runs = synth_ladder()
    ok = frontier_consistency(runs, _fits_for(runs))
    assert ok["checked"] and not ok["flagged"] and ok["max_abs_residual"] < 0.02
    bad = frontier_consistency(runs, _fits_for(runs, shift=-0.3))
    assert bad["flagged"] and all(r["below_data"] for r in bad["budgets"])


def test_compare_exponents_lists_every_approach_and_says_why_one_is_missing():
    rows = compare_exponents({"isoflop": {"a": 0.5, "ci": {"a": [0.4, 0.6]}},
                              "chinchilla": {"degenerate": True, "reason": "poorly identified"}})
    by = {r["approach"]: r for r in rows}
    assert by["approach2"]["a"] == 0.5 and "missing" not in by["approach2"]
    assert by["approach3"]["missing"] == "poorly identified"
    assert by["approach1"]["missing"] == "not fitted"
