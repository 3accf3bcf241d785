"""Shared by the golf model tests: a tiny GPT config and the stored-parameter count."""
from scalelab.model.gpt import GPTConfig


def cfg(**kw):
    base = dict(vocab_size=97, n_layer=4, d_model=32, n_head=4, n_kv_head=2, seq_len=16, mlp="relu2")
    return GPTConfig(**{**base, **kw})


def unique_params(model):
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
