"""Parameter counts, FLOP counts and model shapes: the one source of truth.

Everything else in scalelab (planner, trainer MFU, reports, scaling fits) calls these.

Parameter conventions
- `embedding`: the token-embedding table including its padding rows, plus lm_head when
  it is not tied (as allocated: padded_vocab x d_model each).
- `non_embedding`: everything else (attention, MLP, all RMSNorm weights, U-Net skip
  scalars). This is the N of Kaplan et al. 2020 and of our scaling fits.

FLOP conventions (PaLM appendix B; nanoGPT `estimate_mfu`)
- Training FLOPs per token = 6 * N_matmul + 12 * L * H * Q * T, where
  N_matmul = non_embedding + d_model * padded_vocab. The lm_head is counted because it is
  a real matmul on every token (the embedding lookup is not). It is counted at the padded
  vocabulary, the width of the matmul actually run (the difference is < 0.1% for
  GPT-2's 50257 -> 50304).
  The attention term counts QK^T and AV over the full T x T square (no causal halving),
  as PaLM and nanoGPT do, so MFU numbers compare with theirs. 6 = 2 (fwd) + 4 (bwd).
- Forward-only FLOPs per token are one third of that: 2 * N_matmul + 4 * L * H * Q * T.
- Depth recurrence (cfg.loop_layers / loop_count): a looped block's parameters are
  counted once, its FLOPs once per application; L is the number of block applications.
"""
from __future__ import annotations

import math
from typing import Any

from scalelab.model.gpt import GPTConfig


def _layer_params(cfg: GPTConfig) -> int:
    d, q = cfg.d_model, cfg.head_dim
    attn = d * cfg.n_head * q + 2 * d * cfg.kv_heads * q + cfg.n_head * q * d  # wqkv (q, k, v rows), wo
    if cfg.qk_norm:
        attn += 2 * q
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.ffn_dim
    return attn + mlp + 2 * d  # + attn_norm, mlp_norm


def count_params(cfg: GPTConfig) -> dict[str, int]:
    """{'total', 'embedding', 'non_embedding'} exactly as GPT(cfg) allocates them."""
    non_embedding = cfg.n_layer * _layer_params(cfg) + cfg.d_model  # + final norm
    if cfg.unet_skips:
        non_embedding += len(cfg.schedule) // 2  # one scalar per U-Net skip connection
    table = cfg.padded_vocab * cfg.d_model
    embedding = table if cfg.tie_embeddings else 2 * table
    return {"total": embedding + non_embedding, "embedding": embedding, "non_embedding": non_embedding}


def matmul_params(cfg: GPTConfig) -> int:
    """Parameters that take part in a matmul per token: non-embedding + lm_head, a looped
    block's once per application."""
    repeats = (len(cfg.schedule) - cfg.n_layer) * _layer_params(cfg)
    return count_params(cfg)["non_embedding"] + repeats + cfg.d_model * cfg.padded_vocab


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    """Training (forward + backward) FLOPs per token: 6 N + 12 L H Q T (see module doc)."""
    T = cfg.seq_len if seq_len is None else seq_len
    return 6.0 * matmul_params(cfg) + 12.0 * len(cfg.schedule) * cfg.n_head * cfg.head_dim * T


def forward_flops_per_token(cfg: GPTConfig, seq_len: int | None = None) -> float:
    """Forward-only FLOPs per token: 2 N + 4 L H Q T."""
    return flops_per_token(cfg, seq_len) / 3.0


def training_flops(params: float, tokens: float) -> float:
    """C = 6 N D (Kaplan / Chinchilla approximation)."""
    return 6.0 * params * tokens


def chinchilla_tokens(params: float, ratio: float = 20.0) -> float:
    """Compute-optimal token count D = ratio * N (Hoffmann et al. 2022: ~20 tokens/param)."""
    return ratio * params


# ---------------------------------------------------------------------------
# Shapes from a parameter budget


def _shape_cfg(n_layer: int, d_model: int, head_dim: int, **kw: Any) -> GPTConfig:
    n_head = d_model // head_dim
    n_kv = kw.pop("n_kv_head", None)
    if n_kv is not None:  # keep the requested GQA ratio where it divides
        n_kv = max(1, min(n_kv, n_head))
        while n_head % n_kv:
            n_kv -= 1
    return GPTConfig(vocab_size=2, n_layer=n_layer, d_model=d_model, n_head=n_head, n_kv_head=n_kv, **kw)


