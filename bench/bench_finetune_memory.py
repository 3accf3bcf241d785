"""The fine-tune memory model of `scalelab suggest --finetune` (scalelab/tune/ft_memory.py)
against measured peaks on CPU.

Each case runs in a fresh subprocess: write a tiny random HF Llama of the shape, load it the
way the fine-tune job does (finetune/model.load_hf_model: transformers + peft LoRA,
gradient checkpointing, scalelab_varlen attention; SFTModel: the head on labelled positions
only), build the job's AdamW (foreach on CPU), run one warm-up step (AdamW creates its
states lazily), then measure one more step -- collate (packed rows, two examples each),
forward, backward, clip, step, zero_grad -- under
torch.distributed._tools.mem_tracker.MemTracker (every live tensor, model and optimizer
states included: the CPU analogue of torch.cuda.max_memory_allocated, and what the model
predicts; the same measurement as bench/bench_memory_model.py).

Precision: fp32 (the job's CPU default), and bf16 (model.dtype=bf16: full fine-tune under
autocast with fp32 weights, LoRA with a bf16 base and fp32 adapters under autocast -- the
job's GPU modes without FSDP, run on the CPU), and FSDP2 (finetune/model.parallelize:
fully_shard per decoder layer with the bf16 MixedPrecisionPolicy) in one gloo process --
its unsharded bf16 copies and bf16 activations are real; the division by G is not measured.

    .venv/bin/python bench/bench_finetune_memory.py               # table
    .venv/bin/python bench/bench_finetune_memory.py --json out.json --quick
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

MIB = 1024**2

# name: layers, hidden, heads, kv heads, intermediate, vocab, seq, micro-batch[, tied embeddings]
SHAPES = {
    "2x128 V1000": (2, 128, 4, 2, 352, 1000, 256, 4),
    "4x256 V4096": (4, 256, 8, 2, 704, 4096, 256, 4),
    "4x256 MHA V32000": (4, 256, 4, 4, 688, 32000, 128, 2),
    "6x384 V8192 s512": (6, 384, 6, 2, 1024, 8192, 512, 2),
    "4x256 tied V8192": (4, 256, 4, 2, 704, 8192, 256, 2, True),  # tied embeddings (SmolLM2)
}
# (lora, checkpointing, dtype, parallel)
CASES = [(False, False, "fp32", "none"), (False, True, "fp32", "none"), (True, False, "fp32", "none"),
         (True, True, "fp32", "none"), (False, False, "bf16", "none"), (True, False, "bf16", "none"),
         (False, False, "bf16", "fsdp"), (False, True, "bf16", "fsdp"), (True, False, "bf16", "fsdp")]
QUICK = [("4x256 V4096", c) for c in CASES[:4]]


def build_batch(vocab: int, seq: int, micro: int, seed: int = 0):
    """Packed rows of two examples each; a random half of each example's tokens are labelled."""
    import numpy as np

    from scalelab.finetune.data import Example, collate

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(micro):
        cut = int(rng.integers(seq // 4, 3 * seq // 4))
        row = []
        for n in (cut, seq - cut):
            trained = np.zeros(n, dtype=bool)
            trained[n // 2:] = True  # the response: the second half
            row.append(Example(rng.integers(3, vocab, n).astype(np.int64), trained))
        rows.append(row)
    return collate(rows, seq, 0, True)


class _NoHook:
    def remove(self) -> None:
        pass


def frozen_params_without_grad_hooks(mt) -> None:
    """MemTracker registers a gradient hook on every parameter of a module it enters and fails
    on frozen ones (a LoRA base; under FSDP2 they are fresh unsharded tensors each forward):
    mark those as hooked already. Their memory is still counted (as parameters)."""
    track = mt._track_module_params_and_buffers

    def wrapped(module, *args, **kwargs):
        for p in module.parameters():
            if not p.requires_grad and mt._param_to_grad_hook_handles.get(p) is None:
                mt._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
        return track(module, *args, **kwargs)

    mt._track_module_params_and_buffers = wrapped


def child(spec: dict) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from scalelab.finetune.config import FTModelConfig
    from scalelab.finetune.model import SFTModel, load_hf_model, resolve_attention

    torch.set_num_threads(1)
    L, h, H, kv, f, V, T, B = spec["shape"][:8]
    tied = bool(spec["shape"][8:] and spec["shape"][8])
    d = tempfile.mkdtemp(prefix="ftmem-")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=h, intermediate_size=f, num_hidden_layers=L,
                                 num_attention_heads=H, num_key_value_heads=kv, max_position_embeddings=4096,
                                 tie_word_embeddings=tied)).save_pretrained(d)
    m = FTModelConfig(hf=d, lora=spec["lora"], lora_rank=spec["rank"], activation_checkpointing=spec["ckpt"])
    bf16 = spec["dtype"] == "bf16"
    load_dtype = torch.bfloat16 if (bf16 and spec["lora"]) else torch.float32  # as FinetuneJob
    model = SFTModel(load_hf_model(m, d, load_dtype, resolve_attention("auto", torch.device("cpu"))))
    fsdp = spec.get("parallel") == "fsdp"
    if fsdp:  # the job's FSDP2 (fully_shard per decoder layer, bf16 MixedPrecisionPolicy) in one gloo process
        import torch.distributed as dist

        from scalelab.finetune.model import parallelize

        dist.init_process_group("gloo", init_method=f"file://{d}/pg", rank=0, world_size=1)
        model = parallelize(model, "fsdp", torch.device("cpu"), torch.bfloat16)
        bf16 = False  # the policy casts; no autocast under FSDP (as FinetuneJob)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    labelled = []

    def step(seed: int):
        b = build_batch(V, T, B, seed)
        labelled.append(float((b["labels"] != -100).float().mean()))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(b["input_ids"], b["position_ids"], b["attention_mask"], b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # AdamW states exist from here on
    from torch.distributed._tools.mem_tracker import MemTracker

    mt = MemTracker()
    frozen_params_without_grad_hooks(mt)
    mt.track_external(model, opt)
    with mt:
        step(1)
    snap = mt.get_tracker_snapshot("peak")
    return {"tensor_peak": int(next(iter(snap.values()))["Total"]), "labelled_fraction": labelled[-1],
            "params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable)}


def estimate(spec: dict, labelled: float) -> dict:
    from scalelab.tune.ft_memory import FTMemorySetup, estimate_ft_memory
    from scalelab.tune.ft_shape import HFShape

    L, h, H, kv, f, V, T, B = spec["shape"][:8]
    shape = HFShape(n_layer=L, hidden=h, n_head=H, n_kv_head=kv, intermediate=f, vocab=V,
                    tie_embeddings=bool(spec["shape"][8:] and spec["shape"][8]))
    setup = FTMemorySetup(micro_batch=B, seq_len=T, parallel=spec.get("parallel", "none"), dtype=spec["dtype"],
                          lora=spec["lora"],
                          lora_rank=spec["rank"], checkpointing=spec["ckpt"], optimizer_temporaries=True,
                          labelled_fraction=labelled)
    return estimate_ft_memory(shape, setup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--quick", action="store_true", help="one shape, fp32 only (4 cases)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16; targets q, k, v, o)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    todo = QUICK if args.quick else [(name, c) for name in SHAPES for c in CASES]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    print(f"{'shape':18s} {'mode':21s} {'seq x b':>8s} {'phase':>20s} {'model MiB':>10s} {'measured MiB':>13s} "
          f"{'error':>7s}")
    rows = []
    for name, (lora, ckpt, dtype, parallel) in todo:
        spec = {"shape": SHAPES[name], "lora": lora, "ckpt": ckpt, "dtype": dtype, "rank": args.rank,
                "parallel": parallel}
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                             env=env, timeout=1800)
        mode = f"{'lora' + str(args.rank) if lora else 'full'} {dtype}{' fsdp' if parallel == 'fsdp' else ''}" \
               f"{' ckpt' if ckpt else ''}"
        if res.returncode != 0:
            err = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode
            print(f"{name:18s} {mode:21s} failed: {err}")
            continue
        meas = json.loads(res.stdout.strip().splitlines()[-1])
        est = estimate(spec, meas["labelled_fraction"])
        pred, got = est["peak_bytes"], meas["tensor_peak"]
        err = (pred - got) / got
        rows.append({"shape": name, "mode": mode, **spec, **meas, "model_bytes": pred, "phase": est["peak_phase"],
                     "error": err})
        T, B = SHAPES[name][6:8]
        print(f"{name:18s} {mode:21s} {f'{T}x{B}':>8s} {est['peak_phase']:>20s} {pred / MIB:10.1f} {got / MIB:13.1f} "
              f"{100 * err:+6.1f}%", flush=True)
    errs = [abs(r["error"]) for r in rows]
    summary = {}
    if errs:
        summary = {"abs_err_mean": sum(errs) / len(errs), "abs_err_max": max(errs), "cases": len(errs)}
        print(f"model vs live-tensor peak: mean |error| {100 * summary['abs_err_mean']:.1f}%, "
              f"max {100 * summary['abs_err_max']:.1f}% over {len(errs)} cases")
    if args.json:
        import torch
        import transformers

        with open(args.json, "w") as f:
            json.dump({"rows": rows, "summary": summary, "torch": torch.__version__,
                       "transformers": transformers.__version__, "machine": platform.processor() or platform.machine()},
                      f, indent=2)


if __name__ == "__main__":
    main()
