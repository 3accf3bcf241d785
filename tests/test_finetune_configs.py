"""The shipped fine-tune configs: they load, and their geometry fits the hardware they name."""
from pathlib import Path

import pytest
import torch

from scalelab.finetune.config import load_finetune_config
from scalelab.finetune.model import SFTModel, decoder_layers

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_config_is_lora_on_smollm2_and_gsm8k():
    cfg = load_finetune_config(ROOT / "configs/finetune-cpu.yaml")
    assert cfg.model.hf == "builtin:smollm2-135m-instruct" and cfg.model.lora
    assert cfg.data.source == "builtin:gsm8k" and cfg.data.packing
    assert cfg.train.batch_rows % cfg.train.micro_batch == 0 and cfg.train.max_steps <= 30


def test_7b_config_is_an_8_gpu_fsdp_job_whose_names_fit_the_architecture():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = load_finetune_config(ROOT / "configs/finetune-7b.yaml")
    t, m, d = cfg.train, cfg.model, cfg.data
    assert t.parallel == "fsdp" and m.dtype == "bf16" and m.activation_checkpointing and not m.lora
    assert t.batch_rows % (t.micro_batch * 8) == 0  # 8 processes, whole accumulation steps
    assert d.format == "alpaca" and d.source.startswith("hf:") and d.max_length == 2048
    assert t.batch_rows // (t.micro_batch * 8) == 2
    # the same architecture (Qwen2), tiny and random: FSDP's units and LoRA's names exist
    tiny = AutoConfig.for_model("qwen2", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2)
    lm = AutoModelForCausalLM.from_config(tiny)
    assert len(decoder_layers(lm)) == 2
    names = {n.rsplit(".", 1)[-1] for n, mod in lm.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert set(m.lora_target_modules) <= names
    # the split head matches the model's own logits for this architecture
    from scalelab.finetune.model import self_check

    assert self_check(SFTModel(lm), torch.device("cpu"), True, 128) == {
        "packed_matches_separate": True, "split_head": True, "block_mask": True}


@pytest.mark.parametrize("name", ["finetune-cpu.yaml", "finetune-7b.yaml"])
def test_shipped_configs_print(name, capsys):
    from scalelab.cli import main

    assert main(["finetune", str(ROOT / "configs" / name), "--print-config"]) == 0
    assert "out_dir" in capsys.readouterr().out
