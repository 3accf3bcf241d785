"""CI math in scalelab.eval.stats, checked against known values and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as st

from scalelab.eval.stats import (
    bootstrap_ci,
    mean_ci,
    paired_bootstrap_diff,
    percentile_interval,
    summarize_accuracy,
    wilson_interval,
)


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (7, 10, 0.3968, 0.8922),  # textbook Wilson 95% values
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (1, 20, 0.0089, 0.2361),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_matches_formula_and_confidence():
    # independent closed form at 90 %
    k, n, z = 13, 40, st.norm.ppf(0.95)
    p = k / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(k, n, 0.90) == pytest.approx((c - h, c + h), rel=1e-12)
    lo95, hi95 = wilson_interval(k, n, 0.95)
    assert lo95 < c - h and hi95 > c + h


def test_wilson_rejects_bad_input():
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(1, 10, confidence=1.5)


def test_mean_ci_known_values():
    r = mean_ci([1, 2, 3, 4, 5])
    assert r["mean"] == 3.0 and r["n"] == 5
    assert r["stderr"] == pytest.approx(math.sqrt(2.5 / 5))
    # t_{0.975, 4} = 2.776445
    assert (r["lo"], r["hi"]) == pytest.approx((3 - 2.776445 * 0.707107, 3 + 2.776445 * 0.707107), abs=1e-5)
    x = np.random.default_rng(0).normal(3, 2, 37)
    lo, hi = st.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=st.sem(x))
    r = mean_ci(x, 0.9)
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi), rel=1e-12)


def test_mean_ci_single_value_is_nan_not_zero_width():
    r = mean_ci([2.5])
    assert r["mean"] == 2.5 and r["n"] == 1
    assert math.isnan(r["lo"]) and math.isnan(r["hi"]) and math.isnan(r["stderr"])
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, float("nan")])


def test_bootstrap_ci_agrees_with_scipy_and_t():
    x = np.random.default_rng(1).normal(size=300)
    lo, hi = bootstrap_ci(x, n_boot=3000, seed=0)
    ref = st.bootstrap((x,), np.mean, n_resamples=3000, method="percentile", confidence_level=0.95,
                       rng=np.random.default_rng(7)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    m = mean_ci(x)
    assert lo == pytest.approx(m["lo"], abs=0.02) and hi == pytest.approx(m["hi"], abs=0.02)
    # seeded -> deterministic
    assert bootstrap_ci(x, n_boot=500, seed=3) == bootstrap_ci(x, n_boot=500, seed=3)
    # other statistic
    lo_med, hi_med = bootstrap_ci(x, n_boot=500, seed=0, statistic=np.median)
    assert lo_med < np.median(x) < hi_med


def test_bootstrap_ci_callable():
    x = np.arange(100.0)

    def replicate(rng):
        return rng.choice(x, size=x.size, replace=True).mean()

    lo, hi = bootstrap_ci(replicate, n_boot=400, seed=0)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * x.std() / 10, rel=0.25)


def test_percentile_interval_ignores_nonfinite():
    s = np.r_[np.arange(101.0), np.nan, np.inf]
    assert percentile_interval(s, 0.9) == pytest.approx((5.0, 95.0))


def test_paired_bootstrap_diff():
    rng = np.random.default_rng(0)
    base = rng.normal(size=400)
    a = base + 0.3 + 0.1 * rng.normal(size=400)
    r = paired_bootstrap_diff(a, base, n_boot=2000, seed=0)
    assert r["diff"] == pytest.approx(np.mean(a - base))
    assert r["lo"] < r["diff"] < r["hi"] and r["lo"] > 0.25
    assert r["p_value"] < 0.001 and r["n"] == 400
    # no difference -> p = 1, CI around 0
    same = paired_bootstrap_diff(base, base, n_boot=200, seed=0)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    # pure noise difference -> not significant
    b = base + 0.5 * rng.normal(size=400)
    noise = paired_bootstrap_diff(base, b, n_boot=2000, seed=1)
    assert noise["lo"] < 0 < noise["hi"] and noise["p_value"] > 0.05
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1, 2], [1, 2, 3])


def test_summarize_accuracy():
    r = summarize_accuracy([1] * 7 + [0] * 3)
    assert r["value"] == pytest.approx(0.7) and r["n"] == 10 and r["method"] == "wilson"
    assert r["stderr"] == pytest.approx(math.sqrt(0.21 / 10))
    assert (r["lo"], r["hi"]) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert summarize_accuracy(np.array([True, False, True, True]))["value"] == 0.75
    partial = summarize_accuracy([0.5, 1.0, 0.0, 0.25])
    assert partial["method"] == "t" and partial["value"] == pytest.approx(0.4375)
    with pytest.raises(ValueError):
        summarize_accuracy([])


def test_welch_matches_scipy_stats():
    # The t quantiles / tails come from scipy.special (lazily); they must equal scipy.stats'.
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 1.0, 17), rng.normal(0.4, 2.5, 29)
    from scalelab.eval.stats import welch_t_test

    r = welch_t_test(a, b, 0.9)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert r["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-12)
    t = st.t.ppf(0.95, df=r["df"])
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert (r["lo"], r["hi"]) == pytest.approx((r["diff"] - t * se, r["diff"] + t * se), rel=1e-12)


def test_importing_stats_does_not_import_scipy():
    # scipy costs ~1 s of start-up for every `scalelab eval`; it is imported on first use.
    import subprocess
    import sys

    code = "import sys, scalelab.eval.stats; print('scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
