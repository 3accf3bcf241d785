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


# ---------------------------------------------------------------------------
# Non-UTF-8 text: counted, warned about, refused above a threshold, or decoded right


def _latin1_folder(tmp_path, n_bad: int = 1):
    """Mostly English text; `n_bad` files written in latin-1 with a few accented words."""
    d = tmp_path / "mixed"
    d.mkdir()
    for i in range(6):
        text = f"Plain file {i}. " + "Some ordinary words repeat here. " * 60
        if i < n_bad:
            (d / f"f{i}.txt").write_bytes((text + " Café déjà vu à Noël.").encode("latin-1"))
        else:
            (d / f"f{i}.txt").write_text(text, encoding="utf-8")
    return d


def test_latin1_files_warn_with_count_and_names(tmp_path):
    d = _latin1_folder(tmp_path)
    with pytest.warns(UserWarning) as rec:
        docs = _docs(source=str(d))
    msg = str(rec[0].message)
    # é, é, à, à, ë: five undecodable bytes, each a U+FFFD, in one document
    assert "5 characters in 1 documents are not valid utf-8" in msg
    assert "f0.txt (5)" in msg and "data.encoding=latin-1" in msg
    assert sum(doc.count("\ufffd") for doc in docs) == 5


def test_latin1_above_threshold_is_an_error(tmp_path):
    d = _latin1_folder(tmp_path, n_bad=6)
    with pytest.raises(DataError, match=r"30 characters in 6 documents .*more than data.max_replaced_fraction=0.0001"):
        _docs(source=str(d), max_replaced_fraction=1e-4)
    with pytest.warns(UserWarning, match="30 characters in 6 documents"):  # the default 1% lets it pass
        _docs(source=str(d))


def test_encoding_key_decodes_latin1(tmp_path, recwarn):
    d = _latin1_folder(tmp_path, n_bad=6)
    docs = _docs(source=str(d), encoding="latin-1")
    assert all(doc.endswith("Café déjà vu à Noël.") for doc in docs)
    assert not [w for w in recwarn if "U+FFFD" in str(w.message)]


def test_jsonl_bytes_counted(tmp_path):
    p = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": f"row {i} na\u00efve"}, ensure_ascii=False) for i in range(4)]
    p.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match=r"4 characters in 4 documents are not valid utf-8"):
        _docs(source=str(p))  # 4 of ~80 characters: above 1%
    assert _docs(source=str(p), encoding="latin-1")[0] == "row 0 na\u00efve"


def test_encoding_config_validated():
    from scalelab.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.encoding 'latin-42' is not a known text encoding"):
        load_config(None, ["data.encoding=latin-42", "train.max_steps=1"])
    assert load_config(None, ["data.encoding=latin-1", "train.max_steps=1"]).data.encoding == "latin-1"


def test_datasets_save_to_disk_and_arrow_files(tmp_path):
    """`datasets` objects as their users keep them: a save_to_disk folder (Dataset or
    DatasetDict, path or hf:PATH) and its .arrow files (IPC stream) or an IPC-file .arrow."""
    import datasets

    ds = datasets.Dataset.from_dict({"id": list(range(len(TEXTS))), "text": TEXTS})
    ds.save_to_disk(str(tmp_path / "saved"))
    assert _docs(source=str(tmp_path / "saved")) == TEXTS
    assert _docs(source=f"hf:{tmp_path / 'saved'}") == TEXTS  # where load_dataset says "use load_from_disk"
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    assert _docs(source=str(arrow)) == TEXTS
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(3))}).save_to_disk(str(tmp_path / "dd"))
    assert _docs(source=str(tmp_path / "dd")) == TEXTS  # data.hf_split defaults to train
    assert _docs(source=str(tmp_path / "dd"), hf_split="validation") == TEXTS[:3]
    with pytest.raises(DataError, match="DatasetDict with splits train, validation; set data.hf_split"):
        _docs(source=str(tmp_path / "dd"), hf_split="test")
    with pytest.raises(DataError, match=r"no column 'body' \(columns: \['id', 'text'\]\); set data.text_column"):
        _docs(source=str(tmp_path / "saved"), text_column="body")
    # the IPC file format (pyarrow's own .arrow), alone and in a folder with other files
    table = pa.table({"text": TEXTS[:5]})
    (tmp_path / "mixed").mkdir()
    with pa.OSFile(str(tmp_path / "mixed" / "a.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    (tmp_path / "mixed" / "b.txt").write_text("a plain text document")
    assert _docs(source=str(tmp_path / "mixed")) == TEXTS[:5] + ["a plain text document"]
    with pytest.raises(DataError, match="Arrow file .* has no column 'body'"):
        _docs(source=str(tmp_path / "mixed" / "a.arrow"), text_column="body")
    (tmp_path / "bad.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(DataError, match="bad.arrow is not an Arrow IPC stream or file"):
        _docs(source=str(tmp_path / "bad.arrow"))
