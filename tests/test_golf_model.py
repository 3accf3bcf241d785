"""U-Net-style skip connections in the GPT (model.unet_skips), added for parameter golf."""
import pytest
import torch

from scalelab.config import TrainConfig
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.model.sizing import count_params
from scalelab.train.optim import build_optimizer


from golf_helpers import cfg, unique_params

pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_model_is_unchanged():
    m = GPT(cfg())
    assert GPTConfig().unet_skips is False
    assert m.skip_weights is None
    assert not any("skip" in k for k in m.state_dict())


@pytest.mark.parametrize("n_layer", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("tie", [True, False])
def test_skip_weights_shape_init_and_param_count(n_layer, tie):
    c = cfg(n_layer=n_layer, unet_skips=True, tie_embeddings=tie)
    m = GPT(c)
    assert m.skip_weights.shape == (n_layer // 2,)
    assert torch.equal(m.skip_weights.detach(), torch.ones(n_layer // 2))
    assert count_params(c)["total"] == unique_params(m)
    assert count_params(c)["non_embedding"] == count_params(cfg(n_layer=n_layer, tie_embeddings=tie))["non_embedding"] + n_layer // 2


def test_zero_skip_weights_reduce_to_the_plain_model():
    torch.manual_seed(0)
    plain = GPT(cfg(n_layer=5))
    skip = GPT(cfg(n_layer=5, unet_skips=True))
    state = dict(plain.state_dict(), skip_weights=torch.zeros(2))
    skip.load_state_dict(state)
    x = torch.randint(0, 97, (2, 16))
    assert torch.equal(plain(x), skip(x))


@pytest.mark.parametrize("n_layer", [4, 5])
def test_mirror_wiring(n_layer):
    """Block i's output (i < L // 2) is added, times skip_weights[i], to block L-1-i's input."""
    torch.manual_seed(1)
    m = GPT(cfg(n_layer=n_layer, unet_skips=True))
    with torch.no_grad():
        m.skip_weights.copy_(torch.randn(n_layer // 2))
    x = torch.randint(0, 97, (2, 16))
    cos, sin = m._rope(0, 16, x.device)
    h = m.tok_emb(x)
    outs = {}
    for i, block in enumerate(m.blocks):
        mirror = n_layer - 1 - i
        if mirror < n_layer // 2:
            h = h + m.skip_weights[mirror] * outs[mirror]
        h = block(h, cos, sin)
        outs[i] = h
    assert torch.allclose(m.hidden(x), m.norm(h), atol=1e-6)


def test_skip_weights_learn_and_stay_with_adam():
    torch.manual_seed(0)
    m = GPT(cfg(unet_skips=True))
    x = torch.randint(0, 97, (2, 16))
    m(x, x).backward()
    assert m.skip_weights.grad is not None and m.skip_weights.grad.abs().sum() > 0
    muon, adam = build_optimizer(m, TrainConfig(optimizer="muon", max_steps=1), "cpu")
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adam = {id(p) for g in adam.param_groups for p in g["params"]}
    assert id(m.skip_weights) in in_adam and id(m.skip_weights) not in in_muon


def test_generate_with_cache_matches_without():
    torch.manual_seed(0)
    m = GPT(cfg(n_layer=5, unet_skips=True)).eval()
    with torch.no_grad():
        m.skip_weights.copy_(torch.tensor([0.5, -1.5]))
    prompt = torch.randint(0, 97, (2, 5))
    a = m.generate(prompt, 8, temperature=0, use_cache=True)
    b = m.generate(prompt, 8, temperature=0, use_cache=False)
    assert torch.equal(a, b)


def test_meta_init_matches_eager_init():
    c = cfg(unet_skips=True)
    torch.manual_seed(3)
    eager = GPT(c)
    with torch.device("meta"):
        meta = GPT(c)
    meta.to_empty(device="cpu")
    torch.manual_seed(3)
    meta.init_weights()
    for (k, a), (_, b) in zip(eager.state_dict().items(), meta.state_dict().items()):
        assert torch.equal(a, b), k
