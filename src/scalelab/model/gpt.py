"""A decoder-only GPT (Llama layout: RoPE, RMSNorm, SwiGLU), readable top to bottom.

Layout (`hf_adapter.py` maps it onto Hugging Face `LlamaForCausalLM`, splitting the
fused wqkv and w13 into q/k/v_proj and gate/up_proj):

    tok_emb                      Embedding(padded_vocab, d_model)
    blocks[i].attn_norm          RMSNorm(d_model)
    blocks[i].attn.wqkv          Linear, no bias: rows [q; k; v], k and v with kv_heads * head_dim each (GQA)
    blocks[i].attn.wo            Linear, no bias
    blocks[i].attn.q_norm/k_norm RMSNorm(head_dim), only when cfg.qk_norm
    blocks[i].mlp_norm           RMSNorm(d_model)
    blocks[i].mlp.w13/w2         SwiGLU: w2(silu(gate) * up), [gate; up] = w13 x   (cfg.mlp == "swiglu")
    blocks[i].mlp.w1/w2          ReLU^2: w2(relu(w1 x)^2)          (cfg.mlp == "relu2";
                                 "leaky_relu2": leaky_relu(w1 x, 0.5)^2)
    norm                         final RMSNorm
    lm_head                      Linear(d_model, padded_vocab), tied to tok_emb when cfg.tie_embeddings
    skip_weights                 [n_layer // 2] learned scalars, only when cfg.unet_skips

Conventions worth knowing:
- RoPE uses the "rotate-half" convention of HF Llama: a head vector is split into
  halves (x1, x2) = (x[:D/2], x[D/2:]) and pair i is (x1[i], x2[i]) rotated by angle
  pos * theta^(-2i/D). Weights therefore export to HF without any permutation of wq/wk
  (Meta's original checkpoints interleave pairs instead; HF permutes those on import).
  (On CPU in fp32 Attention reads q/k rows in pair order instead: model/kernels.py.)
- The embedding table and lm_head have cfg.padded_vocab rows (a multiple of
  cfg.pad_vocab_to: friendlier matmul shapes). Logits and loss cover only the real
  cfg.vocab_size ids, so padding rows can never receive probability mass.
- The loss (and soft-capped logits) are computed in fp32 even under bf16 autocast.
- U-Net skips (cfg.unet_skips, modded-nanogpt): the output of block i in the first half
  is added, times the learned scalar skip_weights[i], to the input of its mirror block
  n_layer - 1 - i; with an odd n_layer the middle block has no skip. Weights start at 1.
  (HF Llama has no such connection: a model with skips does not export to HF.)
- Depth recurrence (cfg.loop_layers, cfg.loop_count; parameter-golf records): the
  consecutive blocks loop_layers run loop_count times in a row, sharing weights, e.g.
  n_layer 4, loop_layers [1, 2], loop_count 3 runs blocks 0 1 2 1 2 1 2 3
  (cfg.schedule). Skips, the KV cache and the output-projection init count the
  7 block applications, not the 4 blocks.
- Partial RoPE (cfg.rope_frac < 1): only the first rope_dim dims of each head rotate
  (frequencies over rope_dim); the rest carry content without position.
- Packed rows: `hidden(idx, pos=, mask=)` takes per-token positions [B, T] and an
  attention mask [B, T, T] (True = may attend) in place of 0..T-1 and the causal mask,
  so several documents (or a context and its continuations, eval/scoring.py) share a
  row. It is the same forward pass, skips and all: there is no second copy to drift.
- Fused projections (wqkv, w13: fewer, larger GEMMs); pre-fusion state dicts (wq/wk/wv,
  w1/w3) are concatenated on load.

The model knows nothing of distribution, checkpoints, logging or optimizers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from scalelab.errors import ConfigError

try:  # faster autograd kernels, same math; golf artifacts run the plain ops without them
    from scalelab.model import kernels
except ImportError:
    kernels = None


@dataclass
class GPTConfig:
    vocab_size: int | None = None  # None: taken from the data's tokenizer at build time
    pad_vocab_to: int = 64  # round the embedding table up (faster matmuls); extra rows unused
    seq_len: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention; None = n_head
    d_model: int = 128
    ffn_hidden: int | None = None  # None: 8/3*d rounded up to multiple_of (swiglu), 4*d (relu2)
    multiple_of: int = 64
    mlp: str = "swiglu"  # swiglu | relu2 | leaky_relu2 (leaky_relu(x, 0.5)^2)
    qk_norm: bool = False
    tie_embeddings: bool = True
    logit_softcap: float | None = None  # tanh soft-cap on logits (Gemma 2 / modded-nanogpt)
    unet_skips: bool = False  # first-half block outputs feed their mirror blocks (modded-nanogpt)
    loop_layers: list[int] | None = None  # consecutive blocks run loop_count times (depth recurrence)
    loop_count: int = 1
    rope_theta: float = 10000.0
    rope_frac: float = 1.0  # fraction of each head's dims that RoPE rotates (partial RoPE)
    norm_eps: float = 1e-5
    init_std: float | None = None  # None: 0.5 / sqrt(d_model) (0.018 at GPT-2's 768; larger for narrow models)

    def validate(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        check(self.seq_len >= 2, f"model.seq_len must be >= 2, got {self.seq_len}")
        check(self.n_layer >= 1, f"model.n_layer must be >= 1, got {self.n_layer}")
        check(self.n_head >= 1, f"model.n_head must be >= 1, got {self.n_head}")
        check(self.d_model % self.n_head == 0,
              f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})")
        check((self.d_model // self.n_head) % 2 == 0,
              f"model.d_model / model.n_head = {self.d_model // self.n_head} must be even (RoPE rotates pairs)")
        kv = self.n_kv_head or self.n_head
        check(self.n_head % kv == 0, f"model.n_head ({self.n_head}) must be a multiple of model.n_kv_head ({kv})")
        check(self.mlp in ("swiglu", "relu2", "leaky_relu2"),
              f"model.mlp must be swiglu, relu2 or leaky_relu2, got '{self.mlp}'")
        ll = self.loop_layers or []
        check(ll == list(range(ll[0], ll[0] + len(ll))) and 0 <= ll[0] and ll[-1] < self.n_layer if ll else True,
              f"model.loop_layers must be consecutive block indices in [0, {self.n_layer}), e.g. [1, 2]; got {ll}")
        check(self.loop_count >= 1, f"model.loop_count must be >= 1, got {self.loop_count}")
        check(0 < self.rope_frac <= 1 and self.rope_dim >= 2,
              f"model.rope_frac must be in (0, 1] and rotate >= 2 dims of head_dim {self.head_dim}; got {self.rope_frac}")
        check(self.vocab_size is None or self.vocab_size >= 2, f"model.vocab_size must be >= 2, got {self.vocab_size}")
        check(self.pad_vocab_to >= 1, f"model.pad_vocab_to must be >= 1, got {self.pad_vocab_to}")
        check(self.logit_softcap is None or self.logit_softcap > 0, "model.logit_softcap must be > 0 or null")

    @property
    def init_scale(self) -> float:
        # A fixed 0.02 (GPT-2) is far too small for narrow models: logits start near zero
        # and tiny models sit on the unigram plateau for a seed-dependent time, which
        # swamps size effects in a scaling study. Fan-in scaling fixes that.
        return self.init_std if self.init_std is not None else 0.5 / math.sqrt(self.d_model)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def rope_dim(self) -> int:
        return 2 * int(self.head_dim * self.rope_frac / 2)

    @property
    def schedule(self) -> list[int]:
        """Block index of each block application, in order (loops unrolled)."""
        ll = self.loop_layers or []
        if not ll or self.loop_count == 1:
            return list(range(self.n_layer))
        return list(range(ll[0])) + ll * self.loop_count + list(range(ll[-1] + 1, self.n_layer))

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.mlp == "swiglu":
            h = int(8 * self.d_model / 3)
            return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)
        return 4 * self.d_model

    @property
    def padded_vocab(self) -> int:
        assert self.vocab_size is not None, "vocab_size must be set before building the model"
        p = self.pad_vocab_to
        return p * ((self.vocab_size + p - 1) // p)


# ---------------------------------------------------------------------------
# Rotary position embedding


def rope_tables(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [seq_len, head_dim // 2] (fp32): angle[t, i] = t * theta^(-2i/head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by position (HF Llama rotate-half convention); with tables
    narrower than D/2 (partial RoPE) only the first 2 * cos.shape[-1] dims rotate.

    Equivalent to HF's `x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)` with
    rotate_half(x) = cat(-x2, x1), and the same rounding (a multiply, then an add).
    cos/sin are [T, D/2] (positions 0..T-1 of every row) or [B, T, D/2] (per-token positions).
    """
    cos = cos.unsqueeze(-2).to(x.dtype)  # [(B,) T, 1, D/2] broadcasts over (batch and) heads
    sin = sin.unsqueeze(-2).to(x.dtype)
    if kernels is not None:
        return kernels.RopeFn.apply(x, cos, sin)
    d = cos.shape[-1]
    x1, x2 = x[..., :d], x[..., d:2 * d]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., 2 * d:]), dim=-1)


