"""Token shard files: the one source of truth for the on-disk shard format.

The layout is the one of llm.c / modded-nanogpt / OpenAI parameter-golf, so their
public shards load unchanged:

    header: 256 little-endian int32   [0] magic 20240520
                                      [1] version (1 or 2)
                                      [2] number of tokens N
                                      [3:256] zero
    body:   N tokens, little-endian   version 1: uint16 (vocabularies up to 65,536)
                                      version 2: uint32 (larger vocabularies; scalelab)

Files are named `<split>_NNNNNN.bin` (`train_000000.bin`, `val_000000.bin`, ...);
public sets that prefix a dataset name (`fineweb_train_000001.bin`) are found too.
See docs/FORMATS.md.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalelab.data.outdir import write_failure
from scalelab.errors import DataError
from scalelab.io import fsync_dir

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAGIC = 20240520
VERSION_UINT16 = 1
VERSION_UINT32 = 2
MAX_SHARD_TOKENS = 2**31 - 1  # the count is an int32 in the header

_HEADER_DTYPE = np.dtype("<i4")
_TOKEN_DTYPES = {VERSION_UINT16: np.dtype("<u2"), VERSION_UINT32: np.dtype("<u4")}
_FIX = "re-run `scalelab data CONFIG` (add --overwrite to replace the directory)"


@dataclass(frozen=True)
class ShardHeader:
    version: int
    num_tokens: int
    dtype: np.dtype
    path: Path

    @property
    def nbytes(self) -> int:
        """Expected file size in bytes."""
        return HEADER_BYTES + self.num_tokens * self.dtype.itemsize


def token_dtype(version: int) -> np.dtype:
    try:
        return _TOKEN_DTYPES[version]
    except KeyError:
        raise DataError(f"unknown shard version {version}; known versions: 1 (uint16), 2 (uint32)") from None


def version_for_vocab(vocab_size: int) -> int:
    """Version 1 (uint16 tokens) when every id fits in 16 bits, else version 2 (uint32)."""
    return VERSION_UINT16 if vocab_size <= 2**16 else VERSION_UINT32


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def _header_array(version: int, num_tokens: int) -> np.ndarray:
    if not 0 <= num_tokens <= MAX_SHARD_TOKENS:
        raise DataError(f"a shard holds at most {MAX_SHARD_TOKENS:,} tokens, got {num_tokens:,}; "
                        "use a smaller data.shard_tokens")
    header = np.zeros(HEADER_INTS, dtype=_HEADER_DTYPE)
    header[0], header[1], header[2] = MAGIC, version, num_tokens
    return header


class ShardFileWriter:
    """Writes one shard incrementally into a temp file; `close()` publishes it atomically.

    Tokens are appended in pieces (constant memory); the header's count is filled in at
    the end, then the file is fsynced and renamed over `path`. `abort()` removes the temp.
    """

    def __init__(self, path: str | Path, version: int):
        self.path = Path(path)
        self.version = version
        self.dtype = token_dtype(version)
        self.num_tokens = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A unique hidden temp name beside the target; mode 0o666 minus the umask (like open()).
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self._f = None
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self._f = os.fdopen(fd, "wb")
            self._f.write(_header_array(version, 0).tobytes())
        except Exception as e:  # noqa: BLE001 - any write failure (full disk, ...) is one message
            self.abort()
            raise write_failure(e, self.path) from None

    def write(self, tokens: np.ndarray) -> None:
        arr = np.asarray(tokens)
        if arr.size == 0:
            return
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype)
        data = np.ascontiguousarray(arr).tobytes()
        try:
            self._f.write(data)
        except Exception as e:  # noqa: BLE001 - not only OSError: e.g. a closed file's ValueError
            self.abort()
            raise write_failure(e, self.path, len(data)) from None
        self.num_tokens += int(arr.size)

    def close(self) -> Path:
        try:
            self._f.seek(0)
            self._f.write(_header_array(self.version, self.num_tokens).tobytes())
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self.path)
        except BaseException as e:
            self.abort()
            if isinstance(e, Exception) and not isinstance(e, DataError):
                raise write_failure(e, self.path) from None
            raise
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        try:
            if self._f is not None:
                self._f.close()
        except Exception:  # noqa: BLE001 - closing flushes, which can fail again on a full disk
            pass
        finally:
            self._tmp.unlink(missing_ok=True)


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int | None = None) -> None:
    """Write `tokens` as one shard, atomically (temp file in the same dir, fsync, rename).

    The version follows `vocab_size` (version 2 above 65,536); without it, the largest
    token decides. Token ids must be in [0, vocab_size).
    """
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"shard tokens must be integers, got dtype {arr.dtype} for {path}")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if lo < 0:
        raise DataError(f"negative token id {lo} cannot be written to shard {path}")
    if vocab_size is not None:
        if arr.size and hi >= vocab_size:
            raise DataError(f"token id {hi} is outside the vocabulary (size {vocab_size}) for shard {path}")
        version = version_for_vocab(vocab_size)
    else:
        version = version_for_vocab(hi + 1)
    if hi >= 2**32:
        raise DataError(f"token id {hi} does not fit in 32 bits (shard {path})")
    w = ShardFileWriter(path, version)
    try:
        w.write(arr)
    except BaseException:
        w.abort()
        raise
    w.close()


def read_header(path: str | Path) -> ShardHeader:
    """Read and validate a shard's header against the file size. Raises DataError."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise DataError(f"token shard {p} does not exist; {_FIX}") from None
    except OSError as e:
        raise DataError(f"cannot read token shard {p}: {e}") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"token shard {p} is truncated: {size} bytes, shorter than the "
                        f"{HEADER_BYTES}-byte header; {_FIX}")
    header = np.frombuffer(raw, dtype=_HEADER_DTYPE)
    magic, version, num_tokens = int(header[0]), int(header[1]), int(header[2])
    if magic != MAGIC:
        raise DataError(f"{p} is not a token shard: magic number {magic}, expected {MAGIC} "
                        f"(llm.c/modded-nanogpt format); {_FIX}")
    if version not in _TOKEN_DTYPES:
        raise DataError(f"token shard {p} has unsupported version {version} (supported: 1 = uint16 "
                        f"tokens, 2 = uint32 tokens); {_FIX}")
    if num_tokens < 0:
        raise DataError(f"token shard {p} has a corrupt header (token count {num_tokens}); {_FIX}")
    hdr = ShardHeader(version=version, num_tokens=num_tokens, dtype=_TOKEN_DTYPES[version], path=p)
    if size != hdr.nbytes:
        what = "truncated" if size < hdr.nbytes else "longer than its header says"
        raise DataError(f"token shard {p} is {what}: the header says {num_tokens:,} tokens "
                        f"({hdr.nbytes:,} bytes) but the file has {size:,} bytes; {_FIX}")
    return hdr


