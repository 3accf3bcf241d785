"""`scalelab fit`, `scalelab plan` and `scalelab study`: scaling laws, plans and studies."""
from __future__ import annotations

from scalelab.cli.common import add_config_arguments, command, output_flags
from scalelab.errors import ConfigError
from scalelab.io import emit_json


def cmd_fit(args) -> int:
    from scalelab.scaling.fit import format_fit, run_fit
    from scalelab.scaling.plan import parse_size

    predict = []
    for item in args.predict or []:
        parts = item.split(",")
        if len(parts) > 2 or not parts[0].strip():
            raise ConfigError(f"--predict {item!r}: give N or N,D (e.g. --predict 1e9,2e10 or --predict 1B,20B)")
        try:
            values = [parse_size(p) for p in parts]
        except ConfigError:
            raise ConfigError(f"--predict {item!r}: cannot read a number; give N or N,D "
                              "(e.g. --predict 1e9,2e10 or --predict 1B,20B)") from None
        predict.append((values[0], values[1] if len(values) > 1 else None))
    if args.boot < 0:
        raise ConfigError(f"--boot must be >= 0 (0 = no confidence intervals), got {args.boot}")
    result = run_fit(args.input, law=args.law, fix_E=args.fix_E, n_boot=args.boot, seed=args.seed,
                     predict=predict or None, resample=args.resample, drop_invalid=args.drop_invalid,
                     predict_compute=[float(c) for c in args.predict_compute or []] or None,
                     holdout=args.holdout)
    if args.json:
        emit_json(result)
    else:
        print(format_fit(result))
    return 0


def _plan_study(args) -> int:
    """`scalelab plan --study CONFIG`: the grid a study config would train, before any work."""
    from scalelab.scaling.plan import format_plan
    from scalelab.scaling.study import load_study_config, make_plan, planned_vocab

    cfg = load_study_config(args.study)
    plan = make_plan(cfg, planned_vocab(cfg), args.data_tokens)
    if args.json:
        emit_json(plan)
    else:
        print(format_plan(plan))
        print(f"{len(plan['models'])} configurations x {len(cfg.seeds)} seeds = "
              f"{len(plan['models']) * len(cfg.seeds)} runs, {plan['total_flops']:.3e} FLOPs (6ND) in all")
    return 0


def cmd_plan(args) -> int:
    from scalelab.scaling.plan import (PlanRules, attach_gpu_hours, format_plan, parse_size, plan_family,
                                       plan_isoflop, write_configs)

    if args.study:
        return _plan_study(args)
    count = args.count or ("total" if args.budgets else "non_embedding")
    rules = PlanRules(vocab_size=args.vocab_size, seq_len=args.seq_len, tokens_per_param=args.tokens_per_param,
                      count=count, lr_rule=args.lr_rule, lr=args.lr, batch_tokens=args.batch_tokens,
                      max_micro_batch=args.max_micro_batch, devices=args.devices, warmup_frac=args.warmup_frac,
                      aspect_ratio=args.aspect_ratio, head_dim=args.head_dim, multiple_of=args.multiple_of,
                      spacing=args.spacing, data_tokens=args.data_tokens, n_layer=args.n_layer,
                      width_step=args.width_step)
    if args.budgets:
        if args.sizes or args.compute:
            raise ConfigError("--budgets (an IsoFLOP grid) replaces --sizes / --compute; give one of them")
        try:
            budgets = [float(parse_size(c)) for c in args.budgets.split(",")]
        except ConfigError:
            raise ConfigError(f"--budgets {args.budgets!r}: give FLOP counts, e.g. --budgets 1e18,3e18,1e19") from None
        plan = plan_isoflop(rules, budgets, sizes_per_budget=args.sizes_per_budget, spread=args.spread,
                            prior_tokens_per_param=args.tokens_per_param)
    else:
        sizes = [parse_size(s) for s in args.sizes.split(",")] if args.sizes else None
        plan = plan_family(rules, sizes=sizes, compute=args.compute, models=args.models)
    if args.mfu is not None or args.peak_tflops is not None:
        if not (0 < (args.mfu or 0.4) <= 1) or not ((args.peak_tflops or 989.0) > 0):
            raise ConfigError("--mfu must be in (0, 1] and --peak-tflops > 0")
        attach_gpu_hours(plan, (args.peak_tflops or 989.0) * 1e12, args.mfu or 0.4, seeds=args.seeds)
    if args.write_configs:
        import yaml

        base = (yaml.safe_load(open(args.base)) or {}) if args.base else {}
        paths = write_configs(plan, base, args.write_configs, runs_dir=args.runs_dir)
        plan["configs"] = [str(p) for p in paths]
    if args.json:
        emit_json(plan)
    else:
        print(format_plan(plan))
        for path in plan.get("configs", []):
            print(f"wrote {path}")
    return 0


def cmd_study(args) -> int:
    from scalelab.report.study_note import write_report
    from scalelab.scaling.study import format_study, run_study

    results = run_study(args.config, args.overrides, progress=not args.quiet,
                        report=None if args.no_report else write_report)
    if args.json:
        emit_json({k: results[k] for k in ("sizes", "fits", "checks")})
    else:
        print(format_study(results))
        print(f"results: {results['config']['out_dir']}/results.json")
        if "report" in results:
            print(f"note: {results['report'].get('note')}")
    return 0



