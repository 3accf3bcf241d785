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


# The whole 8xH100 stack (GPTQ with int5/6/7, low-rank, per-chunk brotli, loops, partial
# RoPE, LeakyReLU^2, sliding window, LoRA TTT) scaled down to CPU: it must run together.
SCALED_DOWN = [
    "data.source=builtin:bbcnews", "data.tokenizer=sentencepiece", "data.vocab_size=512", "data.max_docs=300",
    "model.vocab_size=512", "model.d_model=32", "model.n_head=2", "model.n_kv_head=1", "model.ffn_hidden=96",
    "model.seq_len=64", "train.micro_batch=8", "train.batch_tokens=512", "train.max_steps=10",
    "train.max_time_s=60", "train.dtype=fp32", "train.compile=false", "train.parallel=none", "train.threads=1",
    "train.eval_tokens=2048", "train.progress=false", "golf.keep_float_numel=64", "golf.gptq_calib_tokens=2048",
    "golf.eval_batch=16", "golf.ttt_chunk_tokens=1024",
]


@pytest.mark.slow
def test_our_stack_scaled_down_runs_end_to_end(tmp_path):
    from scalelab.golf.run import run_golf

    old = torch.get_num_threads()
    try:
        run, golf = load_golf_config(CONFIGS / "golf-8xh100.yaml",
                                     SCALED_DOWN + [f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}"])
        result = run_golf(run, golf, progress=False)
    finally:
        torch.set_num_threads(old)
    assert result["roundtrip_bit_exact"] is True and result["artifact"]["budget_ok"] is True
    assert result["eval"]["score"]["method"] == "ttt"
    assert sum(1 for t in result["quant"]["lowrank"].values() if t["chosen"]) == golf.lowrank_tensors
    measured = result["artifact"]["weights_bytes"]
    assert abs(estimate_for(run, golf)["weights_bytes"] - measured) / measured < 0.05


def test_the_cpu_default_leaves_room_for_the_estimate_error():
    """configs/golf-cpu-best.yaml (the CPU default) must not fail its own budget on a user's first
    run: counted code plus estimated weights leave at least the estimate's error free."""
    run, golf = load_golf_config(CONFIGS / "golf-cpu-best.yaml")
    est = estimate_for(run, golf)
    assert est["fits"] and est["total_bytes"] <= golf.budget_bytes
    assert est["headroom_bytes"] >= ESTIMATE_ERROR * golf.budget_bytes
