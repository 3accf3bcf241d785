"""Peak memory per device of `scalelab finetune` (a Hugging Face Llama-style decoder, full or LoRA).

An accounting of the tensors the fine-tune job keeps alive (what mem_tracker /
torch.cuda.max_memory_allocated count; the caller keeps headroom for allocator caches, the
CUDA context and NCCL). Checked against measured peaks by bench/bench_finetune_memory.py
(docs/FINETUNE.md, "suggest"). The job (finetune/job.py, model.py) fixes the dtypes:

- full fine-tune: fp32 weights (AdamW on bf16 weights loses small updates); on GPU bf16
  autocast under DDP / one GPU ("autocast"), FSDP2's bf16 MixedPrecisionPolicy ("bf16").
- LoRA: the frozen base in the compute dtype (bf16 on GPU: 2 B/param), adapters fp32
  (peft), autocast for the adapters ("bf16_autocast"), or FSDP's bf16 policy ("bf16").
- "fp32": everything fp32 (CPU; what the bench measures, and the check of every term).
- AdamW: fused on CUDA (no temporaries), foreach on CPU (optimizer_temporaries).

Model states (N = all parameters, P = trained parameters: N, or the adapters' r (in + out)
per targeted linear; G = processes under FSDP, else 1):
  weights   full: 4N / G;  LoRA: N x (2 in bf16 | 4 in fp32) / G + 4P / G
  grads     4P / G (fp32);  AdamW m, v: 8P / G;  DDP buckets: 4P
  FSDP      unsharded bf16 tensors by phase: the root (embedding, head) from forward through
            backward (2 B/param); in backward two gathered blocks (current + prefetched, 4 B per
            block param) and, full only, the current block's bf16 gradient and its fp32 copy
            for the reduce-scatter (6 B/param); with reshard_after_forward=false every block
            stays gathered (+2 B/param); nothing at the optimizer step.
  autocast  bf16 weight copies linear layers keep for backward: 2 B per trained matmul param.

Activations, bytes per token of one decoder layer, saved for backward (h = hidden, q =
heads x head_dim, f = intermediate; a = 4 in fp32 else 2; r = residual-stream bytes: 4 in
fp32 and autocast, 2 in the bf16 modes). Counted tensor by tensor from transformers'
LlamaDecoderLayer (RMSNorm computes in fp32; sdpa / scalelab_varlen repeat the kv heads,
so k and v are saved at q width):
  RMSNorm x 2    4h (its fp32 input) + r h (normalized, before the weight: full only) + 4
  linear inputs  one per group whose weight trains or carries an adapter: q/k/v input (h),
                 o input (q), gate/up input (h), down input (f); a bytes, or one bf16 copy
                 per consuming linear where autocast casts an fp32 input (q/k/v and gate/up
                 under "autocast"; every adapter's input under "bf16_autocast")
  attention      3 a q (q after RoPE, repeated k, v) + a q (output) + 4 n_head (log-sum-exp)
  SwiGLU         3 a f (gate, silu(gate), up)
  LoRA           a r per adapter (the low-rank activation)
Head, per labelled token (the job projects only labelled positions): its input when the head
trains (a h, 4 in fp32), ~12 V bytes at the loss (fp32 log-softmax, its gradient and the
logits' gradient); per token: final norm 4h + r h (full) + 4, RoPE cos/sin 2 r head_dim,
ids / labels ~17 B, the [B, 1, T, T] bool mask (T bytes). Activation checkpointing
(transformers' non-reentrant, per decoder layer) keeps r h per layer and rematerializes one
layer at a time.

Peak = persistent states + the largest phase (each with its FSDP unsharded tensors): the
loss (every saved activation + 12 V per labelled token), the head's backward (4 V per
labelled token + the head weight's and hidden states' gradients), the top layer's backward
(the gradients in flight: 3 a f + 2 r h per token, less the down projection's freed input;
with checkpointing next to the rematerialized layer), the first layer's backward (every
gradient above it + one layer), the optimizer step (grads + temporaries). Measured: exact
to < 0.1% without checkpointing, 2-9% over with it (part of the rematerialized layer is
already freed when the gradients peak).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scalelab.errors import ConfigError
from scalelab.tune.ft_shape import LINEARS, HFShape

GIB = 1024**3
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # finetune/config.py's default
MODES = ("fp32", "autocast", "bf16_autocast", "bf16")


def precision_for(parallel: str, dtype: str, lora: bool) -> str:
    """The activation precision mode of the fine-tune job (module doc)."""
    if dtype == "fp32":
        return "fp32"
    if parallel == "fsdp":
        return "bf16"
    return "bf16_autocast" if lora else "autocast"


@dataclass
class FTMemorySetup:
    micro_batch: int = 1
    seq_len: int = 1024
    world: int = 1
    parallel: str = "none"  # none | ddp | fsdp
    dtype: str = "bf16"  # bf16 (GPU) | fp32 (CPU)
    lora: bool = False
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = field(default=DEFAULT_LORA_TARGETS)
    checkpointing: bool = False
    reshard_after_forward: bool = True
    optimizer_temporaries: bool = False  # foreach AdamW (CPU)
    labelled_fraction: float = 1.0  # share of positions with a label (the head runs on those only)


def _check(shape: HFShape, s: FTMemorySetup) -> None:
    bad = [t for t in s.lora_targets if t not in LINEARS]
    if s.lora and bad:
        raise ConfigError(f"--lora-targets {bad} are not linear layers of a Llama-style block; use some of "
                          f"{list(LINEARS)}")
    if s.lora and s.lora_rank < 1:
        raise ConfigError(f"--lora-rank must be >= 1, got {s.lora_rank}")
    if not 0 < s.labelled_fraction <= 1:
        raise ConfigError(f"--labelled-fraction must be in (0, 1], got {s.labelled_fraction}")


def layer_bytes_per_token(shape: HFShape, s: FTMemorySetup) -> dict[str, float]:
    """Bytes one decoder layer saves for backward per token, by part (module doc)."""
    mode = precision_for(s.parallel, s.dtype, s.lora)
    a = 4 if mode == "fp32" else 2
    r = 4 if mode in ("fp32", "autocast") else 2
    h, q, f = shape.hidden, shape.q_width, shape.intermediate
    trained = set(LINEARS) if not s.lora else set(s.lora_targets)
    parts = {"norms": 2 * (4 * h + (r * h if not s.lora else 0) + 4)}
    groups = [(("q_proj", "k_proj", "v_proj"), h, r == 4), (("o_proj",), q, False),
              (("gate_proj", "up_proj"), h, r == 4), (("down_proj",), f, False)]
    inputs = 0.0
    for members, width, fp32_input in groups:
        users = [m for m in members if m in trained]
        if not users:
            continue
        if mode == "autocast" and fp32_input or mode == "bf16_autocast":
            inputs += 2 * width * len(users)  # a bf16 cast per consuming linear
        else:
            inputs += a * width
    parts["linear_inputs"] = inputs
    parts["attention"] = 4 * a * q + 4 * shape.n_head
    parts["mlp"] = 3 * a * f
    if s.lora:
        parts["lora"] = a * s.lora_rank * len(s.lora_targets)
    parts["total"] = sum(parts.values())
    return parts


def activation_bytes(shape: HFShape, s: FTMemorySetup) -> dict[str, float]:
    """{'layers', 'per_layer', 'head' (at the loss), 'other' (per token outside the layers), 'tokens'}."""
    mode = precision_for(s.parallel, s.dtype, s.lora)
    a = 4 if mode == "fp32" else 2
    r = 4 if mode in ("fp32", "autocast") else 2
    h = shape.hidden
    tokens = s.micro_batch * s.seq_len
    labelled = tokens * s.labelled_fraction
    per_layer = layer_bytes_per_token(shape, s)["total"] * tokens
    if s.checkpointing:
        layers = shape.n_layer * r * h * tokens
    else:
        layers = shape.n_layer * per_layer
        if s.lora:  # the first norm's input (the frozen embedding) needs no gradient
            layers -= (4 * h + 4) * tokens
    head_in = 0 if s.lora else (4 if mode == "fp32" else 2) * h
    head = (head_in + 12 * shape.vocab) * labelled
    other = (4 * h + (r * h if not s.lora else 0) + 4 + 2 * r * shape.hd + 17 + s.seq_len) * tokens
    return {"layers": layers, "per_layer": per_layer, "head": head, "other": other, "tokens": tokens,
            "labelled": labelled, "total": layers + head + other}


def _block_params(shape: HFShape) -> int:
    return shape.layer_params()


def estimate_ft_memory(shape: HFShape, s: FTMemorySetup) -> dict[str, Any]:
    """Peak bytes per device with the breakdown and the formula of every term."""
    _check(shape, s)
    sizes = shape.params()
    N = sizes["total"]
    P = shape.lora_params(s.lora_rank, tuple(s.lora_targets)) if s.lora else N
    G = max(1, s.world) if s.parallel == "fsdp" else 1
    mode = precision_for(s.parallel, s.dtype, s.lora)
    act = activation_bytes(shape, s)
    block = _block_params(shape)
    root = N - shape.n_layer * block
    shard = f" / {G} (sharded)" if G > 1 else ""
    terms: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float, formula: str) -> None:
        terms[name] = {"bytes": float(value), "formula": formula}

    if s.lora:
        base_b = 2 if s.dtype == "bf16" else 4
        add("frozen_weights", base_b * N / G, f"{base_b} B/param frozen base in the compute dtype "
            f"({N:,} params){shard}")
        add("weights", 4 * P / G, f"4 B/param fp32 adapters ({P:,} = r x (in + out) per targeted linear){shard}")
    else:
        add("weights", 4 * N / G, f"4 B/param fp32 weights ({N:,} params){shard}")
    add("optimizer", 8 * P / G, f"8 B per trained param: AdamW m + v (fp32){shard}")
    add("grads", 4 * P / G, f"4 B per trained param: fp32 gradients{shard}")
    if s.parallel == "ddp":
        add("ddp_buckets", 4 * P, "4 B per trained param: DDP gradient buckets")
    if mode == "autocast":
        matmul = sizes["matmul"] if not s.checkpointing else shape.vocab * shape.hidden
        add("autocast_weights", 2 * matmul, "2 B per matmul param: bf16 weight copies saved for backward"
            + (" (lm_head only: checkpointed layers recompute theirs)" if s.checkpointing else ""))
    elif mode == "bf16_autocast" and not s.checkpointing:
        add("autocast_weights", 2 * P, "2 B per adapter param: bf16 copies of the fp32 adapters")
    # FSDP2's unsharded bf16 tensors, by phase: the root group (embedding, head, final norm)
    # stays gathered from forward through backward; in backward the current and prefetched
    # blocks are gathered (2 x 2 B/param) with the current block's bf16 gradient and its fp32
    # copy for the reduce-scatter (6 B/param, full only); nothing at the optimizer step.
    fsdp_at: dict[str, float] = {}
    if s.parallel == "fsdp":
        keep = 0 if s.reshard_after_forward else 2 * block * shape.n_layer
        flight = (2 * 2 + (0 if s.lora else 6)) * block
        fsdp_at = {"loss": 2 * root + keep, "head_backward": 2 * root + keep, "top_layer_backward": 2 * root + keep
                   + flight, "first_layer_backward": 2 * root + keep + flight, "optimizer_step": 0.0}
        formula = ("2 B per root param (embedding, head: gathered through forward and backward) + in backward 2 "
                   "gathered blocks (4 B/block param)" + ("" if s.lora else " + one block's bf16 and fp32 gradients "
                                                                            "(6 B/block param)"))
        if keep:
            formula += " + 2 B/param: every block stays gathered (reshard_after_forward=false)"
        add("fsdp_unsharded", max(fsdp_at.values()), formula)
    if s.optimizer_temporaries:
        add("optimizer_step_temp", 4 * P / G, "4 B per trained param: foreach AdamW temporary during step()")
    per_tok = layer_bytes_per_token(shape, s)["total"]
    if s.checkpointing:
        r = 4 if mode in ("fp32", "autocast") else 2
        add("activations", act["layers"], f"{shape.n_layer} layers x {r} x hidden x micro_batch x seq (layer inputs; "
            f"checkpointing rematerializes one layer, {act['per_layer'] / GIB:.3g} GiB, at a time)")
    else:
        add("activations", act["layers"], f"{shape.n_layer} layers x {per_tok:,.0f} B/token/layer x micro_batch x seq")
    add("logits", act["head"], "(head input + 12 x vocab) bytes per labelled token"
        + (f" ({s.labelled_fraction:.0%} of positions)" if s.labelled_fraction < 1 else ""))
    add("other_activations", act["other"], "final norm, RoPE cos/sin, ids/labels, the T x T bool mask, per token")

    persistent = sum(terms[k]["bytes"] for k in ("frozen_weights", "weights", "optimizer", "ddp_buckets")
                     if k in terms)
    a = 4 if mode == "fp32" else 2
    r = 4 if mode in ("fp32", "autocast") else 2
    tokens, labelled = act["tokens"], act["labelled"]
    autocast_w = terms.get("autocast_weights", {}).get("bytes", 0.0)
    grads = terms["grads"]["bytes"]
    # the head weight's gradient: fp32, or under FSDP unsharded bf16 until the root's reduce-scatter
    head_w_grad = 0.0 if s.lora else (2 if s.parallel == "fsdp" else 4) * shape.vocab * shape.hidden
    # Gradients of one layer's activations while its backward runs: the SwiGLU's three
    # (a f each) and the residual stream's two (r h each) per token, less the down
    # projection's saved input (a f), released as its backward runs, before they appear.
    down_saved = not s.lora or "down_proj" in s.lora_targets
    transient = ((3 - down_saved) * a * shape.intermediate + 2 * r * shape.hidden) * tokens
    outside = act["other"] + autocast_w  # alive through the whole backward pass
    layers = act["layers"]
    # the embedding's gradient comes last -- unless it is the head's (tied), which came first
    emb_grad = 0 if shape.tie_embeddings else 4 * shape.vocab * shape.hidden
    grads_above_first = grads - (0.0 if s.lora else (emb_grad + 4 * block) / G)
    phases = {
        # the loss: every saved activation + fp32 log-softmax, its gradient and the logits' gradient
        "loss": layers + act["head"] + outside,
        # the head's backward: the logits' gradient (4 V), the head weight's and the hidden states' gradients
        "head_backward": layers + outside + 4 * shape.vocab * labelled + head_w_grad + (4 * shape.hidden * labelled
                                                                                       + r * shape.hidden * tokens),
        # the top layer's backward (with checkpointing: rematerialized next to the layer inputs)
        "top_layer_backward": layers + (act["per_layer"] if s.checkpointing else 0.0) + outside + transient
                              + head_w_grad,
        # the first layer's backward: the gradients of everything above it exist
        "first_layer_backward": grads_above_first + act["per_layer"] + outside + transient,
        "optimizer_step": grads + terms.get("optimizer_step_temp", {}).get("bytes", 0.0),
    }
    phases = {k: v + fsdp_at.get(k, 0.0) for k, v in phases.items()}
    peak_phase = max(phases, key=phases.get)
    peak = persistent + phases[peak_phase]
    return {"peak_bytes": peak, "peak_gib": peak / GIB, "peak_phase": peak_phase, "phases": phases,
            "persistent_bytes": persistent, "terms": terms, "params": N, "trainable_params": P,
            "precision": mode, "per_layer_bytes_per_token": per_tok,
            "formula": "peak = weights + optimizer (+ ddp buckets) + the largest phase (+ its fsdp unsharded): the loss "
                       "(activations + 12 V per labelled token), the head's backward, the top layer's backward "
                       "(+ its in-flight gradients), the first layer's backward (+ the gradients above it), the "
                       "optimizer step (grads + temporaries)",
            "setup": {**s.__dict__, "lora_targets": list(s.lora_targets)}}
