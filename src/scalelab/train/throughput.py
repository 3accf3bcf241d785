"""The throughput meter: tokens/s and MFU over the steps since the last report.

It also keeps the run's training time. Two things are not billed to either: the first step
of a compiled run (compilation; like the parameter-golf rules, it does not count against
the wall-clock cap) and the time spent writing checkpoints.
"""
from __future__ import annotations

import time


class ThroughputMeter:
    def __init__(self, flops_per_token: float, world_size: int, compiled: bool, train_time: float = 0.0):
        self.flops_per_token = flops_per_token
        self.world_size = world_size
        self.peak_flops: float | None = None  # set once measured (CPU) or looked up (GPU)
        self.train_time = train_time  # seconds of training, across resumes
        self.compile_time = 0.0  # seconds of the first (compiling) step of this process
        self._compiling = compiled
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    def step_done(self, tokens: int, seconds: float) -> None:
        """One optimizer step of `tokens` tokens took `seconds`."""
        if self._compiling:
            self._compiling, self.compile_time = False, seconds
            self._window_start, self._window_tokens = time.perf_counter(), 0
        else:
            self.train_time += seconds
            self._window_tokens += tokens

    def pause(self) -> None:
        """Time since the last step (a checkpoint write) stays out of the current window."""
        self._window_start = time.perf_counter()

    def report(self) -> dict[str, float]:
        """tok_s (and mfu, when the peak is known) of the window since the last report, which
        starts a new window; empty when the window holds only the compile step."""
        dt = time.perf_counter() - self._window_start
        tokens = self._window_tokens
        self._window_start, self._window_tokens = time.perf_counter(), 0
        if not tokens:
            return {}
        out = {"tok_s": tokens / max(dt, 1e-9)}
        if self.peak_flops:
            out["mfu"] = self.flops_per_token * out["tok_s"] / self.world_size / self.peak_flops
        return out
