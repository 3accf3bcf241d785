"""`scalelab golf CONFIG [key=value ...]`: train, quantize and compress under a byte budget."""
from __future__ import annotations

from scalelab.cli.common import add_config_arguments, command, config_words, output_flags
from scalelab.io import emit_json

EPILOG = """\
The config is a training config (out_dir, seed, data, model, train) plus a `golf:` section.
Overrides: golf.key=value patches the golf section, other keys the training config.

golf keys and defaults:
  golf.budget_bytes = 16000000     code + compressed weights must fit (error otherwise)
  golf.weights = auto              ema | raw | auto (ema when train.ema_decay is set)
  golf.quant = int8                int8 | int7 | int6 | int5 | int4 | fp16 for tensors > keep_float_numel
  golf.quant_overrides = {}        {fnmatch pattern: scheme}, e.g. {"tok_emb.weight": int8}
  golf.quant_method = rtn          rtn (round to nearest) | gptq (Hessian-aware, calibrated on training tokens)
  golf.gptq_calib_tokens = 65536   gptq: training tokens for the Hessians;  golf.gptq_damp = 0.01
  golf.clip = mse                  per-row clip: max | quantile | mse
  golf.clip_quantile = 0.9999984   for clip=quantile
  golf.keep_float_numel = 4096     tensors this small stay fp16
  golf.compressors = [zlib, lzma, zstd]   the smallest output wins
  golf.sliding_stride = null       e.g. 64: also report sliding-window val_bpb (and its time)
  golf.eval_batch = 16             windows per forward pass in the final evaluations
  golf.count_tokenizer = false     count the tokenizer file in the artifact
  golf.precheck = true             refuse hopeless sizes before training

examples:
  scalelab golf configs/golf-cpu-best.yaml               the CPU default (the challenge's regime)
  scalelab golf configs/golf-8xh100.yaml --estimate      artifact size before training
  scalelab golf configs/golf-cpu.yaml train.max_time_s=60 golf.quant=int6 out_dir=runs/golf-try   (the "speed" setting)
  torchrun --standalone --nproc_per_node 8 -m scalelab golf configs/golf-8xh100.yaml
Results: OUT_DIR/golf.json, OUT_DIR/GOLF.md, OUT_DIR/artifact/ (see docs/GOLF.md).
"""


def cmd_golf(args) -> int:
    from scalelab.golf.config import load_golf_config, to_dict
    from scalelab.golf.run import run_golf

    run, golf = load_golf_config(*config_words(args, resume="true"))
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(run, golf), sort_keys=False))
        return 0
    if args.estimate:
        return _estimate(run, golf, args.json)
    result = run_golf(run, golf, device=args.device, progress=not args.quiet)
    if not result:
        return 0
    if args.json:
        emit_json(result, default=str)
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


def _estimate(run, golf, as_json: bool) -> int:
    """Print the artifact size the config will produce; exit status 2 when it exceeds the budget."""
    from scalelab.golf.estimate import estimate_for

    est = estimate_for(run, golf)
    if as_json:
        emit_json(est)
    else:
        rows = "; ".join(f"{k} {v['params']:,} params -> {v['bytes']:,} B" for k, v in est["by_scheme"].items())
        print(f"estimated artifact {est['total_bytes']:,} bytes = code {est['code_bytes']:,} + weights "
              f"{est['weights_bytes']:,} ({est['params']:,} params, {est['bits_per_param']} bits/param: {rows}); "
              f"budget {est['budget_bytes']:,}: {'fits' if est['fits'] else 'OVER'} "
              f"(headroom {est['headroom_bytes']:,}). Estimate: {est['method']}")
    return 0 if est["fits"] else 2


DESCRIPTION = ("Train under train.max_time_s, quantize and compress the weights, measure the artifact "
               "(code + compressed weights), reload the model from the compressed bytes alone and report val_bpb "
               "before and after. Exceeding golf.budget_bytes is an error (exit status 2).")


def register(subparsers) -> None:
    p = command(subparsers, cmd_golf, "golf",
                help="parameter golf: train under a time cap, quantize + compress under a byte budget, score val_bpb",
                description=DESCRIPTION, epilog=EPILOG)
    add_config_arguments(p, "golf YAML, e.g. configs/golf-cpu-best.yaml", "key=value overrides (golf.* or training keys)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help="continue (or re-quantize) the run in out_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--estimate", action="store_true",
                   help="print the artifact size this config will produce, without training (exit 2 if over budget)")
    output_flags(p, json="print golf.json (with --estimate: the estimate) as JSON", quiet="no [golf] progress lines")
