"""Peak training memory per device of a scalelab GPT: model states + activations.

The estimate is an accounting of the tensors scalelab's trainer keeps alive (what
`torch.cuda.max_memory_allocated` measures), not of allocator caches, the CUDA context or
NCCL buffers (the caller keeps headroom for those; see `suggest`). Parameter counts
come from model/sizing.py. Checked against measured peaks by bench/bench_memory_model.py
(docs/bench-tune.md).

Model states (N = all parameters, G = data-parallel processes)
- Mixed-precision AdamW keeps 16 bytes per parameter (Rajbhandari et al. 2020, ZeRO,
  sec. 3.1: 2 + 2 + 12 for fp16 weights, fp16 grads, fp32 master/momentum/variance). Our
  trainer keeps fp32 weights and autocasts: 4 (weights) + 4 (grads) + 8 (AdamW m, v) =
  the same 16 B/param, plus the bf16 weight copies autocast makes in the forward pass and
  linear layers save for backward (2 B per matmul parameter).
- DDP adds its gradient buckets (4 B/param; gradient_as_bucket_view is off).
- FSDP2 full sharding divides the 16 B/param by G and adds the unsharded bf16 parameters
  and gradients of the blocks in flight (current + prefetched: 2 x (2 + 2 + 4) B per block
  parameter) and of the root module (embedding, lm_head: bf16 copy + grads, 8 B/param);
  with reshard_after_forward=false every block's bf16 parameters stay gathered (+2 B/param).
- AdamW's foreach path (CPU) allocates one fp32 temporary per parameter in step();
  the fused kernel (CUDA) does not.

Activations (per layer, per token, saved for backward; h = d_model, k = kv_heads x head_dim,
f = ffn_dim, a = activation bytes, r = residual-stream bytes). Method of Korthikanti et
al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", sec. 4.1), who
count s*b*h*(34 + 5*a*s/h) bytes per layer for a GPT-3 block in 16-bit with dropout and
materialized softmax; for our block (RMSNorm, RoPE, SDPA flash attention without an
s^2 term, SwiGLU, no dropout) the same count gives
    r*h (block input, kept by the attention RMSNorm) + c1*a*h (normalized input, once per
    consuming linear under autocast: c1 = 3, else 1) + a*(h + 2k) (q, k after RoPE, v)
    + 2*a*h (attention output, and its re-layout for wo) + r*h (mid-block residual)
    + c2*a*h (normalized input of the MLP: c2 = 2 for SwiGLU under autocast, else 1)
    + 4*a*f (SwiGLU: gate, silu(gate), up, product; ReLU^2: 2*a*f)
    + 4*(n_head + 2) (fp32 softmax log-sum-exp and RMSNorm statistics).
Precision modes: "fp32" (a = r = 4; CPU default), "autocast_bf16" (a = 2, r = 4; the
trainer's bf16 without FSDP), "bf16" (a = r = 2; FSDP2 with bf16 parameters).
With activation checkpointing (each block recomputed in backward) a layer keeps only its
input (r*h per token) and one layer's full activations exist at a time during backward.
The output head holds the final norm's input and output and, at the loss, about 12*V
bytes per token (fp32 logits or their fp32 copy, log-softmax saved for backward, and its
gradient).

Peak: persistent states (weights, optimizer, buckets) + the largest of
  (a) the start of backward: all activations + logits work + autocast weight copies +
      the lm_head weight gradient (4 B x padded_vocab x d_model) and the hidden-state
      gradient (r x d_model per token),
  (b) the end of the backward pass: all gradients + one layer's activations,
  (c) the optimizer step: all gradients + step temporaries,
  (d) with checkpointing: block inputs + one rematerialized layer + (a)'s head gradients.
(Activations are freed as gradients appear during backward; the sum of the two would
double count.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scalelab.model.gpt import GPTConfig
from scalelab.model.sizing import count_params, matmul_params

GIB = 1024**3
PRECISIONS = {"fp32": (4, 4), "autocast_bf16": (2, 4), "bf16": (2, 2)}  # (activation, residual) bytes


def precision_for(parallel: str, dtype: str) -> str:
    """Activation precision mode of the trainer for a parallel mode and dtype (fp32|bf16)."""
    if dtype == "fp32":
        return "fp32"
    return "bf16" if parallel == "fsdp" else "autocast_bf16"


def layer_activation_bytes_per_token(cfg: GPTConfig, precision: str = "autocast_bf16") -> float:
    """Bytes saved for backward per token by one transformer block (formula in module doc)."""
    a, r = PRECISIONS[precision]
    h, k, f = cfg.d_model, cfg.kv_heads * cfg.head_dim, cfg.ffn_dim
    swiglu = cfg.mlp == "swiglu"
    autocast = precision == "autocast_bf16"
    c1 = 3 if autocast else 1
    c2 = (2 if swiglu else 1) if autocast else 1
    attn = r * h + c1 * a * h + a * (h + 2 * k) + 2 * a * h
    if cfg.qk_norm:
        attn += a * (h + k)  # q, k before their RMSNorm
    mlp = r * h + c2 * a * h + (4 if swiglu else 2) * a * f
    stats = 4 * (cfg.n_head + 2)
    return float(attn + mlp + stats)


def head_bytes_per_token(cfg: GPTConfig, precision: str = "autocast_bf16") -> float:
    """Output head at the loss: final-norm input/output + ~12 V bytes of fp32 logits work."""
    a, r = PRECISIONS[precision]
    return float(r * cfg.d_model + a * cfg.d_model + 12 * cfg.vocab_size)


def activation_bytes(cfg: GPTConfig, micro_batch: int, seq_len: int | None = None,
                     precision: str = "autocast_bf16", checkpointing: bool = False) -> dict[str, float]:
    """Activation memory of one micro-batch in bytes.

    {'layers': saved by all layers at the end of the forward pass, 'per_layer': one layer's
    full activations, 'head': the output head at the loss, 'total': layers + head}. With
    checkpointing 'layers' is the block inputs only; a layer's full activations are
    rematerialized one at a time in backward (see estimate_memory's phases).
    """
    T = cfg.seq_len if seq_len is None else seq_len
    tokens = micro_batch * T
    per_layer_full = layer_activation_bytes_per_token(cfg, precision) * tokens
    if checkpointing:
        _, r = PRECISIONS[precision]
        layers = cfg.n_layer * r * cfg.d_model * tokens
    else:
        layers = cfg.n_layer * per_layer_full
    head = head_bytes_per_token(cfg, precision) * tokens
    return {"layers": layers, "per_layer": per_layer_full, "head": head, "total": layers + head, "tokens": tokens}


def _block_params(cfg: GPTConfig) -> int:
    sizes = count_params(cfg)
    return (sizes["non_embedding"] - cfg.d_model) // cfg.n_layer


@dataclass
class MemorySetup:
    micro_batch: int = 1
    seq_len: int | None = None
    world: int = 1
    parallel: str = "none"  # none | ddp | fsdp
    dtype: str = "bf16"  # bf16 | fp32 (bf16 = the trainer's autocast, or FSDP bf16 params)
    checkpointing: bool = False
    reshard_after_forward: bool = True
    optimizer_temporaries: bool = False  # foreach AdamW (CPU) allocates 4 B/param in step()


def estimate_memory(cfg: GPTConfig, setup: MemorySetup) -> dict[str, Any]:
    """Peak bytes per device with the breakdown and the formula of every term."""
    sizes = count_params(cfg)
    N = sizes["total"]
    G = max(1, setup.world) if setup.parallel == "fsdp" else 1
    precision = precision_for(setup.parallel, setup.dtype)
    act = activation_bytes(cfg, setup.micro_batch, setup.seq_len, precision, setup.checkpointing)
    block = _block_params(cfg)
    root = N - cfg.n_layer * block  # embedding (+ untied head) + final norm
    terms: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float, formula: str) -> None:
        terms[name] = {"bytes": float(value), "formula": formula}

    add("weights", 4 * N / G, "4 B/param fp32 master weights" + (f" / {G} (sharded)" if G > 1 else ""))
    add("optimizer", 8 * N / G, "8 B/param AdamW m + v (fp32)" + (f" / {G} (sharded)" if G > 1 else ""))
    add("grads", 4 * N / G, "4 B/param fp32 gradients" + (f" / {G} (sharded)" if G > 1 else ""))
    if setup.parallel == "ddp":
        add("ddp_buckets", 4 * N, "4 B/param DDP gradient buckets")
    if precision == "autocast_bf16":
        # Linear layers save the bf16 copy of their weight; under checkpointing only the
        # lm_head's copy outlives its block (the blocks' copies are recomputed with them).
        matmul = matmul_params(cfg) if not setup.checkpointing else cfg.padded_vocab * cfg.d_model
        add("autocast_weights", 2 * matmul, "2 B per matmul param: bf16 weight copies saved for backward"
            + (" (lm_head only: checkpointed blocks recompute theirs)" if setup.checkpointing else ""))
    if setup.parallel == "fsdp":
        gathered = 2 * (2 + 2 + 4) * block + (2 + 2 + 4) * root
        formula = "unsharded bf16 params + bf16/fp32 grads of 2 blocks in flight (16 B/block param) + root (8 B/param)"
        if not setup.reshard_after_forward:
            gathered += 2 * block * cfg.n_layer
            formula += " + 2 B/param: every block stays gathered (reshard_after_forward=false)"
        add("fsdp_unsharded", gathered, formula)
    if setup.optimizer_temporaries:
        add("optimizer_step_temp", 4 * N / G, "4 B/param: foreach AdamW temporary (sqrt of v) during step()")
    if setup.checkpointing:
        add("activations", act["layers"], f"{cfg.n_layer} layers x r x d_model x micro_batch x seq (block inputs; "
            f"checkpointing rematerializes one layer, {act['per_layer'] / GIB:.3g} GiB, at a time)")
    else:
        add("activations", act["layers"], f"{cfg.n_layer} layers x {layer_activation_bytes_per_token(cfg, precision):.0f} "
            "B/token/layer x micro_batch x seq")
    add("logits", act["head"], "(r + a) * d_model + 12 * vocab bytes per token")

    persistent = terms["weights"]["bytes"] + terms["optimizer"]["bytes"] + terms.get("ddp_buckets", {}).get("bytes", 0.0)
    fsdp_extra = terms.get("fsdp_unsharded", {}).get("bytes", 0.0)
    _, r = PRECISIONS[precision]
    # Backward starts at the loss: the lm_head weight gradient and the hidden-state
    # gradient appear while every saved activation and the logits work still exist.
    head_grads = (4 * cfg.padded_vocab * cfg.d_model) / G + r * cfg.d_model * act["tokens"]
    autocast_w = terms.get("autocast_weights", {}).get("bytes", 0.0)
    phases = {"forward_end": act["total"] + autocast_w + head_grads,
              "backward_end": terms["grads"]["bytes"] + act["per_layer"],
              "optimizer_step": terms["grads"]["bytes"] + terms.get("optimizer_step_temp", {}).get("bytes", 0.0)}
    if setup.checkpointing:  # the top layer rematerialized next to the block inputs and the head gradients
        phases["recompute"] = act["layers"] + act["per_layer"] + autocast_w + head_grads
    peak_phase = max(phases, key=phases.get)
    peak = persistent + fsdp_extra + phases[peak_phase]
    return {
        "peak_bytes": peak,
        "peak_gib": peak / GIB,
        "peak_phase": peak_phase,
        "phases": phases,
        "persistent_bytes": persistent + fsdp_extra,
        "terms": terms,
        "params": N,
        "precision": precision,
        "per_layer_bytes_per_token": layer_activation_bytes_per_token(cfg, precision),
        "formula": "peak = weights + optimizer (+ ddp buckets, fsdp unsharded) + max(activations + logits "
                   "(+ autocast weights) + head grads, grads + one layer, grads + step temporaries"
                   "[, block inputs + one recomputed layer + head grads])",
        "setup": dict(setup.__dict__),
    }
