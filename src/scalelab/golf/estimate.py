"""Artifact size before training: `scalelab golf CONFIG --estimate` and the precheck.

The estimate is exact for everything but the compressed quantized values:
- code bytes: the counted files on disk (`artifact.code_bytes`);
- the JSON header, the fp16 scales (2 bytes a row) and the fp16/fp32 tensors: their raw
  sizes (these sections are small; counting them uncompressed errs on the large side);
- the quantized values: numel x (bits per value measured by quantizing a Gaussian sample
  with the config's clip rule and compressing it with each of golf.compressors; the
  smallest wins, as in a run). Against measured artifacts it was within ~2%, on
  either side (docs/GOLF.md): trained weights are not Gaussian, and how they compress
  drifts with training length, so leave a margin.
"""
from __future__ import annotations

import json
from functools import lru_cache

import torch

from scalelab.golf.artifact import BudgetError, code_bytes
from scalelab.golf.compress import compress_best
from scalelab.golf.quantize import INT_SCHEMES, quantize_rows
from scalelab.model.gpt import GPT, GPTConfig

PRECHECK_RATIO = 0.5  # no compressor gets the quantized payload below half of its bit-width size
SAMPLE_SHAPE = (512, 512)  # Gaussian sample per bit width: large enough that container overhead is noise


def _tensors(model_cfg: GPTConfig, golf) -> list[tuple[str, list[int], str]]:
    """(name, shape, scheme) of every stored tensor (tied weights once), from shapes alone."""
    with torch.device("meta"):
        model = GPT(model_cfg)
    spec = golf.quant_spec()
    seen, out = set(), []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out.append((name, list(t.shape), spec.scheme_for(name, t.numel())))
    return out


def estimate_bytes(model_cfg: GPTConfig, golf) -> dict[str, int]:
    """Bytes of the quantized payload at its bit width (before compression), from shapes alone."""
    total = 0
    for _, shape, scheme in _tensors(model_cfg, golf):
        numel = int(torch.Size(shape).numel())
        if scheme in INT_SCHEMES:
            total += numel * INT_SCHEMES[scheme] / 8 + 2 * (shape[0] if shape else 1)
        else:
            total += numel * (2 if scheme == "fp16" else 4)
    return {"payload_at_bit_width": int(total), "code": code_bytes(uses_format_v2(golf))}


def uses_format_v2(golf) -> bool:
    """Whether this config may write a format-version-2 file, whose reader (codec_ext.py)
    is then counted (conservative: brotli or per-tensor chunks may not win)."""
    return bool((golf.lowrank_rank and golf.lowrank_tensors) or golf.compress_per != "file"
                or "brotli" in golf.compressors)


def lowrank_bytes(tensors: list[tuple[str, list[int], str]], golf) -> int:
    """Upper bound of the low-rank factors' raw bytes: the golf.lowrank_tensors integer
    tensors with the largest factors, at 1 byte a value (int8) + an fp16 scale a row."""
    r, k = golf.lowrank_rank, golf.lowrank_tensors
    if not (r and k):
        return 0
    width = 2 if golf.lowrank_quant == "fp16" else 1
    sizes = sorted((width * r * (s[0] + s[1]) + (0 if width == 2 else 2 * (s[0] + r))
                    for _, s, scheme in tensors if scheme in INT_SCHEMES and len(s) == 2
                    and r * (s[0] + s[1]) < s[0] * s[1]), reverse=True)
    return sum(sizes[:k])


def precheck(model_cfg: GPTConfig, golf) -> dict[str, int]:
    """Refuse, before training, a config that cannot fit (golf.precheck)."""
    est = estimate_bytes(model_cfg, golf)
    if golf.precheck and est["code"] >= golf.budget_bytes:
        raise BudgetError(
            f"golf.budget_bytes={golf.budget_bytes:,} is below the counted code alone ({est['code']:,} bytes): "
            f"no model fits. Raise golf.budget_bytes above {est['code']:,} plus room for the weights")
    floor = int(est["payload_at_bit_width"] * PRECHECK_RATIO) + est["code"]
    if golf.precheck and floor > golf.budget_bytes:
        raise BudgetError(
            f"this model cannot fit golf.budget_bytes={golf.budget_bytes:,}: its weights are "
            f"{est['payload_at_bit_width']:,} bytes at golf.quant={golf.quant} before compression, and even "
            f"{1 / PRECHECK_RATIO:.0f}x compression plus {est['code']:,} bytes of code gives {floor:,}. Make the "
            f"model smaller or quantize harder (or golf.precheck=false to train anyway)")
    return est


