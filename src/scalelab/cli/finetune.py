"""`scalelab finetune CONFIG [key=value ...]`: supervised fine-tuning of a Hugging Face causal LM."""
from __future__ import annotations

from scalelab.cli.common import add_config_arguments, command, config_words, keys_epilog

EPILOG_HEAD = """examples:
  scalelab finetune configs/finetune-cpu.yaml                  # SmolLM2-135M-Instruct + LoRA on GSM8K, CPU
  scalelab finetune configs/finetune-cpu.yaml train.max_steps=5 out_dir=runs/ft-try
  scalelab finetune model.hf=path/to/hf_model data.source=train.jsonl model.lora=false
  torchrun --standalone --nproc_per_node 8 -m scalelab finetune configs/finetune-7b.yaml
  scalelab finetune configs/finetune-cpu.yaml --resume        # continue out_dir's run
The result is OUT_DIR/model (save_pretrained: loadable by transformers; `scalelab eval hf:OUT_DIR/model`).
See docs/FINETUNE.md for the data formats, the fallback chat template and packing.

config keys and defaults:
"""


def register(subparsers) -> None:
    from scalelab.finetune.config import FinetuneConfig

    p = command(subparsers, cmd_finetune, "finetune",
                help="supervised fine-tuning (full or LoRA) of any Hugging Face causal LM",
                description="SFT of a Hugging Face causal LM on Alpaca-style or chat data: the model's chat template, "
                "loss on response tokens only, packing with per-example attention, held-out eval loss, DDP/FSDP2 "
                "under torchrun, exact resume, and a save_pretrained result.",
                epilog=keys_epilog(FinetuneConfig, EPILOG_HEAD))
    add_config_arguments(p, "YAML config, e.g. configs/finetune-cpu.yaml",
                         "dotted key=value overrides, e.g. train.lr=1e-4 model.lora_rank=8")
    p.add_argument("--resume", action="store_true", help="continue out_dir's run from its newest valid checkpoint "
                   "(= train.resume=last)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def cmd_finetune(args) -> int:
    from scalelab.finetune.config import load_finetune_config

    cfg = load_finetune_config(*config_words(args, resume="last"))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from scalelab.finetune.job import finetune

    summary = finetune(cfg, device=args.device)
    val = f", held-out loss {summary['val_loss']:.4f}" if summary.get("val_loss") is not None else ""
    tok_s = f", {summary['tok_s']:,.0f} tok/s" if summary.get("tok_s") else ""
    print(f"fine-tuned {summary['steps']} steps / {summary['tokens']:,} tokens{tok_s}{val} -> {summary['output']}")
    return 0
