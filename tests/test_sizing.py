"""model/sizing.py: parameter counts, FLOPs, shapes for a budget, named sizes."""
from __future__ import annotations

import math

import pytest
import torch

from scalelab.model.gpt import GPT, GPTConfig
from scalelab.model.sizing import (NAMED_SIZES, NAMED_TARGETS, chinchilla_tokens, count_params, flops_per_token,
                                   forward_flops_per_token, named_config, shape_for_params, training_flops)

CONFIGS = [
    dict(),
    dict(tie_embeddings=False),
    dict(n_kv_head=2),
    dict(n_kv_head=1, mlp="relu2"),
    dict(qk_norm=True, tie_embeddings=False),
    dict(ffn_hidden=100, vocab_size=1000, pad_vocab_to=128),
    dict(n_layer=3, d_model=48, n_head=6, n_kv_head=3, vocab_size=65, pad_vocab_to=1),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_count_params_matches_numel(kw):
    base = dict(vocab_size=97, pad_vocab_to=64, seq_len=16, n_layer=2, n_head=4, d_model=32)
    cfg = GPTConfig(**{**base, **kw})
    with torch.device("meta"):
        model = GPT(cfg)
    counts = count_params(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # shared tensors counted once
    emb = model.tok_emb.weight.numel() + (0 if cfg.tie_embeddings else model.lm_head.weight.numel())
    assert counts["embedding"] == emb
    assert counts["non_embedding"] == counts["total"] - emb


def test_flops_spot_value():
    # 10m shape: 6 x 384, swiglu ffn 1024, vocab 1024, seq 256.
    cfg = GPTConfig(vocab_size=1024, seq_len=256, n_layer=6, d_model=384, n_head=6)
    n = count_params(cfg)["non_embedding"]
    assert n == 6 * (4 * 384 * 384 + 3 * 384 * 1024 + 2 * 384) + 384 == 10_621_824
    expected = 6 * (n + 384 * 1024) + 12 * 6 * 6 * 64 * 256
    assert flops_per_token(cfg) == expected == 73_168_128
    assert forward_flops_per_token(cfg) == pytest.approx(expected / 3)
    assert flops_per_token(cfg, seq_len=512) - flops_per_token(cfg) == 12 * 6 * 6 * 64 * 256


def test_gpt2_small_counts():
    cfg = GPTConfig(vocab_size=50257, pad_vocab_to=64, n_layer=12, d_model=768, n_head=12, seq_len=1024)
    c = count_params(cfg)
    assert cfg.padded_vocab == 50304
    assert 123e6 < c["total"] < 125e6
    assert c["non_embedding"] == pytest.approx(85e6, rel=0.01)


def test_compute_helpers():
    assert chinchilla_tokens(1e9) == 2e10
    assert chinchilla_tokens(1e9, ratio=10) == 1e10
    assert training_flops(1e9, 2e10) == 1.2e20


@pytest.mark.parametrize("target", [1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9, 3e9, 1e10])
def test_shape_for_params_hits_target(target):
    shape = shape_for_params(target)
    cfg = GPTConfig(vocab_size=256, **shape)
    cfg.validate()
    n = count_params(cfg)["non_embedding"]
    assert abs(n / target - 1) <= 0.10, (shape, n)
    if target >= 3e6:  # big enough for the aspect rule to bind
        assert 40 <= shape["d_model"] / shape["n_layer"] <= 100, shape
        assert shape["d_model"] // shape["n_head"] == 64


@pytest.mark.parametrize("kw", [dict(mlp="relu2"), dict(n_kv_head=2), dict(head_dim=128), dict(aspect_ratio=128)])
def test_shape_for_params_options(kw):
    shape = shape_for_params(5e7, **kw)
    n_kv = kw.get("n_kv_head")
    cfg = GPTConfig(vocab_size=256, mlp=kw.get("mlp", "swiglu"), n_kv_head=n_kv, **shape)
    cfg.validate()
    assert abs(count_params(cfg)["non_embedding"] / 5e7 - 1) <= 0.10


def test_named_sizes():
    c = named_config("124m", vocab_size=50257)
    assert (c.n_layer, c.d_model, c.n_head) == (12, 768, 12)
    for name, target in NAMED_TARGETS.items():
        assert NAMED_SIZES[name] == shape_for_params(target), name
        n = count_params(named_config(name, vocab_size=1024))["non_embedding"]
        assert abs(math.log(n / target)) < math.log(1.1), name
    with pytest.raises(Exception, match="known sizes"):
        named_config("7b")


# ---------------------------------------------------------------------------
# train/hardware.py: the peak side of MFU


def test_gpu_peak_table():
    from scalelab.train.hardware import peak_for_name

    assert peak_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_for_name("NVIDIA H100 PCIe") == 756e12
    assert peak_for_name("NVIDIA H200") == 989e12
    assert peak_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_for_name("NVIDIA L40S") == 362e12 and peak_for_name("NVIDIA L4") == 121e12
    assert peak_for_name("Some Unknown Accelerator") is None


def test_cpu_measurements_are_quick_and_sane():
    import time

    from scalelab.train.hardware import machine_load, measure_matmul_peak, pick_cpu_dtype

    t0 = time.perf_counter()
    peak = measure_matmul_peak(torch.float32, n=256, seconds=0.1, threads=1)
    cpu_peak = measure_matmul_peak(torch.float32, n=256, seconds=0.1, threads=1, clock="cpu")
    assert 1e8 < peak < 1e13 and 1e8 < cpu_peak < 1e13
    assert pick_cpu_dtype(threads=1, seconds=0.05) in (torch.float32, torch.bfloat16)
    assert time.perf_counter() - t0 < 10
    load = machine_load()
    assert len(load) == 3
