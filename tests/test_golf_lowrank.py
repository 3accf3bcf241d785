"""Low-rank error correction (golf/lowrank.py): the stored rank-r factors remove what the
SVD of the quantization residual says they can, the worst tensors get them, the decoder
adds them back bit-exactly, and the bytes are counted. Plus one short golf run with the
issue-16 options together (QAT, low-rank, per-tensor brotli/lzma chunks, reordering)."""
import json
from pathlib import Path

import pytest
import torch

from scalelab.golf import codec
from scalelab.golf.codec_ext import add_lowrank
from scalelab.golf.config import load_golf_config
from scalelab.golf.layout import encode
from scalelab.golf.lowrank import add_corrections, correction
from scalelab.golf.quantize import QuantSpec, quantize_rows, quantize_state_dict
from scalelab.golf.run import run_golf
from scalelab.model.gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=200, n_layer=2, d_model=64, n_head=4, n_kv_head=2, seq_len=32, mlp="relu2"))


def test_correction_removes_the_top_singular_energy_of_the_residual():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 80, generator=g)
    q, scale = quantize_rows(w, 4, "mse")
    deq = codec.dequantize(q, scale, 4, [96, 80])
    s = torch.linalg.svdvals((w - deq).double())
    for rank in (1, 4):
        best = float(s[:rank].square().sum())
        _, _, gain16 = correction(w, deq, rank, "fp16")
        _, _, gain8 = correction(w, deq, rank, "int8")
        assert best * 0.999 <= gain16 <= best * 1.001  # fp16 factors: the SVD's optimum
        assert best * 0.95 <= gain8 <= best * 1.001  # int8 factors lose a little of it
    # An exactly low-rank residual is removed almost entirely.
    u, v = torch.randn(96, 2, generator=g), torch.randn(2, 80, generator=g)
    _, _, gain = correction(deq + 0.01 * (u @ v), deq, 2, "fp16")
    assert gain >= 0.999 * float((0.01 * (u @ v)).square().sum())


def test_the_worst_tensors_get_corrections_and_the_file_holds_them_exactly():
    model = _model()
    sd = model.state_dict()
    spec = QuantSpec(default="int4", overrides={"tok_emb.weight": "int8"}, keep_float_numel=64)
    qs = quantize_state_dict(sd, spec)
    plain = quantize_state_dict(sd, spec)
    report = add_corrections(qs, sd, rank=4, n_tensors=3)
    chosen = [n for n, r in report.items() if r["chosen"]]
    assert len(chosen) == 3 and set(qs.lowrank) == set(chosen) and all(r == 4 for r in qs.lowrank.values())
    gains = {n: r["error_removed"] for n, r in report.items()}
    assert min(gains[n] for n in chosen) >= max(g for n, g in gains.items() if n not in chosen)
    deq, deq_plain = qs.dequantized(), plain.dequantized()
    for n in chosen:  # closer to the float weights than without, and the factors are not in the state dict
        assert (sd[n] - deq[n]).square().sum() < (sd[n] - deq_plain[n]).square().sum()
        a, b = (next(t for t in qs.tensors if t["name"] == f"{n}.{p}") for p in ("lr_a", "lr_b"))
        assert a["shape"] == [sd[n].shape[0], 4] and b["shape"] == [4, sd[n].shape[1]]
        a_v = codec.dequantize(a["q"], a["scale"], 8, a["shape"])
        b_v = codec.dequantize(b["q"], b["scale"], 8, b["shape"])
        assert torch.equal(deq[n], add_lowrank(deq_plain[n], a_v, b_v))
    assert set(deq) == set(sd)
    assert qs.stats()["params"] == plain.stats()["params"]  # factors are not model parameters
    cfg = dict(model.cfg.__dict__)
    for per in ("file", "tensor"):
        blob, rep = encode(cfg, qs, ["lzma", "zlib"], per)
        assert blob[4] == 2  # "lowrank" in the header: a version-1 reader must refuse it
        _, decoded = codec.load_state_dict(blob)
        assert set(decoded) == set(deq) and all(torch.equal(decoded[k], deq[k]) for k in deq)
    # The factors' bytes are in the payload: values + one fp16 scale per factor row.
    raw, raw_plain = (codec.pack(cfg, s.tensors, s.aliases) for s in (qs, plain))
    factor_bytes = sum(t["q"].numel() + 2 * t["q"].shape[0] for t in qs.tensors if ".lr_" in t["name"])
    header_growth = len(raw) - len(raw_plain) - factor_bytes
    assert 0 < header_growth < 400  # the factor tensors' header entries


