"""`scalelab export RUN --hf OUT`: a checkpoint as a Hugging Face `LlamaForCausalLM` directory.

    export_hf("runs/100m", "export/100m")                  # checkpoints/last, its weights
    export_hf("runs/100m", "export/100m", which="best", weights="ema")
    export_hf("runs/100m", "export/100m", push="me/mini-gpt")  # + huggingface_hub upload

OUT then holds what `transformers.AutoModelForCausalLM.from_pretrained(OUT)` and
`AutoTokenizer.from_pretrained(OUT)` load with no network and no custom code:

    config.json              LlamaConfig (scalelab.model.hf_adapter.hf_llama_config; bos = eos = EOT)
    model.safetensors        the weights, fp32, renamed by the state-dict adapter
    generation_config.json   EOT as bos/eos/pad, sampling defaults (no max_length: the window is
                             config.json's max_position_embeddings)
    tokenizer.json, tokenizer_config.json   the run's tokenizer (below)
    vocab.json, merges.txt   GPT-2 tokenizer only (derived offline from the tiktoken ranks)
    tokenizer.model          SentencePiece only (the original model file)
    README.md                model card (scalelab.report.run_report, with Hub metadata)
    scalelab_export.json     provenance: run, checkpoint, step, weights, tokenizer, checks

Tokenizers (scalelab.data.tokenizer kinds):
- ``bpe`` (a Hugging Face `tokenizers` JSON): wrapped as `PreTrainedTokenizerFast`.
- ``gpt2`` (tiktoken ranks bundled with scalelab): `GPT2TokenizerFast` from a vocab.json and a
  merges.txt derived from the ranks -- the vocabulary is each token's bytes in GPT-2's
  byte-to-unicode alphabet; the merge list is rebuilt by replaying BPE on each token
  with only lower-ranked merges allowed, which yields the one merge that creates it
  (50,000 merges for GPT-2's 50,257 ids).
- ``sentencepiece``: `LlamaTokenizer` converted from the .model file (no BOS added, no
  prefix space, byte fallback), the .model file copied alongside.
All three are saved with `split_special_tokens=True`, so text that happens to contain
"<|endoftext|>" is encoded as text, as scalelab's own tokenizers do, and no BOS/EOS is
added to an encoding: `AutoTokenizer.from_pretrained(OUT).encode(text)` equals
scalelab's `encode(text)`.

BOS/EOT convention: in training every document starts after an EOT token (the shards hold
`EOT doc EOT doc ...`), so EOT is the tokenizer's `bos_token` (and eos/pad) for all three
kinds, but the tokenizer *adds nothing* (`add_bos_token` false): to score or continue text
from a document start, as in training, prepend it yourself
(`[tok.bos_token_id] + tok.encode(text)`); the model card says the same. Encodings stay
identical to scalelab's, which is what evaluation compares.

transformers 4.x and 5.x: the JSON files are made readable by both (scalelab.export_compat:
top-level rope_theta, 4.x's special-token keys, no loader-internal keys).

Checks before anything is published (`verify=True`): the directory is loaded back with
`AutoModelForCausalLM` / `AutoTokenizer`, a fixed text must encode to the same ids with
both tokenizers, and the logits of both models on it must agree within `atol` (1e-4,
fp32). Everything is written into a hidden sibling directory and renamed into place
only after the checks pass, so OUT is either the complete export or absent.

Only Llama-shaped models export (SwiGLU MLP, RMSNorm, RoPE; no QK-norm, no logit
soft-cap): anything else raises ConfigError naming the setting.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from scalelab.errors import CheckpointError, ConfigError, ScalelabError
from scalelab.export_compat import portable_model_config, portable_tokenizer_config
from scalelab.io import dir_mode, file_mode

EXPORT_FILE = "scalelab_export.json"
FORMAT_VERSION = 1
VERIFY_TEXT = ("The quick brown fox jumps over the lazy dog. In 2024, researchers trained small language "
               "models on 2,500,000,000 tokens -- and measured what they learned.\n\nSection 2: results")


class ExportError(ScalelabError):
    """The export could not be written or did not round-trip."""


# ---------------------------------------------------------------------------
# Tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _creating_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The last merge BPE applies when it builds `token` from bytes using only merges
    that create lower-ranked tokens (tiktoken's algorithm: always merge the adjacent pair
    whose result has the lowest rank)."""
    splits = [(token[:i], token[i:]) for i in range(1, len(token))
              if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank]
    if len(splits) == 1:  # the only way to make it (the common case): no need to replay
        return splits[0]
    if not splits:
        return None
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < rank and (best_rank is None or r < best_rank):
                best_rank, best_i = r, i
        if best_rank is None:
            return None
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def gpt2_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json and merges.txt contents for byte-level BPE ranks (tiktoken format)."""
    enc = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        pair = _creating_merge(tok, rank, ranks)
        if pair is None:
            raise ExportError(f"GPT-2 rank {rank} ({tok!r}) cannot be built from lower-ranked merges; "
                              "the ranks file is not a byte-level BPE")
        merges.append((to_str(pair[0]), to_str(pair[1])))
    return vocab, merges


def _gpt2_ranks() -> dict[bytes, int]:
    from importlib import resources

    from tiktoken.load import load_tiktoken_bpe

    from scalelab.data.tokenizer import GPT2_RANKS_FILE, GPT2_RANKS_SHA256

    with resources.as_file(resources.files("scalelab") / "assets" / GPT2_RANKS_FILE) as p:
        return load_tiktoken_bpe(str(p), expected_hash=GPT2_RANKS_SHA256)


def export_tokenizer(tok, out_dir: str | Path, model_max_length: int | None = None) -> dict[str, Any]:
    """Write `tok` (a scalelab Tokenizer) into `out_dir` as a transformers tokenizer.

    Returns {"kind", "class", "files", "eot_id", "eot_token"}."""
    from scalelab.data.tokenizer import EOT_TEXT

    try:
        import transformers
    except ImportError:
        raise ConfigError("export needs transformers: pip install 'transformers>=4.45'") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {"split_special_tokens": True, "clean_up_tokenization_spaces": False}
    if model_max_length:
        common["model_max_length"] = int(model_max_length)
    kind = tok.name
    extra_files: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scalelab-tok-") as scratch_name:
        scratch = Path(scratch_name)
        if kind == "gpt2":
            vocab, merges = gpt2_vocab_and_merges(_gpt2_ranks())
            vocab[EOT_TEXT] = tok.eot_id
            (scratch / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            (scratch / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                                encoding="utf-8")
            hf_tok = transformers.GPT2TokenizerFast.from_pretrained(
                str(scratch), bos_token=EOT_TEXT, eos_token=EOT_TEXT, unk_token=EOT_TEXT,
                add_prefix_space=False, **common)
            for name in ("vocab.json", "merges.txt"):  # for slow GPT2Tokenizer / older transformers
                shutil.copyfile(scratch / name, out / name)
                extra_files.append(name)
        elif kind == "bpe":
            tok.save(scratch)
            eot = tok.decode([tok.eot_id]) or EOT_TEXT
            hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(scratch / "tokenizer.json"),
                                                          bos_token=eot, eos_token=eot, **common)
        elif kind == "sentencepiece":
            tok.save(scratch)
            model_file = scratch / "tokenizer.model"
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(model_file))
            eos = sp.id_to_piece(tok.eot_id)
            unk = sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None
            only = scratch / "sp"
            only.mkdir()
            shutil.copyfile(model_file, only / "tokenizer.model")
            hf_tok = transformers.LlamaTokenizer.from_pretrained(
                str(only), add_bos_token=False, add_eos_token=False, legacy=False, add_prefix_space=False,
                bos_token=eos, eos_token=eos, unk_token=unk, pad_token=None, **common)
            shutil.copyfile(model_file, out / "tokenizer.model")
            extra_files.append("tokenizer.model")
        else:
            raise ConfigError(f"cannot export a tokenizer of kind '{kind}' (known: bpe, gpt2, sentencepiece)")
        saved = hf_tok.save_pretrained(str(out))
    # 4.x reads these (5.x does not save them): its Llama tokenizer would add a BOS, legacy-style
    portable_tokenizer_config(out / "tokenizer_config.json", add_bos_token=False, add_eos_token=False,
                              **({"legacy": False} if kind == "sentencepiece" else {}))
    files = sorted({Path(p).name for p in saved} | set(extra_files))
    return {"kind": kind, "identity": tok.identity, "class": type(hf_tok).__name__, "files": files,
            "eot_id": int(tok.eot_id), "eot_token": hf_tok.eos_token, "vocab_size": int(tok.vocab_size),
            "document_start": "EOT (bos_token), not added by the tokenizer"}


class _quiet_transformers:
    """Silence transformers' progress bars and advisory warnings (e.g. "sequence longer than
    model_max_length" on the check text) for the duration of an export."""

    def __enter__(self):
        from transformers.utils import logging as tlog

        self._level = tlog.get_verbosity()
        self._bars = tlog.is_progress_bar_enabled()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as tlog

        tlog.set_verbosity(self._level)
        if self._bars:
            tlog.enable_progress_bar()
        return False


