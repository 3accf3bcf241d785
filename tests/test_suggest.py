"""`scalelab suggest` and the memory model it rests on: numbers recomputed from the formulas."""
import argparse
import json
import math

import pytest

from scalelab.errors import ConfigError
from scalelab.model.gpt import GPTConfig
from scalelab.model.sizing import count_params, flops_per_token, shape_for_params
from scalelab.scaling.plan import batch_for_compute
from scalelab.train.hardware import peak_for_name
from scalelab.tune.memory import GIB, MemorySetup, activation_bytes, estimate_memory, layer_activation_bytes_per_token
from scalelab.tune.suggest import DEFAULT_MFU, DoesNotFitError, format_suggestion, recompute_speed, suggest

CFG = GPTConfig(vocab_size=1024, n_layer=2, d_model=128, n_head=4, seq_len=64)  # ffn 384, kv 128


def test_activation_formula_on_a_known_shape():
    h, k, f, nh, V = 128, 128, 384, 4, 1024
    assert CFG.ffn_dim == f
    assert layer_activation_bytes_per_token(CFG, "fp32") == 4 * (7 * h + 2 * k + 4 * f) + 4 * (nh + 2)  # 10,776
    assert layer_activation_bytes_per_token(CFG, "autocast_bf16") == 24 * h + 4 * k + 8 * f + 4 * (nh + 2)
    assert layer_activation_bytes_per_token(CFG, "bf16") == 2 * (7 * h + 2 * k + 4 * f) + 4 * (nh + 2)
    act = activation_bytes(CFG, micro_batch=4, precision="fp32")
    tokens = 4 * 64
    assert act["layers"] == 2 * 10_776 * tokens and act["head"] == (8 * h + 12 * V) * tokens
    ck = activation_bytes(CFG, micro_batch=4, precision="fp32", checkpointing=True)
    assert ck["layers"] == 2 * 4 * h * tokens and ck["per_layer"] == 10_776 * tokens


def test_memory_estimate_on_a_known_shape():
    N = count_params(CFG)["total"]
    tokens = 4 * 64
    est = estimate_memory(CFG, MemorySetup(micro_batch=4, parallel="none", dtype="fp32"))
    t = {k: v["bytes"] for k, v in est["terms"].items()}
    assert t["weights"] == 4 * N and t["optimizer"] == 8 * N and t["grads"] == 4 * N
    acts = 2 * 10_776 * tokens + (8 * 128 + 12 * 1024) * tokens
    head_grads = 4 * 1024 * 128 + 4 * 128 * tokens
    expected = 12 * N + max(acts + head_grads, 4 * N + 10_776 * tokens, 4 * N)
    assert est["peak_bytes"] == pytest.approx(expected) and est["peak_phase"] == "forward_end"
    # DDP adds 4 B/param buckets; FSDP over 4 GPUs divides the 16 B/param by 4.
    ddp = estimate_memory(CFG, MemorySetup(micro_batch=4, parallel="ddp", world=4, dtype="bf16"))
    assert ddp["terms"]["ddp_buckets"]["bytes"] == 4 * N and ddp["precision"] == "autocast_bf16"
    fsdp = estimate_memory(CFG, MemorySetup(micro_batch=4, parallel="fsdp", world=4, dtype="bf16"))
    assert fsdp["terms"]["optimizer"]["bytes"] == 8 * N / 4 and fsdp["precision"] == "bf16"
    # A state-dominated case peaks at the optimizer step when foreach temporaries exist.
    big = GPTConfig(vocab_size=32768, n_layer=8, d_model=512, n_head=8, seq_len=64)
    s = estimate_memory(big, MemorySetup(micro_batch=1, parallel="none", dtype="fp32", optimizer_temporaries=True))
    assert s["peak_phase"] == "optimizer_step"
    assert s["peak_bytes"] == pytest.approx(20 * count_params(big)["total"])


