"""Post-training quantization of a state dict for the golf artifact.

Schemes, chosen per tensor:
- int8 / int7 / int6 / int5 / int4: symmetric per-row quantization. A tensor is viewed as
  [rows, cols] (rows = its first dimension: the output channels of a Linear, the tokens
  of an embedding); each row gets a clip value c and the scale s = c / qmax with
  qmax = 2^(bits-1) - 1, stored as fp16; values are q = round(clamp(w, -c, c) / s),
  stored one per byte (the compressor removes the unused high bits).
- fp16 / fp32: values kept as they are (in that precision).

Which scheme: the first `overrides` pattern (fnmatch on the parameter name) that
matches, else fp16 for tensors of at most `keep_float_numel` values (norm weights, skip
scalars: tiny, and sensitive), else `default`.

Clip value c per row ("clip"):
- max: the row's largest |w| (no clipping);
- quantile: the `clip_quantile` quantile of the row's |w| (the public parameter-golf
  baseline uses 0.9999984 with int8);
- mse: among c = r * max|w| for a grid of ratios r in (0.5, 1], the one with the
  least squared error for that row (fewer bits want more clipping).

The scale is rounded to fp16 (upwards: the clip range never shrinks) *before* the
values are quantized, so the error bound |w - q s| <= s / 2 holds with the stored scale
for every |w| <= qmax * s.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import torch

from scalelab.golf.codec import dequantize
from scalelab.golf.rounding import MSE_RATIOS, _quantize_with, _scale_for, row_clip  # noqa: F401

INT_SCHEMES = {"int8": 8, "int7": 7, "int6": 6, "int5": 5, "int4": 4}
FLOAT_SCHEMES = ("fp16", "fp32")
SCHEMES = (*INT_SCHEMES, *FLOAT_SCHEMES)
CLIPS = ("max", "quantile", "mse")
METHODS = ("rtn", "gptq")  # how values are rounded: to nearest, or GPTQ (golf/gptq.py)
@dataclass
class QuantSpec:
    default: str = "int8"
    overrides: dict[str, str] = field(default_factory=dict)  # fnmatch pattern -> scheme
    clip: str = "mse"
    clip_quantile: float = 0.9999984
    keep_float_numel: int = 4096
    method: str = "rtn"  # rtn | gptq (gptq needs a Hessian per weight, else that weight is rounded to nearest)
    damp: float = 0.01  # gptq: damp * mean(diag H) added to H's diagonal

    def scheme_for(self, name: str, numel: int) -> str:
        for pattern, scheme in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return scheme
        if numel <= self.keep_float_numel:
            return "fp16"
        return self.default


def quantize_rows(w: torch.Tensor, bits: int, clip: str = "mse", clip_quantile: float = 0.9999984
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored uint8 [rows, cols] = q + 2^(bits-1), fp16 scale [rows]) for w [rows, cols]."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    w = w.detach().to(torch.float32)
    qmax = (1 << (bits - 1)) - 1
    scale = _scale_for(row_clip(w, bits, clip, clip_quantile), qmax)
    q = _quantize_with(w, scale, qmax)
    return (q + (1 << (bits - 1))).to(torch.uint8), scale


def _dedupe(state_dict: dict[str, torch.Tensor]) -> tuple[list[tuple[str, torch.Tensor]], dict[str, str]]:
    """Tied weights (the same storage under two names) are stored once plus an alias."""
    first: dict[tuple, str] = {}
    unique, aliases = [], {}
    for name, t in state_dict.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else (id(t),)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
            unique.append((name, t))
    return unique, aliases


@dataclass
class QuantizedState:
    """Quantized tensors ready for `codec.pack`, and their in-memory dequantized values."""
    tensors: list[dict]
    aliases: dict[str, str]
    schemes: dict[str, str]  # parameter name -> scheme
    methods: dict[str, str] = field(default_factory=dict)  # quantized parameter name -> rtn | gptq
    lowrank: dict[str, int] = field(default_factory=dict)  # name -> rank of its stored correction (lowrank.py)

    def dequantized(self) -> dict[str, torch.Tensor]:
        """fp32 state dict exactly as a reader of the packed file gets it (aliases included)."""
        out: dict[str, torch.Tensor] = {}
        for t in self.tensors:
            if t["kind"] == "q":
                out[t["name"]] = dequantize(t["q"], t["scale"], t["bits"], t["shape"])
            else:
                out[t["name"]] = t["values"].to(torch.float32).reshape(t["shape"])
        if self.lowrank:
            from scalelab.golf.codec_ext import apply_lowrank

            apply_lowrank(out, self.lowrank.items())
        for alias, source in self.aliases.items():
            out[alias] = out[source]
        return out

    def stats(self) -> dict:
        """Parameter counts and the uncompressed payload bytes per scheme."""
        by_scheme: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            scheme = self.schemes[t["name"]]
            numel = int(np.prod(t["shape"])) if t["shape"] else 1
            if t["kind"] == "q":
                nbytes = numel + 2 * t["scale"].numel()
            else:
                nbytes = numel * (2 if t["kind"] == "f16" else 4)
            d = by_scheme.setdefault(scheme, {"tensors": 0, "params": 0, "bytes": 0})
            d["tensors"] += 1
            d["params"] += numel
            d["bytes"] += nbytes
        params = sum(d["params"] for s, d in by_scheme.items() if not s.startswith("lowrank"))
        return {"params": params, "by_scheme": by_scheme, "aliases": dict(self.aliases)}


def quantize_state_dict(state_dict: dict[str, torch.Tensor], spec: QuantSpec,
                        hessians: dict[str, torch.Tensor] | None = None) -> QuantizedState:
    """Quantize every tensor of a (float) state dict according to `spec`. With
    spec.method=gptq, each 2-D weight that has a Hessian in `hessians` (golf/gptq.py) is
    rounded by GPTQ; the others (embeddings, tied weights) to nearest."""
    unique, aliases = _dedupe(state_dict)
    tensors, schemes, methods = [], {}, {}
    hessians = hessians or {}
    for name, t in unique:
        if not torch.is_floating_point(t):
            raise ValueError(f"golf quantization handles float tensors only; '{name}' is {t.dtype}")
        t = t.detach().cpu()
        shape = list(t.shape)
        scheme = spec.scheme_for(name, t.numel())
        schemes[name] = scheme
        if scheme in INT_SCHEMES:
            bits = INT_SCHEMES[scheme]
            rows = shape[0] if shape else 1
            h = hessians.get(name) if spec.method == "gptq" and t.dim() == 2 else None
            if h is not None and h.shape == (shape[1], shape[1]):
                from scalelab.golf.gptq import gptq_quantize

                q, scale = gptq_quantize(t, h, bits, spec.clip, spec.clip_quantile, damp=spec.damp)
                methods[name] = "gptq"
            else:
                q, scale = quantize_rows(t.reshape(rows, -1), bits, spec.clip, spec.clip_quantile)
                methods[name] = "rtn"
            tensors.append({"name": name, "kind": "q", "shape": shape, "bits": bits, "q": q, "scale": scale})
        elif scheme == "fp16":
            tensors.append({"name": name, "kind": "f16", "shape": shape, "values": t.to(torch.float16)})
        elif scheme == "fp32":
            tensors.append({"name": name, "kind": "f32", "shape": shape, "values": t.to(torch.float32)})
        else:
            raise ValueError(f"unknown quantization scheme '{scheme}' for '{name}'; known: {', '.join(SCHEMES)}")
    return QuantizedState(tensors, aliases, schemes, methods)

