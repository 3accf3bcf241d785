"""Parameter golf units: quantization, the weights format, compression, artifact bytes,
budget errors, config validation, byte accounting and val_bpb."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scalelab.errors import ConfigError
from scalelab.golf import codec
from scalelab.golf.artifact import CODE_FILES, BudgetError, check_budget, code_bytes, package_dir, write_artifact
from scalelab.golf.compress import COMPRESSORS, compress_best, compress_with
from scalelab.golf.config import load_golf_config
from scalelab.golf.evaluate import ByteCounter, evaluate_bpb, load_split_tokens, resolve_tokenizer
from scalelab.golf.quantize import INT_SCHEMES, QuantSpec, quantize_rows, quantize_state_dict, row_clip
from scalelab.golf.run import precheck
from scalelab.model.gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=200, n_layer=3, d_model=64, n_head=4, n_kv_head=2, seq_len=32, mlp="relu2",
                unet_skips=True, qk_norm=True)
    return GPT(GPTConfig(**{**base, **kw}))


def heavy_tailed(rows=64, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[::7, ::13] *= 8  # outliers, so clipping matters
    return w


# ---------------------------------------------------------------------------- quantization


@pytest.mark.parametrize("scheme", list(INT_SCHEMES))
@pytest.mark.parametrize("clip", ["max", "quantile", "mse"])
def test_quantize_error_bound(scheme, clip):
    bits = INT_SCHEMES[scheme]
    qmax = 2 ** (bits - 1) - 1
    w = heavy_tailed()
    q, scale = quantize_rows(w, bits, clip, 0.999)
    assert q.dtype == torch.uint8 and scale.dtype == torch.float16 and scale.shape == (64,)
    levels = q.to(torch.int16) - 2 ** (bits - 1)
    assert levels.abs().max() <= qmax
    deq = codec.dequantize(q, scale, bits, list(w.shape))
    s = scale.float()[:, None]
    inside = w.abs() <= qmax * s
    err = (w - deq).abs()
    # Inside the clip range: at most half a step (plus fp32 rounding); outside: the clipped excess.
    assert (err[inside] <= (s / 2 * (1 + 1e-5)).expand_as(w)[inside]).all()
    assert torch.allclose(err[~inside], (w.abs() - qmax * s).expand_as(w)[~inside], atol=1e-6)
    if clip == "max":
        assert inside.all()


def test_more_bits_less_error_and_mse_clip_never_worse_than_max():
    w = heavy_tailed()
    errors = []
    for bits in (4, 5, 6, 8):
        per_clip = {}
        for clip in ("max", "mse"):
            q, s = quantize_rows(w, bits, clip)
            per_clip[clip] = (w - codec.dequantize(q, s, bits, list(w.shape))).square().sum(1)
        assert (per_clip["mse"] <= per_clip["max"] * (1 + 1e-6)).all()  # r=1 is among the candidates
        errors.append(per_clip["mse"].sum().item())
    assert errors == sorted(errors, reverse=True)
    rel = math.sqrt(errors[-1] / w.square().sum().item())
    assert rel < 0.02  # int8 with good clipping, despite the outliers: under 2% relative RMS error


def test_zero_rows_and_row_clip_quantile():
    w = torch.zeros(3, 10)
    w[1] = torch.arange(10.0)
    q, s = quantize_rows(w, 8, "max")
    assert torch.equal(codec.dequantize(q, s, 8, [3, 10])[0], torch.zeros(10))
    c = row_clip(w, 8, "quantile", 0.5)
    assert c[1] == pytest.approx(4.5)


def test_scheme_selection_overrides_and_small_tensors():
    spec = QuantSpec(default="int6", overrides={"tok_emb.weight": "int8", "blocks.0.*": "fp16"}, keep_float_numel=100)
    assert spec.scheme_for("tok_emb.weight", 10_000) == "int8"
    assert spec.scheme_for("blocks.0.attn.wq.weight", 10_000) == "fp16"
    assert spec.scheme_for("blocks.1.attn.wq.weight", 10_000) == "int6"
    assert spec.scheme_for("norm.weight", 64) == "fp16"
    qs = quantize_state_dict(small_model().state_dict(), QuantSpec(default="int6", keep_float_numel=64))
    assert qs.schemes["skip_weights"] == "fp16" and qs.schemes["blocks.0.mlp.w1.weight"] == "int6"
    assert qs.aliases == {"lm_head.weight": "tok_emb.weight"}  # tied: stored once


# ---------------------------------------------------------------------------- format + compression


def packed(model, spec):
    qs = quantize_state_dict(model.state_dict(), spec)
    cfg = {k: v for k, v in model.cfg.__dict__.items()}
    return qs, codec.pack(cfg, qs.tensors, qs.aliases)


@pytest.mark.parametrize("name", ["none", *COMPRESSORS])
def test_round_trip_is_bit_exact_through_each_compressor(name):
    model = small_model()
    spec = QuantSpec(default="int6", overrides={"tok_emb.weight": "int8", "blocks.2.*": "int4",
                                               "blocks.1.attn.wo.weight": "fp32"}, keep_float_numel=64)
    qs, raw = packed(model, spec)
    blob = compress_with(name, raw)
    assert blob[:4] == codec.MAGIC and blob[5] == codec.COMPRESSOR_IDS[name]
    model_cfg, decoded = codec.load_state_dict(blob)
    expected = qs.dequantized()
    assert set(decoded) == set(model.state_dict()) == set(expected)
    for k in expected:
        assert decoded[k].dtype == torch.float32 and torch.equal(decoded[k], expected[k]), k
    assert model_cfg == model.cfg.__dict__
    # The model rebuilt from the bytes computes with exactly these weights.
    rebuilt = codec.load_model(blob)
    assert rebuilt.lm_head.weight is rebuilt.tok_emb.weight
    ref = small_model()
    ref.load_state_dict(expected)
    x = torch.randint(0, 200, (2, 32))
    assert torch.equal(rebuilt(x), ref.eval()(x))


def test_smallest_compressor_wins():
    _, raw = packed(small_model(), QuantSpec(default="int5"))
    chosen, blob, sizes = compress_best(raw, COMPRESSORS)
    assert set(sizes) == set(COMPRESSORS)
    assert sizes == {n: len(compress_with(n, raw)) for n in COMPRESSORS}
    assert len(blob) == min(sizes.values()) == sizes[chosen]
    # Highly repetitive bytes: zlib loses to the others, and the winner follows the data.
    chosen2, _, sizes2 = compress_best(b"\x01\x02\x03\x04" * 50_000, ["zlib", "lzma"])
    assert chosen2 == min(sizes2, key=sizes2.get)


def test_corrupt_files_are_refused():
    _, raw = packed(small_model(), QuantSpec())
    blob = compress_with("zlib", raw)
    with pytest.raises(codec.FormatError, match="magic"):
        codec.load_state_dict(b"XXXX" + blob[4:])
    with pytest.raises(codec.FormatError, match="version"):
        codec.load_state_dict(blob[:4] + bytes([99]) + blob[5:])
    with pytest.raises(codec.FormatError, match="truncated"):
        codec.unpack(raw[:-10])


# ---------------------------------------------------------------------------- artifact + budget


def test_artifact_bytes_equal_the_bytes_on_disk(tmp_path):
    _, raw = packed(small_model(), QuantSpec(default="int6"))
    name, blob, _ = compress_best(raw)
    art = write_artifact(tmp_path / "artifact", blob)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "artifact").rglob("*") if p.is_file())
    assert art["total_bytes"] == on_disk == art["code_bytes"] + art["weights_bytes"]
    assert art["weights_bytes"] == len(blob)
    assert art["code_bytes"] == code_bytes() == sum((package_dir() / f).stat().st_size for f in CODE_FILES)
    assert sorted(f["path"] for f in art["code_files"]) == sorted(f"scalelab/{f}" for f in CODE_FILES)
    # With the tokenizer counted, it is in the directory and in the total.
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"x" * 1234)
    art2 = write_artifact(tmp_path / "artifact", blob, tokenizer=tok)
    on_disk2 = sum(p.stat().st_size for p in (tmp_path / "artifact").rglob("*") if p.is_file())
    assert art2["total_bytes"] == on_disk2 == art["total_bytes"] + 1234


def test_counted_code_is_enough_to_run_the_model(tmp_path):
    """Only the CODE_FILES, in a fresh interpreter: the model loads and computes the same logits."""
    model = small_model()
    _, raw = packed(model, QuantSpec(default="int6"))
    art = write_artifact(tmp_path / "artifact", compress_with("lzma", raw))
    x = torch.randint(0, 200, (1, 32))
    expected = codec.load_model((tmp_path / "artifact" / "model.slgf").read_bytes())(x)
    torch.save({"x": x, "logits": expected}, tmp_path / "io.pt")
    code_dir = tmp_path / "artifact" / "code"
    script = f"""
