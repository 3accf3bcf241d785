"""model/kernels.py (hand-written autograd kernels) against autograd and gpt.py's plain ops."""
import pytest
import torch
import torch.nn.functional as F

from scalelab.model import gpt, kernels
from scalelab.model.gpt import apply_rope, rope_tables
from scalelab.model.kernels import SwiGLUFn as _SwiGLUFn


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


def _both_rope_paths(cfg, run, batch_tokens: int):
    """run(model) under the CPU fp32 pair-order RoPE and under the rotate-half path."""
    from scalelab.model.gpt import GPT
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.zeros(1, batch_tokens, cfg.d_model)
    assert kernels.pair_rows(model.blocks[0].attn, x) is not None  # the fast path is really taken
    for block in model.blocks:  # non-trivial QK-norm weights, so their reordering matters
        for norm in (block.attn.q_norm, block.attn.k_norm):
            if norm is not None:
                torch.nn.init.normal_(norm.weight, 1.0, 0.5)
    fast = run(model)
    for block in model.blocks:
        block.attn.full_rope = False  # the rotate-half path every other device and dtype uses
    return fast, run(model)


def test_pair_order_rope_equals_rotate_half_in_outputs_and_gradients():
    from scalelab.model.gpt import GPTConfig
    from scalelab.model.kernels import pair_order, rotate_pairs
    assert pair_order(8) == [0, 4, 1, 5, 2, 6, 3, 7]
    cos, sin = rope_tables(16, 8, 10000.0)
    x = torch.randn(2, 16, 3, 8)
    torch.testing.assert_close(rotate_pairs(x[..., pair_order(8)], cos, sin),
                               apply_rope(x, cos, sin)[..., pair_order(8)])
    cfg = GPTConfig(vocab_size=97, seq_len=16, n_layer=2, n_head=4, n_kv_head=2, d_model=64, qk_norm=True)
    idx = torch.randint(0, 97, (12, 16))  # more input than wqkv's weight: the fast path's condition

    def loss_and_grads(model):
        model.zero_grad()
        loss = model(idx, idx)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    (fast_loss, fast_g), (ref_loss, ref_g) = _both_rope_paths(cfg, loss_and_grads, idx.numel())
    torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-6, atol=1e-6)
    for name in ref_g:
        torch.testing.assert_close(fast_g[name], ref_g[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pair_order_rope_in_packed_rows_and_cached_decoding():
    from scalelab.model.gpt import GPTConfig
    cfg = GPTConfig(vocab_size=97, seq_len=16, n_layer=2, n_head=4, d_model=32)
    idx = torch.randint(0, 97, (12, 10))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]] * 12)
    mask = (pos[:, :, None] >= pos[:, None, :]) & torch.ones(10, 10, dtype=torch.bool).tril()

    def run(model):
        with torch.no_grad():
            packed = model.logits(model.hidden(idx, pos=pos, mask=mask))
            torch.manual_seed(1)  # with a cache: the rotate-half path throughout (one key layout)
            sampled = model.generate(idx[:, :9], 6, temperature=1.0, use_cache=True)
        return packed, sampled

    (fast_packed, fast_sampled), (ref_packed, ref_sampled) = _both_rope_paths(cfg, run, 12 * 10)
    torch.testing.assert_close(fast_packed, ref_packed, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast_sampled, ref_sampled)


@pytest.mark.parametrize("kw", [dict(qk_norm=True, n_kv_head=2), dict(rope_frac=0.5, mlp="swiglu")])
def test_the_plain_ops_equal_the_kernels(monkeypatch, kw):
    """A golf artifact runs gpt.py without kernels.py: same losses and gradients."""
    from scalelab.model.gpt import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=97, seq_len=16, n_layer=2, n_head=4, d_model=64, **kw)
    idx = torch.randint(0, 97, (12, 16))
    torch.manual_seed(0)
    model = GPT(cfg)

    def loss_and_grads():
        model.zero_grad()
        loss = model(idx, idx)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_loss, fast_g = loss_and_grads()
    monkeypatch.setattr(gpt, "kernels", None)
    plain_loss, plain_g = loss_and_grads()
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-6, atol=1e-6)
    for name in plain_g:
        torch.testing.assert_close(fast_g[name], plain_g[name], rtol=1e-4, atol=1e-6, msg=name)
