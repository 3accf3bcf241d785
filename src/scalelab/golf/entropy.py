"""Bits per parameter against the order-0 entropy of the quantized symbols.

The order-0 (empirical Shannon) entropy H = -sum p log2 p of a tensor's stored levels is
what an ideal coder that sees each value alone, with that tensor's histogram, would need
per value; context-modelling compressors (lzma, zstd, brotli) can go below it only where
values repeat in patterns. Reported per quantized tensor (with the compressed bits per
value of its chunk when the file is chunked per tensor) and overall: the weights file's
bits per parameter next to the bound "quantized values at their per-tensor order-0
entropy + everything else (scales, fp16 tensors, header) at its raw size".
"""
from __future__ import annotations

import math

import numpy as np


def order0_bits(values: np.ndarray) -> float:
    """Empirical entropy in bits per value of an integer array."""
    counts = np.bincount(np.asarray(values, dtype=np.int64).reshape(-1) - int(np.min(values)))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def entropy_report(qs, params: int, weights_bytes: int, payload_bytes: int, chunks: list[dict] | None = None) -> dict:
    """{"tensors": {name: {...}}, "overall": {...}} (module doc). chunks: layout.encode's
    per-chunk report when the file is chunked per tensor."""
    by_label = {c["label"]: c for c in chunks or []}
    tensors, q_values, q_entropy_bits = {}, 0, 0.0
    for t in qs.tensors:
        if t["kind"] != "q":
            continue
        q = t["q"].numpy() if hasattr(t["q"], "numpy") else np.asarray(t["q"])
        h = order0_bits(q)
        d = {"numel": int(q.size), "bits": t["bits"], "entropy_bits_per_value": round(h, 4)}
        chunk = by_label.get(f"q:{t['name']}")
        if chunk is not None:
            d["compressed_bits_per_value"] = round(8 * chunk["bytes"] / max(q.size, 1), 4)
            d["compressor"] = chunk["compressor"]
        tensors[t["name"]] = d
        q_values += q.size
        q_entropy_bits += h * q.size
    other_raw = payload_bytes - q_values  # scales, fp16/fp32 tensors, header, permutations
    bound = q_entropy_bits / 8 + other_raw
    overall = {
        "q_values": int(q_values),
        "q_entropy_bytes": int(math.ceil(q_entropy_bits / 8)),
        "q_entropy_bits_per_value": round(q_entropy_bits / max(q_values, 1), 4),
        "other_raw_bytes": int(other_raw),
        "entropy_bits_per_param": round(8 * bound / max(params, 1), 4),
        "bits_per_param": round(8 * weights_bytes / max(params, 1), 4),
        "weights_over_bound": round(weights_bytes / max(bound, 1), 4),
    }
    if chunks:
        q_bytes = sum(c["bytes"] for c in chunks if c["label"].startswith("q:"))
        overall["q_compressed_bits_per_value"] = round(8 * q_bytes / max(q_values, 1), 4)
    return {"tensors": tensors, "overall": overall}
