"""`prepare_data`: tokenizer + shards + meta.json, split, parallelism, idempotence, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scalelab.config import DataConfig
from scalelab.data import shards as S
from scalelab.data.prepare import is_val_doc, load_data_tokenizer, load_meta, prepare_data
from scalelab.data.sources import iter_documents
from scalelab.errors import DataError


def _cfg(tmp_path, name="d", **kw) -> DataConfig:
    base = dict(source="builtin:bbcnews", max_docs=60, tokenizer="bpe", vocab_size=300, dir=str(tmp_path / name),
                val_fraction=0.1, shard_tokens=8192, num_workers=1)
    base.update(kw)
    return DataConfig(**base)


def _tokens(d, split):
    return np.concatenate([np.asarray(S.open_shard(p)) for p in S.list_shards(d, split)])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep")
    cfg = _cfg(tmp)
    return cfg, prepare_data(cfg, progress=False)


def test_layout_and_meta(prepared):
    cfg, meta = prepared
    d = cfg.dir
    names = sorted(p.name for p in Path(d).iterdir())
    assert "meta.json" in names and "tokenizer.json" in names and "tokenizer_meta.json" in names
    assert "train_000000.bin" in names and "val_000000.bin" in names
    assert not [n for n in names if n.startswith(".")]  # no temp files left
    assert meta == json.loads((Path(d) / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["source"] == "builtin:bbcnews"
    tok = meta["tokenizer"]
    assert tok["name"] == "bpe" and tok["vocab_size"] == 300 and tok["identity"].startswith("bpe:")
    sp = meta["splits"]
    assert sp["train"]["docs"] + sp["val"]["docs"] == 60 and sp["val"]["docs"] >= 1
    docs = list(iter_documents(cfg))
    assert sp["train"]["bytes"] + sp["val"]["bytes"] == sum(len(x.encode()) for x in docs)
    for split in ("train", "val"):
        toks = _tokens(d, split)
        assert sp[split]["tokens"] == len(toks) == sum(s["tokens"] for s in sp[split]["shards"])
        assert (toks == tok["eot_id"]).sum() == sp[split]["docs"]  # one EOT per document
        assert toks[0] == tok["eot_id"]  # EOT before each document
    assert len(sp["train"]["shards"]) > 1  # 8192-token shards: several
    assert all(s["tokens"] == 8192 for s in sp["train"]["shards"][:-1])
    assert load_meta(d) == meta


def test_shards_decode_to_the_documents(prepared):
    cfg, meta = prepared
    tok = load_data_tokenizer(cfg.dir)
    assert tok.identity == meta["tokenizer"]["identity"]
    docs = list(iter_documents(cfg))
    val = [docs[i] for i in range(len(docs)) if is_val_doc(i, cfg.val_fraction, cfg.split_seed)]
    train = [docs[i] for i in range(len(docs)) if not is_val_doc(i, cfg.val_fraction, cfg.split_seed)]
    eot = tok.eot_id
    for split, expect in (("train", train), ("val", val)):
        toks = _tokens(cfg.dir, split).tolist()
        pieces, cur = [], None
        for t in toks:
            if t == eot:
                if cur is not None:
                    pieces.append(cur)
                cur = []
            else:
                cur.append(t)
        pieces.append(cur)
        assert [tok.decode(p) for p in pieces] == expect


def test_idempotent_and_refuses_other_settings(prepared):
    cfg, meta = prepared
    before = {p.name: p.stat().st_mtime_ns for p in Path(cfg.dir).iterdir()}
    assert prepare_data(cfg, progress=False) == meta  # no work
    after = {p.name: p.stat().st_mtime_ns for p in Path(cfg.dir).iterdir()}
    assert before == after
    other = DataConfig(**{**cfg.__dict__, "tokenizer": "gpt2"})
    with pytest.raises(DataError) as e:
        prepare_data(other, progress=False)
    assert "tokenizer: 'bpe' -> 'gpt2'" in str(e.value) and "--overwrite" in str(e.value)
    assert load_meta(cfg.dir) == meta  # untouched


def test_overwrite_replaces(tmp_path):
    cfg = _cfg(tmp_path, max_docs=20)
    first = prepare_data(cfg, progress=False)
    again = prepare_data(cfg, progress=False, overwrite=True)  # overwrite always rebuilds
    assert again["created"] >= first["created"] and again["splits"] == first["splits"]
    cfg2 = _cfg(tmp_path, max_docs=20, tokenizer="gpt2", shard_tokens=1_000_000)
    meta = prepare_data(cfg2, progress=False, overwrite=True)
    assert meta["tokenizer"]["name"] == "gpt2" and load_meta(cfg.dir)["tokenizer"]["name"] == "gpt2"
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["meta.json", "tokenizer_meta.json", "train_000000.bin", "val_000000.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp or old dirs left


def test_refuses_foreign_dir(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="was not written by `scalelab data`"):
        prepare_data(_cfg(tmp_path), progress=False)
    # --overwrite replaces a data dir, never a folder holding other files.
    with pytest.raises(DataError, match=r"refusing to replace .*precious.txt"):
        prepare_data(_cfg(tmp_path), progress=False, overwrite=True)
    assert (tmp_path / "d" / "precious.txt").read_text() == "keep me"


def test_parallel_equals_serial(tmp_path):
    one = prepare_data(_cfg(tmp_path, "one", num_workers=1, tokenizer="gpt2", max_docs=120), progress=False)
    two = prepare_data(_cfg(tmp_path, "two", num_workers=2, tokenizer="gpt2", max_docs=120), progress=False)
    assert one["splits"] == two["splits"]
    for split in ("train", "val"):
        a = [p.read_bytes() for p in S.list_shards(tmp_path / "one", split)]
        b = [p.read_bytes() for p in S.list_shards(tmp_path / "two", split)]
        assert a == b


def test_parallel_trained_tokenizers_match(tmp_path):
    # Trained tokenizers are deterministic, and workers use exactly the saved tokenizer.
    a = prepare_data(_cfg(tmp_path, "a", tokenizer="sentencepiece", vocab_size=400, num_workers=1), progress=False)
    b = prepare_data(_cfg(tmp_path, "b", tokenizer="sentencepiece", vocab_size=400, num_workers=2), progress=False)
    assert a["tokenizer"] == b["tokenizer"] and a["splits"] == b["splits"]
    assert np.array_equal(_tokens(tmp_path / "a", "train"), _tokens(tmp_path / "b", "train"))


def test_document_larger_than_a_shard(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = " ".join(f"word{i % 97}" for i in range(6000))  # ~6k+ tokens of gpt2, > 1024-token shards
    (src / "a.txt").write_text(big)
    (src / "b.txt").write_text("A small document.")
    (src / "c.txt").write_text("Another small document here.")
    cfg = _cfg(tmp_path, source=str(src), max_docs=None, tokenizer="gpt2", shard_tokens=1024,
               val_fraction=0.01, num_workers=2)
    meta = prepare_data(cfg, progress=False)
    train = meta["splits"]["train"]
    assert len(train["shards"]) >= 6 and all(s["tokens"] == 1024 for s in train["shards"][:-1])
    from scalelab.data.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer()
    toks = _tokens(cfg.dir, "train").tolist() + _tokens(cfg.dir, "val").tolist()
    assert tok.decode([t for t in toks]).count("<|endoftext|>") == 3
    assert big in tok.decode(toks)


def test_val_never_empty_and_split_deterministic(tmp_path):
    # With a tiny val_fraction no document hashes to val: the last train doc is moved there.
    m = prepare_data(_cfg(tmp_path, "a", max_docs=5, val_fraction=1e-9, tokenizer="gpt2"), progress=False)
    assert m["splits"]["val"]["docs"] == 1 and m["splits"]["train"]["docs"] == 4
    assert [is_val_doc(i, 0.3, 1) for i in range(20)] == [is_val_doc(i, 0.3, 1) for i in range(20)]
    assert [is_val_doc(i, 0.3, 1) for i in range(50)] != [is_val_doc(i, 0.3, 2) for i in range(50)]
    frac = np.mean([is_val_doc(i, 0.05, 0) for i in range(20000)])
    assert 0.04 < frac < 0.06


def test_too_small_and_empty_corpus(tmp_path):
    src = tmp_path / "one.jsonl"
    src.write_text(json.dumps({"text": "only one document"}) + "\n")
    with pytest.raises(DataError, match="at least 2"):
        prepare_data(_cfg(tmp_path, source=str(src), tokenizer="gpt2"), progress=False)
    src.write_text("")
    with pytest.raises(DataError, match="no documents"):
        prepare_data(_cfg(tmp_path, source=str(src)), progress=False)
    assert not (tmp_path / "d").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl"]  # no partial dirs


def test_tokenizer_from_path_and_sources(tmp_path, prepared):
    cfg, meta = prepared
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": f"Story {i}: the market rose again."}) + "\n" for i in range(30)))
    m = prepare_data(_cfg(tmp_path, source=str(src), tokenizer=cfg.dir, max_docs=None), progress=False)
    assert m["tokenizer"]["identity"] == meta["tokenizer"]["identity"]
    assert m["splits"]["train"]["docs"] + m["splits"]["val"]["docs"] == 30


def test_load_meta_errors_and_public_shards(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*scalelab data CONFIG"):
        load_meta(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no meta.json and no token shards.*scalelab data CONFIG"):
        load_meta(tmp_path / "empty")
    pub = tmp_path / "pub"
    pub.mkdir()
    for name, n in (("fineweb_train_000001.bin", 5000), ("fineweb_train_000002.bin", 3000), ("fineweb_val_000000.bin", 700)):
        header = np.zeros(256, dtype=np.int32)
        header[:3] = (20240520, 1, n)
        with open(pub / name, "wb") as f:
            f.write(header.tobytes())
            f.write((np.arange(n) % 1024).astype(np.uint16).tobytes())
    meta = load_meta(pub)
    assert meta["tokenizer"] is None and meta["splits"]["train"]["tokens"] == 8000
    assert meta["splits"]["val"]["tokens"] == 700 and meta["shard_version"] == 1
    assert load_data_tokenizer(pub) is None
    (pub / "meta.json").write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        load_meta(pub)


def test_hints_name_the_cli_flag(prepared, tmp_path):
    cfg, _ = prepared
    with pytest.raises(DataError) as e:
        prepare_data(DataConfig(**{**cfg.__dict__, "vocab_size": 301}), progress=False)
    assert "pass --overwrite" in str(e.value) and "overwrite=True" not in str(e.value)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("x")
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(tmp_path), progress=False)
    assert "--overwrite" in str(e.value) and "overwrite=True" not in str(e.value)


def test_meta_without_encoding_still_matches(tmp_path):
    """A dir prepared before data.encoding existed was decoded as utf-8: reused, not refused."""
    cfg = _cfg(tmp_path, max_docs=20)
    meta = prepare_data(cfg, progress=False)
    del meta["config"]["encoding"]
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    assert prepare_data(cfg, progress=False)["created"] == meta["created"]
    with pytest.raises(DataError, match="encoding: 'utf-8' -> 'latin-1'"):
        prepare_data(_cfg(tmp_path, max_docs=20, encoding="latin-1"), progress=False)


def test_stale_partial_dirs_are_cleaned(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from scalelab.data.prepare import partial_name

    out = tmp_path / "d"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.05)

        def made_by(pid: int) -> Path:  # a partial dir as process `pid` would name it
            name = partial_name(out).replace(f"-{os.getpid()}-", f"-{pid}-")
            p = tmp_path / name
            p.mkdir()
            (p / "train_000000.bin").write_bytes(b"half")
            return p

        killed = made_by(dead.pid)
        running = made_by(alive.pid)
        legacy = tmp_path / ".d.partial-0123abcd"  # older scalelab: no pid in the name
        legacy.mkdir()
        os.utime(legacy, (time.time() - 3600,) * 2)
        other_host = tmp_path / f".d.partial-ffffff-{dead.pid}-0123abcd"
        other_host.mkdir()
        unrelated = tmp_path / ".e.partial-0123abcd"
        unrelated.mkdir()
        os.utime(unrelated, (time.time() - 3600,) * 2)

        prepare_data(_cfg(tmp_path, max_docs=20), progress=False)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert killed.name not in left and legacy.name not in left
        assert running.name in left  # its writer is still at work
        if other_host.name.split("-")[1] != partial_name(out).split("-")[1]:
            assert other_host.name in left  # another machine's: not judged from here
        assert unrelated.name in left  # another data dir's
        # a live process that started after the dir was last written reuses a dead writer's pid
        from scalelab.data.prepare import _writer_alive

        assert _writer_alive(alive.pid, time.time()) and not _writer_alive(alive.pid, time.time() - 3600)
    finally:
        alive.kill()
        alive.wait()
