"""Throughput measurement: statistics on synthetic step times, and the subprocess runner's
handling of windows, pruning, timeouts, hangs, crashes, config errors and OOM (with a fake
trainer that writes metrics.jsonl, so these run in a second)."""
import math
import sys

import numpy as np
import pytest

from scalelab.eval.stats import batch_means_ci, ratio_of_means_ci, welch_t_test
from scalelab.tune.measure import (
    MeasureSettings,
    classify_failure,
    measurement_overrides,
    run_measurement,
    throughput_stats,
    train_command,
)

# --------------------------------------------------------------------------- statistics


def test_warmup_is_dropped_and_value_is_tokens_over_time():
    steps = [5.0, 2.0] + [0.1] * 12  # compilation, then steady 0.1 s steps
    s = throughput_stats(steps, tokens_per_step=1000, warmup_steps=2, windows=4)
    assert s["mean"] == pytest.approx(10_000) and s["n_steps"] == 12 and s["n_windows"] == 4
    assert s["warmup_dropped"] == 2 and s["window_rates"] == pytest.approx([10_000] * 4)
    with_warmup = throughput_stats(steps, 1000, 0, 4)
    assert with_warmup["mean"] < 0.8 * s["mean"]  # what keeping the warm-up would have done


def test_batch_means_interval_covers_the_true_rate():
    """AR(1) step-time noise (correlated, as on a shared machine): the batch-means interval
    covers the true throughput close to 95% of the time; a naive per-step interval does not."""
    rng = np.random.default_rng(0)
    true_t, phi, n, trials = 0.1, 0.6, 200, 300
    hits = naive_hits = 0
    for _ in range(trials):
        e = np.zeros(n)
        for i in range(1, n):
            e[i] = phi * e[i - 1] + rng.normal(0, 0.01)
        times = true_t + e
        s = throughput_stats(list(times), 1.0, 0, 10)
        true_rate = 1.0 / true_t  # tokens / mean step time (1 token per step)
        hits += s["lo"] <= true_rate <= s["hi"]
        rates = 1.0 / times
        m, se = rates.mean(), rates.std(ddof=1) / math.sqrt(n)
        naive_hits += m - 1.96 * se <= 1.0 / true_t <= m + 1.96 * se
    assert 0.88 <= hits / trials <= 0.99
    assert naive_hits / trials < hits / trials


def test_batch_means_ci_shape_and_errors():
    r = batch_means_ci(list(range(10)), n_batches=3)
    assert r["n"] == 10 and r["n_batches"] == 3 and r["batch_means"] == pytest.approx([1.5, 5.0, 8.0])
    assert r["lo"] < r["mean"] < r["hi"]
    assert batch_means_ci([1.0, 2.0], n_batches=10)["n_batches"] == 2
    with pytest.raises(ValueError):
        batch_means_ci([], 3)
    with pytest.raises(ValueError):
        batch_means_ci([1.0], 0)


def test_welch_and_ratio_match_scipy_and_cover():
    from scipy import stats

    rng = np.random.default_rng(1)
    a, b = rng.normal(110, 5, 12), rng.normal(100, 8, 9)
    w = welch_t_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert w["p_value"] == pytest.approx(ref.pvalue) and w["df"] == pytest.approx(ref.df)
    assert w["lo"] < w["diff"] < w["hi"]
    r = ratio_of_means_ci(a, b)
    assert r["lo"] < r["ratio"] < r["hi"] and r["ratio"] == pytest.approx(a.mean() / b.mean())
    same = welch_t_test([1.0, 1.0, 1.0], [1.0, 1.0])
    assert same["p_value"] == 1.0
    with pytest.raises(ValueError):
        welch_t_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        ratio_of_means_ci([-1.0, -2.0], [1.0, 2.0])


def test_classify_failure():
    assert classify_failure("...\nerror: out of memory. Lower train.micro_batch (at step 3)\n", 2)[0] == "oom"
    assert classify_failure("torch.OutOfMemoryError: CUDA out of memory. Tried", 1)[0] == "oom"
    kind, reason = classify_failure("error: train.prefetch_factor must be >= 1, got 0\n", 2)
    assert kind == "error" and reason == "train.prefetch_factor must be >= 1, got 0"
    kind, reason = classify_failure("Traceback...\nValueError: boom\n", 1)
    assert kind == "crash" and "ValueError: boom" in reason and "exit code 1" in reason
    assert "signal 9" in classify_failure("", -9)[1]