def test_nothing_is_added_when_off():
    model = _model()
    qs = quantize_state_dict(model.state_dict(), QuantSpec(default="int6"))
    n = len(qs.tensors)
    assert add_corrections(qs, model.state_dict(), rank=0, n_tensors=5) == {}
    assert add_corrections(qs, model.state_dict(), rank=4, n_tensors=0) == {} and len(qs.tensors) == n


@pytest.mark.parametrize("bad, match", [
    (["golf.qat_frac=1.5"], "golf.qat_frac must be in"),
    (["golf.lowrank_rank=-1"], "golf.lowrank_rank and golf.lowrank_tensors must be >= 0"),
    (["golf.lowrank_quant=fp32"], "golf.lowrank_quant must be one of"),
    (["golf.compress_per=group"], "golf.compress_per must be one of"),
    (["golf.row_reorder=true"], "golf.row_reorder needs per-tensor chunks"),
])
def test_option_errors_name_the_key(bad, match):
    from scalelab.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_golf_config(str(REPO / "configs" / "golf-cpu-regime.yaml"), bad)


def test_a_short_golf_run_with_the_options_together(tmp_path):
    overrides = [
        "data.max_docs=200", "data.vocab_size=384", f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}",
        "model.seq_len=64", "train.micro_batch=8", "train.batch_tokens=512", "train.warmup_steps=2",
        "train.max_steps=12", "train.max_time_s=100000", "train.eval_tokens=1024", "train.progress=false",
        "golf.sliding_stride=null", "golf.budget_bytes=200000", "golf.qat_frac=0.5", "golf.lowrank_rank=2",
        "golf.lowrank_tensors=2", "golf.compressors=[lzma, brotli]", "golf.compress_per=tensor",
        "golf.row_reorder=true",
    ]
    old = torch.get_num_threads()
    try:
        run, golf = load_golf_config(str(REPO / "configs" / "golf-cpu-regime.yaml"), overrides)
        result = run_golf(run, golf, progress=False)
    finally:
        torch.set_num_threads(old)
    saved = json.loads((tmp_path / "run" / "golf.json").read_text())
    assert saved["roundtrip_bit_exact"] is True and result["train"]["steps"] == 12
    assert result["compression"]["chosen"].startswith("per tensor") and result["compression"]["version"] == 2
    assert sum(r["chosen"] for r in result["quant"]["lowrank"].values()) == 2
    assert any(f["path"] == "scalelab/golf/codec_ext.py" for f in result["artifact"]["code_files"])
    o = result["entropy"]["overall"]
    assert 0 < o["q_entropy_bits_per_value"] <= 8 and o["bits_per_param"] == pytest.approx(
        8 * result["artifact"]["weights_bytes"] / result["quant"]["params"], abs=1e-3)
    assert "order-0 bound" in (tmp_path / "run" / "GOLF.md").read_text()


def test_estimate_counts_the_extension_reader_and_a_bound_on_the_factors():
    from scalelab.golf.artifact import code_bytes
    from scalelab.golf.estimate import estimate_for

    cfg = str(REPO / "configs" / "golf-cpu-regime.yaml")
    base = estimate_for(*load_golf_config(cfg, []))
    lr = estimate_for(*load_golf_config(cfg, ["golf.lowrank_rank=4", "golf.lowrank_tensors=2"]))
    assert base["code_bytes"] == code_bytes() and lr["code_bytes"] == code_bytes(extended=True) > code_bytes()
    # The two largest factor pairs of the 2 x 32 model (vocab 512): tok_emb [512, 32] and
    # an MLP matrix [128, 32]: rank x (rows + cols) int8 values + an fp16 scale per factor row.
    assert lr["weights_bytes"] - base["weights_bytes"] == (4 * 544 + 2 * 516) + (4 * 160 + 2 * 132)