def register(sub) -> None:
    p = command(sub, cmd_fit, "fit", help="fit a scaling law (Kaplan L(N), Chinchilla L(N,D), IsoFLOP) with bootstrap CIs",
                description="Fit a scaling law to a study's results.json or a CSV with columns "
                "params,tokens,loss (optional seed, flops).")
    p.add_argument("input", help="results.json of a study, or a CSV file")
    p.add_argument("--law", choices=["chinchilla", "kaplan", "isoflop"], default="chinchilla",
                   help="chinchilla: L = E + A/N^alpha + B/D^beta (default); kaplan: L = E + A*N^-alpha; "
                   "isoflop: Hoffmann et al. approach 2")
    p.add_argument("--fix-E", dest="fix_E", type=float, default=None,
                   help="fix the irreducible loss E (e.g. 0 for Kaplan's pure power law)")
    p.add_argument("--boot", type=int, default=200, help="bootstrap resamples for the CIs (default 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--predict", action="append", metavar="N[,D]",
                   help="predict loss (with CI) at N params and D tokens; repeatable")
    p.add_argument("--predict-compute", action="append", metavar="C", type=float,
                   help="compute-optimal N, D and loss (with CIs) at a FLOP budget C; repeatable (chinchilla)")
    p.add_argument("--resample", choices=["points", "size", "seed"], default="points",
                   help="bootstrap unit: single runs (default), whole model sizes, or whole seeds")
    p.add_argument("--holdout", action="store_true",
                   help="also fit on all but the largest compute budget (or size) and predict the held-out runs "
                   "with prediction intervals: the measured extrapolation error")
    p.add_argument("--drop-invalid", action="store_true",
                   help="drop runs with missing/NaN/non-positive values (a warning lists them) instead of failing")
    output_flags(p, json="print the result as JSON")

    p = command(sub, cmd_plan, "plan", help="plan a compute-optimal model family from sizes or a compute budget",
                description="Shapes, tokens (20x params), FLOPs, lr and batch (DeepSeek LLM rules) and "
                "warmup for a model family. Give --sizes or --compute.")
    p.add_argument("--sizes", help="comma-separated non-embedding sizes, e.g. 10M,50M,200M,600M")
    p.add_argument("--compute", type=float, help="total training FLOPs of the family, e.g. 1e19")
    p.add_argument("--models", type=int, default=4, help="models in a --compute family (default 4)")
    p.add_argument("--spacing", type=float, default=4.0, help="size ratio between neighbours with --compute")
    p.add_argument("--tokens-per-param", type=float, default=20.0, help="D/N (default 20, Chinchilla)")
    p.add_argument("--study", metavar="CONFIG", help="print the plan of a study config (its grid, compute per "
                   "budget and GPU-hours) without training anything")
    p.add_argument("--budgets", help="an IsoFLOP grid (Hoffmann et al. approach 2): comma-separated compute "
                   "budgets in 6ND FLOPs, e.g. 1e18,3e18,1e19; each gets --sizes-per-budget sizes around the "
                   "prior optimum D = --tokens-per-param x N, trained on D = C / 6N")
    p.add_argument("--sizes-per-budget", type=int, default=5, help="model sizes per IsoFLOP budget (default 5)")
    p.add_argument("--spread", type=float, default=4.0,
                   help="IsoFLOP sizes from N*/spread to N*·spread around the prior optimum N* (default 4)")
    p.add_argument("--n-layer", type=int, help="fixed depth: one shape family whose widths vary")
    p.add_argument("--width-step", type=int, default=8, help="with --n-layer: widths are multiples of this")
    p.add_argument("--peak-tflops", type=float,
                   help="print GPU-hours at this peak (default 989, H100 bf16 dense) and --mfu")
    p.add_argument("--mfu", type=float, help="sustained model-FLOPs utilization for GPU-hours (default 0.4)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per configuration (GPU-hours for all seeds)")
    p.add_argument("--count", choices=["non_embedding", "total"], default=None,
                   help="which parameter count N means (default non_embedding, Kaplan; total with --budgets, "
                   "as Chinchilla counts it)")
    p.add_argument("--vocab-size", type=int, default=50257, help="vocabulary (default 50257, GPT-2)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--lr-rule", choices=["deepseek", "fixed"], default="deepseek",
                   help="deepseek: lr=0.3118*C^-0.125, batch=0.2920*C^0.3271 tokens; fixed: use --lr/--batch-tokens")
    p.add_argument("--lr", type=float, help="override the peak learning rate")
    p.add_argument("--batch-tokens", type=int, help="override the batch size in tokens")
    p.add_argument("--max-micro-batch", type=int, default=16, help="sequences per device per micro-step")
    p.add_argument("--devices", type=int, default=1, help="data-parallel processes per run (batch splits over them)")
    p.add_argument("--warmup-frac", type=float, default=0.02, help="warmup as a fraction of steps")
    p.add_argument("--aspect-ratio", type=float, default=64.0, help="d_model / n_layer target")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--multiple-of", type=int, default=64, help="FFN width rounding")
    p.add_argument("--data-tokens", type=int, help="tokens in the training corpus (to report epochs)")
    p.add_argument("--write-configs", metavar="DIR", help="write one training config per model into DIR")
    p.add_argument("--base", help="YAML config whose data/train sections the written configs start from")
    p.add_argument("--runs-dir", default="runs/family", help="out_dir prefix of the written configs")
    output_flags(p, json="print the plan as JSON")

    p = command(sub, cmd_study, "study", help="run a scaling study: plan, train every size x seed, fit, plot, note",
                description="Plan a compute-optimal family, train each (size, seed) (skipping finished runs, "
                "resuming interrupted ones), fit scaling laws with bootstrap CIs, plot, and write NOTE.md. "
                "Everything lands in the study's out_dir.")
    add_config_arguments(p, "study YAML, e.g. configs/study-cpu.yaml", "key=value overrides of the study YAML "
                         "(e.g. seeds=[0,1,2] out_dir=runs/s2 base.train.threads=1)", optional=False)
    p.add_argument("--no-report", action="store_true", help="skip the figures and NOTE.md")
    output_flags(p, json="print sizes, fits and checks as JSON", quiet="")
