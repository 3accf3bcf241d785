"""Compress a golf payload with every available compressor; the smallest file wins.

Each candidate is a complete weights file (`codec.MAGIC`, version, compressor id,
compressed payload), so the sizes compared are the sizes written. lzma is tried with a
few filter settings (all decoded by the same `lzma.decompress`, which reads them from
the stream); zstd needs the `zstandard` package and brotli the `brotli` package (the
golf extra); either is skipped, with a note, when missing. A brotli file is a
one-chunk format-version-2 file (codec_ext.py reads it). Per-chunk choice and row
reordering: golf/layout.py.
"""
from __future__ import annotations

import lzma
import struct
import zlib

from scalelab.golf.codec import COMPRESSOR_IDS, MAGIC, VERSION

# Format version 2 (codec_ext.py): brotli and raw LZMA2 (no xz container: chunks are small).
COMPRESSOR_IDS_V2 = {**COMPRESSOR_IDS, "brotli": 4, "lzma-raw": 5, "lzma-raw-lc0": 6}

COMPRESSORS = ("zlib", "lzma", "zstd")  # the default golf.compressors
KNOWN_COMPRESSORS = (*COMPRESSORS, "brotli")
COMPRESS_PER = ("file", "tensor", "auto")  # one compressor for the file, or the best per chunk

# lc/lp/pb: literal-context bits, literal-position bits, position bits. The payload is
# mostly single-byte values (quantized weights), for which fewer context bits can win.
_LZMA_VARIANTS = (
    {"preset": 9 | lzma.PRESET_EXTREME},
    {"preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0},
)


def zstd_available() -> bool:
    return available("zstd")


def available(name: str) -> bool:
    """Whether the package compressor `name` needs is installed (zlib and lzma always are)."""
    import importlib.util

    module = {"zstd": "zstandard", "brotli": "brotli"}.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def brotli_body(raw: bytes) -> bytes:
    import brotli

    return brotli.compress(raw, quality=11, lgwin=24)


def chunked_file(chunks: list[tuple[int, bytes]]) -> bytes:
    """A format-version-2 file: (compressor id, compressed body) per chunk (codec_ext.py)."""
    table = b"".join(struct.pack("<BI", cid, len(body)) for cid, body in chunks)
    return MAGIC + bytes((2,)) + struct.pack("<H", len(chunks)) + table + b"".join(body for _, body in chunks)


def _wrap(name: str, body: bytes) -> bytes:
    return MAGIC + bytes((VERSION, COMPRESSOR_IDS[name])) + body


def compress_with(name: str, raw: bytes) -> bytes:
    """The weights file for `raw` compressed with `name` (zlib, lzma, zstd or none)."""
    if name == "none":
        return _wrap(name, raw)
    if name == "zlib":
        return _wrap(name, zlib.compress(raw, 9))
    if name == "lzma":
        best = None
        for filt in _LZMA_VARIANTS:
            body = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                                 filters=[{"id": lzma.FILTER_LZMA2, **filt}])
            if best is None or len(body) < len(best):
                best = body
        return _wrap(name, best)
    if name == "zstd":
        import zstandard

        return _wrap(name, zstandard.ZstdCompressor(level=22).compress(raw))
    if name == "brotli":
        return chunked_file([(COMPRESSOR_IDS_V2["brotli"], brotli_body(raw))])
    raise ValueError(f"unknown compressor '{name}'; known: {', '.join(KNOWN_COMPRESSORS)}")


def compress_best(raw: bytes, names: list[str] | tuple[str, ...] = COMPRESSORS) -> tuple[str, bytes, dict]:
    """(winner, its file bytes, {name: size in bytes, or a note why it was skipped})."""
    sizes: dict[str, int | str] = {}
    best_name, best = None, None
    for name in names:
        if not available(name):
            package = {"zstd": "zstandard"}.get(name, name)
            sizes[name] = f"skipped: the {package} package is not installed (pip install {package})"
            continue
        blob = compress_with(name, raw)
        sizes[name] = len(blob)
        if best is None or len(blob) < len(best):
            best_name, best = name, blob
    if best is None:
        raise ValueError(f"no usable compressor among {list(names)}")
    return best_name, best, sizes
