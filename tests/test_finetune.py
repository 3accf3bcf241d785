"""scalelab finetune end to end on a tiny random HF Llama: training, output, resume, DDP/FSDP."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ft_helpers import qa_records, tiny_llama_dir, workdir, write_jsonl
from scalelab.errors import ConfigError, DataError
from scalelab.finetune.config import load_finetune_config
from scalelab.finetune.job import finetune
from scalelab.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return write_jsonl(workdir() / "qa.jsonl", qa_records(160))


def args(model, data, out, *extra):
    return [f"model.hf={model}", f"data.source={data}", f"out_dir={out}", "data.max_length=128",
            "data.val_examples=12", "train.micro_batch=2", "train.batch_rows=4", "train.lr=3e-3",
            "train.warmup_steps=1", "train.eval_every=4", "train.ckpt_every=2", "train.log_every=1",
            "train.progress=false", "train.threads=1", "train.deterministic=true", "model.lora_rank=4", *extra]


def losses(out):
    return [r["loss"] for r in read_metrics(Path(out) / "metrics.jsonl", "train")]


def run_cli(argv, env_extra=None, torchrun=0):
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
            if torchrun else [sys.executable])
    return subprocess.run(head + ["-m", "scalelab", "finetune", *argv], capture_output=True, text=True, env=env,
                          timeout=600)


def test_lora_finetune_end_to_end_and_output_loads(data, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama_dir(True)
    out = tmp_path / "run"
    s = finetune(load_finetune_config(None, args(model, data, out, "train.max_steps=8")))
    assert s["steps"] == 8 and s["self_check"] == {"packed_matches_separate": True, "split_head": True,
                                                   "block_mask": True}
    ls = losses(out)
    assert len(ls) == 8 and ls[-1] < ls[0]
    evals = read_metrics(out / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [0, 4, 8] and evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert s["val_loss"] == evals[-1]["val_loss"] and s["tok_s"] > 0
    assert s["attn_implementation"] == "scalelab_varlen"  # the CPU default for packed rows
    # tokens counted are real tokens (no padding): at most 4 rows x 128 per step
    assert 0 < s["tokens"] <= 8 * 4 * 128 and json.loads((out / "data_stats.json").read_text())["format"] == "alpaca"
    # the merged output is a plain transformers model that differs from the base
    merged = AutoModelForCausalLM.from_pretrained(s["output"], dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    assert not any("lora" in k for k in merged.state_dict())
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])
    assert torch.equal(merged.state_dict()["model.layers.0.mlp.up_proj.weight"],
                       base.state_dict()["model.layers.0.mlp.up_proj.weight"])  # not a LoRA target
    # `scalelab eval hf:OUT` runs on it
    text = tmp_path / "t.txt"
    text.write_text(" ".join(r["output"] for r in qa_records(20, seed=5)))
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "scalelab", "eval", f"hf:{s['output']}", "--lm", str(text), "--json",
                        "--out", str(tmp_path / "ev"), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "ev" / "results.json").is_file()


def test_adapter_output_reproduces_the_merged_model(data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = tiny_llama_dir(True)
    a = finetune(load_finetune_config(None, args(model, data, tmp_path / "m", "train.max_steps=3")))
    b = finetune(load_finetune_config(None, args(model, data, tmp_path / "a", "train.max_steps=3",
                                                 "output.merge_lora=false")))
    assert (Path(b["output"]) / "adapter_config.json").is_file() and not (Path(b["output"]) / "config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(a["output"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), b["output"])
    ids = torch.randint(3, 400, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)


def test_full_finetune_on_chat_data_with_the_fallback_template(tmp_path):
    model = tiny_llama_dir(False)  # no chat template: the documented fallback
    chat = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": r["instruction"]},
                          {"role": "assistant", "content": r["output"]}]} for r in qa_records(80)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(chat), tmp_path / "chat.parquet")
    s = finetune(load_finetune_config(None, args(model, tmp_path / "chat.parquet", tmp_path / "full",
                                                 "train.max_steps=4", "model.lora=false", "train.lr=1e-3",
                                                 "data.packing=false")))
    assert s["trainable_params"] == s["params"] and s["data"]["format"] == "chat"
    ls = losses(tmp_path / "full")
    assert ls[-1] < ls[0]


def test_user_errors_are_one_clear_message(data, tmp_path, monkeypatch):
    model = tiny_llama_dir(True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network wait: the Hub is unreachable here anyway
    with pytest.raises(DataError, match="hf:no-such/dataset.*could not be loaded"):
        finetune(load_finetune_config(None, args(model, "hf:no-such/dataset", tmp_path / "w", "train.max_steps=1")))
    with pytest.raises(ConfigError, match="lora_target_modules.*linear layers are named"):
        finetune(load_finetune_config(None, args(model, data, tmp_path / "x", "train.max_steps=1",
                                                 "model.lora_target_modules=[qkv]")))
    with pytest.raises(ConfigError, match="nope' does not exist"):
        finetune(load_finetune_config(None, args(tmp_path / "nope", data, tmp_path / "y", "train.max_steps=1")))
    out = tmp_path / "run"
    finetune(load_finetune_config(None, args(model, data, out, "train.max_steps=2")))
    with pytest.raises(ConfigError, match="never overwritten"):
        finetune(load_finetune_config(None, args(model, data, out, "train.max_steps=2")))
    r = run_cli(args(model, data, tmp_path / "z", "train.max_steps=1", "model.lora_rnk=2"))
    assert r.returncode == 2 and "Did you mean 'model.lora_rank'" in r.stderr and "Traceback" not in r.stderr


def test_resume_after_kill_9_is_bitwise_identical(data, tmp_path):
    model = tiny_llama_dir(True)
    ref = tmp_path / "ref"
    r = run_cli(args(model, data, ref, "train.max_steps=8", "model.lora_dropout=0.1"))
    assert r.returncode == 0, r.stderr[-3000:]
    expected = losses(ref)
    crashed = tmp_path / "crash"
    r = run_cli(args(model, data, crashed, "train.max_steps=8", "model.lora_dropout=0.1"),
                {"SCALELAB_TEST_CRASH_IN_CHECKPOINT": "6"})
    assert r.returncode == -signal.SIGKILL
    assert (crashed / "checkpoints" / "last").read_text().strip() == "step_000004"
    r = run_cli(args(model, data, crashed, "train.max_steps=8", "model.lora_dropout=0.1", "train.resume=true"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    assert losses(crashed) == expected  # float equality of every step's loss (dropout RNG restored too)
    assert (crashed / "model" / "config.json").is_file()
    # a finished run resumed again keeps its output; resuming an earlier checkpoint would replace it: refused
    r = run_cli(args(model, data, crashed, "train.max_steps=8", "model.lora_dropout=0.1", "train.resume=true"))
    assert r.returncode == 0 and losses(crashed) == expected, r.stderr[-2000:]
    r = run_cli(args(model, data, crashed, "train.max_steps=8", "model.lora_dropout=0.1", "train.resume=step_000006"))
    assert r.returncode == 2 and "never overwritten" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("mode,extra", [("ddp", []), ("fsdp", ["model.lora=false", "train.lr=1e-3"]), ("fsdp", [])])
def test_two_processes_match_one_with_double_accumulation(data, tmp_path, mode, extra):
    model = tiny_llama_dir(True)
    single = tmp_path / "single"
    r = run_cli(args(model, data, single, "train.max_steps=4", *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / mode
    r = run_cli(args(model, data, two, "train.max_steps=4", f"train.parallel={mode}", *extra), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(two) == pytest.approx(losses(single), rel=1e-5, abs=1e-6)
    e1, e2 = (read_metrics(d / "metrics.jsonl", "eval")[-1]["val_loss"] for d in (single, two))
    assert e2 == pytest.approx(e1, rel=1e-5)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["parallel"] == mode
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(single / "model", dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(two / "model", dtype=torch.float32).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_activation_checkpointing_gives_the_same_losses(data, tmp_path):
    model = tiny_llama_dir(True)
    plain = finetune(load_finetune_config(None, args(model, data, tmp_path / "p", "train.max_steps=3")))
    ckpt = finetune(load_finetune_config(None, args(model, data, tmp_path / "c", "train.max_steps=3",
                                                    "model.activation_checkpointing=true")))
    assert losses(tmp_path / "c") == pytest.approx(losses(tmp_path / "p"), rel=1e-6)
    assert ckpt["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)


@pytest.mark.slow
def test_smollm2_lora_two_steps_and_the_output_answers(tmp_path):
    """The real offline model (converted once into the cache, ~70 s the first time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = finetune(load_finetune_config(ROOT / "configs/finetune-cpu.yaml", [
        f"out_dir={tmp_path / 'run'}", "train.max_steps=2", "data.max_examples=24", "data.val_examples=4",
        "train.eval_rows=2", "data.max_length=384"]))
    assert s["steps"] == 2 and s["self_check"]["packed_matches_separate"] and s["val_loss"] < 2.0
    tok = AutoTokenizer.from_pretrained(s["output"])
    lm = AutoModelForCausalLM.from_pretrained(s["output"], dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_compile_gives_the_same_losses(data, tmp_path):
    model = tiny_llama_dir(True)
    plain = finetune(load_finetune_config(None, args(model, data, tmp_path / "p", "train.max_steps=3")))
    comp = finetune(load_finetune_config(None, args(model, data, tmp_path / "c", "train.max_steps=3",
                                                    "model.compile=true")))
    assert losses(tmp_path / "c") == pytest.approx(losses(tmp_path / "p"), rel=1e-4)
    assert comp["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-4)
