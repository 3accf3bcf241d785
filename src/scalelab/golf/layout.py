"""How the quantized weights are laid out and compressed (`golf.compress_per`, `golf.row_reorder`).

- file: the whole payload through each compressor, the smallest file wins (compress.py);
- tensor: the payload cut into chunks -- the header, each quantized tensor's values, the
  scale / fp16 / fp32 / permutation sections -- and each chunk compressed by whichever
  compressor makes it smallest (lzma as raw LZMA2: the xz container's ~60 bytes would
  weigh on small chunks); a format-version-2 file (codec_ext.py);
- auto: both, the smaller file wins.

Row reordering (tensor chunks only): a quantized tensor's rows may be stored in another
order -- sorted by their scale, or by the sum of their |levels| -- with the permutation
stored beside them (u16 a row, compressed, counted); per tensor the order with the smallest
compressed values + compressed permutation is kept, and the file without any reordering is
built too, so reordering is only used where it makes the file smaller.
The decoder undoes the permutation exactly (the round-trip check compares every value).
"""
from __future__ import annotations

import json
import lzma
import struct
import zlib

import numpy as np

from scalelab.golf import codec
from scalelab.golf.codec_ext import raw_lzma_filter
from scalelab.golf.compress import COMPRESSOR_IDS_V2, available, brotli_body, chunked_file, compress_best

MAX_PERMUTED_ROWS = 1 << 16  # the permutation is stored as u16


def compress_chunk(body: bytes, names) -> tuple[str, int, bytes]:
    """(compressor name, id, compressed body) of the smallest encoding of one chunk."""
    cands = [("none", 0, body)]
    for name in names:
        if not available(name):
            continue
        if name == "zlib":
            cands.append((name, 1, zlib.compress(body, 9)))
        elif name == "zstd":
            import zstandard

            cands.append((name, 3, zstandard.ZstdCompressor(level=22).compress(body)))
        elif name == "brotli":
            cands.append((name, 4, brotli_body(body)))
        elif name == "lzma":
            for variant in ("lzma-raw", "lzma-raw-lc0"):
                cid = COMPRESSOR_IDS_V2[variant]
                filt = {**raw_lzma_filter(cid), "preset": 9 | lzma.PRESET_EXTREME}
                cands.append((variant, cid, lzma.compress(body, format=lzma.FORMAT_RAW, filters=[filt])))
    return min(cands, key=lambda c: len(c[2]))


def chunk_bounds(raw: bytes) -> list[tuple[str, int, int]]:
    """(label, start, end) of each chunk of a payload: header, q:<name> per quantized
    tensor, then the scale / f16 / f32 / perm sections (empty ones left out)."""
    (n,) = struct.unpack_from("<I", raw, 0)
    header = json.loads(raw[4:4 + n])
    perm = set(header.get("perm", ()))
    out, pos = [("header", 0, 4 + n)], 4 + n
    sizes = {"scale": 0, "f16": 0, "f32": 0, "perm": 0}
    for name, kind, shape, _bits in header["tensors"]:
        numel = int(np.prod(shape)) if shape else 1
        rows = shape[0] if shape else 1
        if kind == "q":
            out.append((f"q:{name}", pos, pos + numel))
            pos += numel
            sizes["scale"] += 2 * rows
            sizes["perm"] += 2 * rows if name in perm else 0
        else:
            sizes[kind] += numel * (2 if kind == "f16" else 4)
    for section in ("scale", "f16", "f32", "perm"):
        if sizes[section]:
            out.append((section, pos, pos + sizes[section]))
            pos += sizes[section]
    assert pos == len(raw), "chunk_bounds out of step with codec.pack"
    return out


def chunked(raw: bytes, names) -> tuple[bytes, list[dict]]:
    """The version-2 file of `raw` with the best compressor per chunk, and per chunk
    {label, raw bytes, compressor, compressed bytes}."""
    chunks, info = [], []
    for label, a, b in chunk_bounds(raw):
        name, cid, body = compress_chunk(raw[a:b], names)
        chunks.append((cid, body))
        info.append({"label": label, "raw_bytes": b - a, "compressor": name, "bytes": len(body)})
    return chunked_file(chunks), info