# ---------------------------------------------------------------------------
# The checkpoint


@dataclasses.dataclass
class _Source:
    run_dir: Path
    ckpt: Path
    state: dict[str, Any]
    model: Any  # scalelab GPT, weights loaded
    tokenizer: Any
    weights: str  # "model" | "ema"


def load_source(run: str | Path, which: str = "last", weights: str = "model",
                tokenizer: str | Path | None = None) -> _Source:
    """The checkpoint, its GPT (weights loaded, eval mode) and its tokenizer."""
    from scalelab.model.hf_adapter import check_llama_compatible
    from scalelab.train.load import load_trained, read_checkpoint

    if which not in ("last", "best"):
        raise ConfigError(f"--which must be 'last' or 'best', got '{which}'")
    if weights not in ("model", "ema"):
        raise ConfigError(f"--weights must be 'model' or 'ema', got '{weights}'")
    ckpt, _, cfg = read_checkpoint(Path(run), which)
    try:
        check_llama_compatible(cfg)
    except ConfigError as e:
        raise ConfigError(f"cannot export '{ckpt}': {e}. Only Llama-shaped models (model.mlp=swiglu, "
                          "model.qk_norm=false, model.logit_softcap=null, model.unet_skips=false, model.loop_count=1, "
                          "model.rope_frac=1) map onto "
                          "LlamaForCausalLM") from None
    if weights == "ema" and not (ckpt / "ema.safetensors").is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no EMA weights (ema.safetensors): the run was trained "
                              "without train.ema_decay. Export --weights model instead")
    t = load_trained(ckpt, device="cpu", tokenizer=tokenizer, weights=weights)
    return _Source(t.run_dir, ckpt, t.state, t.model, t.tokenizer, weights)


