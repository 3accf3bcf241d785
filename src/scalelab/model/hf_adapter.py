"""State-dict adapter: scalelab GPT <-> Hugging Face `LlamaForCausalLM`.

No tensor is permuted, because gpt.py applies RoPE with HF Llama's rotate-half
convention; the fused projections are split by rows (wqkv -> q, k, v; w13 -> gate, up)
on export and concatenated on import. Embedding and lm_head rows are cut back from cfg.padded_vocab
to cfg.vocab_size (the padding rows are never used). Supported: mlp="swiglu", no
qk_norm, no logit_softcap, no U-Net skips, loops or partial RoPE -- anything else is not
a Llama and raises ConfigError.

    ours                                HF Llama
    tok_emb.weight                      model.embed_tokens.weight
    blocks.{i}.attn_norm.weight         model.layers.{i}.input_layernorm.weight
    blocks.{i}.attn.wqkv.weight         model.layers.{i}.self_attn.{q,k,v}_proj.weight (split by rows)
    blocks.{i}.attn.wo.weight           model.layers.{i}.self_attn.o_proj.weight
    blocks.{i}.mlp_norm.weight          model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.mlp.w13.weight           model.layers.{i}.mlp.{gate,up}_proj.weight (split by rows)
    blocks.{i}.mlp.w2.weight            model.layers.{i}.mlp.down_proj.weight
    norm.weight                         model.norm.weight
    lm_head.weight                      lm_head.weight   (omitted when tied)

Pre-fusion names (attn.wq/wk/wv, mlp.w1/w3) in a bare state dict export too.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from scalelab.errors import ConfigError
from scalelab.model.gpt import GPT, GPTConfig

_RULES: list[tuple[str, str]] = [
    (r"tok_emb\.weight", "model.embed_tokens.weight"),
    (r"blocks\.(\d+)\.attn_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    # pre-fusion names, still accepted in bare state dicts (old checkpoints)
    (r"blocks\.(\d+)\.attn\.wq\.weight", r"model.layers.\1.self_attn.q_proj.weight"),
    (r"blocks\.(\d+)\.attn\.wk\.weight", r"model.layers.\1.self_attn.k_proj.weight"),
    (r"blocks\.(\d+)\.attn\.wv\.weight", r"model.layers.\1.self_attn.v_proj.weight"),
    (r"blocks\.(\d+)\.attn\.wo\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"blocks\.(\d+)\.mlp_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"blocks\.(\d+)\.mlp\.w1\.weight", r"model.layers.\1.mlp.gate_proj.weight"),
    (r"blocks\.(\d+)\.mlp\.w3\.weight", r"model.layers.\1.mlp.up_proj.weight"),
    (r"blocks\.(\d+)\.mlp\.w2\.weight", r"model.layers.\1.mlp.down_proj.weight"),
    (r"norm\.weight", "model.norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
]


# fused parameter -> the HF parameters it holds, top rows first
_FUSED = {"attn.wqkv": ("attn.wq", "attn.wk", "attn.wv"), "mlp.w13": ("mlp.w1", "mlp.w3")}


def _split(name: str, tensor: torch.Tensor, cfg: GPTConfig) -> list[tuple[str, torch.Tensor]]:
    """A fused weight as its pre-fusion (name, rows) parts; any other weight unchanged."""
    for fused, parts in _FUSED.items():
        if name.endswith(f".{fused}.weight"):
            block = name[: -len(f"{fused}.weight")]
            if fused == "attn.wqkv":
                q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
                sizes = (q, kv, kv)
            else:
                sizes = (cfg.ffn_dim, cfg.ffn_dim)
            return [(f"{block}{p}.weight", t) for p, t in zip(parts, tensor.split(sizes), strict=True)]
    return [(name, tensor)]


def check_llama_compatible(cfg: GPTConfig) -> None:
    problems = []
    if cfg.mlp != "swiglu":
        problems.append(f"model.mlp={cfg.mlp} (Llama uses swiglu)")
    if cfg.qk_norm:
        problems.append("model.qk_norm=true (Llama has no QK-norm)")
    if cfg.logit_softcap is not None:
        problems.append("model.logit_softcap is set (Llama has no logit soft-cap)")
    if getattr(cfg, "unet_skips", False):
        problems.append("model.unet_skips=true (Llama has no skip connections between blocks)")
    if len(cfg.schedule) != cfg.n_layer:
        problems.append("model.loop_layers with model.loop_count > 1 (Llama has no weight-shared, looped layers)")
    if cfg.rope_dim != cfg.head_dim:
        problems.append(f"model.rope_frac={cfg.rope_frac} (Llama rotates every dim of a head)")
    if problems:
        raise ConfigError("this model cannot be exported as LlamaForCausalLM: " + "; ".join(problems))


def hf_name(name: str) -> str:
    """The HF Llama parameter name for one of ours (KeyError if there is none)."""
    for pattern, repl in _RULES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise KeyError(f"no Hugging Face Llama name for parameter '{name}'")


def to_hf_llama_state_dict(model: GPT | dict[str, torch.Tensor], cfg: GPTConfig | None = None) -> dict[str, torch.Tensor]:
    """Our state dict renamed for `LlamaForCausalLM.load_state_dict` (vocab rows cut to vocab_size)."""
    if isinstance(model, GPT):
        cfg, sd = model.cfg, model.state_dict()
    else:
        if cfg is None:
            raise ValueError("pass cfg along with a bare state dict")
        sd = model
    check_llama_compatible(cfg)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        if name in ("tok_emb.weight", "lm_head.weight"):
            tensor = tensor[: cfg.vocab_size]
        for part, t in _split(name, tensor, cfg):
            out[hf_name(part)] = t.detach().contiguous()
    return out


def from_hf_llama_state_dict(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The inverse: HF Llama names -> ours, vocab rows zero-padded to cfg.padded_vocab."""
    inverse = {}
    for ours in _ours_names(cfg):
        inverse[hf_name(ours)] = ours
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        if name not in inverse:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue
            raise KeyError(f"unexpected Hugging Face parameter '{name}' for this config")
        ours = inverse[name]
        if ours in ("tok_emb.weight", "lm_head.weight") and tensor.shape[0] < cfg.padded_vocab:
            pad = tensor.new_zeros(cfg.padded_vocab - tensor.shape[0], tensor.shape[1])
            tensor = torch.cat([tensor, pad])
        out[ours] = tensor
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["tok_emb.weight"]
    for i in range(cfg.n_layer):
        for fused, parts in _FUSED.items():
            keys = [f"blocks.{i}.{p}.weight" for p in parts]
            if all(k in out for k in keys):
                out[f"blocks.{i}.{fused}.weight"] = torch.cat([out.pop(k) for k in keys])
    return out


def _ours_names(cfg: GPTConfig) -> list[str]:
    # pre-fusion names: each has one HF counterpart; from_hf_llama_state_dict fuses them after
    names = ["tok_emb.weight", "norm.weight", "lm_head.weight"]
    for i in range(cfg.n_layer):
        names += [f"blocks.{i}.attn_norm.weight", f"blocks.{i}.mlp_norm.weight"]
        names += [f"blocks.{i}.attn.w{x}.weight" for x in "qkvo"]
        names += [f"blocks.{i}.mlp.w{x}.weight" for x in "123"]
    return names


def hf_llama_config(cfg: GPTConfig) -> dict[str, Any]:
    """Keyword arguments for `transformers.LlamaConfig` (also a valid config.json body)."""
    check_llama_compatible(cfg)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers >= 5
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": cfg.init_scale,
        "torch_dtype": "float32",
    }
