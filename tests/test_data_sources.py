"""Document sources: builtin corpus, .txt/.jsonl/.parquet files and folders, hf: datasets."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalelab.config import DataConfig
from scalelab.data.sources import iter_documents
from scalelab.errors import DataError

TEXTS = [f"Document number {i}. It has some words in it, ünïcödé too." for i in range(25)]


def _docs(**kw):
    return list(iter_documents(DataConfig(**kw)))


def test_builtin_bbcnews_order_and_caps():
    docs = _docs(source="builtin:bbcnews", max_docs=5)
    assert len(docs) == 5
    assert docs[0].startswith("Ad sales boost Time Warner profit")  # business/001.txt
    assert _docs(source="builtin:bbcnews", max_docs=5) == docs  # deterministic
    capped = _docs(source="builtin:bbcnews", max_bytes=3000)
    sizes = [len(d.encode()) for d in capped]
    assert sum(sizes[:-1]) < 3000 <= sum(sizes)  # stops after the doc that reaches the cap


def test_unknown_sources_list_accepted_forms(tmp_path):
    with pytest.raises(DataError) as e:
        _docs(source="s3://bucket/corpus")
    assert "builtin:bbcnews" in str(e.value) and "hf:NAME" in str(e.value) and ".jsonl" in str(e.value)
    with pytest.raises(DataError, match="unknown builtin corpus 'wiki'.*builtin:bbcnews"):
        _docs(source="builtin:wiki")


def test_txt_file_and_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for i, t in enumerate(TEXTS[:3]):
        (tmp_path / "sub" / f"{i:02d}.txt").write_text(t)
    (tmp_path / "sub" / "notes.md").write_text("ignored")
    (tmp_path / "sub" / "blank.txt").write_text("  \n")
    assert _docs(source=str(tmp_path / "sub" / "01.txt")) == [TEXTS[1]]
    assert _docs(source=str(tmp_path / "sub")) == TEXTS[:3]  # blank doc skipped, .md ignored


def test_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    assert _docs(source=str(p)) == TEXTS
    assert _docs(source=str(p), max_docs=4) == TEXTS[:4]
    g = tmp_path / "c.jsonl.gz"
    with gzip.open(g, "wt") as f:
        f.write(p.read_text())
    assert _docs(source=str(g)) == TEXTS
    q = tmp_path / "other.jsonl"
    q.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(DataError, match=r"no field 'text'.*content.*text_column"):
        _docs(source=str(q))
    assert _docs(source=str(q), text_column="content") == ["x"]


def test_parquet_and_mixed_folder(tmp_path):
    d = tmp_path / "mix"
    d.mkdir()
    pq.write_table(pa.table({"text": TEXTS[:10], "n": list(range(10))}), d / "a.parquet")
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[10:]))
    assert _docs(source=str(d / "a.parquet")) == TEXTS[:10]
    assert _docs(source=str(d)) == TEXTS  # files in sorted order
    with pytest.raises(DataError, match=r"no column 'body'"):
        _docs(source=str(d / "a.parquet"), text_column="body")


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="yielded no documents"):
        _docs(source=str(tmp_path / "empty.jsonl"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="has no .txt"):
        _docs(source=str(tmp_path / "nothing"))


@pytest.fixture(scope="module")
def hf_local(tmp_path_factory):
    """A local folder laid out like a Hub dataset repo (same `text` column as FineWeb)."""
    root = tmp_path_factory.mktemp("hf_ds")
    (root / "data").mkdir()
    pq.write_table(pa.table({"text": TEXTS, "id": [f"<urn:{i}>" for i in range(len(TEXTS))]}),
                   root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"text": TEXTS[:2], "id": ["a", "b"]}), root / "data" / "test-00000-of-00001.parquet")
    return root


def test_hf_streaming_local(hf_local):
    # The same code path as hf:HuggingFaceFW/fineweb-edu: datasets.load_dataset(streaming=True).
    assert _docs(source=f"hf:{hf_local}") == TEXTS
    assert _docs(source=f"hf:{hf_local}", hf_split="test") == TEXTS[:2]
    assert _docs(source=f"hf:{hf_local}", max_docs=3) == TEXTS[:3]


def test_hf_errors(hf_local):
    with pytest.raises(DataError, match=r"could not open Hugging Face dataset.*hf_split"):
        _docs(source=f"hf:{hf_local}", hf_split="nosuchsplit")
    with pytest.raises(DataError, match=r"no column 'body'.*text_column"):
        _docs(source=f"hf:{hf_local}", text_column="body")
    with pytest.raises(DataError, match="needs a dataset name"):
        _docs(source="hf:")
