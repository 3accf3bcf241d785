"""Compress a golf payload with every available compressor; the smallest file wins.

Each candidate is a complete weights file (`codec.MAGIC`, version, compressor id,
compressed payload), so the sizes compared are the sizes written. lzma is tried with a
few filter settings (all decoded by the same `lzma.decompress`, which reads them from
the stream); zstd needs the `zstandard` package and is skipped, with a note, when it
is missing.
"""
from __future__ import annotations

import lzma
import zlib

from scalelab.golf.codec import COMPRESSOR_IDS, MAGIC, VERSION

COMPRESSORS = ("zlib", "lzma", "zstd")
COMPRESS_PER = ("file", "tensor", "auto")  # one compressor for the file, or the best per chunk

# lc/lp/pb: literal-context bits, literal-position bits, position bits. The payload is
# mostly single-byte values (quantized weights), for which fewer context bits can win.
_LZMA_VARIANTS = (
    {"preset": 9 | lzma.PRESET_EXTREME},
    {"preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0},
)


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


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
    raise ValueError(f"unknown compressor '{name}'; known: {', '.join(COMPRESSORS)}")


def compress_best(raw: bytes, names: list[str] | tuple[str, ...] = COMPRESSORS) -> tuple[str, bytes, dict]:
    """(winner, its file bytes, {name: size in bytes, or a note why it was skipped})."""
    sizes: dict[str, int | str] = {}
    best_name, best = None, None
    for name in names:
        if name == "zstd" and not zstd_available():
            sizes[name] = "skipped: the zstandard package is not installed (pip install zstandard)"
            continue
        blob = compress_with(name, raw)
        sizes[name] = len(blob)
        if best is None or len(blob) < len(best):
            best_name, best = name, blob
    if best is None:
        raise ValueError(f"no usable compressor among {list(names)}")
    return best_name, best, sizes
