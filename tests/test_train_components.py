"""The trainer's components on their own: the throughput meter, and the RNG / OOM helpers."""
from __future__ import annotations

import random
import time

import torch

from scalelab.train.oom import OOM_HINT, is_oom
from scalelab.train.rng import rng_state, set_rng_state
from scalelab.train.throughput import ThroughputMeter


def test_meter_bills_neither_the_compile_step_nor_checkpoint_time():
    m = ThroughputMeter(flops_per_token=10.0, world_size=1, compiled=True)
    m.peak_flops = 1e3
    m.step_done(100, 5.0)  # the compiling step
    assert m.compile_time == 5.0 and m.train_time == 0.0
    assert m.report() == {}  # a window with only the compile step has no rate
    m.step_done(100, 0.5)
    m.step_done(100, 0.5)
    assert m.train_time == 1.0
    time.sleep(0.05)  # a "checkpoint write"
    m.pause()
    out = m.report()
    assert out["tok_s"] > 200 / 0.05  # the 50 ms before pause() are not in the window
    assert out["mfu"] == out["tok_s"] * 10.0 / 1e3
    assert m.report() == {}  # each report starts a new window


def test_meter_without_compile_counts_the_first_step():
    m = ThroughputMeter(flops_per_token=1.0, world_size=2, compiled=False, train_time=3.0)
    m.step_done(64, 0.25)
    assert m.train_time == 3.25 and m.compile_time == 0.0
    out = m.report()
    assert out["tok_s"] > 0 and "mfu" not in out  # no peak known: no MFU


def test_rng_state_round_trip():
    state = rng_state()
    a = (torch.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_oom_recognised():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert "train.micro_batch" in OOM_HINT
