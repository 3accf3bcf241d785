"""Optimizers: AdamW (decoupled decay on non-embedding matrices only) and Muon + AdamW.

The learning-rate schedule scales every group's `base_lr` by one factor per step, so
groups with different peak rates (Muon matrices vs Adam for the rest) follow one shape.
"""
from __future__ import annotations

import torch
from torch import nn

from scalelab.config import TrainConfig
from scalelab.model.gpt import MLP, Attention
from scalelab.train.muon import Muon


def _embedding_ids(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay 2-D weight matrices of linear layers; never norms, biases or embeddings.

    Embeddings are found by module type, so a tied lm_head (the same tensor) is not
    decayed either. Parameters are deduplicated by identity (tied weights appear once).
    """
    embedding_ids = _embedding_ids(model)
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() >= 2 and id(p) not in embedding_ids:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _row_splits(model: nn.Module) -> dict[int, tuple[int, ...]]:
    """id of each fused projection weight (gpt.py) -> row counts of the matrices it holds."""
    out = {}
    for m in model.modules():
        if isinstance(m, Attention):
            out[id(m.wqkv.weight)] = m.sizes
        elif isinstance(m, MLP) and m.kind == "swiglu":
            out[id(m.w13.weight)] = (m.w13.out_features // 2,) * 2
    return out


def _adamw(groups: list[dict], cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    # The fused kernel is faster on GPU; on CPU the foreach path is the fast one.
    extra = {"fused": True} if device_type == "cuda" else {"foreach": True}
    for g in groups:
        g.setdefault("lr", cfg.lr)
        g["base_lr"] = g["lr"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **extra)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> list[torch.optim.Optimizer]:
    """A list of optimizers (one for AdamW; Muon + AdamW for optimizer=muon)."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return [_adamw(groups, cfg, device_type)]
    # Muon orthogonalizes updates of hidden matrices (Jordan et al. 2024, modded-nanogpt);
    # the output head (its own matrix when untied) and embeddings stay with AdamW.
    head = getattr(model, "lm_head", None)
    head_id = id(head.weight) if head is not None else None
    hidden = [p for p in groups[0]["params"] if p.dim() == 2 and id(p) != head_id]
    hidden_ids = {id(p) for p in hidden}
    rest_decay = [p for p in groups[0]["params"] if id(p) not in hidden_ids]
    # bf16 Newton-Schulz on GPUs (tensor cores); fp32 on CPUs, where bf16 matmuls are emulated.
    ns_dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    # Fused projections are orthogonalized per part (q, k, v; gate, up), as when they were separate.
    splits, by_split = _row_splits(model), {}
    for p in hidden:
        by_split.setdefault(splits.get(id(p)), []).append(p)
    muon_groups = [{"params": ps, "row_split": split} for split, ps in by_split.items()]
    muon = Muon(muon_groups, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay, ns_dtype=ns_dtype,
                ns=cfg.muon_ns)
    for g in muon.param_groups:
        g["base_lr"] = g["lr"]
    adam_groups = [g for g in ({"params": rest_decay, "weight_decay": cfg.weight_decay}, groups[1]) if g["params"]]
    return [muon, _adamw(adam_groups, cfg, device_type)]


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """lr = base_lr * factor for every group (factor = schedule(step) / peak lr)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * factor