# ---------------------------------------------------------------------------
# RMSNorm


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm; `order` gives x's dims in a permuted order (pair-order RoPE's q, k)."""

    def forward(self, x: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if order is None else self.weight[order]
        if kernels is not None and x.device.type == "cpu":  # closed-form backward
            return kernels.RMSNormFn.apply(x, w, self.eps if self.eps is not None else torch.finfo(x.dtype).eps)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


# ---------------------------------------------------------------------------
# Blocks


class KVCache:
    """Keys and values of past positions for incremental decoding, one slot per layer."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, dtype: torch.dtype, device) -> None:
        shape = (len(cfg.schedule), batch, cfg.kv_heads, max_len, cfg.head_dim)  # a slot per block application
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # number of positions already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, kvH, T, D] after the cached positions; return all keys/values so far."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.kv_heads, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.sizes = (cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim)
        self.wqkv = nn.Linear(cfg.d_model, sum(self.sizes), bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.full_rope = cfg.rope_dim == cfg.head_dim  # pair-order RoPE needs it
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, mask=None):
        B, T, _ = x.shape
        # pair-order q/k rows on CPU in fp32 (kernels.pair_rows); a cache keeps one key layout
        rows = kernels.pair_rows(self, x) if kernels is not None and cache is None else None
        qkv = self.wqkv(x) if rows is None else F.linear(x, self.wqkv.weight[rows])
        q, k, v = qkv.split(self.sizes, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.kv_heads, self.head_dim)
        v = v.view(B, T, self.kv_heads, self.head_dim)
        if self.q_norm is not None:  # QK-norm: RMSNorm over head_dim, before RoPE
            dims = None if rows is None else rows[:self.head_dim]
            q, k = self.q_norm(q, dims), self.k_norm(k, dims)
        rope = apply_rope if rows is None else kernels.rotate_pairs
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]

        causal = mask is None
        if mask is not None:  # packed rows: the caller's [B, T, T] mask, broadcast over heads
            mask = mask[:, None]
        elif cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)
            if past > 0:  # new queries sit at positions past..past+T-1 and see keys 0..past+T-1
                causal = False
                if T > 1:
                    qpos = torch.arange(past, past + T, device=x.device)[:, None]
                    mask = torch.arange(past + T, device=x.device)[None, :] <= qpos
        gqa = self.kv_heads != self.n_head
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def _load_from_state_dict(self, state_dict, prefix, *args):
        _fuse_legacy(state_dict, prefix, ("wq", "wk", "wv"), "wqkv")
        super()._load_from_state_dict(state_dict, prefix, *args)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            self.w13 = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)  # rows [gate; up]
        else:
            self.w1 = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)  # up (relu2, leaky_relu2)
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)  # down

    def forward(self, x):
        if self.kind == "swiglu":
            gu = self.w13(x)
            if kernels is not None:
                return self.w2(kernels.SwiGLUFn.apply(gu))
            gate, up = gu.chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        if self.kind == "leaky_relu2":  # keeps a gradient for negative inputs (parameter-golf records)
            return self.w2(F.leaky_relu(self.w1(x), 0.5).square())
        return self.w2(F.relu(self.w1(x)).square())

    def _load_from_state_dict(self, state_dict, prefix, *args):
        if self.kind == "swiglu":
            _fuse_legacy(state_dict, prefix, ("w1", "w3"), "w13")
        super()._load_from_state_dict(state_dict, prefix, *args)


