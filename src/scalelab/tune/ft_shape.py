"""The shape of a Hugging Face decoder (Llama family) for `scalelab suggest --finetune`.

Either read from a model's config.json (`--model-config`), or, from a parameter count
alone, a Llama-3-8B-shaped model: head_dim 128, d_model = 128 x n_layer (8B: 32 x 4096),
GQA with a quarter of the heads as key/value heads (8B: 32 q, 8 kv), SwiGLU width 3.5 x
d_model (8B: 14,336), vocabulary 128,256, untied embeddings. Then the non-embedding
parameters per layer are 2h^2 (q, o) + 2 h^2/4 (k, v) + 3 x 3.5 h^2 (gate, up, down)
= 13 h^2 (+ 2h norms), and --params 7e9 gives exactly Llama-3-8B (6.98e9 non-embedding,
8.03e9 in all).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scalelab.errors import ConfigError

LLAMA3_VOCAB = 128256
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class HFShape:
    n_layer: int
    hidden: int
    n_head: int
    n_kv_head: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False
    head_dim: int | None = None
    source: str = ""

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.n_head

    @property
    def q_width(self) -> int:
        return self.n_head * self.hd

    @property
    def kv_width(self) -> int:
        return self.n_kv_head * self.hd

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder block."""
        h, q, kv, f = self.hidden, self.q_width, self.kv_width, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def layer_params(self) -> int:
        return sum(i * o for i, o in self.linear_dims().values()) + 2 * self.hidden  # + two RMSNorm weights

    def params(self) -> dict[str, int]:
        emb = self.vocab * self.hidden
        head = 0 if self.tie_embeddings else emb
        non_emb = self.n_layer * self.layer_params() + self.hidden  # + final norm
        return {"total": non_emb + emb + head, "non_embedding": non_emb, "embedding": emb, "lm_head": head,
                "matmul": self.n_layer * (self.layer_params() - 2 * self.hidden) + self.vocab * self.hidden}

    def lora_params(self, rank: int, targets: tuple[str, ...]) -> int:
        """Adapter parameters: r x (in + out) per targeted linear of every block."""
        dims = self.linear_dims()
        return self.n_layer * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)

    def describe(self) -> str:
        return (f"{self.n_layer} layers x {self.hidden} hidden, {self.n_head} heads ({self.n_kv_head} kv, head_dim "
                f"{self.hd}), intermediate {self.intermediate}, vocab {self.vocab:,}"
                + (", tied embeddings" if self.tie_embeddings else ""))


def llama3_shape_for_params(non_embedding: float, vocab: int = LLAMA3_VOCAB) -> HFShape:
    """The Llama-3-8B-shaped model whose non-embedding parameters are nearest `non_embedding`."""
    def shape(n_layer: int) -> HFShape:
        h = 128 * n_layer
        kv = max(1, n_layer // 4)
        f = max(256, round(3.5 * h / 256) * 256)
        return HFShape(n_layer=n_layer, hidden=h, n_head=n_layer, n_kv_head=kv, intermediate=f, vocab=vocab,
                       source="Llama-3-8B-shaped (head_dim 128, d_model 128 x layers, kv heads = heads / 4, "
                              "SwiGLU 3.5 x d_model, untied)")
    best = min(range(1, 257), key=lambda n: abs(shape(n).params()["non_embedding"] - non_embedding))
    return shape(best)


def shape_from_hf_config(path: str | Path) -> HFShape:
    """The decoder shape in a Hugging Face config.json (or a model directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ConfigError(f"--model-config: '{p}' does not exist; give a Hugging Face config.json (or the model "
                          "directory that holds it)")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-config: '{p}' is not valid JSON ({e})") from None
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    need = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise ConfigError(f"--model-config: '{p}' lacks {missing}; give the config.json of a Llama-style decoder "
                          "(num_hidden_layers, hidden_size, num_attention_heads, intermediate_size, vocab_size)")
    return HFShape(n_layer=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], n_head=cfg["num_attention_heads"],
                   n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                   intermediate=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                   tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), head_dim=cfg.get("head_dim"),
                   source=f"{p} ({cfg.get('model_type', 'decoder')})")
