"""Tokenizers compared by content (vocabulary + merges), not by name: a run's shards
evaluate on its Hugging Face export, whose tokenizer identity is "hf:..." not "bpe:..."."""
import pytest

import eval_helpers as H

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")


def _hf(tok, tmp_path):
    from scalelab.eval.hf import HFTokenizer
    from scalelab.export import export_tokenizer

    export_tokenizer(tok, tmp_path)
    return HFTokenizer(transformers.AutoTokenizer.from_pretrained(tmp_path))


def test_export_and_run_tokenizers_have_one_content(tmp_path):
    from scalelab.data.tokenizer import gpt2_tokenizer, train_tokenizer
    from scalelab.data.tokenizer_content import content_fingerprint, same_tokenizer

    bpe = H.tokenizer()
    hf = _hf(bpe, tmp_path / "bpe")
    assert hf.identity != bpe.identity and same_tokenizer(hf, bpe)
    assert content_fingerprint(hf) == content_fingerprint(bpe) is not None
    other = train_tokenizer("bpe", ["A different corpus, with other merges entirely. " * 40], 300)
    assert not same_tokenizer(other, bpe) and not same_tokenizer(other, hf)
    gpt2 = gpt2_tokenizer()  # tiktoken ranks vs the exported vocab.json/merges.txt
    hf_gpt2 = _hf(gpt2, tmp_path / "gpt2")
    assert same_tokenizer(gpt2, hf_gpt2) and not same_tokenizer(gpt2, bpe)


def test_eval_hf_export_on_the_runs_shards(tmp_path):
    from scalelab.errors import DataError
    from scalelab.eval.lm import evaluate_lm
    from scalelab.eval.loading import load_model_for_eval
    from scalelab.export import export_hf

    export_hf(H.run_dir(), tmp_path / "hf")
    hf = load_model_for_eval(f"hf:{tmp_path / 'hf'}", device="cpu")
    ours = load_model_for_eval(H.run_dir(), device="cpu")
    assert hf.tokenizer.identity.startswith("hf:") and ours.tokenizer.identity.startswith("bpe:")
    a = evaluate_lm(hf, H.data_dir(), max_tokens=256, progress=False)
    b = evaluate_lm(ours, H.data_dir(), max_tokens=256, progress=False)
    assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    # a different vocabulary is still refused
    from scalelab.config import DataConfig
    from scalelab.data.prepare import prepare_data

    cfg = DataConfig(source="builtin:bbcnews", max_docs=30, tokenizer="bpe", vocab_size=300,
                     tokenizer_train_bytes=50_000, dir=str(tmp_path / "other"), val_fraction=0.2, num_workers=1)
    prepare_data(cfg, progress=False)
    with pytest.raises(DataError, match="vocabulary and merges differ too"):
        evaluate_lm(hf, tmp_path / "other", max_tokens=64, progress=False)


def test_sentencepiece_and_its_export_have_one_content(tmp_path):
    from scalelab.data.tokenizer import train_tokenizer
    from scalelab.data.tokenizer_content import PROBE_TEXT, content_fingerprint, same_tokenizer

    from scalelab.config import DataConfig
    from scalelab.data.sources import iter_documents

    texts = [d for _, d in zip(range(60), iter_documents(DataConfig(source="builtin:bbcnews")))]
    sp = train_tokenizer("sentencepiece", texts, 400)
    hf = _hf(sp, tmp_path / "sp")
    assert hf.identity != sp.identity
    assert hf.encode(PROBE_TEXT) == sp.encode(PROBE_TEXT)  # the premise: they encode alike
    assert content_fingerprint(sp) == content_fingerprint(hf) is not None and same_tokenizer(hf, sp)
    other = train_tokenizer("sentencepiece", texts[::-1][:30], 420)
    assert not same_tokenizer(other, sp) and not same_tokenizer(other, hf)
    assert not same_tokenizer(sp, H.tokenizer())  # SentencePiece vs byte-level BPE
