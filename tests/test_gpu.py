"""GPU code paths on a tiny model: bf16 autocast, torch.compile, fused AdamW, bf16 Muon,
activation checkpointing, NCCL DDP/FSDP2, evaluation on CUDA.

Skipped on machines without CUDA (CI has none); they run on a GPU machine with
`python -m pytest tests/test_gpu.py` (bench/device_check.sh runs them; results in
docs/bench-gpu.md).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalelab.eval.lm import evaluate_lm
from scalelab.eval.gpt_backend import load_gpt
from scalelab.train import fp8
from scalelab.train.trainer import train
from test_schedule_optim import muon_and_torch_muon_after
from test_train import data_dir, losses, run_cli, cli_args, tiny_cfg  # noqa: F401 (data_dir is a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = ("train.deterministic=false",)  # deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG; not needed here


def test_bf16_compile_muon_checkpointing_trains_and_evaluates_like_cpu(data_dir, tmp_path):
    out = tmp_path / "run"
    s = train(tiny_cfg(data_dir, out, *GPU, "train.max_steps=24", "train.dtype=bf16", "train.compile=true",
                       "train.optimizer=muon", "train.activation_checkpointing=true"))
    ls = losses(out)
    assert s["compile_time_s"] > 0 and len(ls) == 24
    assert sum(ls[-4:]) / 4 < sum(ls[:4]) / 4 - 0.3  # it learns
    # The same checkpoint scored on CUDA (bf16) and on CPU (fp32): bf16 rounding only.
    gpu = evaluate_lm(load_gpt(out, device="cuda"), data_dir, max_tokens=4096, n_boot=10, progress=False)
    cpu = evaluate_lm(load_gpt(out, device="cpu", dtype="fp32"), data_dir, max_tokens=4096, n_boot=10, progress=False)
    assert gpu["tokens"] == cpu["tokens"]
    assert abs(gpu["loss"] - cpu["loss"]) < 0.02 and abs(gpu["bpb"] - cpu["bpb"]) < 0.03


def test_muon_bf16_on_cuda_matches_torch_muon():
    ours, ref = muon_and_torch_muon_after([(256, 64), (64, 192)], device="cuda")
    for p, q in zip(ours, ref):
        assert torch.allclose(p, q, atol=1e-5)


def test_nccl_ddp_and_fsdp_agree_under_torchrun(data_dir, tmp_path):
    """One process over NCCL: DDP and FSDP2 give the same fp32 losses step by step."""
    per_mode = {}
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        proc = run_cli(cli_args(data_dir, out, *GPU, "train.max_steps=6", "train.dtype=fp32",
                                f"train.parallel={mode}"), torchrun=1)
        assert proc.returncode == 0, proc.stderr[-2000:]
        per_mode[mode] = losses(out)
    assert len(per_mode["ddp"]) == 6
    assert per_mode["ddp"] == pytest.approx(per_mode["fsdp"], rel=1e-4)


def test_fp8_linear_is_close_to_bf16_and_trains():
    if not fp8.fp8_supported(torch.device("cuda")):
        pytest.skip("this GPU has no FP8 tensor cores (compute capability < 8.9)")
    torch.manual_seed(0)
    lin = nn.Linear(256, 512, bias=False, device="cuda")
    x = torch.randn(4, 32, 256, device="cuda", requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = lin.weight.detach().clone().requires_grad_(True)
    ref = F.linear(x_ref.bfloat16(), w_ref.bfloat16())
    lin.__class__ = fp8.FP8Linear
    y = lin(x)
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert ((y.float() - ref.float()).norm() / ref.float().norm()) < 0.05  # e4m3 rounding, not garbage
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    for ours, theirs in ((x.grad, x_ref.grad), (lin.weight.grad, w_ref.grad)):
        assert ours.dtype == torch.float32
        assert ((ours - theirs.float()).norm() / theirs.float().norm()) < 0.01  # bf16 backward


def test_trainer_with_fp8_learns(data_dir, tmp_path):
    if not fp8.fp8_supported(torch.device("cuda")):
        pytest.skip("this GPU has no FP8 tensor cores (compute capability < 8.9)")
    out = tmp_path / "run"
    train(tiny_cfg(data_dir, out, *GPU, "train.max_steps=24", "train.dtype=bf16", "train.fp8=true"))
    ls = losses(out)
    assert sum(ls[-4:]) / 4 < sum(ls[:4]) / 4 - 0.3
