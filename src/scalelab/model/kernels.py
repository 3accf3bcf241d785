"""Hand-written autograd kernels for model/gpt.py: the same math as its plain torch ops,
in fewer passes over memory (on CPU, elementwise ops are memory-bound; docs/bench-train.md).

gpt.py uses them whenever this module imports, and its plain ops otherwise: a golf
artifact ships only the code that runs the model (golf/artifact.py), and this file is
training speed, not model. tests/test_model_kernels.py checks both paths agree.

- RopeFn: rotate-half RoPE writing both halves into one buffer; its gradient is the
  inverse rotation, so nothing of x is saved.
- rotate_pairs / pair_rows: on CPU in fp32, Attention reads wqkv's q and k rows in
  pair order (rotate-half pair i = dims (i, i + D/2) becomes dims (2i, 2i + 1)), where RoPE
  is one complex multiply: one pass over x instead of six over strided halves. q.k is
  unchanged by a common reordering of head dims, so the stored weights, checkpoints and
  the HF export keep the rotate-half layout.
- RMSNormFn: the closed-form RMSNorm backward (autograd of the composite CPU op takes
  twice as long).
- SwiGLUFn: silu(gate) * up from the fused [gate; up] projection; its backward writes
  both halves' gradients into one buffer instead of concatenating them.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# RoPE


def rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """out = x rotated by (cos, sin) on its first 2 * d dims (rotate-half), the rest copied."""
    d = cos.shape[-1]
    x1, x2, o1, o2 = x[..., :d], x[..., d:2 * d], out[..., :d], out[..., d:2 * d]
    torch.mul(x1, cos, out=o1).sub_(x2 * sin)
    torch.mul(x2, cos, out=o2).add_(x1 * sin)
    if 2 * d < x.shape[-1]:  # partial RoPE: the unrotated dims pass through
        out[..., 2 * d:] = x[..., 2 * d:]


class RopeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        rotate_into(out, x, cos, sin)
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        grad_x = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)
        rotate_into(grad_x, grad, cos, -sin)
        return grad_x, None, None


def pair_order(head_dim: int) -> list[int]:
    """Head dims in pair order: 0, D/2, 1, D/2 + 1, ..."""
    return [(p % 2) * (head_dim // 2) + p // 2 for p in range(head_dim)]


@lru_cache(maxsize=64)
def _pair_row_index(n_head: int, kv_heads: int, head_dim: int, rows: int, device: torch.device) -> torch.Tensor:
    """Built once per shape and device: pair_rows runs in every layer's forward."""
    qk = (n_head + kv_heads) * head_dim
    order = pair_order(head_dim)
    index = [h + j for h in range(0, qk, head_dim) for j in order] + list(range(qk, rows))
    return torch.tensor(index, device=device)


def pair_rows(attn, x: torch.Tensor) -> torch.Tensor | None:
    """wqkv row indices with q and k head dims in pair order, or None where the plain path
    applies: off CPU, outside fp32, partial RoPE, inputs no larger than the weight copy
    (one-token decoding), and -- like torch's MHA fast path -- a wqkv with hooks or a
    patched forward (GPTQ's calibration, QAT), since this path reads its weight directly."""
    m = attn.wqkv
    if not (attn.full_rope and x.device.type == "cpu" and x.dtype == torch.float32
            and x.numel() > m.weight.numel() and not torch.is_autocast_enabled("cpu")):
        return None
    if m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m):
        return None
    return _pair_row_index(attn.n_head, attn.kv_heads, attn.head_dim, m.weight.shape[0], x.device)


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of x [B, T, H, D] whose head dims are in pair order: one complex multiply."""
    f = torch.complex(cos, sin).unsqueeze(-2)  # [(B,) T, 1, D/2]
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * f).flatten(-2)


# ---------------------------------------------------------------------------
# RMSNorm


class RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = _upcast(x)  # statistics in fp32 for half-precision inputs
        r = torch.rsqrt(xf.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, r)
        return (xf * r).mul_(weight).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, r = ctx.saved_tensors
        D = x.shape[-1]
        xf, g = _upcast(x).reshape(-1, D), _upcast(grad).reshape(-1, D)
        r = r.reshape(-1)
        gx = g * xf
        with torch.autocast(x.device.type, enabled=False):  # the two mat-vecs stay in fp32
            grad_w = torch.mv(gx.t(), r).to(weight.dtype)  # sum over rows of g * x * r
            # d/dx of w * x * r(x), r = mean(x^2)^-1/2: r g w - x r^3 mean(g w x)
            coef = torch.mv(gx, weight.to(gx.dtype)).mul_(r.pow(3)).div_(D)
        grad_x = (g * weight).mul_(r[:, None]).addcmul_(xf, coef[:, None], value=-1)
        return grad_x.view(x.shape).to(x.dtype), grad_w, None


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ---------------------------------------------------------------------------
# SwiGLU


class SwiGLUFn(torch.autograd.Function):
    """silu(gate) * up from the fused [gate; up] projection [..., 2F] -> [..., F]."""

    @staticmethod
    def forward(ctx, gu):
        gate, up = gu.chunk(2, dim=-1)
        s = F.silu(gate)
        ctx.save_for_backward(gu, s)
        return s * up

    @staticmethod
    def backward(ctx, grad):
        gu, s = ctx.saved_tensors
        gate, up = gu.chunk(2, dim=-1)
        grad_gu = torch.empty(gu.shape, dtype=grad.dtype, device=grad.device)
        n = s.shape[-1]
        torch.mul(grad, s, out=grad_gu[..., n:])
        torch.ops.aten.silu_backward(grad * up, gate, grad_input=grad_gu[..., :n])
        return grad_gu
