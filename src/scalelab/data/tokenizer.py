"""Tokenizers behind one interface: trained byte-level BPE (HF `tokenizers`), trained
SentencePiece BPE (with byte fallback), and GPT-2 (tiktoken, built offline).

Every tokenizer has an end-of-text token (`eot_id`) that `scalelab data` puts before
each document, an `identity` (kind + short sha256 of the vocabulary) that checkpoints
store to refuse a mismatched tokenizer, and `token_bytes()` (UTF-8 bytes of each token's
text) for bits-per-byte. Files on disk: docs/FORMATS.md.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from scalelab.errors import DataError

EOT_TEXT = "<|endoftext|>"
META_FILE = "tokenizer_meta.json"  # written by Tokenizer.save next to the model file
KINDS = ("bpe", "sentencepiece", "gpt2")

# GPT-2 byte-pair ranks (identical to tiktoken's r50k_base / "gpt2" ranks). The file is
# `whisper/assets/gpt2.tiktoken` from the sdist of PyPI openai-whisper==20250625
# (MIT License, Copyright (c) 2022 OpenAI), shipped so GPT-2 works with no network.
GPT2_RANKS_FILE = "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOT_ID = 50256


def _short_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Tokenizer:
    """Common interface. Subclasses: HFBPETokenizer, SentencePieceTokenizer, GPT2Tokenizer."""

    name: str
    vocab_size: int
    eot_id: int
    identity: str

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts (the library's own batching; may use several threads)."""
        return [self.encode(t) for t in texts]

    def encode_serial(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts on one thread (what each `scalelab data` worker does)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """int32 [vocab_size]: UTF-8 byte count of each token's text; special tokens 0."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer into `directory` (created); returns the directory."""
        raise NotImplementedError

    def _write_meta(self, directory: Path, file: str | None) -> None:
        meta = {"kind": self.name, "file": file, "identity": self.identity,
                "vocab_size": self.vocab_size, "eot_id": self.eot_id}
        _atomic_write(directory / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Byte-level BPE (Hugging Face tokenizers)


class HFBPETokenizer(Tokenizer):
    name = "bpe"
    FILE = "tokenizer.json"

    def __init__(self, tok):  # tok: tokenizers.Tokenizer
        self._tok = tok
        # Text that happens to contain "<|endoftext|>" is encoded as text, never as EOT.
        tok.encode_special_tokens = True
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        spec = json.loads(tok.to_str())
        eot = tok.token_to_id(EOT_TEXT)
        if eot is None:
            specials = [t["id"] for t in spec.get("added_tokens", []) if t.get("special")]
            if not specials:
                raise DataError("the tokenizer.json has no end-of-text token ('<|endoftext|>' or any "
                                "special token); scalelab separates documents with one")
            eot = specials[0]
        self.eot_id = int(eot)
        self._special = {int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")}
        # Identity: the vocabulary and merges (and added tokens), in a canonical form.
        model = spec.get("model", {})
        merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]
        canon = {"type": model.get("type"), "vocab": sorted(model.get("vocab", {}).items(), key=lambda kv: kv[1]),
                 "merges": merges,
                 "added": sorted((t["id"], t["content"]) for t in spec.get("added_tokens", []))}
        self.identity = "bpe:" + _short_sha(json.dumps(canon, ensure_ascii=False, separators=(",", ":")).encode())

        self._fast = _tiktoken_twin(tok, spec, self._special)

    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return self._fast.encode_ordinary(text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            return self._fast.encode_ordinary_batch(list(texts), num_threads=1)
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        # Byte-level BPE writes each byte as one printable character, so a token's byte
        # count is the length of its string.
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if i in self._special:
                continue
            piece = self._tok.id_to_token(i)
            out[i] = len(piece) if piece is not None else 0
        return out

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        _atomic_write(d / self.FILE, self._tok.to_str(pretty=True).encode())
        self._write_meta(d, self.FILE)
        return d

    @classmethod
    def from_file(cls, path: str | Path) -> HFBPETokenizer:
        from tokenizers import Tokenizer as HFTok

        try:
            return cls(HFTok.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            if isinstance(e, DataError):
                raise
            raise DataError(f"cannot load tokenizer file {path}: {e}") from None


def _byte_of_char() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character byte-level BPE uses per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    bytes_ = printable[:]
    for b in range(256):
        if b not in printable:
            bytes_.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bytes_, chars)}


_TWIN_PROBES = [
    "Hello world! It's 2026; the cost was $1,234.50 (about 12%).",
    "  leading spaces\n\nnew paragraphs\ttabs   and trailing   ",
    "Ünïcödé — “quotes”, emoji 🙂, CJK 漢字, and they'll've we'd I'm",
]


def _tiktoken_twin(tok, spec: dict, special: set[int]):
    """A tiktoken Encoding that encodes exactly like this byte-level BPE, or None.

    tiktoken encodes the same vocabulary several times faster than `tokenizers`
    (docs/bench-data.md). HF's BPE trainer numbers merged tokens in merge order, so
    rank = id reproduces its merges; the GPT-2 split pattern matches ByteLevel's regex.
    The twin is used only if it agrees with `tokenizers` on probe texts (including
    Unicode and whitespace runs); otherwise encoding stays with `tokenizers`.
    """
    model = spec.get("model", {})
    pre = json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or spec.get("normalizer") is not None or '"ByteLevel"' not in pre \
            or '"add_prefix_space": true' in pre.lower():
        return None
    try:
        import tiktoken

        inv = _byte_of_char()
        ranks = {bytes(inv[c] for c in piece): i for piece, i in model["vocab"].items() if i not in special}
        if len(ranks) != len(model["vocab"]) - len(special & set(model["vocab"].values())):
            return None
        pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
        twin = tiktoken.Encoding("scalelab-bpe", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        for text in _TWIN_PROBES:
            if twin.encode_ordinary(text) != tok.encode(text, add_special_tokens=False).ids:
                return None
        return twin
    except Exception:  # noqa: BLE001 - any failure means: use tokenizers itself
        return None


def _train_bpe(texts: Iterable[str], vocab_size: int) -> HFBPETokenizer:
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise DataError(f"byte-level BPE needs data.vocab_size >= 257 (256 bytes + EOT), got {vocab_size}")
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return HFBPETokenizer(tok)


# ---------------------------------------------------------------------------
# SentencePiece


class SentencePieceTokenizer(Tokenizer):
    name = "sentencepiece"
    FILE = "tokenizer.model"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except Exception as e:
            raise DataError(f"not a valid SentencePiece model: {e}") from None
        self._proto = model_proto
        self.vocab_size = int(self._sp.get_piece_size())
        eot = self._sp.eos_id() if self._sp.eos_id() >= 0 else self._sp.bos_id()
        if eot < 0:
            raise DataError("the SentencePiece model has neither an eos nor a bos piece; scalelab needs "
                            "one to separate documents")
        self.eot_id = int(eot)
        self.identity = "sentencepiece:" + _short_sha(model_proto)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        sp = self._sp
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            if sp.is_byte(i):
                out[i] = 1
            else:
                # The ▁ marker stands for one space byte.
                out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        _atomic_write(d / self.FILE, self._proto)
        self._write_meta(d, self.FILE)
        return d

    @classmethod
    def from_file(cls, path: str | Path) -> SentencePieceTokenizer:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read SentencePiece model {path}: {e}") from None
        return cls(data)


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    # SentencePiece trains on "sentences" (it skips ones over max_sentence_length bytes);
    # lines of the documents serve. Newlines themselves become byte-fallback tokens.
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def _train_sentencepiece(texts: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
    import sentencepiece as spm

    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts), model_writer=buf, vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, character_coverage=0.9995,
            # Lossless: no normalization, no dummy prefix, keep whitespace as is, so that
            # decode(encode(text)) == text and token bytes add up to len(text.encode()).
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_digits=False,
            unk_id=0, bos_id=-1, eos_id=1, pad_id=-1, eos_piece=EOT_TEXT,
            num_threads=max(1, min(16, os.cpu_count() or 1)), minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(f"SentencePiece training failed (vocab_size={vocab_size}): {e}. With byte fallback "
                        "the vocabulary needs 256 byte pieces + the characters of the text + specials; "
                        "raise data.vocab_size (e.g. 512 or 1024) or provide more text") from None
    return SentencePieceTokenizer(buf.getvalue())


# ---------------------------------------------------------------------------
# GPT-2 (tiktoken)


class GPT2Tokenizer(Tokenizer):
    name = "gpt2"

    def __init__(self):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        try:
            from tiktoken_ext.openai_public import r50k_pat_str as pat_str
        except ImportError:  # the pattern tiktoken's "gpt2" encoding uses
            pat_str = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
        ranks_path = resources.files("scalelab") / "assets" / GPT2_RANKS_FILE
        with resources.as_file(ranks_path) as p:
            if not p.is_file():
                raise DataError(f"the GPT-2 ranks file {p} is missing from the scalelab install; reinstall scalelab")
            ranks = load_tiktoken_bpe(str(p), expected_hash=GPT2_RANKS_SHA256)
        self._enc = tiktoken.Encoding("gpt2", pat_str=pat_str, mergeable_ranks=ranks,
                                      special_tokens={EOT_TEXT: GPT2_EOT_ID}, explicit_n_vocab=GPT2_EOT_ID + 1)
        self.vocab_size = self._enc.n_vocab
        self.eot_id = GPT2_EOT_ID
        self.identity = "gpt2:" + GPT2_RANKS_SHA256[:16]

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, dtype=np.int32)
        for i in range(self.vocab_size):
            if i != self.eot_id:
                out[i] = len(self._enc.decode_single_token_bytes(i))
        return out

    def save(self, directory: str | Path) -> Path:
        # The ranks ship with scalelab; the meta file names them and their hash.
        d = Path(directory)
        self._write_meta(d, None)
        return d


_GPT2: GPT2Tokenizer | None = None


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2 BPE (== tiktoken.get_encoding("gpt2")), from the ranks shipped with scalelab."""
    global _GPT2
    if _GPT2 is None:
        _GPT2 = GPT2Tokenizer()
    return _GPT2


# ---------------------------------------------------------------------------
# Module functions


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer of `kind` ("bpe" or "sentencepiece") on `texts`."""
    if kind == "bpe":
        return _train_bpe(texts, vocab_size)
    if kind == "sentencepiece":
        return _train_sentencepiece(texts, vocab_size)
    raise DataError(f"cannot train a tokenizer of kind '{kind}'; trainable kinds: bpe, sentencepiece "
                    "(use 'gpt2' or a path to a saved tokenizer via load_tokenizer)")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load "gpt2", a directory written by `Tokenizer.save`, a tokenizer.json or a
    SentencePiece .model file."""
    if str(path) == "gpt2":
        return gpt2_tokenizer()
    p = Path(path)
    if p.is_dir():
        meta_path = p / META_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                kind, file = meta["kind"], meta.get("file")
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"tokenizer meta file {meta_path} is corrupt ({e}); re-run `scalelab data CONFIG`") from None
            if kind == "gpt2":
                tok = gpt2_tokenizer()
            elif kind in ("bpe", "sentencepiece") and file:
                tok = load_tokenizer(p / file)
            else:
                raise DataError(f"tokenizer meta file {meta_path} names unknown kind '{kind}'")
            if meta.get("identity") and meta["identity"] != tok.identity:
                raise DataError(f"tokenizer in {p} does not match its {META_FILE} (identity {tok.identity}, "
                                f"recorded {meta['identity']}); the files were modified -- re-run `scalelab data CONFIG`")
            return tok
        for name in (HFBPETokenizer.FILE, SentencePieceTokenizer.FILE):
            if (p / name).is_file():
                return load_tokenizer(p / name)
        models = sorted(p.glob("*.model"))
        if len(models) == 1:
            return load_tokenizer(models[0])
        raise DataError(f"no tokenizer in directory {p} (looked for {META_FILE}, {HFBPETokenizer.FILE}, "
                        f"{SentencePieceTokenizer.FILE}, one *.model)")
    if not p.is_file():
        raise DataError(f"tokenizer '{path}' not found: give 'gpt2', a directory saved by scalelab, a "
                        "tokenizer.json, or a SentencePiece .model file")
    if p.suffix == ".json":
        return HFBPETokenizer.from_file(p)
    if p.suffix == ".model":
        return SentencePieceTokenizer.from_file(p)
    raise DataError(f"don't know how to load tokenizer file {p}: expected a .json (Hugging Face tokenizers) "
                    "or .model (SentencePiece) file, a saved directory, or 'gpt2'")
