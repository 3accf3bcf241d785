"""The GPT model: shapes, causality, loss, variants, generation, init, HF Llama export."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scalelab.errors import ConfigError
from scalelab.model.gpt import GPT, GPTConfig, apply_rope, rope_tables


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=97, pad_vocab_to=64, seq_len=32, n_layer=2, n_head=4, d_model=32)
    base.update(kw)
    return GPTConfig(**base)


VARIANTS = {
    "base": {},
    "untied": {"tie_embeddings": False},
    "gqa": {"n_kv_head": 2},
    "mqa": {"n_kv_head": 1},
    "relu2": {"mlp": "relu2"},
    "qk_norm": {"qk_norm": True},
    "softcap": {"logit_softcap": 5.0},
    "all": {"n_kv_head": 2, "mlp": "relu2", "qk_norm": True, "logit_softcap": 10.0, "tie_embeddings": False},
}


def build(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny(**kw))


def tokens(B=2, T=16, V=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_shapes_loss_and_causality(name):
    model = build(**VARIANTS[name])
    x = tokens()
    logits = model(x)
    assert logits.shape == (2, 16, 97)  # real vocab only, padding sliced off
    assert logits.dtype == torch.float32

    # Loss equals F.cross_entropy on the returned logits; per-token form has shape [B, T].
    y = tokens(seed=2)
    loss = model(x, y)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 97), y.reshape(-1)))
    per_tok = model(x, y, reduction="none")
    assert per_tok.shape == (2, 16)
    torch.testing.assert_close(per_tok.mean(), loss)

    # Causality: changing token t never changes logits before t.
    x2 = x.clone()
    x2[:, 10] = (x2[:, 10] + 1) % 97
    logits2 = model(x2)
    torch.testing.assert_close(logits2[:, :10], logits[:, :10])
    assert not torch.allclose(logits2[:, 10:], logits[:, 10:])

    # Backward reaches every parameter.
    loss.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n


def test_ignore_index():
    model = build()
    x, y = tokens(), tokens(seed=2)
    y_ign = y.clone()
    y_ign[:, :8] = -100
    per_tok = model(x, y, reduction="none")
    torch.testing.assert_close(model(x, y_ign), per_tok[:, 8:].mean())
    assert (model(x, y_ign, reduction="none")[:, :8] == 0).all()


def test_param_tying_and_names():
    tied, untied = build(), build(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == 128 * 32  # one more padded_vocab x d_model table
    names = set(dict(untied.named_parameters()))
    for want in ("tok_emb.weight", "blocks.0.attn_norm.weight", "blocks.0.attn.wqkv.weight",
                 "blocks.0.attn.wo.weight", "blocks.0.mlp_norm.weight",
                 "blocks.0.mlp.w13.weight", "blocks.0.mlp.w2.weight",
                 "norm.weight", "lm_head.weight"):
        assert want in names, want
    assert not any("rope" in k for k in untied.state_dict())  # RoPE tables are not saved
    relu = build(mlp="relu2")
    assert not hasattr(relu.blocks[0].mlp, "w13") and relu.blocks[0].mlp.w1.weight.shape == (128, 32)


def test_gqa_shapes():
    model = build(n_kv_head=2)
    attn = model.blocks[0].attn
    assert attn.wqkv.weight.shape == (32 + 16 + 16, 32)  # rows [q; k; v]


def test_gqa_equals_repeated_kv_heads():
    """A GQA model equals a full-head model whose k/v heads are repeated (HF repeat_kv order)."""
    gqa = build(n_kv_head=2)
    full = build(seed=5)
    sd = gqa.state_dict()
    hd = 8
    for i in range(2):
        q, k, v = sd.pop(f"blocks.{i}.attn.wqkv.weight").split((32, 16, 16))
        k, v = (t.view(2, hd, 32).repeat_interleave(2, dim=0).reshape(32, 32) for t in (k, v))
        sd[f"blocks.{i}.attn.wqkv.weight"] = torch.cat([q, k, v])
    full.load_state_dict(sd)
    x = tokens()
    torch.testing.assert_close(full(x), gqa(x))


def test_prefusion_state_dict_loads():
    """A state dict from before the fused projections (wq/wk/wv, w1/w3) loads into the same model."""
    model = build(n_kv_head=2)
    old = {}
    for name, t in model.state_dict().items():
        if name.endswith("attn.wqkv.weight"):
            for w, part in zip(("wq", "wk", "wv"), t.split((32, 16, 16)), strict=True):
                old[name.replace("wqkv", w)] = part.clone()
        elif name.endswith("mlp.w13.weight"):
            for w, part in zip(("w1", "w3"), t.chunk(2), strict=True):
                old[name.replace("w13", w)] = part.clone()
        else:
            old[name] = t.clone()
    fresh = build(n_kv_head=2, seed=7)
    fresh.load_state_dict(old, strict=True)
    x = tokens()
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_softcap_bounds_logits():
    model = build(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000.0)  # huge raw logits
    logits = model(tokens())
    assert logits.abs().max() <= 2.0 + 1e-5
    assert logits.abs().max() > 1.5


def test_padded_vocab_never_predicted():
    model = build(tie_embeddings=False)
    assert model.lm_head.weight.shape[0] == 128
    with torch.no_grad():  # make the padding rows very attractive: they still must not appear
        model.lm_head.weight[97:] = 100.0
    logits = model(tokens())
    assert logits.shape[-1] == 97
    out = model.generate(tokens(T=4), 20, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 97


def test_rope_matches_hf_rotate_half():
    cos, sin = rope_tables(16, 8, 10000.0)
    x = torch.randn(2, 16, 3, 8)

    def rotate_half(t):
        return torch.cat((-t[..., 4:], t[..., :4]), dim=-1)

    c = torch.cat((cos, cos), -1)[:, None, :]
    s = torch.cat((sin, sin), -1)[:, None, :]
    torch.testing.assert_close(apply_rope(x, cos, sin), x * c + rotate_half(x) * s)
    # Relative: <rope(q, m), rope(k, n)> depends only on m - n.
    q, k = torch.randn(8), torch.randn(8)
    Q = apply_rope(q.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    K = apply_rope(k.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    torch.testing.assert_close(Q[5] @ K[3], Q[12] @ K[10])


def test_rope_and_rmsnorm_gradients():
    """RoPE's gradient is sound; RMSNorm's hand-written backward equals autograd of nn.RMSNorm."""
    from scalelab.model.gpt import RMSNorm
    from scalelab.model.kernels import RMSNormFn

    cos, sin = rope_tables(16, 8, 10000.0)
    x = torch.randn(2, 16, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos.double(), sin.double()), (x,))

    def plain_rope(t):
        c, s = cos.double()[:, None], sin.double()[:, None]
        return torch.cat((t[..., :4] * c - t[..., 4:] * s, t[..., 4:] * c + t[..., :4] * s), -1)

    g = torch.randn_like(x)
    (a,) = torch.autograd.grad(apply_rope(x, cos.double(), sin.double()), x, g)
    (b,) = torch.autograd.grad(plain_rope(x), x, g)
    torch.testing.assert_close(a, b)

    ours, ref = RMSNorm(8, eps=1e-5).double(), torch.nn.RMSNorm(8, eps=1e-5).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    y = torch.randn(4, 5, 8, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 5, 8, dtype=torch.float64)
    gx, gw = torch.autograd.grad(ours(y), (y, ours.weight), h)
    rx, rw = torch.autograd.grad(ref(y), (y, ref.weight), h)
    torch.testing.assert_close(ours(y), ref(y))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    w = ours.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t, v: RMSNormFn.apply(t, v, 1e-5), (y, w))


@pytest.mark.parametrize("name", ["base", "gqa", "all"])
def test_generate_kv_cache_matches_no_cache(name):
    model = build(**VARIANTS[name]).eval()
    prompt = tokens(B=2, T=5)
    # 40 new tokens > seq_len 32: covers the cached phase and the sliding window.
    a = model.generate(prompt, 40, temperature=0.0)
    b = model.generate(prompt, 40, temperature=0.0, use_cache=False)
    assert a.shape == (2, 45)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :5], prompt)


def test_generate_sampling_options_deterministic():
    model = build().eval()
    prompt = tokens(B=3, T=3)
    outs = [model.generate(prompt, 10, temperature=0.8, top_k=5, top_p=0.9,
                           generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    greedy = model.generate(prompt, 10, temperature=0.0)
    assert torch.equal(model.generate(prompt, 10, top_k=1), greedy)


def test_init_weights_deterministic_and_scaled():
    a, b = build(seed=3), build(seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    torch.manual_seed(3)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    torch.manual_seed(123)
    a.init_weights()
    torch.manual_seed(123)
    b.init_weights()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
        assert v.shape == before[k].shape
    big = GPT(tiny(n_layer=8, d_model=128, n_head=4, init_std=0.02))
    assert abs(big.blocks[0].attn.wqkv.weight.std().item() - 0.02) < 0.002
    assert abs(big.blocks[0].attn.wo.weight.std().item() - 0.02 / 4) < 0.001  # 1/sqrt(2*8)
    assert torch.equal(big.blocks[0].attn_norm.weight, torch.ones(128))


def test_meta_device_init():
    cfg = tiny(tie_embeddings=True, qk_norm=True)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.tok_emb.weight.is_meta
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert model.lm_head.weight is model.tok_emb.weight
    ref = build(seed=0, qk_norm=True)
    x = tokens()
    torch.testing.assert_close(model(x), ref(x))


def test_config_errors():
    with pytest.raises(ConfigError, match="vocab_size"):
        GPT(GPTConfig(vocab_size=None))
    with pytest.raises(ConfigError, match="n_kv_head"):
        GPT(tiny(n_kv_head=3))
    with pytest.raises(ValueError, match="seq_len"):
        build()(tokens(T=33))


def test_autocast_bf16_loss_fp32():
    model = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(tokens(), tokens(seed=2))
        logits = model(tokens(), None)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert logits.shape == (2, 16, 97)


# ---------------------------------------------------------------------------
# Hugging Face Llama export (built locally from a LlamaConfig; nothing downloaded)


@pytest.mark.parametrize("tie,kv", [(True, None), (False, 2)])
def test_hf_llama_same_logits(tie, kv):
    transformers = pytest.importorskip("transformers")
    from scalelab.model.hf_adapter import from_hf_llama_state_dict, hf_llama_config, to_hf_llama_state_dict

    cfg = tiny(tie_embeddings=tie, n_kv_head=kv, rope_theta=50000.0)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    hf_cfg = transformers.LlamaConfig(**hf_llama_config(cfg))
    hf_cfg._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    sd = to_hf_llama_state_dict(ours)
    hf_sd = hf.state_dict()
    for k, v in sd.items():
        assert hf_sd[k].shape == v.shape, k
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected
    assert set(missing) <= ({"lm_head.weight"} if tie else set())
    x = tokens(T=32)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-5, rtol=1e-5)
    back = GPT(cfg)
    back.load_state_dict(from_hf_llama_state_dict(hf.state_dict(), cfg))
    torch.testing.assert_close(back(x), ours(x))


def test_hf_export_rejects_non_llama():
    from scalelab.model.hf_adapter import hf_llama_config, to_hf_llama_state_dict

    with pytest.raises(ConfigError, match="relu2"):
        hf_llama_config(tiny(mlp="relu2"))
    with pytest.raises(ConfigError, match="qk_norm"):
        to_hf_llama_state_dict(build(qk_norm=True))
