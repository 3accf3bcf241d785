"""GPTQ rounding, per-tensor bit widths, the size estimate and the budget messages."""
import json

import pytest
import torch

from scalelab.errors import ConfigError, DataError
from scalelab.golf import codec
from scalelab.golf.artifact import BudgetError, check_budget, write_artifact
from scalelab.golf.compress import compress_with
from scalelab.golf.config import GolfConfig, load_golf_config
from scalelab.golf.estimate import estimate_artifact, estimate_for, precheck
from scalelab.golf.gptq import calibration_windows, collect_hessians, gptq_quantize
from scalelab.golf.quantize import QuantSpec, quantize_rows, quantize_state_dict
from scalelab.model.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, SEQ = 64, 32


def markov_tokens(n: int, seed: int) -> torch.Tensor:
    """A first-order Markov chain with a sparse transition table: something to learn."""
    g = torch.Generator().manual_seed(1234)
    table = torch.randint(0, VOCAB, (VOCAB, 3), generator=g)
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, dtype=torch.long)
    for i in range(1, n):
        out[i] = table[out[i - 1], torch.randint(0, 3, (1,), generator=g)]
    return out


@pytest.fixture(scope="module")
def trained():
    """A small GPT trained for a few seconds; calibration and held-out windows from the same source."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, n_layer=2, d_model=64, n_head=4, n_kv_head=2, seq_len=SEQ,
                          mlp="relu2", qk_norm=True))
    data = markov_tokens(40 * 16 * SEQ, seed=1).reshape(-1, SEQ)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        x = data[step * 16:(step + 1) * 16]
        loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 3.0  # learned something (uniform: ln 64 = 4.16)
    calib, heldout = (markov_tokens(64 * SEQ, seed=s).reshape(-1, SEQ) for s in (2, 3))
    return model.eval(), calib, heldout


def output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    """||X W^T - X Wq^T||^2 / n, from H = X^T X / n."""
    d = (w - wq).to(torch.float64)
    return float(((d @ h) * d).sum())


def test_gptq_lowers_the_layer_output_error_below_round_to_nearest(trained):
    model, calib, heldout = trained
    h_cal = collect_hessians(model, calib)
    h_out = collect_hessians(model, heldout)
    state = model.state_dict()
    linears = [k for k in h_cal if k.startswith("blocks.")]
    assert len(linears) >= 8  # every block linear got a Hessian
    for bits in (4, 6):
        gptq_total = rtn_total = 0.0
        for name in linears:
            w = state[name]
            q, s = gptq_quantize(w, h_cal[name], bits)
            wq_gptq = codec.dequantize(q, s, bits, list(w.shape))
            q, s = quantize_rows(w, bits)
            wq_rtn = codec.dequantize(q, s, bits, list(w.shape))
            # On the calibration activations, layer by layer...
            assert output_error(w, wq_gptq, h_cal[name]) < output_error(w, wq_rtn, h_cal[name]), (name, bits)
            gptq_total += output_error(w, wq_gptq, h_out[name])
            rtn_total += output_error(w, wq_rtn, h_out[name])
        # ... and on held-out activations, in total, by a clear margin.
        assert gptq_total < 0.8 * rtn_total, bits


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    w = torch.randn(16, 48, generator=torch.Generator().manual_seed(0))
    q_gptq, s_gptq = gptq_quantize(w, torch.eye(48), 5)
    q_rtn, s_rtn = quantize_rows(w, 5)
    assert torch.equal(s_gptq, s_rtn) and torch.equal(q_gptq, q_rtn)


def test_gptq_round_trip_is_bit_exact_through_the_artifact(trained, tmp_path):
    model, calib, _ = trained
    spec = QuantSpec(default="int6", overrides={"tok_emb.weight": "int8"}, keep_float_numel=64, method="gptq")
    qs = quantize_state_dict(model.state_dict(), spec, collect_hessians(model, calib))
    assert qs.methods["blocks.0.attn.wo.weight"] == "gptq" and qs.methods["tok_emb.weight"] == "rtn"
    raw = codec.pack(model.cfg.__dict__, qs.tensors, qs.aliases)
    art = write_artifact(tmp_path / "artifact", compress_with("lzma", raw))
    blob = (tmp_path / "artifact" / "model.slgf").read_bytes()
    _, decoded = codec.load_state_dict(blob)
    expected = qs.dequantized()
    assert set(decoded) == set(expected) and all(torch.equal(decoded[k], expected[k]) for k in expected)
    assert art["weights_bytes"] == len(blob)
    # Same scales as round to nearest: only the rounding differs.
    rtn = quantize_state_dict(model.state_dict(), QuantSpec(default="int6", overrides={"tok_emb.weight": "int8"},
                                                            keep_float_numel=64))
    for a, b in zip(qs.tensors, rtn.tensors):
        if a["kind"] == "q":
            assert torch.equal(a["scale"], b["scale"])


def test_calibration_windows_come_from_the_training_shards(tmp_path):
    from scalelab.data.shards import shard_name, write_shard

    import numpy as np

    write_shard(tmp_path / shard_name("train", 0), np.arange(100, dtype=np.uint16))
    write_shard(tmp_path / shard_name("train", 1), np.arange(100, 200, dtype=np.uint16))
    w = calibration_windows(tmp_path, seq_len=30, n_tokens=150)
    assert w.shape == (5, 30) and torch.equal(w.reshape(-1), torch.arange(150))
    short = tmp_path / "short"
    short.mkdir()
    write_shard(short / shard_name("train", 0), np.arange(10, dtype=np.uint16))
    with pytest.raises(DataError, match=r"has 10 \(fewer than model.seq_len=30\). Use golf.quant_method=rtn"):
        calibration_windows(short, seq_len=30, n_tokens=150)


# ---------------------------------------------------------------------------- per-tensor bit widths


def test_per_tensor_bits_are_honoured_and_the_bytes_add_up(trained):
    model, _, _ = trained
    overrides = {"tok_emb.weight": "int7", "blocks.0.*": "int5", "blocks.1.mlp.*": "int8"}
    qs = quantize_state_dict(model.state_dict(), QuantSpec(default="int6", overrides=overrides, keep_float_numel=64))
    raw = codec.pack(model.cfg.__dict__, qs.tensors, qs.aliases)
    n = int.from_bytes(raw[:4], "little")
    header = json.loads(raw[4:4 + n])
    bits = {name: b for name, kind, shape, b in header["tensors"] if kind == "q"}
    assert bits["tok_emb.weight"] == 7
    assert bits["blocks.0.attn.wo.weight"] == 5 and bits["blocks.1.attn.wo.weight"] == 6
    assert all(b == 8 for k, b in bits.items() if k.startswith("blocks.1.mlp."))
    # Stored values stay inside each tensor's range.
    for t in qs.tensors:
        if t["kind"] == "q":
            assert int(t["q"].max()) <= 2 * (1 << (t["bits"] - 1)) - 1 and int(t["q"].min()) >= 1
    # Exact accounting: the payload is the length word, the header and each scheme's bytes.
    stats = qs.stats()
    assert len(raw) == 4 + n + sum(d["bytes"] for d in stats["by_scheme"].values())
    assert stats["by_scheme"]["int7"]["params"] == model.tok_emb.weight.numel()


def test_int7_and_gptq_keys_in_config():
    run, golf = load_golf_config(None, ["train.max_time_s=10", "golf.quant=int7", "golf.quant_method=gptq"])
    assert golf.quant_spec().method == "gptq" and golf.quant_spec().default == "int7"
    with pytest.raises(ConfigError, match="golf.quant_method must be one of rtn, gptq"):
        load_golf_config(None, ["train.max_time_s=10", "golf.quant_method=obq"])


# ---------------------------------------------------------------------------- estimate + budget messages


@pytest.mark.parametrize("name", ["golf-8xh100", "golf-baseline-8xh100"])
def test_challenge_configs_fit_the_budget_by_estimate(name):
    from pathlib import Path

    run, golf = load_golf_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert golf.budget_bytes == 16_000_000
    est = estimate_artifact(run.model, golf)
    assert est["fits"] and est["total_bytes"] == est["code_bytes"] + est["weights_bytes"] <= 16_000_000
    # Above the raw-size floor of the fp16 parts, below the uncompressed payload.
    assert est["weights_bytes"] < precheck(run.model, golf)["payload_at_bit_width"]


def test_estimate_is_close_to_a_measured_artifact(trained):
    model, _, _ = trained
    golf = GolfConfig(quant="int6", keep_float_numel=64, compressors=["lzma"])
    # Gaussian weights of the model's shapes: the estimate's own assumption, so it must be close.
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.02 for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["tok_emb.weight"]
    qs = quantize_state_dict(state, golf.quant_spec())
    measured = len(compress_with("lzma", codec.pack(model.cfg.__dict__, qs.tensors, qs.aliases)))
    est = estimate_artifact(model.cfg, golf)
    assert abs(est["weights_bytes"] - measured) / measured < 0.05


def test_a_budget_below_the_code_says_so():
    with pytest.raises(BudgetError, match="counted code alone is 26,800 bytes") as e:
        check_budget(26_900, 1_000, 26_800, 100)
    assert "Shrink the model" not in str(e.value)
    with pytest.raises(BudgetError, match="below the counted code alone"):
        precheck(GPTConfig(vocab_size=64, n_layer=1, d_model=32, n_head=2), GolfConfig(budget_bytes=1_000))


def test_the_regime_config_is_bound_by_its_budget():
    """configs/golf-cpu-regime.yaml: the model fits its budget, one more layer or 8 more channels do not."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "golf-cpu-regime.yaml"
    for overrides, fits in (([], True), (["model.n_layer=3"], False), (["model.d_model=40"], False)):
        run, golf = load_golf_config(path, overrides)
        assert estimate_for(run, golf)["fits"] is fits, overrides
