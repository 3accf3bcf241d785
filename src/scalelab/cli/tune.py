"""`scalelab tune` and `scalelab suggest`: argument parsing only; the work is in tune/search.py / suggest.py."""
from __future__ import annotations

import argparse

from scalelab.cli.common import add_config_arguments, command, output_flags
from scalelab.io import emit_json


def cmd_tune(args) -> int:
    from scalelab.tune.search import check_result, load_tune_config, run_tune

    overrides = list(args.overrides)
    for key, value in (("trials", args.trials), ("budget_s", args.budget_s), ("budget_gpu_hours", args.budget_gpu_hours),
                       ("out_dir", args.out), ("sampler", args.sampler), ("pruner", args.pruner),
                       ("device", args.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_tune_config(args.config, overrides)
    result = run_tune(cfg, progress=not (args.quiet or args.json))
    if args.json:
        slim = {k: v for k, v in result.items() if k != "trials"}
        slim["trials"] = [{k: v for k, v in t.items() if k not in ("step_times", "intermediate_values")}
                          for t in result["trials"]]
        emit_json(slim, default=str)
        check_result(result)  # nothing completed: exit non-zero with the reasons
        return 0
    w = result["winner"]
    out = result["out_dir"]
    if w:
        val = (w.get("remeasured") or {})
        print(f"best: trial #{w['trial']}, {w['value']:,.0f} tokens/s/proc"
              + (f" [{val['lo']:,.0f}, {val['hi']:,.0f}]" if val.get("lo") is not None else "")
              + f" ({result['winner_basis']})")
        g = result.get("gain_over_default")
        if g and g.get("ratio") not in (None, 1.0):
            print(f"gain over default: {100 * (g['ratio'] - 1):+.1f}% [{100 * (g['lo'] - 1):+.1f}%, "
                  f"{100 * (g['hi'] - 1):+.1f}%]")
        c = result.get("comparison")
        if c:
            print("top configs " + ("distinguishable" if c["distinguishable"] else "NOT distinguishable")
                  + f" (Welch p = {c['p_value']:.3g})")
        print(f"run it: {w['command']}")
    print(f"wrote {out}/tune.json, {out}/RECIPE.md, {out}/plots/")
    check_result(result)  # nothing completed: exit non-zero with the reasons
    return 0


def cmd_suggest(args) -> int:
    from scalelab.errors import ConfigError

    if args.finetune:
        from scalelab.tune.suggest_finetune import DEFAULT_ROWS, DEFAULT_SEQ, format_ft_suggestion, suggest_finetune

        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
        if args.dtype != "bf16":
            raise ConfigError("suggest --finetune models the fine-tune job's GPU precision (bf16 compute, fp32 "
                              "master weights / adapters); drop --dtype")
        seq = args.seq or DEFAULT_SEQ
        rows = args.batch_rows
        if args.batch_tokens is not None:
            if rows is not None:
                raise ConfigError("give --batch-rows or --batch-tokens, not both")
            rows = max(1, round(args.batch_tokens / seq))  # rows of --seq tokens
        result = suggest_finetune(
            params=args.params, gpus=args.gpus, gpu_mem_gib=args.gpu_mem, tokens=args.tokens,
            seq_len=seq, lora_rank=args.lora_rank, lora_targets=targets,
            model_config=args.model_config, vocab_size=args.vocab_size, batch_rows=rows or DEFAULT_ROWS,
            labelled_fraction=args.labelled_fraction, gpu_name=args.gpu, peak_tflops=args.peak_tflops, mfu=args.mfu,
            calibrate=args.calibrate, max_micro_batch=args.max_micro_batch)
        fmt = format_ft_suggestion
    else:
        from scalelab.tune.suggest import format_suggestion, suggest

        for flag, value in (("--lora-rank", args.lora_rank), ("--model-config", args.model_config),
                            ("--batch-rows", args.batch_rows)):
            if value is not None:
                raise ConfigError(f"{flag} is a fine-tuning option: add --finetune")
        if args.params is None:
            raise ConfigError("suggest needs --params (non-embedding parameters, e.g. 124M)")
        result = suggest(params=args.params, gpus=args.gpus, gpu_mem_gib=args.gpu_mem, tokens=args.tokens,
                         seq_len=args.seq or 1024, vocab_size=args.vocab_size or 50257, gpu_name=args.gpu,
                         peak_tflops=args.peak_tflops, mfu=args.mfu, calibrate=args.calibrate,
                         global_batch_tokens=args.batch_tokens, max_micro_batch=args.max_micro_batch,
                         dtype=args.dtype)
        fmt = format_suggestion
    if args.json:
        emit_json(result, default=str)
    else:
        print(fmt(result))
    return 0


def register(subparsers) -> None:
    p = command(subparsers, cmd_tune, "tune",
                help="search throughput knobs with Optuna (subprocess trials, CIs, pruning, SQLite, recipe)",
                description="Search the fastest training configuration: each trial runs the base training config in a "
                "fresh process (torchrun for several processes) with one setting of the knobs, measures tokens/s per "
                "process after warm-up with a 95% CI, and reports windows to the pruner. The study lives in "
                "OUT/tune.db or storage: (resumable; several workers may share it, e.g. storage=journal:PATH; "
                "optuna-dashboard sqlite:///OUT/tune.db). The best configs are re-measured before the winner is declared. Writes OUT/tune.json, OUT/RECIPE.md and OUT/plots/.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "tune YAML: job (pretrain | finetune) + base config + space + budget (e.g. "
                         "configs/tune-cpu.yaml, configs/tune-finetune-cpu.yaml)", "key=value overrides of the tune "
                         "YAML (e.g. measure_steps=20 base.train.threads=1)", optional=False)
    p.add_argument("--trials", type=int, help="measured trials of the study in total, over all sessions, the default "
                   "configuration included (a resumed study runs only the missing ones: raise it to search further; "
                   "a configuration measured before is reused and not counted)")
    p.add_argument("--budget-s", dest="budget_s", type=float, help="wall-clock budget of the study in seconds")
    p.add_argument("--budget-gpu-hours", dest="budget_gpu_hours", type=float,
                   help="budget in GPU-hours (wall seconds = GPU-hours x 3600 / GPUs per trial)")
    p.add_argument("--out", help="output directory (default: out_dir of the tune YAML)")
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], help="Optuna sampler (default tpe)")
    p.add_argument("--pruner", choices=["percentile", "median", "none"], help="pruner of slow trials")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device of the trials (default: device of the "
                   "tune YAML, auto = cuda when a GPU is visible)")
    output_flags(p, json="print tune.json (without per-step times)", quiet="no per-trial progress lines")

    p = command(subparsers, cmd_suggest, "suggest",
                help="a starting config for N params on G GPUs: parallelism, micro-batch, memory, tokens/s, time",
                description="Suggest parallelism (DDP / FSDP), micro-batch, accumulation, activation checkpointing and loader "
                "workers for a model of N non-embedding parameters on G GPUs of a given memory, with the estimated memory "
                "per GPU, tokens/s per GPU and wall time -- each with the formula or measurement it came from.")
    p.add_argument("--params", help="non-embedding parameters, e.g. 124M, 1.3B (--finetune: 7e9 = Llama-3-8B's "
                   "shape unless --model-config names the real one)")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs")
    p.add_argument("--gpu-mem", dest="gpu_mem", type=float, required=True, help="memory per GPU in GiB, e.g. 80")
    p.add_argument("--tokens", required=True, help="training tokens, e.g. 2.5B")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default 1024; --finetune: packed rows "
                   "of 2048)")
    p.add_argument("--vocab-size", dest="vocab_size", type=int, default=None,
                   help="vocabulary (default 50257; --finetune: 128256, Llama 3)")
    p.add_argument("--gpu", default="H100", help="GPU name for the bf16 peak table (default H100)")
    p.add_argument("--peak-tflops", dest="peak_tflops", type=float, help="bf16 peak TFLOP/s (overrides --gpu)")
    p.add_argument("--mfu", type=float, default=None, help="assumed model FLOPs utilization (default 0.35)")
    p.add_argument("--calibrate", help="a tune.json whose measured throughput calibrates the MFU")
    p.add_argument("--batch-tokens", dest="batch_tokens", type=int, help="global batch in tokens (default: DeepSeek "
                   "rule 0.292 C^0.3271)")
    p.add_argument("--max-micro-batch", dest="max_micro_batch", type=int, default=64,
                   help="largest micro-batch considered (default 64)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="training precision (default bf16)")
    output_flags(p, json="print the suggestion as JSON")
    ft = p.add_argument_group("fine-tuning (scalelab finetune)")
    ft.add_argument("--finetune", action="store_true", help="suggest for `scalelab finetune` of an existing model: "
                    "full, or LoRA with --lora-rank")
    ft.add_argument("--lora-rank", dest="lora_rank", type=int, help="LoRA rank (default: a full fine-tune)")
    ft.add_argument("--lora-targets", dest="lora_targets", default="q_proj,k_proj,v_proj,o_proj",
                    help="comma-separated linear layers with adapters (default q_proj,k_proj,v_proj,o_proj)")
    ft.add_argument("--model-config", dest="model_config", help="a Hugging Face config.json (or model dir): layers, "
                    "hidden, heads, kv heads, intermediate, vocab of the real model")
    ft.add_argument("--batch-rows", dest="batch_rows", type=int, help="rows (packed sequences) per optimizer step "
                    "(default 64, as configs/finetune-7b.yaml)")
    ft.add_argument("--labelled-fraction", dest="labelled_fraction", type=float, default=1.0,
                    help="share of positions with a label (response tokens; the head runs on those only; default 1)")
