"""Measure one configuration's training throughput in a fresh subprocess.

A trial is `python -m scalelab train BASE overrides...` (or `python -m torch.distributed.run
--standalone --nproc_per_node N -m scalelab train ...` for N > 1 processes, so NCCL_*
environment variables take effect in every rank). The trainer writes one
`{"kind": "train", "step", "step_time", ...}` line per step to metrics.jsonl; we tail that
file while the process runs, drop the first `warmup_steps` steps (compilation, allocator
and cache warm-up), and stop the process as soon as the measured steps are in (the
trainer's final evaluation and checkpoint are not part of the measurement).

Throughput is tokens per second per process (per GPU): `batch_tokens / world / step_time`;
when the records carry each step's tokens (`step_tokens`, `world`: the fine-tune job's real,
non-padding tokens), a window's throughput is its tokens over its time.
The measured steps are cut into `windows` contiguous windows; each window's throughput
is its tokens over its time (tokens_per_step / mean step time), and the trial's value is
the mean of the window throughputs with a 95% batch-means t-interval
(`eval.stats.batch_means_ci`). The same windows are reported to the pruner as the trial
runs.

Failures never raise: out of memory, a timeout (the whole process group is killed), a
stall (no new step for `stall_timeout_s`), a config error in the child, or any crash end
as a `RunResult` with `status="failed"`, a `kind` and a one-line `reason`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scalelab.eval.stats import batch_means_ci, mean_ci


@dataclass
class MeasureSettings:
    warmup_steps: int = 5
    measure_steps: int = 30
    windows: int = 5
    timeout_s: float = 600.0  # whole trial, start-up included
    stall_timeout_s: float | None = 300.0  # no new step for this long after the first one = hang
    poll_s: float = 0.1

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.measure_steps

    def window_sizes(self) -> list[int]:
        return [len(c) for c in np.array_split(np.arange(self.measure_steps), min(self.windows, self.measure_steps))]


@dataclass
class RunResult:
    status: str  # ok | failed | pruned
    kind: str | None = None  # failures: oom | timeout | hang | error | crash | budget | incomplete
    reason: str | None = None
    step_times: list[float] = field(default_factory=list)  # every step read, warm-up included
    window_rates: list[float] = field(default_factory=list)  # tokens/s/process per measured window
    stats: dict[str, Any] | None = None  # throughput_stats of a complete run
    duration_s: float = 0.0
    returncode: int | None = None
    log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "kind": self.kind, "reason": self.reason, "step_times": self.step_times,
                "window_rates": self.window_rates, "stats": self.stats, "duration_s": self.duration_s,
                "returncode": self.returncode, "log": self.log}


def throughput_stats(step_times: list[float], tokens_per_step: float | None, warmup_steps: int, windows: int,
                     confidence: float = 0.95, step_tokens: list[float] | None = None) -> dict[str, Any]:
    """Tokens/s (per process) of the steps after warm-up: window means with a batch-means CI.

    `tokens_per_step` is the tokens one process handles per optimizer step
    (batch_tokens / world); or `step_tokens` gives each step's own count (per process), and
    a window's throughput is its tokens over its time. Returns dict(mean, lo, hi, stderr,
    n_steps, n_windows, window_rates, step_time_mean, warmup_dropped).
    """
    measured = [float(t) for t in step_times[warmup_steps:]]
    if not measured:
        raise ValueError(f"no steps left after dropping {warmup_steps} warm-up steps")
    if min(measured) <= 0:
        raise ValueError("step times must be > 0")
    if step_tokens is not None:
        toks = np.asarray(step_tokens[warmup_steps:], dtype=float)
        if toks.size != len(measured):
            raise ValueError(f"{toks.size} token counts for {len(measured)} step times")
        parts = np.array_split(np.arange(len(measured)), min(windows, len(measured)))
        times = np.asarray(measured)
        rates = [float(toks[i].sum() / times[i].sum()) for i in parts]
        ci = {**mean_ci(rates, confidence), "n_batches": len(parts), "batch_means": rates}
        ci["n"] = len(measured)
    else:
        ci = batch_means_ci(measured, n_batches=windows, confidence=confidence,
                            transform=lambda t: tokens_per_step / t)
    return {"mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "stderr": ci["stderr"], "n_steps": ci["n"],
            "n_windows": ci["n_batches"], "window_rates": ci["batch_means"],
            "step_time_mean": float(np.mean(measured)), "warmup_dropped": min(warmup_steps, len(step_times))}


def train_command(config_path: str | Path, overrides: list[str], nproc: int = 1,
                  entry: tuple[str, ...] = ("scalelab", "train")) -> list[str]:
    """The command of one trial: plain python for one process, torchrun (as a module) for more.
    `entry`: the module and its arguments (`scalelab train`; the fine-tune job's is
    `scalelab.finetune.throughput`)."""
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        launcher = [sys.executable]
    return launcher + ["-m", *entry, str(config_path), *overrides]


def measurement_overrides(run_dir: str | Path, settings: MeasureSettings, seq_len: int) -> list[str]:
    """Overrides that turn any training config into a short throughput measurement."""
    big = 10**9
    return [f"out_dir={run_dir}", f"train.max_steps={settings.total_steps}", "train.max_tokens=null",
            "train.max_time_s=null", f"train.eval_every={big}", f"train.ckpt_every={big}",
            f"train.eval_tokens={seq_len}", f"train.log_every={settings.total_steps}", "train.keep_best=false",
            "train.resume=false", "train.progress=false", "train.tensorboard=false", "train.wandb=false"]


def kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the trial's process group (torchrun and all its ranks), SIGKILL after grace_s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


_ERROR_LINE = re.compile(r"^error: (.+)$", re.MULTILINE)


def classify_failure(output: str, returncode: int | None) -> tuple[str, str]:
    """(kind, one-line reason) from a failed trial's output."""
    text = output or ""
    errors = _ERROR_LINE.findall(text)
    oom = re.search(r"[^\n]*(out of memory|OutOfMemoryError)[^\n]*", text, re.IGNORECASE)
    if oom:
        msg = errors[-1] if errors and "out of memory" in errors[-1].lower() else oom.group(0).strip()
        return "oom", f"out of memory: {msg[:300]}"
    if errors:
        return "error", errors[-1].strip()[:400]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    exc = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)]
    last = exc[-1] if exc else (lines[-1] if lines else "no output")
    if returncode is not None and returncode < 0:
        return "crash", f"killed by signal {-returncode}: {last[:300]}"
    return "crash", f"exit code {returncode}: {last[:300]}"