def _build_hf_model(model, eot_id: int):
    import transformers

    from scalelab.model.hf_adapter import hf_llama_config, to_hf_llama_state_dict

    cfg_dict = hf_llama_config(model.cfg)
    cfg_dict.update(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=None)
    config = transformers.LlamaConfig(**cfg_dict)
    hf = transformers.LlamaForCausalLM(config)
    sd = to_hf_llama_state_dict(model)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    real_missing = [k for k in missing if not (k == "lm_head.weight" and model.cfg.tie_embeddings)]
    if real_missing or unexpected:
        raise ExportError(f"weights do not map onto LlamaForCausalLM: missing {real_missing[:4]}, "
                          f"unexpected {list(unexpected)[:4]}")
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def _generation_config(eot_id: int):
    import transformers

    # no max_length: generate(max_new_tokens=...) would warn that both are set
    return transformers.GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id,
                                         do_sample=True, temperature=0.8, top_k=50, top_p=1.0)


@torch.no_grad()
def verify_export(out: str | Path, model, tokenizer, text: str = VERIFY_TEXT, atol: float = 1e-4) -> dict[str, Any]:
    """Load `out` with transformers' Auto classes; compare token ids and fp32 logits with ours."""
    import transformers

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True, dtype=torch.float32).eval()
    ours_ids = list(tokenizer.encode(text))
    hf_ids = list(hf_tok.encode(text))
    if ours_ids != hf_ids:
        i = next((k for k, (a, b) in enumerate(zip(ours_ids, hf_ids)) if a != b), min(len(ours_ids), len(hf_ids)))
        raise ExportError(f"the exported tokenizer encodes differently from the run's ({type(hf_tok).__name__}): "
                          f"first difference at token {i} of {len(ours_ids)}")
    ids = [tokenizer.eot_id] + ours_ids  # documents start after an EOT in training
    ids = ids[: model.cfg.seq_len]
    x = torch.tensor([ids])
    ours = model(x).float()
    theirs = hf(x).logits.float()
    if theirs.shape != ours.shape:
        raise ExportError(f"logit shapes differ: ours {tuple(ours.shape)}, transformers {tuple(theirs.shape)}")
    diff = float((ours - theirs).abs().max())
    if not diff <= atol:
        raise ExportError(f"logits of the exported model differ from the checkpoint's by {diff:.3g} "
                          f"(> {atol:g}); the export was not written")
    return {"tokens": len(ids), "tokenizer_ids_equal": True, "max_abs_logit_diff": diff, "atol": atol,
            "hf_model_class": type(hf).__name__, "hf_tokenizer_class": type(hf_tok).__name__}