def test_suggest_small_model_uses_ddp_and_explains_every_number():
    s = suggest(params="124M", gpus=8, gpu_mem_gib=80, tokens="2.5B", seq_len=1024)
    shape = shape_for_params(124e6)
    m = s["model"]
    assert (m["n_layer"], m["d_model"], m["n_head"]) == (shape["n_layer"], shape["d_model"], shape["n_head"])
    cfg = GPTConfig(vocab_size=50257, seq_len=1024, **shape)
    assert m["flops_per_token"] == flops_per_token(cfg)
    b = s["batch"]
    target = batch_for_compute(6 * count_params(cfg)["non_embedding"] * 2.5e9)
    assert b["target_tokens"] == pytest.approx(target)
    assert b["sequences"] & (b["sequences"] - 1) == 0 and b["sequences"] % 8 == 0
    assert b["micro_batch"] * b["grad_accum"] * 8 == b["sequences"] and b["tokens"] == b["sequences"] * 1024
    assert s["parallel"]["mode"] == "ddp" and not s["parallel"]["checkpointing"]
    assert s["memory"]["peak_gib"] <= s["memory"]["usable_gib"] == pytest.approx(0.9 * 80 - 1)
    est = estimate_memory(cfg, MemorySetup(micro_batch=b["micro_batch"], world=8, parallel="ddp", dtype="bf16"))
    assert s["memory"]["peak_gib"] == pytest.approx(est["peak_gib"])
    tok_s = peak_for_name("H100") * DEFAULT_MFU / flops_per_token(cfg)
    assert s["throughput"]["tokens_per_s_per_gpu"] == pytest.approx(tok_s)
    assert s["time"]["wall_s"] == pytest.approx(2.5e9 / (tok_s * 8))
    for key in ("formula", "source"):
        assert s["throughput"][key]
    assert "torchrun --nproc_per_node=8" in s["command"] and f"train.micro_batch={b['micro_batch']}" in s["command"]


def test_suggest_shards_a_large_model_and_refuses_one_that_cannot_fit():
    s = suggest(params="7B", gpus=8, gpu_mem_gib=80, tokens="140B", seq_len=4096)
    assert s["parallel"]["mode"] == "fsdp"
    assert not any(o["fits"] for o in s["parallel"]["options"] if o["parallel"] == "ddp")
    with pytest.raises(DoesNotFitError) as err:
        suggest(params="70B", gpus=8, gpu_mem_gib=80, tokens="1.4T", seq_len=4096)
    msg = str(err.value)
    assert "short by" in msg and "GiB" in msg and "fit on" in msg
    # the shortfall in the message is the estimate at FSDP + checkpointing + micro-batch 1
    cfg = GPTConfig(vocab_size=50257, seq_len=4096, **shape_for_params(70e9))
    need = estimate_memory(cfg, MemorySetup(micro_batch=1, world=8, parallel="fsdp", checkpointing=True))
    assert f"{(need['peak_bytes'] - (0.9 * 80 - 1) * GIB) / GIB:.1f} GiB" in msg
    with pytest.raises(DoesNotFitError, match="use a shorter --seq"):
        suggest(params="1M", gpus=1, gpu_mem_gib=2, tokens="1B", seq_len=131072)


def test_checkpointing_when_needed_and_its_speed_cost():
    s = suggest(params="350M", gpus=1, gpu_mem_gib=12, tokens="7B", seq_len=4096, gpu_name="4090")
    assert s["parallel"]["mode"] == "none" and s["parallel"]["checkpointing"]
    assert s["parallel"]["options"][0] == {"parallel": "none", "checkpointing": False, "max_micro_batch": None,
                                           "peak_gib": pytest.approx(12.2, abs=0.1), "fits": False}
    cfg = GPTConfig(vocab_size=50257, seq_len=4096, **shape_for_params(350e6))
    assert s["throughput"]["tokens_per_s_per_gpu"] == pytest.approx(
        peak_for_name("4090") * DEFAULT_MFU * recompute_speed(cfg) / flops_per_token(cfg))