import sys, torch
import scalelab
assert scalelab.__file__.startswith({str(code_dir)!r}), scalelab.__file__
from scalelab.golf.codec import load_model
m = load_model(open({art['weights_file']!r}, 'rb').read())
io = torch.load({str(tmp_path / 'io.pt')!r})
assert torch.equal(m(io['x']), io['logits'])
mods = sorted(k for k in sys.modules if k.startswith('scalelab'))
print(mods)
"""
    env = dict(os.environ, PYTHONPATH=str(code_dir), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = eval(out.stdout.strip().splitlines()[-1])
    counted = {"scalelab"} | {"scalelab." + f.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                              for f in CODE_FILES if f != "__init__.py"}
    assert set(loaded) <= counted


def test_budget_violation_raises_with_the_numbers():
    check_budget(1_000_000, 1_000_000, 30_000, 970_000)  # exactly at the budget is fine
    with pytest.raises(BudgetError) as e:
        check_budget(1_000_001, 1_000_000, 30_000, 970_001)
    msg = str(e.value)
    assert "1,000,001" in msg and "1,000,000" in msg and "30,000" in msg and "970,001" in msg


def test_precheck_refuses_a_hopeless_model_before_training():
    from scalelab.golf.config import GolfConfig

    big = GPTConfig(vocab_size=1024, n_layer=8, d_model=512, n_head=8)
    with pytest.raises(BudgetError, match="cannot fit golf.budget_bytes=1,000,000"):
        precheck(big, GolfConfig(budget_bytes=1_000_000))
    est = precheck(GPTConfig(vocab_size=1024, n_layer=2, d_model=64, n_head=2), GolfConfig(budget_bytes=1_000_000))
    assert 0 < est["payload_at_bit_width"] < 1_000_000


# ---------------------------------------------------------------------------- config


def test_golf_configs_in_repo_load():
    for name in ("golf-cpu", "golf-cpu-regime", "golf-baseline", "golf-8xh100", "golf-baseline-8xh100"):
        run, golf = load_golf_config(REPO / "configs" / f"{name}.yaml")
        assert run.train.max_time_s and golf.budget_bytes > 0
    run, golf = load_golf_config(REPO / "configs" / "golf-cpu.yaml", ["golf.quant=int5", "train.lr=1e-3",
                                                                      "golf.compressors=zlib,lzma"])
    assert golf.quant == "int5" and run.train.lr == 1e-3 and golf.compressors == ["zlib", "lzma"]
    assert golf.budget_bytes == 1_000_000 and run.train.max_time_s == 300


@pytest.mark.parametrize("overrides, match", [
    (["golf.budjet_bytes=5"], "unknown config key 'golf.budjet_bytes'. Did you mean 'golf.budget_bytes'"),
    (["golf.quant=int3"], "golf.quant must be one of"),
    (["golf.quant_overrides={tok_emb.weight: int9}"], r"golf.quant_overrides\['tok_emb.weight'\]"),
    (["golf.compressors=[zlib, brotlii]"], "unknown compressor 'brotlii'"),
    (["golf.weights=ema"], "golf.weights=ema needs train.ema_decay"),
    (["golf.sliding_stride=100000"], "golf.sliding_stride must be in"),
    (["golf.budget_bytes=lots"], "golf.budget_bytes' must be an integer"),
    (["train.max_time_s=null", "train.max_steps=5"], "set train.max_time_s"),
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
])
def test_config_errors_name_the_key(overrides, match):
    base = ["train.max_time_s=10", "data.dir=/nonexistent"]
    with pytest.raises(ConfigError, match=match):
        load_golf_config(None, base + overrides)


# ---------------------------------------------------------------------------- bytes and bpb

TEXTS = [
    "The café's crème brûlée cost €4.50 — naïve résumé!\nLine two\twith a tab.\n",
    "Hello world. Numbers 12345 and symbols #@$%^&*.  Double  spaces and trailing space ",
    "Ünïcödé: 日本語のテキスト, emoji 🙂🚀, Ελληνικά, русский текст.\n\n\nnewlines",
    " leading space and more words about the economy, football and films.",
] * 3


def _spm(tmp_path, dummy_prefix: bool, name: str) -> Path:
    import sentencepiece as spm

    corpus = [line for t in TEXTS for line in t.split("\n") if line.strip()] * 20
    path = tmp_path / f"{name}.model"
    with open(path, "wb") as f:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=f, vocab_size=512,
                                       model_type="bpe", byte_fallback=True, character_coverage=0.99,
                                       normalization_rule_name="identity", remove_extra_whitespaces=False,
                                       add_dummy_prefix=dummy_prefix, bos_id=1, eos_id=-1, unk_id=0, pad_id=-1,
                                       minloglevel=2)
    return path


def test_token_bytes_match_utf8_bytes_of_the_text():
    from scalelab.data.tokenizer import train_tokenizer

    tok = train_tokenizer("sentencepiece", [t for t in TEXTS] * 20, 512)
    counter = ByteCounter.for_tokenizer(tok)
    for text in TEXTS:
        ids = torch.tensor([tok.eot_id] + tok.encode(text))
        assert int(counter(ids[:-1], ids[1:]).sum()) == len(text.encode("utf-8")), text
        assert tok.decode(ids[1:].tolist()) == text


def test_dummy_prefix_tokenizers_count_document_starts_right(tmp_path):
    """Public-style SentencePiece (dummy prefix, BOS before each document): the "▁" the
    tokenizer adds at a document start is not a byte of the text."""
    from scalelab.data.tokenizer import load_tokenizer

    path = _spm(tmp_path, dummy_prefix=True, name="dummy")
    tok = load_tokenizer(path)
    counter = ByteCounter.for_tokenizer(tok, path)
    assert counter.dummy_prefix
    docs = [t for t in TEXTS if not t.startswith(" ")]
    stream = []
    for d in docs:
        stream += [1] + tok.encode(d)  # BOS (id 1, a control token) before each document
    ids = torch.tensor(stream)
    assert int(counter(ids[:-1], ids[1:]).sum()) == sum(len(d.encode("utf-8")) for d in docs)
    # Without the rule every document would count one byte too many.
    plain = ByteCounter.for_tokenizer(tok)
    assert int(plain(ids[:-1], ids[1:]).sum()) == sum(len(d.encode("utf-8")) + 1 for d in docs)


def test_public_shard_names_and_a_tokenizer_path(tmp_path):
    from scalelab.data.shards import write_shard

    path = _spm(tmp_path, dummy_prefix=True, name="fineweb_512_bpe")
    d = tmp_path / "fineweb10B_sp512"
    tokens = np.arange(1000) % 512
    write_shard(d / "fineweb_val_000000.bin", tokens[:600], 512)
    write_shard(d / "fineweb_val_000001.bin", tokens[600:], 512)
    assert torch.equal(load_split_tokens(d, "val"), torch.from_numpy(tokens.astype(np.int64)))
    tok, file = resolve_tokenizer(d, str(path))
    assert tok.vocab_size == 512 and file == path
    with pytest.raises(Exception, match="set data.tokenizer"):
        resolve_tokenizer(d, "sentencepiece")


def test_bpb_windows_and_sliding_window():
    torch.manual_seed(0)
    model = small_model(seq_len=16).eval()
    T = 16
    tokens = torch.randint(0, 200, (4 * T + 1,))
    counter = ByteCounter(np.full(200, 3))
    r = evaluate_bpb(model, tokens, counter, T, batch_size=3)
    # By hand: 4 windows, every target 3 bytes.
    x, y = tokens[:-1].view(4, T), tokens[1:].view(4, T)
    nats = model(x, y, reduction="none").double().sum().item()
    assert r["tokens"] == 4 * T and r["bytes"] == 3 * 4 * T
    assert r["val_bpb"] == pytest.approx(nats / math.log(2) / (3 * 4 * T), rel=1e-6)
    assert r["val_loss"] == pytest.approx(nats / (4 * T), rel=1e-6)
    # stride == seq_len reads the same windows.
    s = evaluate_bpb(model, tokens, counter, T, batch_size=3, stride=T)
    assert s["val_bpb"] == pytest.approx(r["val_bpb"], rel=1e-9) and s["tokens"] == r["tokens"]
    # Any stride scores every target exactly once (a tail shorter than a window too).
    tokens2 = torch.randint(0, 200, (5 * T + 7,))
    for stride in (None, 1, 4, 5, 16):
        s = evaluate_bpb(model, tokens2, counter, T, batch_size=4, stride=stride)
        assert s["tokens"] == tokens2.numel() - 1 and s["bytes"] == 3 * (tokens2.numel() - 1)
    # Stride 1 = every target with as much context as fits: the sum of per-position losses.
    s1 = evaluate_bpb(model, tokens2, counter, T, stride=1)
    expected = model(tokens2[None, :T], tokens2[None, 1:T + 1], reduction="none").double().sum().item()
    for p in range(T, tokens2.numel() - 1):
        expected += model(tokens2[None, p - T + 1:p + 1], tokens2[None, p - T + 2:p + 2],
                          reduction="none")[0, -1].double().item()
    assert s1["val_loss"] * s1["tokens"] == pytest.approx(expected, rel=1e-6)
