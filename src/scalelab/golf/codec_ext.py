"""Reader of golf weights format version 2 (chunks, brotli, raw LZMA2, row permutations,
low-rank corrections; layout.py writes it, docs/GOLF.md describes it). Counted in an
artifact only when its weights file is version 2."""
import lzma
import struct
import zlib

import numpy as np
import torch

RAW_LZMA_DICT = 1 << 24


def raw_lzma_filter(codec):
    return {"id": lzma.FILTER_LZMA2, "dict_size": RAW_LZMA_DICT, **({"lc": 0, "lp": 0, "pb": 0} if codec == 6 else {})}


# Ids 0-3 repeat codec.decompress's on purpose: importing it back would be an import circle, and
# sharing it would grow codec.py, counted in every artifact (this file only in version-2 ones).
def inflate(codec, body):
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


def decompress_chunked(blob):
    (n,) = struct.unpack_from("<H", blob, 5)
    pos, out = 7 + 5 * n, []
    for i in range(n):
        codec, size = struct.unpack_from("<BI", blob, 7 + 5 * i)
        if pos + size > len(blob):
            raise ValueError("golf weights file is truncated")
        out.append(inflate(codec, blob[pos:pos + size]))
        pos += size
    return b"".join(out)


def unpermute(q, scale, perm_bytes):  # stored row i is row perm[i]
    perm = torch.from_numpy(perm_bytes.numpy().view("<u2").astype(np.int64))
    inv = torch.argsort(perm)
    return q[inv], scale[inv]


def add_lowrank(w, a, b):  # w + a @ b, a rank-1 term at a time: the same bits on any machine
    out = w.reshape(a.shape[0], -1).clone()
    for k in range(a.shape[1]):
        out += a[:, k:k + 1] * b[k:k + 1, :]
    return out.reshape(w.shape)


def apply_lowrank(state, lowrank):
    for name, _rank in lowrank:
        state[name] = add_lowrank(state[name], state.pop(f"{name}.lr_a"), state.pop(f"{name}.lr_b"))
