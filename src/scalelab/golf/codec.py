"""The golf weights file: its format, and everything needed to run a model from it.

This file is part of the counted artifact code (`artifact.CODE_FILES`): with
`model/gpt.py` it is all a reader needs to turn the bytes back into a runnable GPT.

File layout (format version 1, all integers little-endian):

    b"SLGF" | u8 version | u8 compressor (0 none, 1 zlib, 2 lzma, 3 zstd) | compressed payload

Payload (after decompression):

    u32 n | n bytes of JSON header | section q | section scale | section f16 | section f32

The header is {"model": GPTConfig fields, "tensors": [[name, kind, shape, bits], ...],
"aliases": {name: source name}} (aliases: tied weights, stored once). Tensors of kind
"q" are quantized per row: the tensor viewed as [rows, cols] (rows = shape[0]) stores
q + 2^(bits-1) as one uint8 per value in section q and one fp16 scale per row in section
scale; the value is (stored - 2^(bits-1)) * scale. Kinds "f16" and "f32" store the
values themselves. Each section is the concatenation, in header order, of the parts of
the tensors that have one. The fp16/fp32 sections are byte-plane split (every value's
first byte, then every second byte, ...), which compresses better than interleaved
bytes. Format version 2 (chunks, brotli, row permutations, low-rank corrections) is read
by `codec_ext.py`, counted only in artifacts that use it.
"""
from __future__ import annotations

import json
import lzma
import struct
import zlib

import numpy as np
import torch

MAGIC = b"SLGF"
VERSION = 1
COMPRESSOR_IDS = {"none": 0, "zlib": 1, "lzma": 2, "zstd": 3}
SECTIONS = ("q", "scale", "f16", "f32", "perm")
_SECTION_DTYPES = {"q": np.dtype("u1"), "scale": np.dtype("<f2"), "f16": np.dtype("<f2"), "f32": np.dtype("<f4"),
                   "perm": np.dtype("u1")}


class FormatError(ValueError):
    """The bytes are not a golf weights file this code can read."""


def decompress(blob: bytes) -> bytes:
    """The raw payload of a weights file (checks magic and version)."""
    if len(blob) < 6 or blob[:4] != MAGIC:
        raise FormatError("not a scalelab golf weights file (bad magic)")
    if blob[4] == 2:
        from scalelab.golf.codec_ext import decompress_chunked

        return decompress_chunked(blob)
    if blob[4] != VERSION:
        raise FormatError(f"golf weights format version {blob[4]}, this code reads version {VERSION}")
    body, codec = blob[6:], blob[5]
    if codec == 0:
        return body
    if codec == 1:
        return zlib.decompress(body)
    if codec == 2:
        return lzma.decompress(body)
    if codec == 3:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(body)
    raise FormatError(f"unknown compressor id {codec}")


def split_planes(arr: np.ndarray) -> bytes:
    """Byte-plane split of a little-endian array: all first bytes, then all second, ..."""
    b = np.ascontiguousarray(arr).view(np.uint8).reshape(-1, arr.dtype.itemsize)
    return b.T.tobytes()


def join_planes(buf: bytes, dtype: np.dtype, count: int) -> np.ndarray:
    planes = np.frombuffer(buf, dtype=np.uint8).reshape(dtype.itemsize, count)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(count)


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int, shape: list[int]) -> torch.Tensor:
    """fp32 values of a per-row quantized tensor: (q - 2^(bits-1)) * scale[row].

    q: uint8 [rows, cols]; scale: fp16 [rows]. The one dequantizer: the quantizer calls
    it too, so in-memory and decoded values are bit-identical.
    """
    centered = q.to(torch.int16) - (1 << (bits - 1))
    return (centered.to(torch.float32) * scale.to(torch.float32)[:, None]).reshape(shape)


