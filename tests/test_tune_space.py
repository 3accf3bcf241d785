"""The tuner's search space: YAML forms, hardware-dependent dropping, micro-batch filtering."""
import pytest

from scalelab.config import load_config
from scalelab.errors import ConfigError
from scalelab.tune.space import DEFAULT, Hardware, parse_space, resolve_space, same_value

BASE = ["model.seq_len=32", "train.batch_tokens=512", "train.micro_batch=8", "train.max_steps=1"]


def base(*extra):
    return load_config(None, BASE + list(extra))


def test_parse_forms_and_env_detection():
    knobs = {k.name: k for k in parse_space({
        "train.micro_batch": [4, 8],
        "train.compile": None,  # built-in values
        "NCCL_ALGO": {"values": ["Ring", "Tree"]},
        "MY_FLAG": ["0", "1"],
        "train.loader_workers": {"values": [0, 2], "requires": []},
    })}
    assert knobs["train.micro_batch"].values == [4, 8] and not knobs["train.micro_batch"].env
    assert knobs["train.compile"].values == [False, True]
    assert knobs["NCCL_ALGO"].env and knobs["NCCL_ALGO"].values == [DEFAULT, "Ring", "Tree"]
    assert knobs["NCCL_ALGO"].requires == ["cuda", "multiprocess"]
    assert knobs["MY_FLAG"].env and knobs["MY_FLAG"].values == [DEFAULT, "0", "1"]


@pytest.mark.parametrize("space, match", [
    ({"train.micro_batchh": [1]}, "Did you mean 'train.micro_batch'"),
    ({"train.micro_batch": {"vals": [1]}}, "unknown field"),
    ({"train.micro_batch": []}, "no values"),
    ({"NCCL_ALGO": {"values": ["Ring"], "requires": ["tpu"]}}, "unknown requirement"),
    ({}, "empty"),
    ({"train.micro_batch": [[1, 2]]}, "not a scalar"),
])
def test_parse_errors_are_clear(space, match):
    with pytest.raises(ConfigError, match=match):
        parse_space(space)


def test_cpu_single_process_drops_gpu_and_multiprocess_knobs_with_a_note():
    space = {"NCCL_ALGO": None, "NCCL_PROTO": None, "train.pin_memory": None, "train.ddp_bucket_mb": None,
             "train.fsdp_reshard_after_forward": None, "train.parallel": None, "train.micro_batch": [4, 8],
             "train.prefetch_factor": [2, 4]}
    r = resolve_space(parse_space(space), base(), Hardware("cpu", 1))
    dropped = {d["knob"]: d["reason"] for d in r.dropped}
    assert set(dropped) == {"NCCL_ALGO", "NCCL_PROTO", "train.pin_memory", "train.ddp_bucket_mb",
                            "train.fsdp_reshard_after_forward", "train.parallel", "train.prefetch_factor"}
    assert "CUDA" in dropped["NCCL_ALGO"] and "more than one process" in dropped["train.ddp_bucket_mb"]
    assert "loader workers" in dropped["train.prefetch_factor"]
    assert r.names() == ["train.micro_batch"]


def test_multiprocess_cpu_keeps_ddp_knobs_and_gpu_keeps_nccl():
    space = {"NCCL_ALGO": None, "train.ddp_bucket_mb": [1, 25], "train.fsdp_reshard_after_forward": None,
             "train.parallel": ["none", "ddp"], "train.loader_workers": [0, 1], "train.prefetch_factor": [2, 4]}
    r = resolve_space(parse_space(space), base("train.micro_batch=4"), Hardware("cpu", 2))
    assert "train.ddp_bucket_mb" in r.names() and "train.prefetch_factor" in r.names()
    assert "NCCL_ALGO" not in r.names()
    assert "train.fsdp_reshard_after_forward" not in r.names()  # no trial uses fsdp
    par = next(k for k in r.knobs if k.name == "train.parallel")
    assert par.values == ["ddp"] and any("parallel=none excluded" in n for n in r.notes)
    assert r.default_params["train.parallel"] == "ddp"  # base "auto" with 2 processes
    assert r.default_params["train.ddp_bucket_mb"] == 25  # base 25.0 matches the listed 25
    g = resolve_space(parse_space({"NCCL_ALGO": None, "train.pin_memory": None}), base("train.micro_batch=4"),
                      Hardware("cuda", 2))
    assert g.names() == ["NCCL_ALGO", "train.pin_memory"]


def test_micro_batches_that_do_not_divide_are_excluded_with_a_note():
    # 512 tokens / (seq 32 x 2 processes) = 8 sequences per process: 3, 5 and 16 do not divide.
    r = resolve_space(parse_space({"train.micro_batch": [1, 2, 3, 4, 5, 8, 16]}), base("train.micro_batch=4"),
                      Hardware("cpu", 2))
    assert r.knobs[0].values == [1, 2, 4, 8]
    assert any("[3, 5, 16] excluded" in n for n in r.notes)


def test_base_value_is_added_and_split_builds_overrides_and_env():
    r = resolve_space(parse_space({"train.micro_batch": [4, 16], "NCCL_ALGO": ["Ring"], "train.compile": {"values": [True], "requires": []}}),
                      base(), Hardware("cuda", 2))
    assert r.default_params == {"train.micro_batch": 8, "NCCL_ALGO": DEFAULT, "train.compile": False}
    assert 8 in r.knobs[0].values and any("added the base config's value 8" in n for n in r.notes)
    over, env = r.split({"train.micro_batch": 4, "NCCL_ALGO": "Ring", "train.compile": True})
    assert over == ["train.micro_batch=4", "train.compile=true"] and env == {"NCCL_ALGO": "Ring"}
    over, env = r.split(r.default_params)
    assert env == {}  # "default" leaves the variable unset
    assert r.size() == 2 * 2 * 2  # micro-batch 16 does not divide 8 sequences per process


def test_same_value_keeps_bools_and_strings_apart():
    assert same_value(25, 25.0) and not same_value(True, 1) and not same_value("1", 1)
