"""Fault injection for `scalelab data` and `scalelab eval`: full disks and failing writes
(OSError(ENOSPC) and other exceptions), read-only output locations, truncated and
corrupted shards. Each must end in one clear ScalelabError, leave no partial output and
keep what was there before."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from scalelab import cli
from scalelab.config import DataConfig
from scalelab.data import prepare as P
from scalelab.data import shards as S
from scalelab.data.loader import TokenLoader, iter_eval_batches
from scalelab.errors import DataError


def _cfg(tmp_path, name="d", **kw) -> DataConfig:
    base = dict(source="builtin:bbcnews", max_docs=40, tokenizer="bpe", vocab_size=280,
                tokenizer_train_bytes=100_000, dir=str(tmp_path / name), val_fraction=0.1, shard_tokens=4096,
                num_workers=1)
    base.update(kw)
    return DataConfig(**base)


class _FailingFile:
    """A file whose writes fail once `budget` bytes were written (a disk filling up)."""

    def __init__(self, f, budget: list[int], exc: BaseException):
        self._f, self._budget, self._exc = f, budget, exc

    def write(self, data):
        self._budget[0] -= len(data)
        if self._budget[0] < 0:
            raise self._exc
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


class _OSProxy:
    """`os` for scalelab.data.shards, with fdopen handing out failing files."""

    def __init__(self, budget: int, exc: BaseException):
        self.budget, self.exc = [budget], exc

    def fdopen(self, fd, *a, **kw):
        return _FailingFile(os.fdopen(fd, *a, **kw), self.budget, self.exc)

    def __getattr__(self, name):
        return getattr(os, name)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _one_line(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg


# ---------------------------------------------------------------------------
# scalelab data: write failures


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("storage driver went away")], ids=["ENOSPC", "RuntimeError"])
def test_shard_write_failure_is_one_message_and_leaves_nothing(tmp_path, monkeypatch, exc):
    cfg = _cfg(tmp_path)
    # Enough for the first shard, not for all of them: the failure hits mid-stream.
    monkeypatch.setattr(S, "os", _OSProxy(budget=20_000, exc=exc))
    with pytest.raises(DataError) as ei:
        P.prepare_data(cfg, progress=False)
    msg = str(ei.value)
    _one_line(msg)
    if isinstance(exc, OSError):
        assert msg.startswith(f"no space left on device for '{tmp_path}")
        assert " free " in msg and " MB" in msg
    else:
        assert msg.startswith(f"could not write '{tmp_path / 'd' / 'train_0000'}") and "storage driver went away" in msg
    assert not Path(cfg.dir).exists()
    assert _leftovers(tmp_path) == []  # no .d.partial-* dir, no shard temp files


def test_disk_full_during_rebuild_keeps_the_old_data(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    P.prepare_data(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in Path(cfg.dir).iterdir()}
    monkeypatch.setattr(S, "os", _OSProxy(budget=5_000, exc=OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(DataError, match="no space left on device"):
        P.prepare_data(_cfg(tmp_path, vocab_size=300), progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in Path(cfg.dir).iterdir()} == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), ValueError("I/O on closed file")],
                         ids=["ENOSPC", "ValueError"])
def test_meta_json_write_failure(tmp_path, monkeypatch, exc):
    real_open = open

    def failing_open(path, mode="r", *a, **kw):
        if "w" in mode and Path(path).name.startswith(".meta.json"):
            raise exc
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(P, "open", failing_open, raising=False)
    cfg = _cfg(tmp_path)
    with pytest.raises(DataError) as ei:
        P.prepare_data(cfg, progress=False)
    _one_line(str(ei.value))
    assert ("no space left on device" in str(ei.value)) == isinstance(exc, OSError)
    assert "meta.json" in str(ei.value) or isinstance(exc, OSError)
    assert not Path(cfg.dir).exists() and _leftovers(tmp_path) == []


def test_cli_data_disk_full_prints_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(S, "os", _OSProxy(budget=0, exc=OSError(errno.ENOSPC, "No space left on device")))
    rc = cli.main(["data", f"data.dir={tmp_path / 'd'}", "data.max_docs=20", "data.vocab_size=260",
                   "data.tokenizer_train_bytes=50000", "data.num_workers=1", "train.max_steps=1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: no space left on device for") and "\n" not in err
    assert _leftovers(tmp_path) == [] and not (tmp_path / "d").exists()


def _readonly(monkeypatch, root: Path) -> None:
    """Make creating anything below `root` fail as on a read-only mount (tests run as
    root, where permission bits do not stop writes)."""
    real_open, real_mkdir = os.open, os.mkdir

    def ro_open(path, flags, *a, **kw):
        if flags & os.O_CREAT and str(Path(path).absolute()).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **kw)

    def ro_mkdir(path, *a, **kw):
        if str(Path(path).absolute()).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


def test_data_read_only_location_fails_before_any_work(tmp_path, monkeypatch):
    import scalelab.data.prepare as prep

    def no_tokenizer(cfg):  # reading the corpus / training a tokenizer must not start
        raise AssertionError("work started before the output location was checked")

    monkeypatch.setattr(prep, "_make_tokenizer", no_tokenizer)
    _readonly(monkeypatch, tmp_path)
    with pytest.raises(DataError) as ei:
        P.prepare_data(_cfg(tmp_path, name="sub/d"), progress=False)
    msg = str(ei.value)
    _one_line(msg)
    assert msg.startswith(f"data.dir '{tmp_path / 'sub' / 'd'}' is not writable") and "Read-only" in msg


# ---------------------------------------------------------------------------
# Truncated and corrupted shards: a DataError naming the shard, never garbage


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    cfg = _cfg(tmp)
    P.prepare_data(cfg, progress=False)
    return cfg


def _copy(cfg, tmp_path) -> Path:
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(cfg.dir, d)
    return d


def test_truncated_shard_is_named(prepared, tmp_path):
    d = _copy(prepared, tmp_path)
    shard = d / "train_000001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match=r"token shard .*train_000001\.bin is truncated"):
        TokenLoader(d, "train", micro_batch=2, seq_len=32)
    shard.write_bytes(data[:500])  # shorter than the header
    with pytest.raises(DataError, match=r"train_000001\.bin is truncated: 500 bytes"):
        TokenLoader(d, "train", micro_batch=2, seq_len=32)
    # the data dir no longer matches its meta: a rebuild is asked for, not reused
    cfg = DataConfig(**{**prepared.__dict__, "dir": str(d)})
    with pytest.raises(DataError, match=r"has a missing or damaged shard \(token shard .*train_000001\.bin is trunc.*; pass --overwrite"):
        P.prepare_data(cfg, progress=False)


def test_corrupted_header_is_named(prepared, tmp_path):
    d = _copy(prepared, tmp_path)
    shard = d / "val_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[0:16] = os.urandom(16)
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"val_000000\.bin is not a token shard: magic number"):
        iter_eval_batches(d, "val", micro_batch=2, seq_len=32, max_tokens=1000)


def test_corrupted_body_is_named_not_fed_to_the_model(prepared, tmp_path):
    """4 KB of random bytes in a shard's body: token ids beyond the vocabulary must stop
    the loader with the shard's name (an embedding lookup would crash or read garbage)."""
    d = _copy(prepared, tmp_path)
    shard = d / "train_000000.bin"
    raw = bytearray(shard.read_bytes())
    rng = np.random.default_rng(0)
    raw[S.HEADER_BYTES + 1000:S.HEADER_BYTES + 1000 + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    shard.write_bytes(bytes(raw))
    loader = TokenLoader(d, "train", micro_batch=64, seq_len=32, shuffle=False)
    with pytest.raises(DataError, match=r"train_000000\.bin holds token id \d+ outside the vocabulary \(280"):
        for _ in range(10):
            loader.next_batch()
    with pytest.raises(DataError, match=r"train_000000\.bin holds token id"):
        list(iter_eval_batches(d, "train", micro_batch=64, seq_len=32, max_tokens=10_000))


def test_meta_json_corrupted_is_named(prepared, tmp_path):
    d = _copy(prepared, tmp_path)
    (d / "meta.json").write_text('{"format_version": 1, "splits": ')  # cut mid-write
    with pytest.raises(DataError, match=r"meta\.json is unreadable or not valid JSON"):
        P.load_meta(d)
    json.loads((Path(prepared.dir) / "meta.json").read_text())  # the original is untouched
