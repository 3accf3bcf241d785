"""Tokenizers: training, save/load identity, token bytes for bits-per-byte, GPT-2."""
from __future__ import annotations

import json

import numpy as np
import pytest

from scalelab.config import DataConfig
from scalelab.data.sources import iter_documents
from scalelab.data.tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer, train_tokenizer
from scalelab.errors import DataError

SAMPLE = ("The café's naïve owner said: \"Prices rose 7.5% in 2004!\"\n\n  Indented line,\ttabs, "
          "emoji 🚀 and 中文 text; <|endoftext|> written as plain text.  ")


@pytest.fixture(scope="module")
def docs():
    return list(iter_documents(DataConfig(source="builtin:bbcnews", max_docs=60)))


@pytest.fixture(scope="module")
def bpe(docs):
    return train_tokenizer("bpe", docs, 400)


@pytest.fixture(scope="module")
def spm(docs):
    return train_tokenizer("sentencepiece", docs, 512)


def _check_common(tok: Tokenizer, text: str):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.eot_id not in ids  # text that looks like EOT is encoded as text
    tb = tok.token_bytes()
    assert tb.dtype == np.int32 and tb.shape == (tok.vocab_size,)
    assert tb[tok.eot_id] == 0
    assert int(tb[ids].sum()) == len(text.encode("utf-8"))
    assert tok.encode_batch([text, "abc"]) == [ids, tok.encode("abc")]


@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_trained_roundtrip_and_token_bytes(kind, request, docs):
    tok = request.getfixturevalue(kind)
    assert tok.name == {"bpe": "bpe", "spm": "sentencepiece"}[kind]
    for text in (SAMPLE, docs[3], " leading space", "x"):
        _check_common(tok, text)


def test_gpt2_matches_tiktoken():
    tok = gpt2_tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("gpt2", 50257, 50256)
    assert tok.decode([15496, 995, 50256]) == "Hello world<|endoftext|>"
    _check_common(tok, SAMPLE)
    # Pinned ids (GPT-2 ranks + tiktoken's gpt2 split pattern, trailing-whitespace rule included).
    assert tok.encode("  hello  \n\n") == [220, 23748, 220, 220, 628]


@pytest.mark.parametrize("kind", ["bpe", "spm", "gpt2"])
def test_save_load_identity(kind, request, tmp_path):
    tok = gpt2_tokenizer() if kind == "gpt2" else request.getfixturevalue(kind)
    d = tok.save(tmp_path / "tok")
    again = load_tokenizer(d)
    assert type(again) is type(tok)
    assert again.identity == tok.identity and again.identity.startswith(tok.name + ":")
    assert (again.vocab_size, again.eot_id) == (tok.vocab_size, tok.eot_id)
    assert again.encode(SAMPLE) == tok.encode(SAMPLE)
    # Saving again produces the same identity (stable across save/load cycles).
    assert load_tokenizer(again.save(tmp_path / "tok2")).identity == tok.identity
    assert load_tokenizer("gpt2").identity == gpt2_tokenizer().identity


def test_load_single_files(bpe, spm, tmp_path):
    bpe.save(tmp_path / "a")
    spm.save(tmp_path / "b")
    assert load_tokenizer(tmp_path / "a" / "tokenizer.json").identity == bpe.identity
    assert load_tokenizer(tmp_path / "b" / "tokenizer.model").identity == spm.identity
    # A directory with only the model file (no scalelab meta) also loads.
    (tmp_path / "b" / "tokenizer_meta.json").unlink()
    assert load_tokenizer(tmp_path / "b").identity == spm.identity


def test_identity_differs_between_vocabularies(docs, bpe):
    other = train_tokenizer("bpe", docs, 450)
    assert other.identity != bpe.identity
    assert train_tokenizer("bpe", docs, 400).identity == bpe.identity  # deterministic training


def test_tampered_tokenizer_is_refused(bpe, tmp_path):
    d = bpe.save(tmp_path / "t")
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["model"]["vocab"]["zzzz"] = len(spec["model"]["vocab"]) + 10
    (d / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="does not match"):
        load_tokenizer(d)


def test_errors(docs, tmp_path):
    with pytest.raises(DataError, match="trainable kinds"):
        train_tokenizer("wordpiece", docs, 300)
    with pytest.raises(DataError, match=">= 257"):
        train_tokenizer("bpe", docs, 100)
    with pytest.raises(DataError, match="vocab_size"):
        train_tokenizer("sentencepiece", docs, 100)
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no tokenizer in directory"):
        load_tokenizer(tmp_path)


def test_bpe_fast_twin_encodes_exactly_like_tokenizers():
    """The tiktoken twin used for speed must give the very same ids as `tokenizers`."""
    from scalelab.config import DataConfig
    from scalelab.data.sources import iter_documents
    from scalelab.data.tokenizer import train_tokenizer

    docs = list(iter_documents(DataConfig(max_docs=300)))
    extra = ["  multiple   spaces\n\n\ttabs ", "naïve café — 漢字 🙂 it's", "1234567 3.14159 $5"]
    for vocab in (300, 1024):
        tok = train_tokenizer("bpe", docs[:150], vocab)
        assert tok._fast is not None
        texts = docs + extra
        reference = [e.ids for e in tok._tok.encode_batch(texts, add_special_tokens=False)]
        assert tok.encode_batch(texts) == reference
        assert [tok.encode(t) for t in extra] == reference[-3:]