def _width_candidates(d_exact: float, head_dim: int) -> list[tuple[int, int]]:
    """(d_model, head_dim) pairs on either side of d_exact.

    Widths are multiples of head_dim; narrow models (d_exact < 4 * head_dim) step in
    multiples of 32 (16 below 2 * head_dim) and use the largest head size among head_dim,
    head_dim/2, ... (even, >= 8) that divides d_model into at least two heads.
    """
    step = head_dim if d_exact >= 4 * head_dim else (32 if d_exact >= 2 * head_dim else 16)
    out = []
    k = max(1, math.floor(d_exact / step))
    for m in (k, k + 1):
        d = m * step
        hd = head_dim
        while hd >= 8 and (d % hd or d // hd < 2 or hd % 2):
            hd //= 2
        if hd >= 8 and d % hd == 0 and d // hd >= 2:
            out.append((d, hd))
    return out


def shape_for_params(target_non_embedding: float, aspect_ratio: float = 64, head_dim: int = 64,
                     mlp: str = "swiglu", n_kv_head: int | None = None, multiple_of: int = 64,
                     qk_norm: bool = False, tolerance: float = 0.10, max_layers: int = 256) -> dict[str, int]:
    """Pick (n_layer, d_model, n_head) for a non-embedding parameter budget.

    Rule: widths are multiples of head_dim (n_head = d_model / head_dim; below
    2*head_dim a model gets two heads of d_model/2). For every depth L the widths on
    either side of the one that hits the target exactly are candidates; among candidates
    within `tolerance` (relative) of the target we take the one whose aspect ratio
    d_model / n_layer is closest to `aspect_ratio` (in log space); if none is that close,
    the candidate nearest the target. With aspect_ratio=64 this gives e.g. 6 x 384 at
    10M and 12 x 768 near 85M (GPT-2 small), 1 x 96 at 1e5.
    """
    if target_non_embedding <= 0:
        raise ValueError("target_non_embedding must be > 0")
    kw = dict(mlp=mlp, multiple_of=multiple_of, qk_norm=qk_norm, n_kv_head=n_kv_head)
    best = None  # (within, aspect_err, param_err, L, d, hd)
    for L in range(1, max_layers + 1):
        # Params grow ~ c * L * d^2; estimate c from a probe at d = head_dim * 4.
        probe = 4 * head_dim
        c = count_params(_shape_cfg(L, probe, head_dim, **kw))["non_embedding"] / (L * probe**2)
        d_exact = math.sqrt(target_non_embedding / (c * L))
        if d_exact < 16 and L > 1:
            break
        for d, hd in _width_candidates(d_exact, head_dim):
            n = count_params(_shape_cfg(L, d, hd, **kw))["non_embedding"]
            p_err = abs(math.log(n / target_non_embedding))
            a_err = abs(math.log(d / L / aspect_ratio))
            within = p_err <= math.log1p(tolerance)
            key = (not within, a_err if within else p_err, p_err)
            if best is None or key < best[0]:
                best = (key, L, d, hd)
    _, L, d, hd = best
    return {"n_layer": L, "d_model": d, "n_head": d // hd}


# ---------------------------------------------------------------------------
# Named sizes (non-embedding parameter counts, except "124m" = GPT-2 small's shape,
# 124M in total with GPT-2's 50257-token vocabulary and tied embeddings).
# Each is shape_for_params(<size>) with the defaults above, written out so a config
# file reads the same as this table; tests check the two agree.

NAMED_SIZES: dict[str, dict[str, Any]] = {
    "10m": {"n_layer": 6, "d_model": 384, "n_head": 6},
    "50m": {"n_layer": 10, "d_model": 640, "n_head": 10},
    "100m": {"n_layer": 13, "d_model": 832, "n_head": 13},
    "124m": {"n_layer": 12, "d_model": 768, "n_head": 12},
    "200m": {"n_layer": 16, "d_model": 1024, "n_head": 16},
    "600m": {"n_layer": 23, "d_model": 1472, "n_head": 23},
}

NAMED_TARGETS: dict[str, float] = {"10m": 1e7, "50m": 5e7, "100m": 1e8, "200m": 2e8, "600m": 6e8}


def named_config(name: str, **overrides: Any) -> GPTConfig:
    """GPTConfig for a named size ('10m', ..., '600m'), with any field overridden."""
    key = name.lower()
    if key not in NAMED_SIZES:
        from scalelab.errors import ConfigError
        raise ConfigError(f"unknown model size '{name}'; known sizes: {', '.join(NAMED_SIZES)}")
    return GPTConfig(**{**NAMED_SIZES[key], **overrides})
