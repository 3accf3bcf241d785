"""Any Hugging Face causal LM as an `EvalModel` (transformers AutoModelForCausalLM +
AutoTokenizer, local files only: nothing is downloaded).

Scoring runs the model's base (decoder) with per-token position ids and a 4D boolean
attention mask (packed rows, prefix-shared trees), then the output embedding only at
positions that predict a scored token; final-logit soft-capping / scaling are applied
where the config has them. A self-check at load compares this path with the model's
own `forward(...).logits`; models where it does not hold fall back to the plain
forward (still exact, slower).

Contexts are encoded as lm-evaluation-harness's `hf` backend does (the tokenizer's
default special tokens, so a Llama tokenizer's BOS is kept); the window is the
config's n_positions / max_position_embeddings / n_ctx, else the tokenizer's
model_max_length, else 2048 -- the harness's order.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from scalelab.errors import CheckpointError, DataError
from scalelab.eval.model import EvalModel, file_hash, resolve_device, resolve_dtype
from scalelab.eval.scoring import EvalError

DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_INFINITY = 1e29
_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def resolve_max_length(config, tokenizer) -> int:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    mml = getattr(tokenizer, "model_max_length", None)
    if isinstance(mml, int) and 0 < mml < _TOKENIZER_INFINITY:
        return mml
    return DEFAULT_MAX_LENGTH


class HFTokenizer:
    """A transformers tokenizer behind scalelab's Tokenizer interface."""

    def __init__(self, tok):
        self.tok = tok
        self.name = "hf"
        self.vocab_size = len(tok)
        eot = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        if eot is None:
            raise DataError("the Hugging Face tokenizer has neither an eos nor a bos token")
        self.eot_id = int(eot)
        vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
        self.identity = "hf:" + hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
        self._token_bytes: np.ndarray | None = None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each token id: byte-level BPE (each character is one byte) or
        SentencePiece-style pieces ('▁' is one space byte, <0xNN> byte pieces one byte);
        special tokens 0. DataError for tokenizers of another kind."""
        if self._token_bytes is None:
            self._token_bytes = _hf_token_bytes(self.tok)
        return self._token_bytes


def _hf_token_bytes(tok) -> np.ndarray:
    scheme = None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        decoder = json.dumps(spec.get("decoder") or {})
        pre = json.dumps(spec.get("pre_tokenizer") or {})
        if "ByteLevel" in decoder or "ByteLevel" in pre:
            scheme = "bytelevel"
        elif "\u2581" in decoder or "Metaspace" in decoder or "ByteFallback" in decoder or "Metaspace" in pre:
            scheme = "sentencepiece"
    elif hasattr(tok, "sp_model"):
        scheme = "sentencepiece"
    if scheme is None:
        raise DataError(f"tokenizer {type(tok).__name__} has no byte information (neither byte-level BPE nor "
                        "SentencePiece pieces): bits-per-byte cannot be computed; use loss/perplexity")
    n = len(tok)
    out = np.zeros(n, dtype=np.int64)
    added = {int(i): t for i, t in getattr(tok, "added_tokens_decoder", {}).items()}
    special = set(int(i) for i in tok.all_special_ids)
    pieces = tok.convert_ids_to_tokens(list(range(n)))
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        if i in added:
            out[i] = 0 if getattr(added[i], "special", False) else len(str(added[i]).encode("utf-8"))
        elif scheme == "bytelevel":
            out[i] = len(piece)
        elif _BYTE_PIECE.match(piece):
            out[i] = 1
        else:
            out[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return out


class HFBackend:
    def __init__(self, model, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.device = device
        self.dtype = dtype
        cfg = model.config
        self.base = model.base_model
        self.head = model.get_output_embeddings()
        self.vocab_size = int(self.head.weight.shape[0]) if self.head is not None else int(cfg.vocab_size)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.logit_scale = getattr(cfg, "logit_scale", None)  # Cohere: logits * scale
        self.logits_scaling = getattr(cfg, "logits_scaling", None)  # Granite: logits / scaling
        self.full = False  # True: hidden() returns the model's own logits
        self.supports_masks = True
        self._check()

    @torch.no_grad()
    def hidden(self, idx, pos, mask):
        kwargs = {"input_ids": idx, "use_cache": False}
        if mask is not None:
            kwargs["position_ids"] = pos
            kwargs["attention_mask"] = mask[:, None]
        if self.full:
            return self.model(**kwargs).logits
        out = self.base(**kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    @property
    def full_logits(self) -> bool:
        return self.full

    @torch.no_grad()
    def logits(self, h):
        if self.full:
            return h.float()
        x = self.head(h).float()
        if self.logit_scale is not None:
            x = x * self.logit_scale
        if self.logits_scaling is not None:
            x = x / self.logits_scaling
        if self.softcap is not None:
            x = torch.tanh(x / self.softcap) * self.softcap
        return x

    @torch.no_grad()
    def _check(self) -> None:
        n = 10
        g = torch.Generator().manual_seed(0)
        vocab = min(self.vocab_size, int(self.model.config.vocab_size))
        idx = torch.randint(0, vocab, (1, n), generator=g).to(self.device)
        ref = self.model(input_ids=idx, use_cache=False).logits.float()[0]
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2
        if self.head is None or self.base is self.model:
            self.full = True
        else:
            try:
                got = self.logits(self.hidden(idx, None, None)[0])
                self.full = not torch.allclose(ref, got, atol=tol, rtol=tol)
            except Exception:  # noqa: BLE001
                self.full = True
        try:
            pos = torch.arange(n, device=self.device)[None]
            mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()[None]
            got = self.logits(self.hidden(idx, pos, mask)[0])
            self.supports_masks = bool(torch.allclose(ref, got, atol=tol, rtol=tol))
        except Exception:  # noqa: BLE001
            self.supports_masks = False


class HFEvalModel(EvalModel):
    kind = "hf"

    def __init__(self, model, tokenizer, device=None, dtype=None, name: str = "hf", hash: str | None = None):
        super().__init__()
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.eval()
        self.hf_tokenizer = tokenizer
        self.tokenizer = HFTokenizer(tokenizer)
        self.name, self.hash = name, hash
        self.max_length = resolve_max_length(model.config, tokenizer)
        self.eot_id = self.tokenizer.eot_id
        self.backend = HFBackend(self.model, self.device, self.dtype)

    @property
    def prefix_id(self) -> int:
        t = self.hf_tokenizer
        return int(t.bos_token_id) if t.bos_token_id is not None else int(t.eos_token_id)

    def encode_context(self, text: str) -> list[int]:
        bos = self.hf_tokenizer.decode(self.prefix_id)
        if bos and text.startswith(bos):
            return self.hf_tokenizer.encode(text, add_special_tokens=False)
        return self.hf_tokenizer.encode(text)

    def token_bytes(self) -> np.ndarray | None:
        try:
            tb = self.tokenizer.token_bytes()
        except DataError:
            return None
        if tb.size < self.backend.vocab_size:
            tb = np.concatenate((tb, np.zeros(self.backend.vocab_size - tb.size, np.int64)))
        return tb

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=0,
                 use_cache=True, stop_at_eot=True):
        ids = list(prompt_ids) or [self.prefix_id]
        if len(ids) + max_new_tokens > self.max_length:  # keep the prompt's end inside the window
            if max_new_tokens >= self.max_length:
                raise EvalError(f"max_new_tokens {max_new_tokens} does not fit the model's window of {self.max_length}")
            ids = ids[-(self.max_length - max_new_tokens):]
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        kwargs = {"max_new_tokens": max_new_tokens, "use_cache": use_cache,
                  "attention_mask": torch.ones_like(idx), "pad_token_id": self.eot_id}
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=top_k or 0, top_p=top_p if top_p else 1.0)
        else:
            kwargs.update(do_sample=False)
        if not stop_at_eot:
            kwargs["eos_token_id"] = None
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            out = self.model.generate(idx, **kwargs)
        new = out[0, len(ids):].tolist()
        if stop_at_eot and self.eot_id in new:
            new = new[:new.index(self.eot_id)]
        return new


def load_hf(path: str | Path, device=None, dtype=None) -> HFEvalModel:
    """A local Hugging Face model directory (or a name already in the local HF cache)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise CheckpointError("Hugging Face models need transformers: pip install 'scalelab[hf]'") from None
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    p = Path(path)
    if not p.exists() and ("/" not in str(path) or str(path).startswith((".", "/"))):
        raise CheckpointError(f"Hugging Face model '{path}' not found: give a local directory with config.json "
                              "(nothing is downloaded)")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise CheckpointError(f"cannot load a tokenizer from '{path}': {type(e).__name__}: {str(e).splitlines()[0]}. "
                              "The directory needs tokenizer files (tokenizer.json or vocab/merges)") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dt)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot load a causal LM from '{path}': {type(e).__name__}: "
                              f"{str(e).splitlines()[0]}") from None
    model.to(dev)
    weights = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin"))) if p.is_dir() else []
    em = HFEvalModel(model, tok, dev, dt, name=p.name or str(path), hash=file_hash(weights) if weights else None)
    em.origin = str(path)
    return em