@lru_cache(maxsize=32)
def sample_bits_per_value(bits: int, clip: str, clip_quantile: float, compressors: tuple[str, ...]) -> float:
    """Compressed bits per quantized value on a seeded Gaussian sample (scales excluded)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(SAMPLE_SHAPE, generator=g)
    q, _ = quantize_rows(w, bits, clip, clip_quantile)
    _, blob, _ = compress_best(q.numpy().tobytes(), list(compressors))
    return 8 * len(blob) / q.numel()


def estimate_for(run, golf) -> dict:
    """`estimate_artifact` for a run config; the vocabulary from model.vocab_size, else the
    prepared data's tokenizer, else data.vocab_size (what data preparation will train)."""
    import dataclasses
    from pathlib import Path

    vocab = run.model.vocab_size
    if not vocab:
        meta = Path(run.data.dir) / "meta.json"
        tok = (json.loads(meta.read_text()).get("tokenizer") or {}) if meta.is_file() else {}
        vocab = int(tok.get("vocab_size") or run.data.vocab_size)
    return estimate_artifact(dataclasses.replace(run.model, vocab_size=vocab), golf)


def estimate_artifact(model_cfg: GPTConfig, golf) -> dict:
    """The artifact size this config will produce (module doc), with a per-scheme breakdown."""
    by_scheme: dict[str, dict] = {}
    header_tensors, q_bytes, raw_bytes, params = [], 0.0, 0, 0
    for name, shape, scheme in _tensors(model_cfg, golf):
        numel = int(torch.Size(shape).numel())
        params += numel
        d = by_scheme.setdefault(scheme, {"tensors": 0, "params": 0, "bytes": 0})
        d["tensors"] += 1
        d["params"] += numel
        if scheme in INT_SCHEMES:
            bits = INT_SCHEMES[scheme]
            bpv = sample_bits_per_value(bits, golf.clip, golf.clip_quantile, tuple(golf.compressors))
            d["bits_per_value"] = round(bpv, 3)
            nbytes = numel * bpv / 8
            q_bytes += nbytes
            scale = 2 * (shape[0] if shape else 1)
            raw_bytes += scale
            d["bytes"] += int(round(nbytes)) + scale
            header_tensors.append([name, "q", shape, bits])
        else:
            nbytes = numel * (2 if scheme == "fp16" else 4)
            raw_bytes += nbytes
            d["bytes"] += nbytes
            header_tensors.append([name, "f16" if scheme == "fp16" else "f32", shape, 0])
    header = json.dumps({"model": model_cfg.__dict__, "aliases": {}, "tensors": header_tensors},
                        separators=(",", ":"), default=str)
    weights = int(round(q_bytes)) + raw_bytes + len(header) + 4 + 6  # + u32 length + magic/version/compressor
    weights += lowrank_bytes(_tensors(model_cfg, golf), golf)
    code = code_bytes(uses_format_v2(golf))
    total = code + weights
    return {
        "method": "quantized values: bits per value of a Gaussian sample quantized with golf.clip and compressed "
                  "with golf.compressors (within ~2% of measured artifacts, either side); scales, fp16 "
                  "tensors and header at raw size",
        "params": params, "code_bytes": code, "weights_bytes": weights, "total_bytes": total,
        "budget_bytes": golf.budget_bytes, "fits": total <= golf.budget_bytes,
        "headroom_bytes": golf.budget_bytes - total,
        "bits_per_param": round(8 * weights / max(params, 1), 3), "by_scheme": by_scheme,
    }
