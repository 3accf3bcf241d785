"""`scalelab export RUN --hf OUT`: transformers loads the directory, logits and token ids
match the checkpoint's (BPE and SentencePiece runs), GPT-2's tokenizer is rebuilt offline,
non-Llama models are refused, EMA weights, atomicity, and the --push call (mocked)."""
import json
from pathlib import Path

import pytest
import torch

from scalelab.config import load_config
from scalelab.errors import CheckpointError, ConfigError
from scalelab.train.trainer import train

transformers = pytest.importorskip("transformers")

BASE = [
    "data.source=builtin:bbcnews", "data.max_docs=150", "data.num_workers=1",
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "train.micro_batch=4", "train.batch_tokens=128", "train.warmup_steps=2", "train.lr=3e-3",
    "train.max_steps=6", "train.eval_every=3", "train.eval_tokens=512", "train.ckpt_every=3",
    "train.threads=1", "train.progress=false", "train.tensorboard=false",
]
EDGE_TEXTS = ["", " ", "  two leading spaces", "tabs\tand\nnewlines\n\n  indented", "émoji 😀 and 日本語",
              "numbers 1234567 and 3.14159", "don't won't I'll they're", "x" * 80, "<|endoftext|> inside text"]


def _train(tmp_path_factory, name, *extra):
    root = tmp_path_factory.mktemp(name)
    cfg = load_config(None, BASE + [f"data.dir={root / 'data'}", f"out_dir={root / 'run'}", *extra])
    train(cfg)
    return root / "run", cfg


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    return _train(tmp_path_factory, "bpe", "data.tokenizer=bpe", "data.vocab_size=384", "train.ema_decay=0.9",
                  "model.n_kv_head=1")


@pytest.fixture(scope="module")
def sp_run(tmp_path_factory):
    return _train(tmp_path_factory, "sp", "data.tokenizer=sentencepiece", "data.vocab_size=512",
                  "model.tie_embeddings=false")


def _docs(cfg, n=40):
    from scalelab.data.sources import iter_documents

    docs = []
    for i, d in enumerate(iter_documents(cfg.data)):
        if i >= 100:  # past the tokenizer's training slice too
            docs.append(d)
        if len(docs) >= n:
            break
    return docs


def _ours(run_dir, which="last", weights="model"):
    from scalelab.export import load_source

    src = load_source(run_dir, which=which, weights=weights)
    return src.model, src.tokenizer


def _check_round_trip(run_dir, out, cfg, which="last", weights="model"):
    model, tok = _ours(run_dir, which, weights)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    # Logits on random ids (two rows, the full window) and on real text.
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.seq_len), generator=g)
    with torch.no_grad():
        diff = (model(x).float() - hf(x).logits.float()).abs().max().item()
    assert diff <= 1e-4
    # The tokenizer encodes like ours (no BOS/EOS added) and decodes back.
    for text in _docs(cfg) + EDGE_TEXTS:
        ids = tok.encode(text)
        assert hf_tok.encode(text) == ids, repr(text[:60])
        assert hf_tok(text)["input_ids"] == ids
    doc = _docs(cfg, 1)[0]
    assert hf_tok.decode(tok.encode(doc)) == tok.decode(tok.encode(doc))
    assert hf_tok.eos_token_id == tok.eot_id and hf.config.eos_token_id == tok.eot_id
    ids = torch.tensor([[tok.eot_id] + tok.encode(doc)[: model.cfg.seq_len - 1]])
    with torch.no_grad():
        assert (model(ids).float() - hf(ids).logits.float()).abs().max().item() <= 1e-4
    return hf, hf_tok


def test_export_bpe_round_trip(bpe_run, tmp_path):
    from scalelab.export import export_hf

    run_dir, cfg = bpe_run
    out = tmp_path / "hf"
    info = export_hf(run_dir, out, which="best")
    assert info["checks"]["max_abs_logit_diff"] <= 1e-4 and info["checks"]["tokenizer_ids_equal"]
    files = set(info["files"])
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", "scalelab_export.json"} <= files
    hf, hf_tok = _check_round_trip(run_dir, out, cfg, which="best")
    assert hf.config.num_key_value_heads == 1  # GQA carried over
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == hf_tok.eos_token_id and "max_length" not in gen
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers") and "## Intended use" in readme
    meta = json.loads((out / "scalelab_export.json").read_text())
    assert meta["which"] == "best" and meta["weights"] == "model" and meta["tokenizer"]["kind"] == "bpe"
    # transformers can generate from it with its own generation config.
    ids = hf_tok("The government", return_tensors="pt").input_ids
    assert hf.generate(ids, max_new_tokens=5, do_sample=False).shape[1] == ids.shape[1] + 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_export_ema_weights(bpe_run, tmp_path):
    from scalelab.export import export_hf

    run_dir, cfg = bpe_run
    export_hf(run_dir, tmp_path / "ema", weights="ema")
    _check_round_trip(run_dir, tmp_path / "ema", cfg, weights="ema")
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ema").model.norm.weight
    export_hf(run_dir, tmp_path / "raw", weights="model")
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "raw").model.norm.weight
    assert not torch.equal(a, b)  # really the EMA, not the raw weights


