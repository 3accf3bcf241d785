"""`scalelab data` and `scalelab train`: the run's data and its training."""
from __future__ import annotations

from scalelab.cli.common import add_config_arguments, command, keys_epilog, load_run_config, output_flags
from scalelab.io import emit_json


def cmd_data(args) -> int:
    from scalelab.data.prepare import prepare_data

    cfg = load_run_config(args)
    meta = prepare_data(cfg.data, progress=not args.quiet, overwrite=args.overwrite)
    if args.json:
        emit_json(meta)
    else:
        splits = meta.get("splits", {})
        for name, s in splits.items():
            print(f"{name}: {s.get('docs', '?'):,} docs, {s.get('tokens', '?'):,} tokens, "
                  f"{s.get('bytes', '?'):,} bytes")
        print(f"wrote {cfg.data.dir}")
    return 0


def _train_resume_override(args) -> None:
    """--resume [CHECKPOINT] as a train.resume override. argparse hands `--resume CONFIG`
    or `--resume key=value` the next word, so those go back where they belong."""
    value, args.resume = args.resume, False
    if value is None:
        return
    if value.endswith((".yaml", ".yml")):  # `--resume CONFIG [overrides]`
        if args.config is not None:
            args.overrides.insert(0, args.config)
        args.config, value = value, "last"
    elif "=" in value:  # `CONFIG [overrides] --resume key=value ...`: after those, before later ones
        args.overrides.insert(getattr(args, "n_early_overrides", len(args.overrides)), value)
        value = "last"
    args.overrides.append(f"train.resume={value}")


def cmd_train(args) -> int:
    from scalelab.eval.train_hooks import training_hooks
    from scalelab.train.trainer import train

    _train_resume_override(args)
    cfg = load_run_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    summary = train(cfg, device=args.device, hooks=training_hooks())
    if summary:
        bpb = f", val bpb {summary['val_bpb']:.4f}" if summary.get("val_bpb") is not None else ""
        print(f"val loss {summary['val_loss']:.4f} (ppl {summary['val_ppl']:.2f}{bpb}) after "
              f"{summary['steps']} steps / {summary['tokens']:,} tokens -> {summary['out_dir']}")
    return 0


def register(sub) -> None:
    from scalelab.config import RunConfig

    epilog = keys_epilog(RunConfig)
    p = command(sub, cmd_data, "data", help="tokenize a corpus into train/val shards (+ tokenizer, meta.json)",
                description="Read the corpus named by data.source, train or load the tokenizer, and "
                "write llm.c-format shards and meta.json into data.dir.",
                epilog=epilog)
    add_config_arguments(p, "YAML config (only its data section is used)")
    p.add_argument("--overwrite", action="store_true", help="replace a data dir prepared differently")
    output_flags(p, json="print meta.json", quiet="no progress bar")

    p = command(sub, cmd_train, "train", help="train (or resume) a model from a YAML config",
                description="Train a GPT from a YAML config. Runs on one process, or on N with "
                "`torchrun --nproc_per_node N -m scalelab train CONFIG`. Prepares the data first "
                "if data.dir has no shards yet.",
                epilog=epilog)
    add_config_arguments(p, "YAML config, e.g. configs/cpu-tiny.yaml")
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="CHECKPOINT",
                   help="continue out_dir's run from its newest valid checkpoint (skipping a missing or "
                   "corrupt one, and saying so), or from CHECKPOINT, e.g. --resume step_000025; an error "
                   "when out_dir holds no run (train.resume=last / =step_000025; train.resume=true also "
                   "starts a run that is not there yet)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