def _fuse_legacy(state_dict, prefix: str, parts: tuple[str, ...], fused: str) -> None:
    """Concatenate pre-fusion weights (e.g. wq, wk, wv) into the fused one, in place."""
    keys = [f"{prefix}{p}.weight" for p in parts]
    if all(k in state_dict for k in keys):
        state_dict[f"{prefix}{fused}.weight"] = torch.cat([state_dict.pop(k) for k in keys])


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache: KVCache | None = None, layer: int = 0, mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.mlp_norm(x))


# ---------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ConfigError("model.vocab_size is not set; it must come from the tokenizer before building the model")
        cfg.validate()
        self.cfg = cfg
        # Modules are allocated on the meta device and materialised once, so the default
        # (kaiming) init of nn.Linear is skipped: GPT(cfg) after torch.manual_seed(s) equals a
        # meta-device build + to_empty + init_weights() after the same seed.
        device = torch.get_default_device()
        with torch.device("meta"):
            # _weight skips nn.Embedding's own normal_ init, which on the meta device imports
            # torch._dynamo (~1-2 s of every train / eval start); init_weights sets it anyway.
            self.tok_emb = nn.Embedding(cfg.padded_vocab, cfg.d_model,
                                        _weight=torch.empty(cfg.padded_vocab, cfg.d_model))
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
            self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
            self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
            # One learned scalar per skip connection (application i -> application L - 1 - i).
            self.skip_weights = nn.Parameter(torch.empty(len(cfg.schedule) // 2)) if cfg.unet_skips else None
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # RoPE tables: derived state, never saved; rebuilt by init_weights (meta-device init).
        self.register_buffer("rope_cos", torch.empty(0, device="meta"), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0, device="meta"), persistent=False)
        if device.type != "meta":
            self.to_empty(device=device)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer in place.

        normal(0, init_scale) for embeddings and linears; output projections (wo, w2) get
        init_scale / sqrt(2 * block applications) (GPT-2); RMSNorm weights and skip weights 1. Only whole-tensor in-place
        ops, so it also runs on FSDP2-sharded (DTensor) parameters after `to_empty()`.
        (Padding vocab rows are drawn like the rest; they are never read.)
        """
        cfg = self.cfg
        if cfg.tie_embeddings and self.lm_head.weight is not self.tok_emb.weight:
            self.lm_head.weight = self.tok_emb.weight  # to_empty() from meta unties shared parameters
        device = self.tok_emb.weight.device
        cos, sin = rope_tables(cfg.seq_len, cfg.rope_dim, cfg.rope_theta, device=device)
        self.rope_cos, self.rope_sin = cos, sin
        std = cfg.init_scale
        out_std = std / math.sqrt(2 * len(cfg.schedule))
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_out = name.endswith(".wo") or name.endswith(".w2")
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_out else std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        if self.skip_weights is not None:
            nn.init.ones_(self.skip_weights)

    def _rope(self, start: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + length
        if self.rope_cos.shape[0] < end or self.rope_cos.device != device:
            n = max(end, self.cfg.seq_len)
            self.rope_cos, self.rope_sin = rope_tables(n, self.cfg.rope_dim, self.cfg.rope_theta, device=device)
        return self.rope_cos[start:end], self.rope_sin[start:end]

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None, pos: torch.Tensor | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final normalised hidden states [B, T, d_model] for token ids idx [B, T].

        pos [B, T]: each token's position (default 0..T-1, after the cache's); mask
        [B, T, T] bool, True = may attend (default causal). Not combined with a cache.
        """
        if cache is not None and (pos is not None or mask is not None):
            raise ValueError("hidden(): pos/mask (packed rows) cannot be combined with a KV cache")
        if pos is None:
            start = cache.pos if cache is not None else 0
            cos, sin = self._rope(start, idx.shape[1], idx.device)
        else:
            cos, sin = self._rope(0, int(pos.max()) + 1, idx.device)
            cos, sin = cos[pos], sin[pos]  # [B, T, D/2]: each token's own angle
        x = self.tok_emb(idx)
        order = self.cfg.schedule
        L = len(order)
        skips = []  # outputs of the first-half applications (U-Net skips), popped by their mirrors
        for i, b in enumerate(order):
            if self.skip_weights is not None and i >= L - L // 2:
                x = x + self.skip_weights[L - 1 - i] * skips.pop()
            x = self.blocks[b](x, cos, sin, cache, i, mask)
            if self.skip_weights is not None and i < L // 2:
                skips.append(x)
        if cache is not None:
            cache.pos += idx.shape[1]
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits over the real vocabulary [..., vocab_size] from hidden states."""
        logits = self.lm_head(h)
        V = self.cfg.vocab_size
        if logits.shape[-1] != V:
            logits = logits[..., :V]  # padding ids never get probability mass
        cap = self.cfg.logit_softcap
        if cap is not None:
            logits = cap * torch.tanh(logits.float() / cap)
        return logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """idx [B, T] token ids. Without targets: logits [B, T, vocab_size].

        With targets [B, T] (ignore_index -100): the fp32 cross-entropy, a scalar
        (reduction="mean" or "sum") or per token [B, T] (reduction="none").
        """
        if idx.shape[1] > self.cfg.seq_len:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds model.seq_len {self.cfg.seq_len}")
        logits = self.logits(self.hidden(idx))
        if targets is None:
            return logits
        V = self.cfg.vocab_size
        loss = F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1),
                               ignore_index=-100, reduction=reduction)
        return loss.view(targets.shape) if reduction == "none" else loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to idx [B, T]; returns [B, T + max_new_tokens].

        temperature 0 means greedy. With use_cache, keys/values of past positions are kept
        (KVCache) while the context fits in seq_len; beyond that the window slides and each
        step re-reads the last seq_len tokens, exactly as without the cache.
        """
        L = self.cfg.seq_len
        cache, fed = None, 0  # fed: how many tokens of idx the cache already holds
        for _ in range(max_new_tokens):
            if use_cache and idx.shape[1] <= L:
                if cache is None:
                    p = next(self.parameters())
                    dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(idx.device.type) else p.dtype
                    cache = KVCache(self.cfg, idx.shape[0], L, dtype, idx.device)
                h = self.hidden(idx[:, fed:], cache)
                fed = idx.shape[1]
            else:
                h = self.hidden(idx[:, -L:])
            logits = self.logits(h[:, -1]).float()
            idx = torch.cat((idx, sample(logits, temperature, top_k, top_p, generator)), dim=1)
        return idx


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one id per row from logits [B, V] -> [B, 1] (temperature 0: argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