def test_export_sentencepiece_round_trip(sp_run, tmp_path):
    from scalelab.export import export_hf

    run_dir, cfg = sp_run
    out = tmp_path / "hf"
    info = export_hf(run_dir, out)
    assert info["tokenizer"]["kind"] == "sentencepiece" and "tokenizer.model" in info["files"]
    hf, hf_tok = _check_round_trip(run_dir, out, cfg)
    assert hf.config.tie_word_embeddings is False
    assert hf_tok.bos_token_id == hf_tok.eos_token_id  # EOT starts documents; the tokenizer adds none


def test_gpt2_tokenizer_rebuilt_offline(tmp_path):
    from scalelab.data.tokenizer import gpt2_tokenizer
    from scalelab.export import _gpt2_ranks, export_tokenizer, gpt2_vocab_and_merges

    vocab, merges = gpt2_vocab_and_merges(_gpt2_ranks())
    assert len(vocab) == 50256 and len(merges) == 50000  # as GPT-2's own merges.txt
    assert merges[0] == ("Ġ", "t")  # GPT-2's first merge
    tok = gpt2_tokenizer()
    info = export_tokenizer(tok, tmp_path, model_max_length=1024)
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= set(info["files"])
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert len(hf_tok) == 50257 and hf_tok.eos_token_id == 50256
    cfg = load_config(None, ["data.source=builtin:bbcnews", "train.max_steps=1"])
    for text in _docs(cfg, 30) + EDGE_TEXTS:
        assert hf_tok.encode(text) == tok.encode(text), repr(text[:60])


def test_export_refuses_non_llama(tmp_path_factory, tmp_path):
    from scalelab.export import export_hf

    run_dir, _ = _train(tmp_path_factory, "relu2", "data.vocab_size=384", "model.mlp=relu2", "train.max_steps=2",
                        "train.eval_every=2", "train.ckpt_every=2")
    with pytest.raises(ConfigError, match=r"model.mlp=relu2.*swiglu"):
        export_hf(run_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_llama_check_names_every_golf_only_feature():
    from scalelab.model.gpt import GPTConfig
    from scalelab.model.hf_adapter import check_llama_compatible

    check_llama_compatible(GPTConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, seq_len=16))
    golf = GPTConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, seq_len=16, mlp="relu2", qk_norm=True,
                     logit_softcap=30.0, unet_skips=True)
    with pytest.raises(ConfigError, match=r"mlp=relu2.*qk_norm.*softcap.*unet_skips"):
        check_llama_compatible(golf)


def test_export_errors_and_atomicity(bpe_run, tmp_path):
    from scalelab.export import ExportError, export_hf

    run_dir, _ = bpe_run
    with pytest.raises(CheckpointError, match="no checkpoint"):
        export_hf(tmp_path, tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export_hf(run_dir, tmp_path / "taken")
    with pytest.raises(ExportError, match="logits"):  # a failed check publishes nothing
        export_hf(run_dir, tmp_path / "bad", atol=-1.0)
    assert not (tmp_path / "bad").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    export_hf(run_dir, tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "model.safetensors").is_file()


def test_export_sp_has_no_ema(sp_run, tmp_path):
    from scalelab.export import export_hf

    with pytest.raises(CheckpointError, match="no EMA"):
        export_hf(sp_run[0], tmp_path / "x", weights="ema")


def test_push_builds_the_hub_calls(bpe_run, tmp_path, monkeypatch):
    import huggingface_hub

    from scalelab.export import export_hf

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            assert (Path(kw["folder_path"]) / "model.safetensors").is_file()  # the finished export
            return type("Commit", (), {"commit_url": "https://huggingface.co/me/mini/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "hf"
    info = export_hf(bpe_run[0], out, push="me/mini", private=True, token="tok", verify=False)
    assert calls[0] == ("init", "tok")
    assert calls[1] == ("create_repo", {"repo_id": "me/mini", "repo_type": "model", "private": True, "exist_ok": True})
    name, kw = calls[2]
    assert name == "upload_folder" and kw["repo_id"] == "me/mini" and kw["repo_type"] == "model"
    assert kw["folder_path"] == str(out) and "scalelab export" in kw["commit_message"]
    assert info["push"]["url"].endswith("/abc")
    with pytest.raises(ConfigError, match="owner/name"):
        export_hf(bpe_run[0], tmp_path / "hf2", push="noslash", verify=False)


def test_export_cli(bpe_run, tmp_path, capsys):
    from scalelab.cli import main

    assert main(["export", str(bpe_run[0]), "--hf", str(tmp_path / "cli"), "--which", "last"]) == 0
    assert "max |logit diff|" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope"), "--hf", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("umask,fmode,dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_export_respects_the_umask(bpe_run, tmp_path, umask, fmode, dmode):
    """Not mkdtemp's 0700 / mkstemp's 0600 whatever the umask: others on a shared machine
    can read an export under the usual 022, and a private 077 stays private."""
    import os
    import stat

    from scalelab.export import export_hf

    run_dir, _ = bpe_run
    old = os.umask(umask)
    try:
        export_hf(run_dir, tmp_path / "out", verify=False)
    finally:
        os.umask(old)
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == dmode
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert {"model.safetensors", "config.json", "scalelab_export.json", "README.md"} <= set(modes)
    assert all(m == (dmode if (out / n).is_dir() else fmode) for n, m in modes.items()), modes
