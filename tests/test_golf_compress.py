"""Compression layouts (golf/layout.py, format version 2 in golf/codec_ext.py): brotli, the
best compressor per chunk, row reordering undone exactly, the order-0 entropy report,
and the extension reader counted (and sufficient) exactly when a file needs it."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from scalelab.golf import codec
from scalelab.golf.artifact import CODE_FILES, EXT_CODE_FILES, code_bytes, write_artifact
from scalelab.golf.compress import compress_with
from scalelab.golf.entropy import entropy_report, order0_bits
from scalelab.golf.layout import chunk_bounds, encode, reordered
from scalelab.golf.quantize import QuantSpec, quantize_state_dict
from scalelab.model.gpt import GPT, GPTConfig

ALL = ["zlib", "lzma", "zstd", "brotli"]


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=200, n_layer=2, d_model=64, n_head=4, n_kv_head=2, seq_len=32, mlp="relu2"))


def _qs(model, default="int6"):
    return quantize_state_dict(model.state_dict(), QuantSpec(default=default, overrides={"tok_emb.weight": "int8"},
                                                             keep_float_numel=64))


def _exact(qs, blob):
    _, decoded = codec.load_state_dict(blob)
    expected = qs.dequantized()
    return set(decoded) == set(expected) and all(torch.equal(decoded[k], expected[k]) for k in expected)


@pytest.mark.parametrize("per", ["file", "tensor", "auto"])
def test_every_layout_round_trips_bit_exactly_and_auto_is_the_smallest(per):
    model = _model()
    qs = _qs(model)
    cfg = dict(model.cfg.__dict__)
    blob, rep = encode(cfg, qs, ALL, per)
    assert _exact(qs, blob) and rep["sizes"][rep["chosen"]] == len(blob)
    if per == "file":
        assert set(rep["sizes"]) == set(ALL) and len(blob) == min(rep["sizes"].values())
    if per == "tensor":
        assert blob[4] == 2 and sum(c["raw_bytes"] for c in rep["chunks"]) == rep["payload_bytes"]
        labels = [c["label"] for c in rep["chunks"]]
        assert labels[0] == "header" and "q:blocks.0.attn.wqkv.weight" in labels and "scale" in labels
    if per == "auto":
        assert len(blob) == min(v for v in rep["sizes"].values() if isinstance(v, int))


def test_brotli_and_chunk_table_are_read_and_damage_is_refused():
    model = _model()
    qs = _qs(model)
    raw = codec.pack(dict(model.cfg.__dict__), qs.tensors, qs.aliases)
    blob = compress_with("brotli", raw)
    assert blob[4] == 2 and codec.decompress(blob) == raw
    chunked, _ = encode(dict(model.cfg.__dict__), qs, ["brotli", "lzma"], "tensor")
    assert codec.decompress(chunked) == raw
    with pytest.raises(ValueError, match="truncated"):
        codec.decompress(chunked[:-5])
    with pytest.raises(codec.FormatError, match="version"):
        codec.decompress(chunked[:4] + bytes([3]) + chunked[5:])


def test_chunk_bounds_cover_the_payload_in_order():
    model = _model()
    qs = _qs(model)
    raw = codec.pack(dict(model.cfg.__dict__), qs.tensors, qs.aliases)
    bounds = chunk_bounds(raw)
    assert bounds[0][1] == 0 and bounds[-1][2] == len(raw)
    assert all(a[2] == b[1] for a, b in zip(bounds, bounds[1:]))
    q = {t["name"]: t for t in qs.tensors if t["kind"] == "q"}
    for label, a, b in bounds:
        if label.startswith("q:"):
            assert raw[a:b] == q[label[2:]]["q"].numpy().tobytes()


def test_reordered_rows_are_restored_exactly_and_kept_where_smaller():
    # Rows of two interleaved kinds -- near-zero levels around one outlier, and Gaussian
    # ones: grouped, an adaptive coder pays less than for the permutation.
    g = torch.Generator().manual_seed(0)
    rows, cols = 256, 256
    w = torch.randn(rows, cols, generator=g)
    w[0::2] *= 0.01
    w[0::2, 0] = 1.0
    qs = quantize_state_dict({"blocks.0.mlp.w1.weight": w, "norm.weight": torch.ones(cols)},
                             QuantSpec(default="int6", keep_float_numel=64))
    cfg = {"note": "a state dict, not a model: load_state_dict only"}
    tensors, kept = reordered(qs.tensors, ["lzma"])
    assert "blocks.0.mlp.w1.weight" in kept
    moved = next(t for t in tensors if t["name"] == "blocks.0.mlp.w1.weight")
    assert sorted(moved["perm"].tolist()) == list(range(rows)) and moved["perm"].tolist() != list(range(rows))
    blob, rep = encode(cfg, qs, ["lzma"], "tensor", row_reorder=True)
    assert rep["chosen"] == "per tensor, rows reordered"
    assert len(blob) == rep["sizes"]["per tensor, rows reordered"] < rep["sizes"]["per tensor"]
    assert "perm" in [c["label"] for c in rep["chunks"]]  # the permutation is in the file, counted
    assert _exact(qs, blob)


def test_order0_entropy_and_the_report():
    assert order0_bits(np.array([3, 3, 3, 3])) == 0.0
    assert order0_bits(np.array([0, 1, 2, 3] * 10)) == pytest.approx(2.0)
    assert order0_bits(np.array([5, 5, 5, 9])) == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    model = _model()
    qs = _qs(model)
    blob, rep = encode(dict(model.cfg.__dict__), qs, ALL, "tensor")
    params = qs.stats()["params"]
    ent = entropy_report(qs, params, len(blob), rep["payload_bytes"], rep["chunks"])
    t = ent["tensors"]["blocks.0.attn.wqkv.weight"]
    q = next(x for x in qs.tensors if x["name"] == "blocks.0.attn.wqkv.weight")["q"].numpy()
    assert t["entropy_bits_per_value"] == pytest.approx(order0_bits(q), abs=1e-4) and 0 < t["entropy_bits_per_value"] <= 6
    assert t["compressed_bits_per_value"] > 0
    o = ent["overall"]
    assert o["bits_per_param"] == pytest.approx(8 * len(blob) / params, abs=1e-4)
    assert o["q_values"] == sum(x["q"].numel() for x in qs.tensors if x["kind"] == "q")


def test_extension_reader_is_counted_exactly_when_needed_and_suffices(tmp_path):
    model = _model()
    qs = _qs(model)
    cfg = dict(model.cfg.__dict__)
    v1, _ = encode(cfg, qs, ["lzma"], "file")
    art1 = write_artifact(tmp_path / "a1", v1)
    assert v1[4] == 1 and art1["code_bytes"] == code_bytes()
    v2, _ = encode(cfg, qs, ["brotli", "lzma"], "tensor")
    art = write_artifact(tmp_path / "a2", v2)
    assert v2[4] == 2 and art["code_bytes"] == code_bytes(extended=True) > code_bytes()
    assert sorted(f["path"] for f in art["code_files"]) == sorted(f"scalelab/{f}" for f in CODE_FILES + EXT_CODE_FILES)
    x = torch.randint(0, 200, (1, 32))
    expected = codec.load_model(v2)(x)
    torch.save({"x": x, "logits": expected}, tmp_path / "io.pt")
    code_dir = tmp_path / "a2" / "code"
    script = f"""
import torch, scalelab
assert scalelab.__file__.startswith({str(code_dir)!r})
from scalelab.golf.codec import load_model
m = load_model(open({art['weights_file']!r}, 'rb').read())
io = torch.load({str(tmp_path / 'io.pt')!r})
assert torch.equal(m(io['x']), io['logits'])
"""
    env = dict(os.environ, PYTHONPATH=str(code_dir), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
