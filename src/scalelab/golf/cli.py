"""`scalelab golf CONFIG [key=value ...]`: registered into the main CLI by `register`.

`python -m scalelab.golf.cli CONFIG [key=value ...]` runs the same command on its own.
"""
from __future__ import annotations

import os

# As in scalelab.cli: passive OpenMP waiting, set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

EPILOG = """\
The config is a training config (out_dir, seed, data, model, train) plus a `golf:` section.
Overrides: golf.key=value patches the golf section, other keys the training config.

golf keys and defaults:
  golf.budget_bytes = 16000000     code + compressed weights must fit (error otherwise)
  golf.weights = auto              ema | raw | auto (ema when train.ema_decay is set)
  golf.quant = int8                int8 | int6 | int5 | int4 | fp16 for tensors > keep_float_numel
  golf.quant_overrides = {}        {fnmatch pattern: scheme}, e.g. {"tok_emb.weight": int8}
  golf.clip = mse                  per-row clip: max | quantile | mse
  golf.clip_quantile = 0.9999984   for clip=quantile
  golf.keep_float_numel = 4096     tensors this small stay fp16
  golf.compressors = [zlib, lzma, zstd]   the smallest output wins
  golf.sliding_stride = null       e.g. 64: also report sliding-window val_bpb (and its time)
  golf.eval_batch = 16             windows per forward pass in the final evaluations
  golf.count_tokenizer = false     count the tokenizer file in the artifact
  golf.precheck = true             refuse hopeless sizes before training

examples:
  scalelab golf configs/golf-cpu.yaml
  scalelab golf configs/golf-cpu.yaml train.max_time_s=60 golf.quant=int6 out_dir=runs/golf-try
  torchrun --standalone --nproc_per_node 8 -m scalelab golf configs/golf-8xh100.yaml
Results: OUT_DIR/golf.json, OUT_DIR/GOLF.md, OUT_DIR/artifact/ (see docs/GOLF.md).
"""


def cmd_golf(args) -> int:
    from scalelab.golf.config import load_golf_config, to_dict
    from scalelab.golf.run import run_golf

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    if args.resume:
        overrides.append("train.resume=true")
    run, golf = load_golf_config(config, overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(run, golf), sort_keys=False))
        return 0
    result = run_golf(run, golf, device=args.device, progress=not args.quiet)
    if not result:
        return 0
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    a, e = result["artifact"], result["eval"]
    sliding = ""
    if "post_sliding" in e:
        sliding = f", sliding (stride {e['post_sliding']['stride']}) {e['post_sliding']['val_bpb']:.4f}"
    print(f"val_bpb {e['post']['val_bpb']:.4f} after the round trip (before quantization {e['pre']['val_bpb']:.4f}"
          f"{sliding}); artifact {a['total_bytes']:,} bytes = code {a['code_bytes']:,} + weights "
          f"{a['weights_bytes']:,} ({result['compression']['chosen']}) <= budget {a['budget_bytes']:,} "
          f"-> {run.out_dir}/golf.json")
    return 0


DESCRIPTION = ("Train under train.max_time_s, quantize and compress the weights, measure the artifact "
               "(code + compressed weights), reload the model from the compressed bytes alone and report val_bpb "
               "before and after. Exceeding golf.budget_bytes is an error (exit status 2).")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="golf YAML, e.g. configs/golf-cpu.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides (golf.* or training keys)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue (or re-quantize) the run in out_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--json", action="store_true", help="print golf.json")
    p.add_argument("--quiet", action="store_true", help="no [golf] progress lines")
    p.set_defaults(func=cmd_golf)


def register(subparsers) -> None:
    """Add the `golf` subcommand to the main CLI's subparsers."""
    p = subparsers.add_parser(
        "golf", help="parameter golf: train under a time cap, quantize + compress under a byte budget, score val_bpb",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)


def main(argv: list[str] | None = None) -> int:
    from scalelab.cli import run_parsed

    parser = argparse.ArgumentParser(prog="scalelab golf", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return run_parsed(parser, parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
