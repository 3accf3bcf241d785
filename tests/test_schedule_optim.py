import math

import pytest
import torch
from torch import nn

from scalelab.config import TrainConfig
from scalelab.train.muon import Muon, orthogonalize
from scalelab.train.optim import build_optimizer, param_groups
from scalelab.train.schedule import lr_at


def test_cosine_warmup_then_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine", max_steps=110)
    assert lr_at(0, 110, cfg) == pytest.approx(0.1)
    assert lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(10, 110, cfg) == pytest.approx(1.0)
    assert lr_at(60, 110, cfg) == pytest.approx(0.55)  # half way: mean of peak and floor
    assert lr_at(110, 110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, 110, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_wsd_stable_then_linear_decay():
    cfg = TrainConfig(lr=2.0, warmup_steps=0, min_lr_ratio=0.0, schedule="wsd", decay_frac=0.2, max_steps=100)
    assert lr_at(50, 100, cfg) == pytest.approx(2.0)
    assert lr_at(80, 100, cfg) == pytest.approx(2.0)
    assert lr_at(90, 100, cfg) == pytest.approx(1.0)
    assert lr_at(100, 100, cfg) == pytest.approx(0.0)


def test_time_progress_overrides_steps():
    cfg = TrainConfig(lr=1.0, warmup_steps=0, min_lr_ratio=0.0, schedule="cosine", max_time_s=10)
    assert lr_at(5, 0, cfg, progress=0.5) == pytest.approx(0.5)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # tied


def test_no_decay_on_norms_biases_embeddings():
    m = Tiny()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert decayed == {id(m.proj.weight)}
    n_unique = len({id(p) for p in m.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique


def test_adamw_betas_and_decoupled_decay():
    m = Tiny()
    (opt,) = build_optimizer(m, TrainConfig(lr=0.1, weight_decay=0.5, max_steps=1), "cpu")
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    before = m.proj.weight.detach().clone()
    emb_before = m.emb.weight.detach().clone()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # zero gradient: only decoupled decay moves the decayed matrix, by lr*wd
    assert torch.allclose(m.proj.weight, before * (1 - 0.1 * 0.5))
    assert torch.equal(m.emb.weight, emb_before)
    assert math.isclose(opt.param_groups[1]["weight_decay"], 0.0)


def test_muon_takes_hidden_matrices_adam_the_rest():
    m = Tiny()
    muon, adam = build_optimizer(m, TrainConfig(optimizer="muon", lr=0.01, muon_lr=0.02, max_steps=1), "cpu")
    assert isinstance(muon, Muon) and muon.param_groups[0]["ns_dtype"] == "float32"  # fp32 on CPU
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(m.proj.weight)}
    adam_ids = {id(p) for g in adam.param_groups for p in g["params"]}
    assert id(m.emb.weight) in adam_ids and id(m.proj.weight) not in adam_ids
    from scalelab.train.optim import set_lr

    set_lr([muon, adam], 0.5)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.01) and adam.param_groups[0]["lr"] == pytest.approx(0.005)


def muon_and_torch_muon_after(shapes, device="cpu", steps=3):
    """(ours, torch's) parameters after `steps` identical bf16 Muon steps from the same start
    (also used by tests/test_gpu.py on CUDA)."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(s, device=device)) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = Muon(ours, lr=0.02, momentum=0.95, weight_decay=0.1, ns_dtype=torch.bfloat16)
    b = torch.optim.Muon(ref, lr=0.02, momentum=0.95, weight_decay=0.1)
    for _ in range(steps):
        for p, q in zip(ours, ref):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    return ours, ref


def test_muon_matches_torch_muon_in_bf16_and_orthogonalizes_in_fp32():
    """Our Muon is torch.optim.Muon's update with the Newton-Schulz dtype as a knob."""
    ours, ref = muon_and_torch_muon_after([(48, 16), (16, 40)])  # tall (lr scaled by sqrt(3)) and wide
    for p, q in zip(ours, ref):
        assert torch.allclose(p, q, atol=1e-6)
    g = torch.randn(64, 32)
    o = orthogonalize(g, dtype=torch.float32)
    assert o.dtype == torch.float32 and o.shape == g.shape
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.5 and sv.max() < 1.5  # the quintic's band, not exactly 1
    stack = torch.randn(3, 32, 64)  # same-shaped matrices go through one batched iteration
    batched = orthogonalize(stack, dtype=torch.float32)
    for i in range(3):
        assert torch.allclose(batched[i], orthogonalize(stack[i], dtype=torch.float32), atol=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def test_muon_row_split_equals_separate_matrices():
    """A fused [q; k; v] weight with row_split gets the update of its three parts alone."""
    torch.manual_seed(0)
    parts = [torch.nn.Parameter(torch.randn(r, 16)) for r in (16, 8, 8)]
    fused = torch.nn.Parameter(torch.cat([p.detach() for p in parts]))
    a = Muon(parts, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32)
    b = Muon([{"params": [fused], "row_split": (16, 8, 8)}], lr=0.02, weight_decay=0.1, ns_dtype=torch.float32)
    for _ in range(3):
        g = torch.randn_like(fused)
        fused.grad = g.clone()
        for p, gp in zip(parts, g.split((16, 8, 8)), strict=True):
            p.grad = gp.clone()
        a.step()
        b.step()
    torch.testing.assert_close(fused.detach(), torch.cat([p.detach() for p in parts]), rtol=0, atol=0)


def test_build_optimizer_splits_fused_projections_for_muon():
    from scalelab.model.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=64, seq_len=8, n_layer=1, n_head=4, n_kv_head=2, d_model=32))
    muon, _ = build_optimizer(model, TrainConfig(optimizer="muon"), "cpu")
    splits = {id(p): g["row_split"] for g in muon.param_groups for p in g["params"]}
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert splits[id(attn.wqkv.weight)] == (32, 16, 16)
    assert splits[id(mlp.w13.weight)] == (mlp.w2.in_features,) * 2
    assert splits[id(attn.wo.weight)] is None


def test_ema_decay_warms_up_then_holds():
    from torch.optim.swa_utils import AveragedModel

    from scalelab.train.trainer import ema_with_warmup

    lin = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(lin.weight)
    ema = AveragedModel(lin, multi_avg_fn=ema_with_warmup(0.99), use_buffers=False)
    ema.update_parameters(lin)  # the first update copies
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update_parameters(lin)  # n = 1: decay min(0.99, 2/11)
    assert ema.module.weight.item() == pytest.approx(9 / 11)
    for _ in range(2000):
        ema.update_parameters(lin)
    before = ema.module.weight.item()
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema.update_parameters(lin)  # late: the configured decay
    assert ema.module.weight.item() == pytest.approx(before + 0.01 * (2.0 - before))
