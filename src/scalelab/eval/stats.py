"""Confidence-interval math: the one place in scalelab that computes error bars.

Every number scalelab reports with an interval gets it from here (the evaluator,
the scaling study, the fit module), so the conventions are the same everywhere:

* ``confidence`` is the two-sided coverage (0.95 -> 2.5 % in each tail).
* Intervals are returned as plain floats ``(lo, hi)``; summaries as dicts.
* Where an interval is undefined (a single observation) ``lo``/``hi`` are ``nan``;
  empty input or out-of-range arguments raise ``ValueError``.

Methods
-------
``wilson_interval``
    Wilson score interval for a binomial proportion (Wilson 1927). Unlike the
    normal ("Wald") interval it stays inside [0, 1] and keeps close to nominal
    coverage for small n and for proportions near 0 or 1, which is the usual case
    for accuracies on small task sets.
``mean_ci``
    Student-t interval for a mean: ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``.
``bootstrap_ci``
    Percentile bootstrap (Efron & Tibshirani 1993): resample with replacement,
    recompute the statistic, take the ``(1-c)/2`` and ``(1+c)/2`` quantiles.
``paired_bootstrap_diff``
    Paired bootstrap of ``mean(a) - mean(b)`` over the same items (the test of
    Koehn 2004 / Berg-Kirkpatrick et al. 2012): the CI is the percentile interval of
    the resampled differences; the p-value is two-sided, computed from the
    resampled differences re-centred on zero (the null distribution).
``summarize_accuracy``
    Mean of 0/1 correctness with its binomial standard error and Wilson interval.
``bootstrap_ratio``
    Ratio of sums (loss per token, bits per byte, a mean) with a bootstrap over whole
    units (documents, windows, examples); optional monotone transform (exp -> perplexity).
``batch_means_ci``
    Mean of a serially correlated series (step times) from contiguous batch means.
``welch_t_test`` / ``ratio_of_means_ci``
    Two independent samples with unequal variances: difference (Welch t) and ratio
    (delta method on the log scale) of their means.
``format_ci``
    An estimate and its interval as text, ``0.366 [0.295, 0.391]`` -- the one CI formatter
    of the screens, tables and notes.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "wilson_interval",
    "mean_ci",
    "bootstrap_ci",
    "paired_bootstrap_diff",
    "summarize_accuracy",
    "percentile_interval",
    "bootstrap_ratio",
    "batch_means_ci",
    "welch_t_test",
    "ratio_of_means_ci",
    "format_ci",
]


def _number(x) -> float:
    """float(x), or nan for None and junk (formatted values come from JSON files)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def format_ci(value, ci, fmt: str | Callable[[float], str] = ".3f", *, no_ci: str = " [no CI]",
              missing: str = "n/a") -> str:
    """'0.366 [0.295, 0.391]': `value` and the (lo, hi) pair `ci`, each formatted with the
    format spec or function `fmt`; `value` + `no_ci` when the interval is absent or not
    finite, `missing` when the value is."""
    show = fmt if callable(fmt) else (lambda x: format(x, fmt))
    v = _number(value)
    if not math.isfinite(v):
        return missing
    lo, hi = (_number(ci[0]), _number(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (math.nan,) * 2
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{show(v)} [{show(lo)}, {show(hi)}]"
    return show(v) + no_ci


def _check_confidence(confidence: float) -> None:
    if not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _as_1d(values, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: cannot compute an interval from no data")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN/inf)")
    return arr


def _special():
    # Imported on first use: scipy.special costs ~0.5 s of start-up and scipy.stats ~0.9 s,
    # which every importer of this module (the eval CLI, reports) would otherwise pay.
    # ndtri / stdtrit / stdtr are exactly what scipy.stats' norm.ppf, t.ppf and t.sf
    # evaluate (loc 0, scale 1), so the numbers are bit-for-bit the same.
    from scipy import special

    return special


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` Bernoulli trials."""
    _check_confidence(confidence)
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 trials, got n={n}")
    if not (0 <= successes <= n):
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = float(_special().ndtri(0.5 + confidence / 2.0))
    p = successes / n
    z2n = z * z / n
    denom = 1.0 + z2n
    center = (p + z2n / 2.0) / denom
    half = (z / denom) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    # Clamp away floating-point overshoot; exact at the boundaries.
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return (lo, hi)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean with a Student-t confidence interval.

    Returns ``dict(mean, stderr, lo, hi, n)``; with a single value the standard error
    and the interval are ``nan`` (undefined), never a fake zero-width interval.
    """
    _check_confidence(confidence)
    x = _as_1d(values)
    n = int(x.size)
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "stderr": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": n}
    se = float(x.std(ddof=1) / math.sqrt(n))
    t = float(_special().stdtrit(n - 1, 0.5 + confidence / 2.0))
    return {"mean": mean, "stderr": se, "lo": mean - t * se, "hi": mean + t * se, "n": n}


def percentile_interval(samples, confidence: float = 0.95, axis: int = 0):
    """``(lo, hi)`` percentile interval of bootstrap ``samples`` along ``axis``.

    Non-finite samples are ignored (``nanpercentile``); if none are finite the
    interval is ``nan``.
    """
    _check_confidence(confidence)
    s = np.asarray(samples, dtype=float)
    s = np.where(np.isfinite(s), s, np.nan)
    q = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> nan
        lo, hi = np.nanpercentile(s, q, axis=axis)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


def bootstrap_ci(
    values: Sequence[float] | Callable[[np.random.Generator], float],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    statistic: Callable[[np.ndarray], float] = np.mean,
) -> tuple[float, float]:
    """Percentile bootstrap interval.

    ``values`` is either the data (resampled with replacement, ``statistic`` applied
    to each resample; default the mean) or a callable ``f(rng) -> float`` that draws
    one bootstrap replicate itself (for statistics of structured data, e.g. a model
    refit on resampled runs). Seeded and deterministic.
    """
    _check_confidence(confidence)
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    rng = np.random.default_rng(seed)
    if callable(values):
        reps = np.array([float(values(rng)) for _ in range(n_boot)])
    else:
        x = _as_1d(values)
        idx = rng.integers(0, x.size, size=(n_boot, x.size))
        samples = x[idx]
        try:
            reps = np.asarray(statistic(samples, axis=1), dtype=float)
            if reps.shape != (n_boot,):
                raise TypeError
        except TypeError:
            reps = np.array([float(statistic(row)) for row in samples])
    return percentile_interval(reps, confidence)


def paired_bootstrap_diff(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Paired bootstrap of ``mean(a) - mean(b)`` where ``a[i]`` and ``b[i]`` score the same item.

    Returns ``dict(diff, lo, hi, p_value, n)``. ``p_value`` is the two-sided
    probability, under the null of no difference, of a resampled difference at least
    as large in magnitude as the observed one: ``(1 + #{|d* - d| >= |d|}) / (n_boot + 1)``
    (resampled differences re-centred on zero; the +1 keeps it away from an
    impossible exact 0).
    """
    _check_confidence(confidence)
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length, got {x.size} and {y.size}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    d = x - y
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(1, d.size)))  # bound memory
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        reps[start:stop] = d[idx].mean(axis=1)
    lo, hi = percentile_interval(reps, confidence)
    extreme = int(np.sum(np.abs(reps - diff) >= abs(diff) - 1e-15))
    p = (1 + extreme) / (n_boot + 1)
    return {"diff": diff, "lo": lo, "hi": hi, "p_value": float(min(1.0, p)), "n": int(d.size)}


def summarize_accuracy(correct, confidence: float = 0.95) -> dict:
    """Accuracy of per-item 0/1 ``correct`` flags: ``dict(value, stderr, lo, hi, n)``.

    ``stderr`` is the binomial ``sqrt(p(1-p)/n)``; ``lo``/``hi`` the Wilson interval.
    Non-binary scores (partial credit) fall back to the t-interval of ``mean_ci``;
    ``method`` says which was used.
    """
    x = _as_1d(correct, "correct")
    n = int(x.size)
    if np.all((x == 0) | (x == 1)):
        k = float(x.sum())
        p = k / n
        lo, hi = wilson_interval(k, n, confidence)
        return {"value": p, "stderr": math.sqrt(p * (1.0 - p) / n), "lo": lo, "hi": hi, "n": n, "method": "wilson"}
    m = mean_ci(x, confidence)
    return {"value": m["mean"], "stderr": m["stderr"], "lo": m["lo"], "hi": m["hi"], "n": n, "method": "t"}


def bootstrap_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Ratio of sums ``sum(num) / sum(den)`` over units (documents, windows, examples),
    with a percentile-bootstrap interval that resamples whole units.

    This is the right interval for pooled rates such as loss per token (num = nats of a
    document, den = its tokens) or bits per byte: long units weigh more, exactly as in
    the point estimate. ``denominators=None`` means one per unit (a plain mean).
    ``transform`` maps the ratio (and every replicate) to the reported scale, e.g.
    ``np.exp`` for a perplexity; it must be monotone so the interval maps too.

    Returns ``dict(value, stderr, lo, hi, n)``: ``stderr`` is the standard deviation of
    the (transformed) replicates; with a single unit ``stderr``/``lo``/``hi`` are nan.
    """
    _check_confidence(confidence)
    num = _as_1d(numerators, "numerators")
    den = np.ones_like(num) if denominators is None else _as_1d(denominators, "denominators")
    if den.shape != num.shape:
        raise ValueError(f"numerators and denominators differ in length ({num.size} vs {den.size})")
    if den.sum() <= 0:
        raise ValueError("denominators sum to zero: nothing was counted")
    f = transform if transform is not None else (lambda v: v)
    value = float(f(np.asarray(num.sum() / den.sum())))
    n = int(num.size)
    if n < 2:
        return {"value": value, "stderr": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": n}
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // n))  # bound memory
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        d = den[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            reps[start:stop] = np.where(d > 0, num[idx].sum(axis=1) / np.where(d > 0, d, 1.0), np.nan)
    with np.errstate(over="ignore"):
        reps = np.asarray(f(reps), dtype=float)
    lo, hi = percentile_interval(reps, confidence)
    finite = reps[np.isfinite(reps)]
    stderr = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return {"value": value, "stderr": stderr, "lo": lo, "hi": hi, "n": n}


# ---------------------------------------------------------------------------
# Correlated series and two-sample comparisons (used by `scalelab tune`)


def batch_means_ci(
    values: Sequence[float],
    n_batches: int = 10,
    confidence: float = 0.95,
    transform: Callable[[float], float] | None = None,
) -> dict:
    """Mean of a serially correlated series (step times, per-step rates) with a
    batch-means interval (e.g. Law & Kelton, *Simulation Modeling and Analysis*, ch. 9).

    The series is cut into ``n_batches`` contiguous batches (sizes differ by at most one;
    fewer batches when there are fewer values); the batch means are nearly independent
    when the batches are long compared with the correlation time, so a Student-t
    interval over them (``mean_ci``) is honest where one over raw values is too narrow.
    ``transform`` maps each batch mean before the interval, e.g. ``lambda t: tokens / t``
    turns mean step times into one throughput per batch (tokens over the batch's time).

    Returns ``dict(mean, stderr, lo, hi, n, n_batches, batch_means)``: ``n`` counts the
    values, ``batch_means`` the (transformed) batch means the interval was computed from.
    """
    _check_confidence(confidence)
    x = _as_1d(values)
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    b = int(min(n_batches, x.size))
    means = np.array([chunk.mean() for chunk in np.array_split(x, b)], dtype=float)
    if transform is not None:
        means = np.array([float(transform(m)) for m in means], dtype=float)
    ci = mean_ci(means, confidence)
    return {"mean": ci["mean"], "stderr": ci["stderr"], "lo": ci["lo"], "hi": ci["hi"], "n": int(x.size),
            "n_batches": b, "batch_means": means.tolist()}


def _welch_parts(a, b):
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.size < 2 or y.size < 2:
        raise ValueError(f"each sample needs >= 2 values for a Welch test, got {x.size} and {y.size}")
    return x, y, float(x.var(ddof=1)) / x.size, float(y.var(ddof=1)) / y.size


def _welch_df(va: float, vb: float, na: int, nb: int) -> float:
    """Welch-Satterthwaite degrees of freedom for variances-of-the-mean va, vb."""
    den = (va * va / (na - 1) if va > 0 else 0.0) + (vb * vb / (nb - 1) if vb > 0 else 0.0)
    return float((va + vb) ** 2 / den) if den > 0 else float(na + nb - 2)


def welch_t_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Difference of means ``mean(a) - mean(b)`` of two independent samples with unequal
    variances (Welch 1947): ``dict(diff, lo, hi, p_value, df, n_a, n_b)``.

    ``lo``/``hi`` are the Welch-Satterthwaite t interval of the difference, ``p_value``
    the two-sided p of "equal means". Identical constant samples give p = 1.
    """
    _check_confidence(confidence)
    x, y, va, vb = _welch_parts(a, b)
    diff = float(x.mean() - y.mean())
    se = math.sqrt(va + vb)
    df = _welch_df(va, vb, x.size, y.size)
    if se == 0.0:
        p = 1.0 if diff == 0.0 else 0.0
        return {"diff": diff, "lo": diff, "hi": diff, "p_value": p, "df": df, "n_a": int(x.size), "n_b": int(y.size)}
    t = float(_special().stdtrit(df, 0.5 + confidence / 2.0))
    p = float(2.0 * _special().stdtr(df, -(abs(diff) / se)))
    return {"diff": diff, "lo": diff - t * se, "hi": diff + t * se, "p_value": p, "df": df,
            "n_a": int(x.size), "n_b": int(y.size)}


def ratio_of_means_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """Ratio ``mean(a) / mean(b)`` of two independent positive samples with a
    delta-method interval on the log scale: ``se(log r)^2 = s_a^2/(n_a m_a^2) +
    s_b^2/(n_b m_b^2)``, Welch-Satterthwaite degrees of freedom, ``exp(log r +- t se)``.
    (A speed-up "1.23x [1.10, 1.37]" is this with a = new throughputs, b = old.)

    Returns ``dict(ratio, lo, hi, df, n_a, n_b)``.
    """
    _check_confidence(confidence)
    x, y, va, vb = _welch_parts(a, b)
    ma, mb = float(x.mean()), float(y.mean())
    if ma <= 0 or mb <= 0:
        raise ValueError(f"ratio_of_means_ci needs positive means, got {ma} and {mb}")
    ra, rb = va / (ma * ma), vb / (mb * mb)
    se = math.sqrt(ra + rb)
    df = _welch_df(ra, rb, x.size, y.size)
    t = float(_special().stdtrit(df, 0.5 + confidence / 2.0))
    r = ma / mb
    return {"ratio": r, "lo": r * math.exp(-t * se), "hi": r * math.exp(t * se), "df": df,
            "n_a": int(x.size), "n_b": int(y.size)}
