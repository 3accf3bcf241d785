"""The release pipeline's commands: `scalelab lr-find`, `scalelab export`, `scalelab report`.

`scalelab report PATH` writes a training run's documents (report.run_report) when PATH is
a run dir (`is_run_dir(PATH)`), else a study's NOTE.md and figures (report.study_note).

    scalelab lr-find configs/100m.yaml [key=value ...] [--min-lr 1e-6 --max-lr 1 --steps 100 --out DIR]
    scalelab export runs/100m --hf export/100m [--which best|last] [--weights ema] [--push me/mini-gpt]
    scalelab report runs/100m        # MODEL_CARD.md BENCHMARK.md LOSS_CURVE.png SAMPLES.md WRITEUP.md (+ TRAJECTORY.png)
"""
from __future__ import annotations

from typing import Any

from scalelab.cli.common import add_config_arguments, command, load_run_config, output_flags
from scalelab.io import emit_json

LR_FIND_EPILOG = """The sweep uses the config's model, optimizer (AdamW groups, betas, weight decay),
batch (train.batch_tokens with accumulation), clipping, dtype and data, on a fresh model.
It writes lr_find.json and lr_find.png into --out (default OUT_DIR/lr_find, which
`scalelab report RUN` reads). Suggested LR: the smoothed-loss minimum / 10 (steepest
descent reported alongside). Overrides work as for `scalelab train`, e.g.
  scalelab lr-find configs/100m.yaml train.batch_tokens=131072 --steps 200
"""

EXPORT_EPILOG = """OUT is loadable with transformers alone:
  AutoModelForCausalLM.from_pretrained(OUT); AutoTokenizer.from_pretrained(OUT)
The export is verified before it is moved into place (same token ids, logits within 1e-4
in fp32). Only Llama-shaped checkpoints export (swiglu, no qk_norm, no logit_softcap).
--push needs huggingface_hub and a login (huggingface-cli login or HF_TOKEN).
"""


def register(subparsers) -> None:
    from scalelab.train.lr_find import LRFindSettings

    d = LRFindSettings()
    p = command(subparsers, cmd_lr_find, "lr-find",
                help="LR range test: exponential LR sweep on a fresh model, suggested LR, plot",
                description="Learning-rate range test (Smith 2017 / fastai): train a fresh copy of the config's model "
                "while the LR grows exponentially from --min-lr to --max-lr; smooth the loss (bias-corrected EMA), stop "
                "when it diverges, suggest an LR and plot loss vs LR.",
                epilog=LR_FIND_EPILOG)
    add_config_arguments(p, "YAML config, e.g. configs/100m.yaml", "dotted key=value overrides, as for scalelab train")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help=f"start of the sweep (default {d.min_lr:g})")
    p.add_argument("--max-lr", type=float, default=d.max_lr, help=f"end of the sweep (default {d.max_lr:g})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps of the sweep (default {d.steps})")
    p.add_argument("--beta", type=float, default=d.beta, help=f"EMA smoothing of the loss (default {d.beta})")
    p.add_argument("--stop-factor", type=float, default=d.stop_factor,
                   help=f"stop when the smoothed loss exceeds this x its best (default {d.stop_factor:g})")
    p.add_argument("--out", help="output directory (default OUT_DIR/lr_find)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    output_flags(p, json="print lr_find.json (without the per-step records)", quiet="no progress bar")

    p = command(subparsers, cmd_export, "export",
                help="export a checkpoint as a Hugging Face Llama model directory (+ tokenizer, card)",
                description="Write RUN's checkpoint as a transformers LlamaForCausalLM directory with its tokenizer, "
                "generation config and model card, verified against the checkpoint; optionally push it to the Hub.",
                epilog=EXPORT_EPILOG)
    p.add_argument("run", help="a run dir (with checkpoints/) or a checkpoint dir")
    p.add_argument("--hf", required=True, metavar="OUT", help="output directory (must not exist, see --overwrite)")
    p.add_argument("--which", choices=["last", "best"], default="last", help="which checkpoint of a run dir")
    p.add_argument("--weights", choices=["model", "ema"], default="model",
                   help="the trained weights, or their EMA (runs trained with train.ema_decay)")
    p.add_argument("--tokenizer", help="tokenizer to use when the run's data dir is elsewhere (identity checked)")
    p.add_argument("--push", metavar="REPO", help="also upload OUT to the Hugging Face Hub repo owner/name")
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (atomically)")
    p.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    output_flags(p, json="print scalelab_export.json")

    p = command(subparsers, cmd_report, "report",
                help="documents for a study (NOTE.md + figures) or a training run (model card, ...)",
                description="For a study dir: regenerate figures/ and NOTE.md from results.json. For a "
                "training run dir: write MODEL_CARD.md, BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md and "
                "WRITEUP.md from the run's files (and its eval/results.json when present).")
    p.add_argument("target", metavar="STUDY_OR_RUN_DIR")
    p.add_argument("--no-samples", action="store_true", help="run reports: skip generating SAMPLES.md")


def cmd_lr_find(args) -> int:
    from scalelab.train.lr_find import LRFindSettings, format_lr_find, lr_find

    cfg = load_run_config(args)
    settings = LRFindSettings(min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, beta=args.beta,
                              stop_factor=args.stop_factor)
    result = lr_find(cfg, settings, out_dir=args.out, device=args.device, progress=not (args.quiet or args.json))
    if args.json:
        emit_json({k: v for k, v in result.items() if k not in ("records", "config")})
    else:
        print(format_lr_find(result))
        print(f"wrote {result['json_path']} and {result['plot_path']}")
    return 0


def cmd_export(args) -> int:
    from scalelab.export import export_hf, format_export

    info = export_hf(args.run, args.hf, which=args.which, weights=args.weights, push=args.push,
                     private=args.private, verify=not args.no_verify, overwrite=args.overwrite,
                     tokenizer=args.tokenizer)
    emit_json(info) if args.json else print(format_export(info))
    return 0


def format_report_run(result: dict[str, Any]) -> str:
    lines = [f"wrote {path}" for path in result["files"].values()]
    if result.get("missing"):
        lines.append("not available (said so in the documents): " + ", ".join(result["missing"]))
    return "\n".join(lines)


def cmd_report(args) -> int:
    from scalelab.report.run_report import is_run_dir, report_run
    from scalelab.report.study_note import write_report

    if is_run_dir(args.target):  # a training run: model card, benchmark, loss curve, samples, write-up
        print(format_report_run(report_run(args.target, samples=not args.no_samples)))
        return 0
    out = write_report(args.target)
    print(f"wrote {out['note']}")
    for f in out["figures"]:
        print(f"wrote {f}")
    return 0
