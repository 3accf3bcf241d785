"""The interval math the evaluator uses (Wilson for accuracies, bootstrap for means and
ratios, paired bootstrap for comparisons)."""
import math

import numpy as np
import pytest

from scalelab.eval import scoring, stats


def test_wilson_interval_known_values():
    # Wilson 95% for 8/10 (z = 1.95996): (0.4902, 0.9433); for 0/10: (0, 0.2775)
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94331, abs=1e-4)
    lo, hi = stats.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    s = scoring.summarize("acc", [1] * 8 + [0] * 2)
    assert s["method"] == "wilson" and s["value"] == 0.8 and s["n"] == 10
    assert s["stderr"] == pytest.approx(math.sqrt(0.8 * 0.2 / 10))
    assert s["ci"] == [pytest.approx(0.49016, abs=1e-4), pytest.approx(0.94331, abs=1e-4)]


def test_bootstrap_ratio_pools_units_and_transforms():
    num = np.array([10.0, 1.0, 4.0])
    den = np.array([5.0, 1.0, 2.0])
    s = stats.bootstrap_ratio(num, den, n_boot=500, seed=0)
    assert s["value"] == pytest.approx(15 / 8) and s["n"] == 3 and s["lo"] <= s["value"] <= s["hi"]
    e = stats.bootstrap_ratio(num, den, n_boot=500, seed=0, transform=np.exp)
    assert e["value"] == pytest.approx(math.exp(15 / 8))
    assert e["lo"] == pytest.approx(math.exp(s["lo"])) and e["hi"] == pytest.approx(math.exp(s["hi"]))
    one = stats.bootstrap_ratio([2.0], [1.0])
    assert one["value"] == 2.0 and math.isnan(one["lo"])
    with pytest.raises(ValueError):
        stats.bootstrap_ratio([1.0, 2.0], [1.0])


def test_perplexity_summary_is_exp_of_mean_nll():
    lls = [-1.0, -2.0, -3.0, -0.5]
    s = scoring.summarize("perplexity", lls, n_boot=300)
    assert s["value"] == pytest.approx(math.exp(1.625)) and s["ci"][0] < s["value"] < s["ci"][1]


def test_paired_difference_of_identical_inputs_has_p_about_one():
    x = np.random.default_rng(0).integers(0, 2, 200).astype(float)
    d = stats.paired_bootstrap_diff(x, x, n_boot=2000)
    assert d["diff"] == 0 and d["p_value"] > 0.99
    y = np.ones(200)
    d = stats.paired_bootstrap_diff(y, x, n_boot=2000)
    assert d["diff"] > 0 and d["p_value"] < 0.01 and d["lo"] > 0