def test_train_command_and_overrides():
    assert train_command("c.yaml", ["a=1"], 1)[1:] == ["-m", "scalelab", "train", "c.yaml", "a=1"]
    cmd = train_command("c.yaml", [], 4)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc_per_node=4" in cmd
    over = measurement_overrides("/x", MeasureSettings(warmup_steps=3, measure_steps=10), 64)
    assert "train.max_steps=13" in over and "train.eval_tokens=64" in over and "out_dir=/x" in over


# --------------------------------------------------------------------------- the runner

FAKE = r"""
import json, os, sys, time
run_dir, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(run_dir, exist_ok=True)
if mode == "error":
    print("error: train.prefetch_factor must be >= 1, got 0", file=sys.stderr); sys.exit(2)
if mode == "sleep":
    time.sleep(60)
with open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1) as f:
    for step in range(1, n + 1):
        if mode == "oom" and step == 4:
            print("error: out of memory. Lower train.micro_batch (at step 4)", file=sys.stderr); sys.exit(2)
        if mode == "crash" and step == 4:
            raise RuntimeError("segfault-ish")
        if mode == "hang" and step == 3:
            time.sleep(60)
        dt = 0.5 if step <= 2 else (0.01 if mode != "slow" or step < 8 else 0.02)
        time.sleep(0.002)
        f.write(json.dumps({"kind": "train", "step": step, "step_time": dt}) + "\n")
    time.sleep(30 if mode == "linger" else 0)
"""


def fake(tmp_path, mode, n=14):
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    run_dir = tmp_path / f"run-{mode}"
    return [sys.executable, str(script), str(run_dir), mode, str(n)], run_dir


SETTINGS = MeasureSettings(warmup_steps=2, measure_steps=12, windows=4, timeout_s=20, stall_timeout_s=2, poll_s=0.02)


def test_runner_measures_reports_windows_and_stops_once_measured(tmp_path):
    cmd, run_dir = fake(tmp_path, "linger")
    seen = []
    r = run_measurement(cmd, run_dir, 100.0, SETTINGS, on_window=lambda i, rate: seen.append((i, rate)) or False)
    assert r.status == "ok" and r.stats["mean"] == pytest.approx(10_000)
    assert [i for i, _ in seen] == [0, 1, 2] and all(rate == pytest.approx(10_000) for _, rate in seen)
    assert r.duration_s < 15  # did not wait for the lingering end of the run (final eval, checkpoint)
    assert (run_dir / "trial.log").is_file()


def test_runner_prunes_when_asked(tmp_path):
    cmd, run_dir = fake(tmp_path, "ok")
    r = run_measurement(cmd, run_dir, 100.0, SETTINGS, on_window=lambda i, rate: i == 1)
    assert r.status == "pruned" and len(r.window_rates) == 2 and "pruned after window 2" in r.reason


@pytest.mark.parametrize("mode, kind, text", [
    ("error", "error", "prefetch_factor must be >= 1"),
    ("oom", "oom", "out of memory"),
    ("crash", "crash", "RuntimeError: segfault-ish"),
    ("hang", "hang", "no new step"),
    ("sleep", "timeout", "timeout"),
])
def test_runner_records_failures_with_reasons(tmp_path, mode, kind, text):
    cmd, run_dir = fake(tmp_path, mode)
    r = run_measurement(cmd, run_dir, 100.0, SETTINGS, timeout_s=4 if mode == "sleep" else None)
    assert r.status == "failed" and r.kind == kind and text in r.reason
    assert r.duration_s < 15


def test_runner_incomplete_run(tmp_path):
    cmd, run_dir = fake(tmp_path, "ok", n=6)
    r = run_measurement(cmd, run_dir, 100.0, SETTINGS)
    assert r.status == "failed" and r.kind == "incomplete" and len(r.step_times) == 6