def test_recompute_speed_counts_only_the_blocks_forward():
    # Head and embedding are not recomputed: GPT-2 small's big vocabulary makes it 0.80,
    # a model whose head is negligible approaches the textbook 6N / 8N = 0.75.
    small = GPTConfig(vocab_size=50257, n_layer=12, d_model=768, n_head=12, seq_len=1024)
    assert recompute_speed(small) == pytest.approx(0.8045, abs=1e-3)
    deep = GPTConfig(vocab_size=256, n_layer=48, d_model=2048, n_head=16, seq_len=128)
    assert 0.75 < recompute_speed(deep) < 0.752


def test_calibration_from_a_tune_json(tmp_path):
    tune = {"kind": "scalelab.tune", "model": {"flops_per_token": 1e9},
            "hardware": {"device": "cuda", "name": "NVIDIA H100 80GB HBM3", "peak_flops": 989e12},
            "winner": {"params": {"train.activation_checkpointing": False}, "value": 400_000,
                       "remeasured": {"mean": 400_000, "lo": 380_000, "hi": 420_000}},
            "winner_basis": "re-measured"}
    p = tmp_path / "tune.json"
    p.write_text(json.dumps(tune))
    s = suggest(params="124M", gpus=8, gpu_mem_gib=80, tokens="2.5B", calibrate=str(p))
    mfu = 400_000 * 1e9 / 989e12
    fpt = s["model"]["flops_per_token"]
    t = s["throughput"]
    assert t["mfu"] == pytest.approx(mfu) and t["tokens_per_s_per_gpu"] == pytest.approx(989e12 * mfu / fpt)
    assert t["lo"] == pytest.approx(989e12 * 380_000 * 1e9 / 989e12 / fpt) and "calibrated" in t["source"]
    assert s["time"]["wall_hours_range"][0] < s["time"]["wall_hours"] < s["time"]["wall_hours_range"][1]
    p.write_text("{}")
    with pytest.raises(ConfigError, match="not a scalelab tune.json"):
        suggest(params="124M", gpus=8, gpu_mem_gib=80, tokens="2.5B", calibrate=str(p))


@pytest.mark.parametrize("kw, match", [
    # every message names the flag the user typed (not "model size", not a keyword argument)
    (dict(params="abc"), r"^--params: cannot read 'abc'"),
    (dict(tokens=0), r"^--tokens must be > 0"),
    (dict(tokens="0"), r"^--tokens must be > 0"),
    (dict(tokens="2.5Q"), r"^--tokens: cannot read '2.5Q'"),
    (dict(gpus=0), "--gpus"),
    (dict(gpu_name="Z9000"), "--peak-tflops"),
    (dict(mfu=1.5), "--mfu"),
    (dict(peak_tflops=0), r"^--peak-tflops must be > 0"),  # used to fall back to the --gpu table silently
    (dict(peak_tflops=-5), r"^--peak-tflops must be > 0"),  # used to give negative tokens/s
    (dict(max_micro_batch=0), r"^--max-micro-batch must be >= 1"),  # used to claim "does not fit, short by -68 GiB"
    (dict(global_batch_tokens=0), r"^--batch-tokens must be >= 1"),  # used to be ignored
    (dict(vocab_size=0), r"^--vocab-size must be >= 2"),
    (dict(dtype="fp16"), r"^--dtype must be bf16 or fp32"),
    (dict(gpu_mem_gib=0.5), r"^--gpu-mem 0.5 GiB leaves nothing usable.*--gpu-mem 80"),
    (dict(tokens=500), r"^--tokens 500 is less than one sequence of --seq 1024"),
    (dict(global_batch_tokens=10**10), r"^--batch-tokens 10,000,000,000 exceeds the whole run \(--tokens 2.5e\+09\)"),
])
def test_suggest_input_errors(kw, match):
    args = {**dict(params="124M", gpus=8, gpu_mem_gib=80, tokens="2.5B"), **kw}
    with pytest.raises(ConfigError, match=match):
        suggest(**args)