def export_hf(run: str | Path, out: str | Path, which: str = "last", weights: str = "model",
              push: str | None = None, private: bool = False, token: str | None = None,
              verify: bool = True, atol: float = 1e-4, overwrite: bool = False,
              tokenizer: str | Path | None = None) -> dict[str, Any]:
    """Export a run's checkpoint as a Hugging Face Llama directory (see the module docstring)."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("export needs transformers: pip install 'transformers>=4.45'") from None
    from scalelab.io import atomic_write_json, atomic_write_text, software_versions

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"'{out}' already exists; choose another --hf directory or pass --overwrite")
    src = load_source(run, which=which, weights=weights, tokenizer=tokenizer)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp's 0700 would hide the published export from others
        eot = int(src.tokenizer.eot_id)
        with _quiet_transformers():
            hf = _build_hf_model(src.model, eot)
            hf.generation_config = _generation_config(eot)
            hf.save_pretrained(str(tmp), safe_serialization=True)
            portable_model_config(tmp / "config.json", src.model.cfg.rope_theta)
            tok_info = export_tokenizer(src.tokenizer, tmp, model_max_length=src.model.cfg.seq_len)
            checks = verify_export(tmp, src.model, src.tokenizer, atol=atol) if verify else None
        info = {
            "format_version": FORMAT_VERSION,
            "kind": "scalelab.export",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_dir": str(src.run_dir),
            "checkpoint": str(src.ckpt),
            "which": which,
            "weights": src.weights,
            "step": src.state.get("step"),
            "tokens_seen": src.state.get("tokens_seen"),
            "best_val_loss": src.state.get("best_val_loss"),
            "git": src.state.get("git"),
            "model_config": dataclasses.asdict(src.model.cfg),
            "architecture": "LlamaForCausalLM",
            "dtype": "float32",
            "tokenizer": tok_info,
            "checks": checks,
            "versions": {**software_versions(), "transformers": transformers.__version__},
        }
        atomic_write_json(tmp / EXPORT_FILE, info)
        atomic_write_text(tmp / "README.md", _readme(src, info))
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info["out"] = str(out)
    info["files"] = sorted(p.name for p in out.iterdir())
    info["time_s"] = round(time.perf_counter() - t0, 3)
    if push:
        info["push"] = push_to_hub(out, push, private=private, token=token,
                                   commit_message=f"scalelab export of {src.ckpt.name} ({which}, {src.weights} weights)")
    return info


def _respect_umask(root: Path) -> None:
    """Give every file and folder under `root` the mode a plain open()/mkdir would (0644 /
    0755 under umask 022): temp-file writers (mkstemp, mkdtemp) make them 0600 / 0700."""
    fmode, dmode = file_mode(), dir_mode()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, fmode)
        for name in dirnames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, dmode)
    os.chmod(root, dmode)


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    from scalelab.io import fsync_dir, swap_dir_into_place

    _respect_umask(tmp)
    fsync_dir(tmp)
    if out.exists() and not overwrite:
        raise ConfigError(f"'{out}' appeared while exporting; not replaced")
    swap_dir_into_place(tmp, out)


def _readme(src: _Source, info: dict[str, Any]) -> str:
    """The model card with Hub front matter (falls back to a minimal card without run files)."""
    from scalelab.report.run_report import model_card_markdown

    try:
        body = model_card_markdown(src.run_dir, export=info)
    except ScalelabError as e:
        body = (f"# {src.run_dir.name}\n\nExported by scalelab from `{src.ckpt}` (step {info['step']}). "
                f"The run's report files could not be read: {e}\n")
    cfg = (src.state.get("config") or {}).get("data") or {}
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "  - scalelab",
            "  - llama", "  - causal-lm"]
    source = str(cfg.get("source") or "")
    if source.startswith("hf:"):
        meta += ["datasets:", f"  - {source[3:]}"]
    meta += ["language:", "  - en", "---", ""]
    tok = info["tokenizer"]
    note = (f"\n## Tokenization\n\nIn training every document started after the end-of-text token "
            f"`{tok['eot_token']}` (id {tok['eot_id']}); it is the tokenizer's `bos_token` and `eos_token` "
            "(and generation's pad token), but the tokenizer adds no special tokens. To start from a document "
            "boundary as in training, prepend it: `ids = [tok.bos_token_id] + tok.encode(text)`. "
            "Generation stops at the same token.\n")
    return "\n".join(meta) + body.rstrip("\n") + "\n" + note


def push_to_hub(folder: str | Path, repo: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload scalelab export") -> dict[str, Any]:
    """Create (if needed) the model repo `repo` and upload `folder` with huggingface_hub."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ConfigError("--push needs huggingface_hub: pip install huggingface_hub") from None
    if "/" not in repo:
        raise ConfigError(f"--push takes a repo id 'owner/name', got '{repo}'")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(folder),
                                   commit_message=commit_message)
    except Exception as e:  # noqa: BLE001 - network / auth errors of many kinds
        raise ExportError(f"push to '{repo}' failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                          f"the export in '{folder}' is complete -- log in (huggingface-cli login or HF_TOKEN) "
                          "and retry with --push, or upload it with `huggingface-cli upload`") from None
    url = getattr(commit, "commit_url", None) or str(commit)
    return {"repo": repo, "private": private, "url": url}


def format_export(info: dict[str, Any]) -> str:
    lines = [f"exported {info['checkpoint']} ({info['which']}, {info['weights']} weights, step {info['step']}) "
             f"-> {info['out']}",
             f"  LlamaForCausalLM fp32 + {info['tokenizer']['class']} ({info['tokenizer']['kind']}), "
             f"files: {', '.join(info['files'])}"]
    if info.get("checks"):
        c = info["checks"]
        lines.append(f"  verified: transformers loads it; {c['tokens']} tokens encode identically; "
                     f"max |logit diff| {c['max_abs_logit_diff']:.2e} (<= {c['atol']:g})")
    if info.get("push"):
        lines.append(f"  pushed to {info['push']['repo']}: {info['push']['url']}")
    return "\n".join(lines)
