"""The model's hand-written autograd Functions (SwiGLU, partial RoPE) against autograd."""
import torch
import torch.nn.functional as F

from scalelab.model.gpt import _SwiGLUFn, apply_rope, rope_tables


def test_swiglu_function_matches_autograd():
    gu = torch.randn(3, 5, 2 * 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLUFn.apply, (gu,))
    g = torch.randn(3, 5, 6, dtype=torch.float64)
    gate, up = gu.chunk(2, dim=-1)
    (ref,) = torch.autograd.grad(F.silu(gate) * up, gu, g)
    (ours,) = torch.autograd.grad(_SwiGLUFn.apply(gu), gu, g)
    torch.testing.assert_close(ours, ref)


def test_partial_rope_and_per_token_positions_gradients():
    cos, sin = rope_tables(16, 4, 10000.0)  # rotates 4 of 8 dims
    x = torch.randn(2, 16, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos.double(), sin.double()), (x,))
    out = apply_rope(x, cos.double(), sin.double())
    torch.testing.assert_close(out[..., 4:], x[..., 4:])  # the unrotated dims pass through
    pos = torch.randint(0, 16, (2, 16))
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos.double()[pos], sin.double()[pos]), (x,))