def _orders(q: np.ndarray, scale: np.ndarray, bits: int) -> dict[str, np.ndarray]:
    levels = np.abs(q.astype(np.int16) - (1 << (bits - 1))).sum(axis=1)
    return {"scale": np.argsort(scale.astype(np.float32), kind="stable"),
            "levels": np.argsort(levels, kind="stable")}


def reordered(tensors: list[dict], names) -> tuple[list[dict], dict[str, str]]:
    """Tensor dicts for codec.pack with each q tensor's rows in its most compressible order
    (its values and its permutation, each compressed), and {name: order kept} of those moved."""
    out, kept = [], {}
    for t in tensors:
        rows = t["shape"][0] if t["shape"] else 1
        if t["kind"] != "q" or not 1 < rows < MAX_PERMUTED_ROWS:
            out.append(t)
            continue
        q, scale = np.asarray(t["q"], dtype=np.uint8).reshape(rows, -1), np.asarray(t["scale"], dtype="<f2")
        best = len(compress_chunk(q.tobytes(), names)[2])
        choice = None
        for order, perm in _orders(q, scale, t["bits"]).items():
            size = (len(compress_chunk(q[perm].tobytes(), names)[2])
                    + len(compress_chunk(perm.astype("<u2").tobytes(), names)[2]))
            if size < best:
                best, choice = size, (order, perm)
        if choice is None:
            out.append(t)
            continue
        order, perm = choice
        kept[t["name"]] = order
        out.append({**t, "q": q[perm], "scale": scale[perm], "perm": perm})
    return out, kept


def encode(model_cfg: dict, qs, compressors, per: str = "file", row_reorder: bool = False) -> tuple[bytes, dict]:
    """(the weights file, a report) for a QuantizedState: every layout `per` allows is
    built and the smallest file wins. The report: chosen layout + compressor, every
    candidate's size, and the chunks of the winner when it is chunked."""
    extra = {"lowrank": [[n, r] for n, r in qs.lowrank.items()]} if qs.lowrank else {}
    raw = codec.pack(model_cfg, qs.tensors, qs.aliases, extra)
    cands: dict[str, tuple[bytes, dict]] = {}
    sizes: dict[str, int | str] = {}
    if per in ("file", "auto"):
        name, blob, file_sizes = compress_best(raw, compressors)
        if extra:  # the header uses version-2 keys: a version-1 reader must refuse the file
            _, cid, body = compress_chunk(raw, [name])
            blob = chunked_file([(cid, body)])
            file_sizes[name] = len(blob)
        sizes.update(file_sizes)
        cands[name] = (blob, {})
    if per in ("tensor", "auto"):
        blob, info = chunked(raw, compressors)
        sizes["per tensor"] = len(blob)
        cands["per tensor"] = (blob, {"chunks": info})
        if row_reorder:
            tensors, kept = reordered(qs.tensors, compressors)
            if kept:
                raw_r = codec.pack(model_cfg, tensors, qs.aliases, {**extra, "perm": list(kept)})
                blob, info = chunked(raw_r, compressors)
                sizes["per tensor, rows reordered"] = len(blob)
                cands["per tensor, rows reordered"] = (blob, {"chunks": info, "reordered": kept})
    chosen = min(cands, key=lambda k: len(cands[k][0]))
    blob, detail = cands[chosen]
    return blob, {"chosen": chosen, "sizes": sizes, "payload_bytes": len(raw), "version": blob[4], **detail}


def build_weights(model_cfg: dict, state: dict, golf, hessians=None):
    """Quantize a float state dict by the golf config (quant, GPTQ Hessians, low-rank
    corrections) and encode it (compress_per, row_reorder): (QuantizedState, weights
    file bytes, report {compression, lowrank, entropy})."""
    from scalelab.golf.entropy import entropy_report
    from scalelab.golf.lowrank import add_corrections
    from scalelab.golf.quantize import quantize_state_dict

    qs = quantize_state_dict(state, golf.quant_spec(), hessians)
    lowrank = add_corrections(qs, state, golf.lowrank_rank, golf.lowrank_tensors, golf.lowrank_quant)
    blob, comp = encode(model_cfg, qs, golf.compressors, golf.compress_per, golf.row_reorder)
    ent = entropy_report(qs, qs.stats()["params"], len(blob), comp["payload_bytes"], comp.get("chunks"))
    return qs, blob, {"compression": comp, "lowrank": lowrank, "entropy": ent}
