"""Shard format: round trips, public llm.c/modded-nanogpt files, and clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from scalelab.data import shards as S
from scalelab.errors import DataError


def _write_public_shard(path, tokens):
    """Byte for byte as modded-nanogpt / parameter-golf / llm.c write their shards."""
    header = np.zeros(256, dtype=np.int32)
    header[0] = 20240520
    header[1] = 1
    header[2] = len(tokens)
    toks = np.array(tokens, dtype=np.uint16)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.tobytes())


def test_roundtrip_v1(tmp_path):
    toks = np.arange(1000, dtype=np.int64) % 50257
    p = tmp_path / "train_000000.bin"
    S.write_shard(p, toks, vocab_size=50257)
    h = S.read_header(p)
    assert (h.version, h.num_tokens, h.dtype) == (1, 1000, np.dtype("<u2"))
    assert p.stat().st_size == 1024 + 2 * 1000
    m = S.open_shard(p)
    assert m.dtype == np.uint16 and np.array_equal(m, toks)
    with pytest.raises((ValueError, TypeError)):
        m[0] = 1  # read-only


def test_roundtrip_v2_and_version_choice(tmp_path):
    toks = np.array([0, 70000, 131071, 5], dtype=np.int64)
    p = tmp_path / "train_000000.bin"
    S.write_shard(p, toks, vocab_size=131072)
    h = S.read_header(p)
    assert (h.version, h.dtype) == (2, np.dtype("<u4"))
    assert np.array_equal(S.open_shard(p), toks)
    # Without vocab_size the largest token decides.
    S.write_shard(tmp_path / "a.bin", np.array([1, 65535]))
    S.write_shard(tmp_path / "b.bin", np.array([1, 65536]))
    assert S.read_header(tmp_path / "a.bin").version == 1
    assert S.read_header(tmp_path / "b.bin").version == 2
    # A small vocabulary stays version 1.
    S.write_shard(tmp_path / "c.bin", np.array([3, 4]), vocab_size=65536)
    assert S.read_header(tmp_path / "c.bin").version == 1


def test_write_rejects_out_of_vocab_and_leaves_no_temp(tmp_path):
    with pytest.raises(DataError, match="outside the vocabulary"):
        S.write_shard(tmp_path / "x.bin", np.array([1, 300]), vocab_size=256)
    with pytest.raises(DataError, match="negative"):
        S.write_shard(tmp_path / "x.bin", np.array([-1, 3]))
    S.write_shard(tmp_path / "y.bin", np.array([1, 2, 3]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.bin"]


def test_public_modded_nanogpt_shard_loads_unchanged(tmp_path):
    toks = list(range(50257))[:3000]
    _write_public_shard(tmp_path / "fineweb_train_000001.bin", toks)
    _write_public_shard(tmp_path / "fineweb_val_000000.bin", toks[:500])
    assert [p.name for p in S.list_shards(tmp_path, "train")] == ["fineweb_train_000001.bin"]
    assert [p.name for p in S.list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin"]
    m = S.open_shard(tmp_path / "fineweb_train_000001.bin")
    assert m.tolist() == toks


def test_wrong_magic(tmp_path):
    p = tmp_path / "train_000000.bin"
    S.write_shard(p, np.arange(10))
    raw = bytearray(p.read_bytes())
    raw[0:4] = np.array([12345], dtype="<i4").tobytes()
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        S.read_header(p)
    msg = str(e.value)
    assert str(p) in msg and "magic" in msg and "20240520" in msg and "scalelab data" in msg


def test_wrong_version(tmp_path):
    p = tmp_path / "train_000000.bin"
    S.write_shard(p, np.arange(10))
    raw = bytearray(p.read_bytes())
    raw[4:8] = np.array([7], dtype="<i4").tobytes()
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"unsupported version 7.*scalelab data"):
        S.open_shard(p)


def test_truncated(tmp_path):
    p = tmp_path / "train_000000.bin"
    S.write_shard(p, np.arange(100))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError) as e:
        S.open_shard(p)
    assert "truncated" in str(e.value) and "100 tokens" in str(e.value) and str(p) in str(e.value)
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="shorter than the 1024-byte header"):
        S.read_header(p)


def test_missing_dir_and_no_shards(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*scalelab data"):
        S.list_shards(tmp_path / "nope", "train")
    with pytest.raises(DataError) as e:
        S.list_shards(tmp_path, "val")
    assert "val_[0-9]*.bin" in str(e.value) and "scalelab data" in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        S.read_header(tmp_path / "train_000000.bin")


def test_list_shards_sorted_numerically(tmp_path):
    for i in (2, 0, 10, 1):
        S.write_shard(tmp_path / S.shard_name("train", i), np.arange(3))
    S.write_shard(tmp_path / "val_000000.bin", np.arange(3))
    assert [p.name for p in S.list_shards(tmp_path, "train")] == [
        "train_000000.bin", "train_000001.bin", "train_000002.bin", "train_000010.bin"]


def test_split_writer_spans_shards(tmp_path):
    w = S.SplitWriter(tmp_path, "train", shard_tokens=100, version=1)
    w.write(np.arange(30))
    w.write(np.arange(250) % 7)  # longer than a shard: continues in the next ones
    shards = w.close()
    assert [n for _, n in shards] == [100, 100, 80]
    got = np.concatenate([S.open_shard(p) for p in S.list_shards(tmp_path, "train")])
    assert np.array_equal(got, np.concatenate([np.arange(30), np.arange(250) % 7]))
