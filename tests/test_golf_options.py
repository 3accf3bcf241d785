"""The golf model options in gpt.py: depth recurrence (loop_layers / loop_count), partial
RoPE (rope_frac) and the LeakyReLU(0.5)^2 MLP; their counts in sizing.py and the HF refusals."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from scalelab.errors import ConfigError
from scalelab.golf import codec
from scalelab.golf.compress import compress_with
from scalelab.golf.quantize import QuantSpec, quantize_state_dict
from scalelab.model.gpt import GPT, apply_rope, rope_tables
from scalelab.model.hf_adapter import check_llama_compatible
from scalelab.model.sizing import _layer_params, count_params, flops_per_token

from golf_helpers import cfg, unique_params

pytestmark = pytest.mark.usefixtures("one_thread")


LOOP = dict(loop_layers=[1, 2], loop_count=3)


def test_schedule_unrolls_the_loop():
    assert cfg(**LOOP).schedule == [0, 1, 2, 1, 2, 1, 2, 3]
    assert cfg(loop_layers=[3], loop_count=2).schedule == [0, 1, 2, 3, 3]
    assert cfg().schedule == cfg(loop_layers=[1, 2], loop_count=1).schedule == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [dict(loop_layers=[1, 3]), dict(loop_layers=[2, 1]), dict(loop_layers=[3, 4]),
                                 dict(loop_layers=[-1, 0]), dict(loop_count=0), dict(rope_frac=0.0),
                                 dict(rope_frac=1.5), dict(rope_frac=0.1), dict(mlp="leaky")])
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError, match="model\\."):
        cfg(**bad).validate()


@pytest.mark.parametrize("skips", [False, True])
def test_looped_model_equals_its_unrolled_copy(skips):
    """Blocks 0 1 2 1 2 1 2 3 with shared weights = an 8-block model holding copies."""
    torch.manual_seed(0)
    looped = GPT(cfg(unet_skips=skips, **LOOP))
    unrolled = GPT(cfg(n_layer=8, unet_skips=skips))
    state = {k: v for k, v in looped.state_dict().items() if not k.startswith("blocks.")}
    for i, b in enumerate(looped.cfg.schedule):
        for k, v in looped.blocks[b].state_dict().items():
            state[f"blocks.{i}.{k}"] = v
    if skips:
        assert looped.skip_weights.shape == (4,)  # one per mirrored pair of the 8 applications
        with torch.no_grad():
            looped.skip_weights.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
        state["skip_weights"] = looped.skip_weights.detach().clone()
    unrolled.load_state_dict(state)
    x = torch.randint(0, 97, (2, 16))
    torch.testing.assert_close(looped(x), unrolled(x), rtol=0, atol=1e-5)


def test_loop_counts_params_once_and_flops_per_application():
    plain, looped = cfg(unet_skips=True), cfg(unet_skips=True, **LOOP)
    model = GPT(looped)
    assert count_params(looped)["total"] == unique_params(model)
    # the same blocks: only the skip scalars (one per mirrored pair of applications) differ
    assert count_params(looped)["non_embedding"] - count_params(plain)["non_embedding"] == 4 - 2
    extra = len(looped.schedule) - looped.n_layer  # 4 more block applications per token
    attn = 12 * looped.n_head * looped.head_dim * looped.seq_len
    expected = 6 * (extra * _layer_params(looped) + 2) + extra * attn
    assert flops_per_token(looped) - flops_per_token(plain) == pytest.approx(expected)


def test_loop_generate_with_cache_matches_without():
    torch.manual_seed(0)
    m = GPT(cfg(unet_skips=True, **LOOP)).eval()
    prompt = torch.randint(0, 97, (2, 5))
    assert torch.equal(m.generate(prompt, 8, temperature=0), m.generate(prompt, 8, temperature=0, use_cache=False))


def test_loop_model_trains_and_round_trips_through_the_golf_codec():
    torch.manual_seed(0)
    m = GPT(cfg(**LOOP))
    x = torch.randint(0, 97, (2, 16))
    m(x, x).backward()
    assert all(p.grad is not None for p in m.blocks[1].parameters())
    qs = quantize_state_dict(m.state_dict(), QuantSpec(default="fp16", keep_float_numel=0))
    blob = compress_with("zlib", codec.pack(dataclasses.asdict(m.cfg), qs.tensors, qs.aliases))
    back = codec.load_model(blob)
    assert back.cfg.schedule == m.cfg.schedule
    torch.testing.assert_close(back(x), m(x), rtol=0, atol=2e-2)


def test_partial_rope_rotates_only_the_first_dims():
    c = cfg(rope_frac=0.5)  # head_dim 8: 4 dims rotate
    assert c.rope_dim == 4
    cos, sin = rope_tables(16, c.rope_dim, c.rope_theta)
    x = torch.randn(2, 16, 4, 8)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:])  # carried through, no position
    assert torch.equal(y[..., :4], apply_rope(x[..., :4], cos, sin))
    assert not torch.allclose(y[1:, 1:, :, :4], x[1:, 1:, :, :4])
    # the rotated part keeps relative-position dot products: <R_t q, R_s k> depends on t - s only
    q, k = torch.randn(8), torch.randn(8)
    rq = apply_rope(q.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    rk = apply_rope(k.expand(1, 16, 1, 8), cos, sin)[0, :, 0]
    assert torch.allclose(rq[5] @ rk[2], rq[13] @ rk[10], atol=1e-5)


def test_full_rope_fraction_is_the_default_model():
    torch.manual_seed(0)
    a = GPT(cfg())
    torch.manual_seed(0)
    b = GPT(cfg(rope_frac=1.0))
    x = torch.randint(0, 97, (2, 16))
    assert torch.equal(a(x), b(x))
    partial = GPT(cfg(rope_frac=0.5))
    partial.load_state_dict(a.state_dict())
    assert not torch.allclose(partial(x), a(x))


def test_leaky_relu2_mlp():
    torch.manual_seed(0)
    m = GPT(cfg(mlp="leaky_relu2"))
    mlp = m.blocks[0].mlp
    h = torch.randn(3, 32)
    pre = mlp.w1(h)
    expected = mlp.w2(torch.where(pre > 0, pre, 0.5 * pre) ** 2)
    torch.testing.assert_close(mlp(h), expected)
    assert count_params(m.cfg)["total"] == count_params(cfg())["total"] == unique_params(m)
    # unlike relu^2, negative pre-activations still pass a gradient to w1
    w1_rows_all_negative = mlp.w1.weight.detach().clone()
    x = -h.abs()
    with torch.no_grad():
        mlp.w1.weight.copy_(w1_rows_all_negative.abs())
    mlp(x).sum().backward()
    assert mlp.w1.weight.grad.abs().sum() > 0
    relu = GPT(cfg()).blocks[0].mlp
    with torch.no_grad():
        relu.w1.weight.copy_(w1_rows_all_negative.abs())
    relu(x).sum().backward()
    assert relu.w1.weight.grad.abs().sum() == 0
    assert F.leaky_relu(torch.tensor(-2.0), 0.5) ** 2 == 1.0


@pytest.mark.parametrize("opt,word", [(dict(mlp="swiglu", **LOOP), "loop_layers"),
                                      (dict(mlp="swiglu", rope_frac=0.5), "rope_frac"),
                                      (dict(mlp="leaky_relu2"), "leaky_relu2")])
def test_hf_export_refuses_options_llama_cannot_express(opt, word):
    check_llama_compatible(cfg(mlp="swiglu"))
    with pytest.raises(ConfigError, match=word):
        check_llama_compatible(cfg(**opt))


def test_options_load_from_a_config_with_overrides(tmp_path):
    from scalelab.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("model:\n  n_layer: 4\n  mlp: leaky_relu2\ntrain:\n  max_steps: 1\n")
    run = load_config(p, ["model.loop_layers=1,2", "model.loop_count=3", "model.rope_frac=0.5"])
    assert run.model.loop_layers == [1, 2] and run.model.loop_count == 3 and run.model.rope_frac == 0.5
    with pytest.raises(ConfigError, match="loop_layers"):
        load_config(p, ["model.loop_layers=1,3"])
