"""Muon's Polar Express schedule (train/muon.py, ns="polar_express") vs the fixed quintic."""
import pytest
import torch

from scalelab.config import TrainConfig
from scalelab.errors import ConfigError
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.train.muon import Muon, orthogonalize
from scalelab.train.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _matrix(shape, spread, seed):
    """A [rows, cols] matrix with singular values log-spaced from 1 down to `spread`."""
    g = torch.Generator().manual_seed(seed)
    u, _, v = torch.linalg.svd(torch.randn(*shape, generator=g), full_matrices=False)
    return u @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(spread)).item(), min(shape))) @ v


@pytest.mark.parametrize("shape", [(64, 32), (96, 384), (128, 128)])
@pytest.mark.parametrize("spread", [0.3, 1e-2, 1e-3])
@pytest.mark.parametrize("steps", [5, 6])
def test_polar_express_orthogonalizes_at_least_as_well_as_the_quintic(shape, spread, steps):
    """At Muon's 5 steps (and beyond). Cut at 4 the schedule is mid-way: its early
    polynomials trade a wide overshoot for growing the small singular values fast, and
    the quintic is ahead on well-conditioned matrices (measured: 0.56 vs 0.32 worst case)."""
    x = _matrix(shape, spread, seed=sum(shape) + steps)
    err = {}
    for ns in ("quintic", "polar_express"):
        s = torch.linalg.svdvals(orthogonalize(x, steps, torch.float32, ns=ns).double())
        err[ns] = ((s - 1).abs().max().item(), ((s - 1) ** 2).mean().sqrt().item())
    assert err["polar_express"][0] <= err["quintic"][0] + 1e-6  # worst singular value
    assert err["polar_express"][1] <= err["quintic"][1]  # and on average


def test_polar_express_lands_near_one():
    """Well-spread spectrum, 5 steps: every singular value within 15% of 1 (the quintic's
    own fixed point oscillates in ~[0.7, 1.2])."""
    s = torch.linalg.svdvals(orthogonalize(_matrix((64, 48), 0.05, 0), 5, torch.float32, ns="polar_express"))
    assert s.min() > 0.85 and s.max() < 1.15
    s = torch.linalg.svdvals(orthogonalize(_matrix((64, 48), 0.05, 0), 5, torch.float32, ns="quintic"))
    assert s.min() < 0.85 or s.max() > 1.15


def test_the_option_reaches_the_optimizer_and_trains():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, seq_len=16, mlp="relu2"))
    opts = build_optimizer(m, TrainConfig(optimizer="muon", muon_ns="polar_express", max_steps=1), "cpu")
    muon = [o for o in opts if isinstance(o, Muon)][0]
    assert all(g["ns"] == "polar_express" for g in muon.param_groups)
    x = torch.randint(0, 64, (4, 16))
    first = None
    for _ in range(10):
        loss = m(x, x)
        first = first or loss.item()
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
    assert m(x, x).item() < first


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="polar_express"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], ns="cubic")
    from scalelab.config import load_config
    with pytest.raises(ConfigError, match="train.muon_ns"):
        load_config(None, ["train.max_steps=1", "train.muon_ns=cubic"])
