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

INT_SCHEMES = {"int8": 8, "int7": 7, "int6": 6, "int5": 5, "int4": 4}
FLOAT_SCHEMES = ("fp16", "fp32")
SCHEMES = (*INT_SCHEMES, *FLOAT_SCHEMES)
CLIPS = ("max", "quantile", "mse")
METHODS = ("rtn", "gptq")  # how values are rounded: to nearest, or GPTQ (golf/gptq.py)
MSE_RATIOS = (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84, 0.82, 0.8, 0.77, 0.74, 0.7, 0.66, 0.62,
              0.58, 0.54, 0.5)
_FP16_MIN_SCALE = 2.0**-24  # smallest positive fp16 (subnormal)


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


def _scale_for(clip: torch.Tensor, qmax: int) -> torch.Tensor:
    """fp16 scale per row from the clip value, rounded up so that qmax * scale >= clip
    (zero rows get scale 1)."""
    s = torch.where(clip > 0, clip / qmax, torch.ones_like(clip)).to(torch.float16).clamp_min(_FP16_MIN_SCALE)
    low = s.to(torch.float32) * qmax < clip
    return torch.where(low, torch.nextafter(s, torch.full_like(s, float("inf"))), s)


def _quantize_with(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Integer levels in [-qmax, qmax] (int16) for w [rows, cols] with fp16 scale [rows]."""
    return torch.clamp(torch.round(w / scale.to(torch.float32)[:, None]), -qmax, qmax).to(torch.int16)


def _row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    # torch.quantile refuses inputs over 2^24 values: go in chunks of rows.
    rows_per_chunk = max(1, (1 << 22) // max(1, a.shape[1]))
    return torch.cat([torch.quantile(a[i:i + rows_per_chunk], q, dim=1) for i in range(0, a.shape[0], rows_per_chunk)])


def row_clip(w: torch.Tensor, bits: int, clip: str, clip_quantile: float) -> torch.Tensor:
    """Clip value per row of w [rows, cols] (fp32)."""
    amax = w.abs().amax(dim=1)
    if clip == "max":
        return amax
    if clip == "quantile":
        return _row_quantile(w.abs(), clip_quantile)
    qmax = (1 << (bits - 1)) - 1
    best, best_err = amax, None
    for r in MSE_RATIOS:
        c = amax * r
        s = _scale_for(c, qmax)
        err = (w - _quantize_with(w, s, qmax).to(torch.float32) * s.to(torch.float32)[:, None]).square().sum(dim=1)
        if best_err is None:
            best, best_err = c, err
        else:
            better = err < best_err
            best = torch.where(better, c, best)
            best_err = torch.where(better, err, best_err)
    return best


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

    def dequantized(self) -> dict[str, torch.Tensor]:
        """fp32 state dict exactly as a reader of the packed file gets it (aliases included)."""
        out: dict[str, torch.Tensor] = {}
        for t in self.tensors:
            if t["kind"] == "q":
                out[t["name"]] = dequantize(t["q"], t["scale"], t["bits"], t["shape"])
            else:
                out[t["name"]] = t["values"].to(torch.float32).reshape(t["shape"])
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
        params = sum(d["params"] for d in by_scheme.values())
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

