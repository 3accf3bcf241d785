"""A decoder-only GPT (Llama layout: RoPE, RMSNorm, SwiGLU), readable top to bottom.

CONTRACT STUB -- the full model is being written; GPTConfig is final.
"""
from __future__ import annotations

from dataclasses import dataclass

from scalelab.errors import ConfigError


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
    mlp: str = "swiglu"  # swiglu | relu2
    qk_norm: bool = False
    tie_embeddings: bool = True
    logit_softcap: float | None = None  # tanh soft-cap on logits (Gemma 2 / modded-nanogpt)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

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
        check(self.mlp in ("swiglu", "relu2"), f"model.mlp must be swiglu or relu2, got '{self.mlp}'")
        check(self.vocab_size is None or self.vocab_size >= 2, f"model.vocab_size must be >= 2, got {self.vocab_size}")
        check(self.pad_vocab_to >= 1, f"model.pad_vocab_to must be >= 1, got {self.pad_vocab_to}")
        check(self.logit_softcap is None or self.logit_softcap > 0, "model.logit_softcap must be > 0 or null")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

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
