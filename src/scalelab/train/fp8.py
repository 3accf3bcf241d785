"""FP8 matmuls for the transformer blocks' linear layers (train.fp8=true; Hopper/Ada GPUs).

Forward: activations and weights are scaled per tensor into float8_e4m3fn (largest finite
value 448) and multiplied by `torch._scaled_mm` with bf16 output -- the FP8 tensor-core
path that doubles H100 matmul throughput over bf16. Backward stays in bf16 (gradients
need e5m2's range and per-tensor scaling of them is where FP8 training goes wrong), so
this is the conservative half of FP8 training, as the parameter-golf / modded-nanogpt
records use it. Master weights stay fp32 and the state dict is unchanged: checkpoints,
EMA, export and golf quantization do not know FP8 was used.

`enable_fp8(model)` swaps the class of every nn.Linear inside `model.blocks` to
`FP8Linear` (embeddings and the output head keep full precision). Shapes that
`_scaled_mm` cannot take (a dimension not a multiple of 16) fall back to bf16 per call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scalelab.errors import ConfigError

E4M3_MAX = 448.0


def fp8_supported(device: torch.device) -> bool:
    """FP8 tensor cores: CUDA compute capability >= 8.9 (Ada, Hopper) and a torch with _scaled_mm."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if not (hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _to_e4m3(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~= q * scale with q in float8_e4m3fn; scale is a float32 scalar tensor."""
    scale = (t.detach().abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
    q = (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


class _FP8Matmul(torch.autograd.Function):
    """y = x @ w.T with an FP8 forward and a bf16 backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        x2 = x.reshape(-1, x.shape[-1])
        xq, xs = _to_e4m3(x2.contiguous())
        wq, ws = _to_e4m3(w)
        # _scaled_mm wants a row-major left and a column-major right operand: w.T of a
        # contiguous [out, in] weight is exactly that.
        y = torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)
        return y.reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).to(torch.bfloat16)
        grad_x = (g @ w.to(torch.bfloat16)).reshape(x.shape).to(x.dtype)
        grad_w = (g.t() @ x.reshape(-1, x.shape[-1]).to(torch.bfloat16)).to(w.dtype)
        return grad_x, grad_w


class FP8Linear(nn.Linear):
    """nn.Linear whose training-time matmul runs in FP8 on the GPU (bias-free layers only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        usable = (self.training and self.bias is None and x.is_cuda and x.shape[-1] % 16 == 0
                  and self.out_features % 16 == 0 and x.numel() // x.shape[-1] % 16 == 0)
        if not usable:
            return F.linear(x, self.weight, self.bias)
        return _FP8Matmul.apply(x, self.weight)


def enable_fp8(model: nn.Module, device: torch.device) -> int:
    """Switch the blocks' linear layers to FP8Linear; returns how many were switched."""
    if not fp8_supported(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else device.type
        raise ConfigError(f"train.fp8=true needs an NVIDIA GPU with FP8 tensor cores (compute capability >= 8.9: "
                          f"H100, H200, L4, RTX 40xx) and torch with float8 support; this run is on {name}. "
                          "Set train.fp8=false")
    switched = 0
    for block in getattr(model, "blocks", []):
        for module in block.modules():
            if type(module) is nn.Linear and module.bias is None:
                module.__class__ = FP8Linear
                switched += 1
    return switched