def test_cli_register_suggest_json(capsys):
    from scalelab.cli.tune import register

    parser = argparse.ArgumentParser(prog="scalelab")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["suggest", "--params", "50M", "--gpus", "2", "--gpu-mem", "40", "--tokens", "1B",
                              "--gpu", "A100", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "scalelab.suggest" and out["parallel"]["mode"] in ("ddp", "fsdp")
    args = parser.parse_args(["suggest", "--params", "50M", "--gpus", "2", "--gpu-mem", "40", "--tokens", "1B"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "memory/GPU" in text and "tokens/s/GPU" in text and "<-" in text
    args = parser.parse_args(["tune", "cfg.yaml", "--trials", "3", "--sampler", "random"])
    assert args.trials == 3 and args.sampler == "random"


def test_gpu_count_never_makes_the_batch_exceed_the_run_and_a_forced_batch_is_flagged():
    # 1,000,000 GPUs x one 1024-token sequence > 1e9 tokens: not one optimizer step -> refused.
    with pytest.raises(ConfigError, match=r"^--gpus 1,000,000 needs a global batch of at least 1,024,000,000 tokens.*"
                                          r"more than the whole run \(--tokens 1e\+09\).*at most 976,562 GPUs"):
        suggest(params="124M", gpus=1_000_000, gpu_mem_gib=80, tokens="1B")
    # With 2.5B tokens it fits the run, but the GPU count (not the rule) sets the batch: said plainly.
    s = suggest(params="124M", gpus=1_000_000, gpu_mem_gib=80, tokens="2.5B")
    b = s["batch"]
    assert b["tokens"] <= 2.5e9 and b["sequences"] == 1_000_000 and b["steps"] == pytest.approx(2.5e9 / b["tokens"])
    forced = [w for w in s["warnings"] if w.startswith("--gpus 1,000,000 forces a global batch")]
    assert len(forced) == 1 and f"at most {b['max_useful_gpus']} (--gpus {b['max_useful_gpus']})" in forced[0]
    assert b["max_useful_gpus"] == 2 ** round(math.log2(b["target_tokens"] / 1024)) == 256
    assert any("only 2.4 optimizer steps" in w for w in s["warnings"])
    assert json.loads(json.dumps(s))["warnings"] == s["warnings"]
    assert format_suggestion(s).startswith("WARNING: --gpus 1,000,000 forces")
    # A sane request has no warning.
    assert suggest(params="124M", gpus=8, gpu_mem_gib=80, tokens="2.5B")["warnings"] == []


def test_the_rule_batch_is_capped_to_the_run_and_odd_gpu_counts_stay_within_it():
    from scalelab.tune.suggest import global_batch

    # A huge model on few tokens: the rule asks for more tokens than the run has.
    b = global_batch(1e11, 3e4, 1024, 1)
    assert b["target_tokens"] > 3e4 and b["sequences"] == 16 and b["tokens"] <= 3e4
    assert any("exceed the whole run" in w for w in b["warnings"])
    # Rounding up to a multiple of the GPU count must not overshoot the run either: room for 20
    # sequences, the capped 16 on 7 GPUs -> 14 (2 per GPU), not 21.
    b = global_batch(1e11, 20 * 1024, 1024, 7)
    assert b["sequences"] == 14 and b["tokens"] <= 20 * 1024


def test_tiny_and_huge_models_are_named_in_the_message():
    s = suggest(params=1, gpus=1, gpu_mem_gib=80, tokens="1B")
    assert any(w.startswith("--params 1: the nearest shape (1 x 16) has") for w in s["warnings"])
    with pytest.raises(DoesNotFitError, match=r"one gathered block alone exceeds it; use a smaller --params"):
        suggest(params="1e15", gpus=8, gpu_mem_gib=80, tokens="1T")
    with pytest.raises(DoesNotFitError, match=r"fit on 7 GPUs of this size with FSDP \(--gpus 7\)"):
        suggest(params="7B", gpus=1, gpu_mem_gib=24, tokens="1B")