def pack(model: dict, tensors: list[dict], aliases: dict[str, str], extra: dict | None = None) -> bytes:
    """The raw payload. tensors: dicts with name, kind, shape, bits and arrays
    (q: uint8 [rows, cols] + scale: fp16 [rows], + perm (version 2) as stored; f16/f32:
    the values). extra: version-2 header keys (golf/layout.py)."""
    header = {"model": model, "aliases": aliases, **(extra or {}),
              "tensors": [[t["name"], t["kind"], list(t["shape"]), t.get("bits", 0)] for t in tensors]}
    head = json.dumps(header, separators=(",", ":")).encode()
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SECTIONS}
    for t in tensors:
        if t["kind"] == "q":
            parts["q"].append(np.asarray(t["q"], dtype=np.uint8).reshape(-1))
            parts["scale"].append(np.asarray(t["scale"], dtype="<f2").reshape(-1))
            if t.get("perm") is not None:
                parts["perm"].append(np.asarray(t["perm"], dtype="<u2").view(np.uint8))
        else:
            parts[t["kind"]].append(np.asarray(t["values"], dtype=_SECTION_DTYPES[t["kind"]]).reshape(-1))
    out = [struct.pack("<I", len(head)), head]
    for s in SECTIONS:
        arr = np.concatenate(parts[s]) if parts[s] else np.zeros(0, _SECTION_DTYPES[s])
        out.append(arr.tobytes() if s == "q" else split_planes(arr))
    return b"".join(out)


def unpack(raw: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model config dict, fp32 state dict incl. aliases) from a raw payload."""
    (n,) = struct.unpack_from("<I", raw, 0)
    header = json.loads(raw[4:4 + n])
    pos = 4 + n
    counts = {s: 0 for s in SECTIONS}
    perm = set(header.get("perm", ()))  # version 2: q tensors stored with permuted rows (codec_ext)
    for name, kind, shape, bits in header["tensors"]:
        numel = int(np.prod(shape)) if shape else 1
        if kind == "q":
            counts["q"] += numel
            counts["scale"] += shape[0] if shape else 1
            counts["perm"] += 2 * shape[0] if name in perm else 0
        else:
            counts[kind] += numel
    arrays = {}
    for s in SECTIONS:
        size = counts[s] * _SECTION_DTYPES[s].itemsize
        buf = raw[pos:pos + size]
        if len(buf) != size:
            raise FormatError("golf weights payload is truncated")
        arrays[s] = np.frombuffer(buf, np.uint8) if s == "q" else join_planes(buf, _SECTION_DTYPES[s], counts[s])
        pos += size
    if pos != len(raw):
        raise FormatError("golf weights payload has trailing bytes")
    cursor = {s: 0 for s in SECTIONS}

    def take(section: str, count: int) -> torch.Tensor:
        start = cursor[section]
        cursor[section] = start + count
        return torch.from_numpy(arrays[section][start:start + count].copy())

    state: dict[str, torch.Tensor] = {}
    for name, kind, shape, bits in header["tensors"]:
        numel = int(np.prod(shape)) if shape else 1
        if kind == "q":
            rows = shape[0] if shape else 1
            q, scale = take("q", numel).reshape(rows, -1), take("scale", rows)
            if name in perm:
                from scalelab.golf.codec_ext import unpermute

                q, scale = unpermute(q, scale, take("perm", 2 * rows))
            state[name] = dequantize(q, scale, bits, shape)
        else:
            state[name] = take(kind, numel).to(torch.float32).reshape(shape)
    if header.get("lowrank"):
        from scalelab.golf.codec_ext import apply_lowrank

        apply_lowrank(state, header["lowrank"])
    for alias, source in header["aliases"].items():
        state[alias] = state[source]
    return header["model"], state


def load_state_dict(blob: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    """(model config dict, fp32 state dict) from the bytes of a weights file."""
    return unpack(decompress(blob))


def load_model(blob: bytes, device: str | torch.device = "cpu"):
    """A GPT in eval mode, rebuilt from the bytes of a weights file alone."""
    from scalelab.model.gpt import GPT, GPTConfig

    model_cfg, state = load_state_dict(blob)
    with torch.random.fork_rng(devices=[]):  # the throwaway init leaves the caller's RNG alone
        model = GPT(GPTConfig(**model_cfg))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