def open_shard(path: str | Path) -> np.ndarray:
    """A validated, read-only memory map of the shard's tokens (uint16 or uint32)."""
    hdr = read_header(path)
    if hdr.num_tokens == 0:
        return np.zeros(0, dtype=hdr.dtype)
    return np.memmap(hdr.path, dtype=hdr.dtype, mode="r", offset=HEADER_BYTES, shape=(hdr.num_tokens,))


_INDEX_RE = re.compile(r"_(\d+)\.bin$")


def list_shards(data_dir: str | Path, split: str) -> list[Path]:
    """The split's shard files, sorted. `<split>_*.bin`, else `*_<split>_*.bin` (public sets)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"data directory {d} does not exist; write it with `scalelab data CONFIG` "
                        "(or point data.dir at a folder of llm.c-format .bin shards)")
    patterns = [f"{split}_[0-9]*.bin", f"*_{split}_[0-9]*.bin"]
    for pattern in patterns:
        found = [p for p in d.glob(pattern) if p.is_file() and _INDEX_RE.search(p.name)]
        if found:
            return sorted(found, key=lambda p: (p.name[: _INDEX_RE.search(p.name).start()],
                                                int(_INDEX_RE.search(p.name).group(1))))
    raise DataError(f"no '{split}' shards in {d} (looked for {' and '.join(patterns)}); "
                    "write them with `scalelab data CONFIG`")


class SplitWriter:
    """Streams a split's tokens into `<split>_000000.bin`, `<split>_000001.bin`, ... of
    at most `shard_tokens` tokens each (a long document simply continues in the next
    shard). Each shard is published atomically when full or on `close()`."""

    def __init__(self, directory: str | Path, split: str, shard_tokens: int, version: int):
        if shard_tokens < 1 or shard_tokens > MAX_SHARD_TOKENS:
            raise DataError(f"shard_tokens must be in [1, {MAX_SHARD_TOKENS:,}], got {shard_tokens}")
        self.directory = Path(directory)
        self.split = split
        self.shard_tokens = shard_tokens
        self.version = version
        self.shards: list[tuple[Path, int]] = []  # (path, tokens) of published shards
        self.num_tokens = 0
        self._cur: ShardFileWriter | None = None

    def write(self, tokens: np.ndarray) -> None:
        arr = np.asarray(tokens)
        start = 0
        while start < arr.size:
            if self._cur is None:
                self._cur = ShardFileWriter(self.directory / shard_name(self.split, len(self.shards)), self.version)
            room = self.shard_tokens - self._cur.num_tokens
            piece = arr[start:start + room]
            self._cur.write(piece)
            start += piece.size
            self.num_tokens += int(piece.size)
            if self._cur.num_tokens >= self.shard_tokens:
                self._publish()

    def _publish(self) -> None:
        assert self._cur is not None
        n = self._cur.num_tokens
        self.shards.append((self._cur.close(), n))
        self._cur = None

    def close(self) -> list[tuple[Path, int]]:
        if self._cur is not None:
            self._publish()
        return self.shards

    def abort(self) -> None:
        if self._cur is not None:
            self._cur.abort()
            self._cur = None