class _Tail:
    """Read whole new lines of a growing file."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = 0
        self.buf = ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "r") as f:
                f.seek(self.pos)
                chunk = f.read()
                self.pos = f.tell()
        except FileNotFoundError:
            return []
        self.buf += chunk
        *complete, self.buf = self.buf.split("\n")
        return [ln for ln in complete if ln.strip()]


def run_measurement(cmd: list[str], run_dir: str | Path, tokens_per_step: float | None, settings: MeasureSettings,
                    env: dict[str, str] | None = None, on_window: Callable[[int, float], bool] | None = None,
                    timeout_s: float | None = None, log_path: str | Path | None = None,
                    cwd: str | Path | None = None) -> RunResult:
    """Run `cmd` (a training command writing run_dir/metrics.jsonl) and measure it.

    `tokens_per_step` None: each record's `step_tokens / world` (the fine-tune job).
    `on_window(index, tokens_per_s)` is called when each measured window completes; when
    it returns True the run is stopped and reported as pruned. `timeout_s` (default
    settings.timeout_s) bounds the whole run; the process group is killed on expiry.
    """
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh trial; the trainer refuses a dir holding a checkpoint
    run_dir.mkdir(parents=True)
    log_path = Path(log_path) if log_path else run_dir / "trial.log"
    limit = settings.timeout_s if timeout_s is None else min(timeout_s, settings.timeout_s)
    full_env = dict(os.environ)
    full_env.update({"PYTHONUNBUFFERED": "1", "SCALELAB_NO_PROGRESS": "1"})
    full_env.update(env or {})
    sizes = settings.window_sizes()
    bounds = np.cumsum(sizes).tolist()  # measured-step counts at which each window closes
    times: dict[int, float] = {}
    tokens: dict[int, float] = {}  # per process, when the records carry step_tokens
    tail = _Tail(run_dir / "metrics.jsonl")
    t0 = time.monotonic()
    last_new = None
    status, kind, reason = "ok", None, None
    reported = 0
    window_rates: list[float] = []
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        if env:
            log.write("env: " + " ".join(f"{k}={v}" for k, v in env.items()) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                start_new_session=True)
        try:
            while True:
                rc = proc.poll()
                for line in tail.lines():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if rec.get("kind") == "train" and "step_time" in rec:
                        times[int(rec["step"])] = float(rec["step_time"])
                        if "step_tokens" in rec:
                            tokens[int(rec["step"])] = float(rec["step_tokens"]) / max(1, int(rec.get("world", 1)))
                        last_new = time.monotonic()
                ordered = [times[s] for s in sorted(times)]
                measured = ordered[settings.warmup_steps:]
                while reported < len(bounds) and len(measured) >= bounds[reported]:
                    lo = bounds[reported - 1] if reported else 0
                    w = measured[lo:bounds[reported]]
                    if tokens_per_step is None:
                        steps = sorted(times)[settings.warmup_steps:][lo:bounds[reported]]
                        rate = sum(tokens.get(s, 0.0) for s in steps) / float(np.sum(w))
                    else:
                        rate = tokens_per_step / float(np.mean(w))
                    window_rates.append(rate)
                    reported += 1
                    if on_window is not None and reported < len(bounds) and on_window(reported - 1, rate):
                        status, kind, reason = "pruned", "pruned", (
                            f"pruned after window {reported} of {len(bounds)} ({rate:,.0f} tokens/s)")
                        break
                if status == "pruned" or len(measured) >= settings.measure_steps:
                    break
                if rc is not None:
                    break
                now = time.monotonic()
                if now - t0 > limit:
                    status, kind = "failed", "timeout"
                    reason = (f"timeout: no result within {limit:.0f} s ({len(times)} of "
                              f"{settings.total_steps} steps done); process group killed")
                    break
                if (settings.stall_timeout_s and last_new is not None
                        and now - last_new > settings.stall_timeout_s):
                    status, kind = "failed", "hang"
                    reason = (f"hang: no new step for {settings.stall_timeout_s:.0f} s after step "
                              f"{max(times)}; process group killed")
                    break
                time.sleep(settings.poll_s)
        finally:
            kill_group(proc)
    rc = proc.returncode
    duration = time.monotonic() - t0
    ordered = [times[s] for s in sorted(times)]
    result = RunResult(status=status, kind=kind, reason=reason, step_times=ordered, window_rates=window_rates,
                       duration_s=duration, returncode=rc, log=str(log_path))
    if status == "ok":
        if len(ordered) - settings.warmup_steps >= settings.measure_steps:
            per_step = None if tokens_per_step is not None else [tokens.get(s, 0.0) for s in sorted(times)]
            result.stats = throughput_stats(ordered, tokens_per_step, settings.warmup_steps,
                                            min(settings.windows, settings.measure_steps), step_tokens=per_step)
            result.window_rates = result.stats["window_rates"]
        else:
            output = Path(log_path).read_text(errors="replace")
            if rc == 0:
                result.status, result.kind = "failed", "incomplete"
                result.reason = (f"the run ended after {len(ordered)} steps, fewer than the "
                                 f"{settings.total_steps} needed")
            else:
                result.status = "failed"
                result.kind, result.reason = classify_failure(output, rc)
    ckpt = run_dir / "checkpoints"
    if ckpt.exists():
        shutil.rmtree(ckpt, ignore_errors=True)
    return result
