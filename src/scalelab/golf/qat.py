"""Quantization-aware training (QAT) for the last part of a golf run (`golf.qat_frac`).

From schedule progress 1 - qat_frac on (the trainer's progress: elapsed time over the
cap or steps over max_steps, whichever is further -- the same value the warmdown uses),
every nn.Linear / nn.Embedding weight that the golf quantizer will round to integers is
fake-quantized in the forward pass with exactly the post-training scheme (per-row clip
and fp16 scale from golf/rounding.py, golf.quant / quant_overrides / clip), and its
gradient passes straight through (w + (q(w) - w).detach(): the straight-through
estimator). The model therefore trains against the values the artifact will hold, and
round-to-nearest after training reproduces them.

The weights themselves stay float: only the modules' forward changes (an instance
`forward`, removed by `disable`), so parameter names, the optimizer, checkpoints and the
state dict are untouched (torch.nn.utils.parametrize would rename the weights in the
checkpoint). A tied weight (embedding = head) is fake-quantized with the scheme of its
first name in the state dict, as the quantizer stores it once under that name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scalelab.golf.quantize import INT_SCHEMES, QuantSpec, _dedupe
from scalelab.golf.rounding import _quantize_with, _scale_for, row_clip

_FLAG = "_golf_qat_bits"


def fake_quant(w: torch.Tensor, bits: int, clip: str = "mse", clip_quantile: float = 0.9999984) -> torch.Tensor:
    """The dequantized per-row int`bits` value of w (as golf.quantize stores it) in the
    forward pass, the identity in the backward pass (straight-through estimator)."""
    with torch.no_grad():
        w2 = w.detach().to(torch.float32).reshape(w.shape[0], -1)
        qmax = (1 << (bits - 1)) - 1
        scale = _scale_for(row_clip(w2, bits, clip, clip_quantile), qmax)
        q = (_quantize_with(w2, scale, qmax).to(torch.float32) * scale.to(torch.float32)[:, None])
        q = q.reshape(w.shape).to(w.dtype)
    return w + (q - w).detach()


def _bits_by_param(model: nn.Module, spec: QuantSpec) -> dict[int, int]:
    """{id(parameter): bits} for every weight the quantizer rounds to an integer scheme."""
    unique, _ = _dedupe(model.state_dict(keep_vars=True))
    out = {}
    for name, t in unique:
        scheme = spec.scheme_for(name, t.numel())
        if scheme in INT_SCHEMES and t.dim() == 2:
            out[id(t)] = INT_SCHEMES[scheme]
    return out


def _linear_forward(module: nn.Linear, bits: int, spec: QuantSpec):
    def forward(x):
        return F.linear(x, fake_quant(module.weight, bits, spec.clip, spec.clip_quantile), module.bias)
    return forward


def _embedding_forward(module: nn.Embedding, bits: int, spec: QuantSpec):
    def forward(idx):
        w = fake_quant(module.weight, bits, spec.clip, spec.clip_quantile)
        return F.embedding(idx, w, module.padding_idx, module.max_norm, module.norm_type,
                           module.scale_grad_by_freq, module.sparse)
    return forward


def enable(model: nn.Module, spec: QuantSpec) -> list[str]:
    """Fake-quantize the integer-scheme weights of `model` in its forward pass; returns the
    module names switched (idempotent)."""
    bits_of = _bits_by_param(model, spec)
    switched = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Embedding)) or id(module.weight) not in bits_of:
            continue
        bits = bits_of[id(module.weight)]
        if getattr(module, _FLAG, None) != bits:
            make = _linear_forward if isinstance(module, nn.Linear) else _embedding_forward
            module.forward = make(module, bits, spec)
            setattr(module, _FLAG, bits)
        switched.append(name)
    return switched


def disable(model: nn.Module) -> None:
    """Back to the modules' own forward."""
    for module in model.modules():
        if hasattr(module, _FLAG):
            del module.forward
            delattr(module, _FLAG)


def is_enabled(model: nn.Module) -> bool:
    return any(hasattr(m, _FLAG) for m in model.modules())


def qat_hook(spec: QuantSpec, frac: float):
    """A TrainHooks.before_step that switches QAT on from schedule progress 1 - frac on."""
    start = 1.0 - frac

    def before_step(model: nn.Module, step: int, progress: float | None) -> None:
        if progress is not None and progress >= start and not is_enabled(model):
            enable(model, spec)
    return before_step
