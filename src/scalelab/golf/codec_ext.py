"""Reader of golf weights format version 2 (counted in an artifact only when its file is one).

    b"SLGF" | u8 2 | u16 n | n x (u8 compressor id, u32 length) | n compressed chunks

The payload (codec.py's) is the chunks decompressed and concatenated. Compressor ids:
0 none, 1 zlib, 2 xz, 3 zstd, 4 brotli, 5 raw LZMA2, 6 raw LZMA2 with lc=lp=pb=0 (16 MiB
dictionary). Header keys only version 2 uses:
- "perm": q tensors stored with their rows (values and scales) permuted; section perm
  holds, per such tensor, the original index of each stored row (u16);
- "lowrank": [[name, rank], ...]: name.lr_a [rows, rank] and name.lr_b [rank, cols] are
  stored too; name's value is its dequantized value + lr_a @ lr_b.
"""
from __future__ import annotations

import lzma
import struct
import zlib

import numpy as np
import torch

RAW_LZMA_DICT = 1 << 24


def raw_lzma_filter(codec: int) -> dict:
    return {"id": lzma.FILTER_LZMA2, "dict_size": RAW_LZMA_DICT, **({"lc": 0, "lp": 0, "pb": 0} if codec == 6 else {})}


def inflate(codec: int, body: bytes) -> bytes:
    if codec == 0:
        return body
    if codec == 1:
        return zlib.decompress(body)
    if codec == 2:
        return lzma.decompress(body)
    if codec == 3:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(body)
    if codec == 4:
        import brotli

        return brotli.decompress(body)
    if codec in (5, 6):
        return lzma.decompress(body, format=lzma.FORMAT_RAW, filters=[raw_lzma_filter(codec)])
    raise ValueError(f"golf weights file: unknown compressor id {codec}")


def decompress_chunked(blob: bytes) -> bytes:
    (n,) = struct.unpack_from("<H", blob, 5)
    pos, out = 7 + 5 * n, []
    for i in range(n):
        codec, size = struct.unpack_from("<BI", blob, 7 + 5 * i)
        if pos + size > len(blob):
            raise ValueError("golf weights file is truncated")
        out.append(inflate(codec, blob[pos:pos + size]))
        pos += size
    return b"".join(out)


def unpermute(q: torch.Tensor, scale: torch.Tensor, perm_bytes: torch.Tensor):
    """Rows back in their original order (stored row i is row perm[i])."""
    perm = torch.from_numpy(perm_bytes.numpy().view("<u2").astype(np.int64))
    inv = torch.argsort(perm)
    return q[inv], scale[inv]


def add_lowrank(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w + a @ b, one rank-1 term at a time (elementwise: the same bits on any machine)."""
    out = w.reshape(a.shape[0], -1).clone()
    for k in range(a.shape[1]):
        out += a[:, k:k + 1] * b[k:k + 1, :]
    return out.reshape(w.shape)


def apply_lowrank(state: dict, lowrank) -> None:
    for name, _rank in lowrank:
        state[name] = add_lowrank(state[name], state.pop(f"{name}.lr_a"), state.pop(f"{name}.lr_b"))
