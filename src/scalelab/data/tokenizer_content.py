"""Whether two tokenizers are the same by content, whatever they are called.

A tokenizer's `identity` names its kind ("bpe:...", "gpt2:...", "hf:..."), so the same
byte-level BPE seen through different libraries (the run's tokenizers JSON, the exported
`PreTrainedTokenizerFast`, tiktoken's ranks) gets different identities while encoding
identically. `content_fingerprint` hashes what decides the encoding instead: each id's
token bytes, and the merges in priority order as the bytes each one creates (tiktoken's
ranks imply the same list: every multi-byte token by rank). Special tokens count by
their text.

SentencePiece models (scalelab's `tokenizer.model`, and its export: a transformers
Llama-style tokenizer converted from that file) have no merge list to read on both sides,
so their content is each id's piece text plus the ids a fixed probe text encodes to
(accents, CJK, emoji, digits, runs of spaces, tabs and newlines: normalization, dummy
prefix and byte fallback all show there). Kinds it cannot read give None: callers then
compare identities.
"""
from __future__ import annotations

import hashlib
import json


def _byte_level(spec: dict) -> bool:
    return "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])


def _spec_content(spec: dict):
    from scalelab.data.tokenizer import _byte_of_char

    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(spec):
        return None  # SentencePiece-style or other models: not compared by content here
    inv = _byte_of_char()

    def to_bytes(s: str) -> bytes:
        return bytes(inv[c] for c in s) if all(c in inv for c in s) else s.encode("utf-8")

    vocab = {int(i): to_bytes(t).hex() for t, i in model.get("vocab", {}).items()}
    for t in spec.get("added_tokens", []):
        vocab[int(t["id"])] = ("special:" if t.get("special") else "") + t["content"]
    merged = []
    for m in model.get("merges", []):
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        merged.append((to_bytes(a) + to_bytes(b)).hex())
    return vocab, merged


def _tiktoken_content(enc):
    ranks = enc._mergeable_ranks  # noqa: SLF001 - tiktoken keeps the ranks only here
    vocab = {int(r): t.hex() for t, r in ranks.items()}
    for text, i in enc._special_tokens.items():  # noqa: SLF001
        vocab[int(i)] = "special:" + text
    merged = [t.hex() for t, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1]
    return vocab, merged


# Exercises what can make two SentencePiece tokenizers with one vocabulary encode apart.
PROBE_TEXT = ("The quick brown fox, naïve café déjà vu -- 1234567890 + 3.14.\n\tIndented  two  spaces"
              "   three.\n\n東京都 の 天気 🙂👍🏽 Ünïcödé ß ﬁ ½ \u00a0nbsp end ")


def _sentencepiece_content(tok):
    """(vocab, probe ids) of a SentencePiece tokenizer: scalelab's (`._sp`) or a transformers
    tokenizer whose backend is SentencePiece-style (Metaspace / byte fallback), else None."""
    sp = getattr(tok, "_sp", None)
    if sp is not None and hasattr(sp, "id_to_piece"):
        vocab = {i: sp.id_to_piece(i) for i in range(int(sp.get_piece_size()))}
        return vocab, [int(i) for i in sp.encode(PROBE_TEXT)]
    hf = getattr(tok, "tok", None)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None or not hasattr(hf, "get_vocab"):
        return None
    spec = json.loads(backend.to_str())
    style = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder"), spec.get("normalizer")])
    if "ByteLevel" in style or not any(k in style for k in ("Metaspace", "ByteFallback", "\\u2581")):
        return None
    vocab = {int(i): t for t, i in hf.get_vocab().items()}
    return vocab, [int(i) for i in hf.encode(PROBE_TEXT, add_special_tokens=False)]


def content_fingerprint(tok) -> str | None:
    """sha256 (16 hex) of a tokenizer's vocabulary and merges (SentencePiece: vocabulary and
    the probe text's ids), or None when unknown."""
    content = None
    if getattr(tok, "_enc", None) is not None and hasattr(tok._enc, "_mergeable_ranks"):  # tiktoken GPT-2
        content = _tiktoken_content(tok._enc)
    elif (sp_content := _sentencepiece_content(tok)) is not None:
        vocab, probe = sp_content
        canon = json.dumps({"pieces": sorted(vocab.items()), "probe": probe}, ensure_ascii=False,
                           separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]
    else:
        backend = getattr(tok, "_tok", None)  # a tokenizers.Tokenizer (scalelab bpe)
        if backend is None:  # a transformers tokenizer (eval's HFTokenizer wraps it as .tok)
            backend = getattr(getattr(tok, "tok", None), "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "to_str"):
            content = _spec_content(json.loads(backend.to_str()))
    if content is None:
        return None
    vocab, merged = content
    canon = json.dumps({"vocab": sorted(vocab.items()), "merged": merged}, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def same_tokenizer(a, b) -> bool:
    """Equal identities, or (when both can be read) equal vocabularies and merges."""
    if getattr(a, "identity", None) == getattr(b, "identity", None):
        return True
    fa, fb = content_fingerprint(a), content_fingerprint(b)
    return fa is not None and fa == fb
