"""Variable-length attention for packed rows without a flash-attention kernel (CPU).

A packed row of L tokens holding examples of n_1, n_2, ... tokens needs sum(n_i^2) of
attention, but sdpa with a block-diagonal mask computes all L^2 (and cannot skip the upper
triangle, as it does with is_causal). `scalelab_varlen` runs causal sdpa on each example's
slice instead -- the boundaries are where the position ids restart at 0, the contract
transformers' flash-attention varlen path uses too -- and is registered with transformers'
AttentionInterface, so any model written against that interface can use it
(`model.attn_implementation=scalelab_varlen`; the default for packed runs on CPU). Calls it
cannot serve (no position ids, a KV cache, q and kv of different lengths) go to plain sdpa
with the mask they were given. The fine-tune self-check compares it with separate rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "scalelab_varlen"


def _segments(pos_row: torch.Tensor) -> list[tuple[int, int]]:
    starts = torch.nonzero(pos_row == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [pos_row.numel()]
    return list(zip(starts, ends))


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """[B, H, L, D] query/key/value -> ([B, L, H, D] output, None), causal within each example."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    pos = kwargs.get("position_ids")
    L = query.shape[2]
    if pos is None or key.shape[2] != L or pos.shape[-1] != L:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    pos = pos.expand(query.shape[0], -1)
    p = dropout if module.training else 0.0
    rows = []
    for b in range(query.shape[0]):
        parts = [F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                                dropout_p=p, scale=scaling, is_causal=True)
                 for s, e in _segments(pos[b])]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    out = torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `scalelab_varlen` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, varlen_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # masks built for calls it hands to plain sdpa
    return NAME
