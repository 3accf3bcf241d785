"""train.fp8: FP8 linears in the blocks. The GPU matmul itself is checked in tests/test_gpu.py;
here: the e4m3 scaling, which layers switch, the CPU fallback, and the error off-GPU."""
import pytest
import torch
from torch import nn

from scalelab.errors import ConfigError
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.train import fp8


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, seq_len=16))


def test_e4m3_scaling_keeps_values_within_its_precision():
    t = torch.randn(64, 48) * 3.0
    q, scale = fp8._to_e4m3(t)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    back = q.float() * scale
    assert back.abs().max() <= t.abs().max() * (1 + 1e-6)  # the largest value maps to 448, no overflow
    big = t.abs() > 0.1 * t.abs().max()
    rel = ((back - t).abs() / t.abs())[big]
    assert rel.max() < 0.0625 + 1e-6  # 3 mantissa bits: half an ulp is 1/16


def test_enable_fp8_switches_block_linears_only(monkeypatch):
    m = tiny_gpt()
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: True)
    n = fp8.enable_fp8(m, torch.device("cuda"))
    per_block = sum(1 for mod in m.blocks[0].modules() if isinstance(mod, nn.Linear))
    assert n == 2 * per_block > 0
    assert all(type(mod) is fp8.FP8Linear for b in m.blocks for mod in b.modules() if isinstance(mod, nn.Linear))
    head = getattr(m, "lm_head", None)
    assert head is None or type(head) is not fp8.FP8Linear
    # Off the GPU an FP8Linear computes exactly what nn.Linear does, and the state dict is unchanged.
    ref = tiny_gpt()
    x = torch.randint(0, 64, (2, 16))
    assert torch.equal(m(x, x), ref(x, x))
    assert m.state_dict().keys() == ref.state_dict().keys()


def test_fp8_off_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.fp8=true needs .*Set train.fp8=false"):
        fp8.enable_fp8(tiny_gpt(), torch.device("cpu"))
