"""The two 8xH100 challenge configs: they load and validate, the model they describe is what
--estimate sizes, and both fit the challenge's 16,000,000 bytes by --estimate (no data, no
training). Ours must also leave room for the estimate's own error (docs/GOLF.md, --estimate)."""
from pathlib import Path

import pytest
import torch

from scalelab.golf.config import load_golf_config
from scalelab.golf.estimate import estimate_for
from scalelab.model.gpt import GPT

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CHALLENGE_BUDGET = 16_000_000
ESTIMATE_ERROR = 0.02  # the estimate has measured up to 2% under a real artifact


@pytest.mark.parametrize("name", ["golf-8xh100", "golf-baseline-8xh100"])
def test_challenge_config_validates_and_fits_by_estimate(name):
    run, golf = load_golf_config(CONFIGS / f"{name}.yaml")
    assert golf.budget_bytes == CHALLENGE_BUDGET and run.train.max_time_s == 600
    assert run.train.parallel == "ddp" and run.model.vocab_size
    # The shards and the tokenizer named must be the same vocabulary as the model.
    v = run.model.vocab_size
    assert Path(run.data.dir).name == f"fineweb10B_sp{v}"
    assert Path(run.data.tokenizer).name == f"fineweb_{v}_bpe.model"
    est = estimate_for(run, golf)
    assert est["total_bytes"] == est["code_bytes"] + est["weights_bytes"] <= CHALLENGE_BUDGET and est["fits"]
    # --estimate sizes the model the trainer will build: the same stored parameters (tied once).
    with torch.device("meta"):
        model = GPT(run.model)
    assert est["params"] == sum(p.numel() for p in model.parameters())  # parameters() lists a tied one once


def test_ours_is_the_record_structure_with_headroom_for_the_estimate_error():
    run, golf = load_golf_config(CONFIGS / "golf-8xh100.yaml")
    m = run.model
    assert (m.d_model, m.n_head, m.n_kv_head, m.vocab_size) == (512, 8, 4, 8192)
    assert m.mlp == "leaky_relu2" and m.unet_skips and m.tie_embeddings
    assert list(m.loop_layers) == [3, 4, 5] and m.loop_count == 3 and m.rope_frac < 1.0
    assert run.train.muon_ns == "polar_express" and run.train.ema_decay == 0.9965
    assert golf.quant_method == "gptq" and golf.quant_spec().default == "int6"
    assert golf.lowrank_rank == 4 and golf.lowrank_tensors > 0 and golf.compress_per == "tensor"
    assert "brotli" in golf.compressors and golf.sliding_stride == 64
    assert golf.ttt == "lora" and golf.eval_cap_s == 600
    est = estimate_for(run, golf)
    assert est["headroom_bytes"] >= ESTIMATE_ERROR * est["total_bytes"]
    schemes = est["by_scheme"]
    assert schemes["int7"]["params"] == m.vocab_size * m.d_model  # the tied embedding
    assert {"int6", "int5"} <= set(schemes)  # attention int6, MLP int5
