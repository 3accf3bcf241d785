"""An export's JSON files as both transformers majors read them (pyproject: transformers>=4.40).

transformers 5 writes files a 4.x loader misreads:
- config.json: RoPE's base only inside `rope_parameters`; 4.x reads the top-level
  `rope_theta` and silently falls back to 10000 without it (wrong logits, no error).
- tokenizer_config.json: `extra_special_tokens` as a list, which 4.x takes for its dict
  of named tokens and fails on (`'list' object has no attribute 'keys'`); 5.x reads the
  4.x key `additional_special_tokens` into the same list. Also loader-internal keys
  (`is_local`, `local_files_only`) that describe how the tokenizer was loaded when
  exporting, not the tokenizer; and the class name "TokenizersBackend" 4.x does not know.

tests/test_export_compat.py reads the files the way 4.x does and checks the logits.
"""
from __future__ import annotations

import json
from pathlib import Path

LOADER_KEYS = ("is_local", "local_files_only", "_commit_hash", "name_or_path")


def _rewrite(path: Path, fix) -> dict:
    from scalelab.io import atomic_write_json

    cfg = json.loads(path.read_text(encoding="utf-8"))
    new = fix(dict(cfg))
    if new != cfg:
        atomic_write_json(path, new)
    return new


def portable_model_config(path: str | Path, rope_theta: float) -> dict:
    def fix(cfg):
        cfg["rope_theta"] = float(rope_theta)  # 4.x: the only key it reads
        if cfg.get("dtype") and "torch_dtype" not in cfg:
            cfg["torch_dtype"] = cfg["dtype"]  # 4.x before 4.56 names it so
        return cfg

    return _rewrite(Path(path), fix)


def portable_tokenizer_config(path: str | Path, **extra) -> dict:
    """`extra`: keys to set (e.g. legacy=False, which 5.x does not save but 4.x's Llama
    tokenizer defaults to True)."""
    def fix(cfg):
        for key in LOADER_KEYS:
            cfg.pop(key, None)
        listed = cfg.get("extra_special_tokens")
        if isinstance(listed, list):
            cfg.pop("extra_special_tokens")
            if listed:
                cfg["additional_special_tokens"] = listed
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        cfg.update(extra)
        return cfg

    return _rewrite(Path(path), fix)
