"""scalelab's training step vs nanoGPT's, side by side in one process (CPU, fp32).

    .venv/bin/python bench/bench_vs_nanogpt.py --nanogpt /work/shared/anchors/nanoGPT --threads 1,2

nanoGPT's model.py (MIT) is imported from the given directory at run time, never copied
into the project. Both models get the same shape (default 6 x 384, 6 heads, vocab 1024,
seq 256; nanoGPT without biases, dropout 0, so both count the same matmul FLOPs) and the
same step: forward + loss, backward, clip_grad_norm_(1.0), AdamW step, zero_grad.
nanoGPT uses its own configure_optimizers, scalelab its build_optimizer.

For each thread count the two models alternate step by step (nano, ours, nano, ours...),
so load from other processes hits both alike; the ratio is ours / nano in tokens/s, from
the median step time of each. MFU divides 6 N + 12 L H Q T FLOPs per token
(model/sizing.py) by the fp32 matmul peak measured with the same threads in the same run
(before and after; the higher). 1-minute load is printed before and after.
--probe-each-step S adds an MFU against peaks probed right before and after each step,
which the drift of this kind of shared machine (±15% within seconds) requires for a
claim about a fraction of peak.

--trainer adds scalelab's real trainer (`scalelab train`'s `Trainer.run`: loader, lr
schedule, grad clip, metrics.jsonl, progress) on random-token shards of the same shape.
The other two steps run inside its `before_step` hook, so all three still alternate in
one process; a trainer step is the time from one hook's exit to the next hook's entry
(the whole loop iteration). The trainer's overhead is printed against the bare step.
--bf16 adds the bare scalelab step under CPU bf16 autocast (its loss is printed next to
fp32's: it must stay sane).

Freed host memory: every scalelab command keeps it for reuse (train/host_memory.py),
which nanoGPT does not. In one process the setting is the same for both sides
(--host-memory kept, the default, or default), so the ratio is the model and step code
alone. --as-shipped ROUNDS instead runs each side in its own process as its users get
it (nanoGPT's step with glibc's default, scalelab's trainer with the setting),
alternating, and prints the median tokens/s of each.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import torch

from scalelab.config import TrainConfig
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.model.sizing import flops_per_token
from scalelab.train.hardware import machine_load, measure_matmul_peak, num_threads
from scalelab.train.host_memory import keep_freed_host_memory
from scalelab.train.optim import build_optimizer


def load_nanogpt(directory: str):
    path = Path(directory) / "model.py"
    if not path.is_file():
        raise SystemExit(f"no nanoGPT model.py in {directory} (pass --nanogpt DIR)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nanogpt_model"] = mod  # its @dataclass needs the module registered
    spec.loader.exec_module(mod)
    return mod


def make_nano(mod, args):
    torch.manual_seed(0)
    cfg = mod.GPTConfig(block_size=args.seq_len, vocab_size=args.vocab, n_layer=args.n_layer,
                        n_head=args.n_head, n_embd=args.d_model, dropout=0.0, bias=False)
    model = mod.GPT(cfg)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-4, betas=(0.9, 0.95), device_type="cpu")

    def step(x, y):
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def nano_flops_per_token(model, args) -> float:
    """6 N + 12 L H Q T for nanoGPT, N its matmul weights (lm_head included, wpe not),
    the same accounting as scalelab's sizing.flops_per_token."""
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6.0 * n + 12.0 * args.n_layer * args.d_model * args.seq_len


def make_ours(args, bf16: bool = False):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab, seq_len=args.seq_len, n_layer=args.n_layer,
                    n_head=args.n_head, d_model=args.d_model)
    model = GPT(cfg)
    if args.rope == "halves":  # the rotate-half RoPE of other devices and dtypes, for an A/B
        for block in model.blocks:
            block.attn.full_rope = False
    opts = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.1), "cpu")

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        return loss

    return model, cfg, step


def random_shards(args, directory: Path) -> Path:
    """Public-style shards of random tokens (no meta.json: the trainer reads the headers)."""
    from scalelab.data.shards import shard_name, write_shard

    rng = np.random.default_rng(0)
    n = (args.warmup + args.steps + 4) * args.batch * (args.seq_len + 1)
    write_shard(directory / shard_name("train", 0), rng.integers(0, args.vocab, n), vocab_size=args.vocab)
    write_shard(directory / shard_name("val", 0), rng.integers(0, args.vocab, 4 * (args.seq_len + 1)),
                vocab_size=args.vocab)
    return directory


def run_in_trainer(args, threads: int, one_round) -> list[float]:
    """Trainer.run on the same shape; `one_round(i)` (the other sides' steps) runs in its
    before_step hook. Returns the trainer's step times after the warm-up (wall, CPU)."""
    from scalelab.config import load_config
    from scalelab.train.distributed import DistInfo
    from scalelab.train.hooks import TrainHooks
    from scalelab.train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-nanogpt-"))
    total = args.warmup + args.steps + 1  # the last step's interval ends in eval + checkpoint: not timed
    cfg = load_config(None, [
        f"data.dir={random_shards(args, tmp / 'data')}", f"out_dir={tmp / 'run'}", f"model.vocab_size={args.vocab}",
        f"model.seq_len={args.seq_len}", f"model.n_layer={args.n_layer}", f"model.n_head={args.n_head}",
        f"model.d_model={args.d_model}", f"train.micro_batch={args.batch}",
        f"train.batch_tokens={args.batch * args.seq_len}", f"train.max_steps={total}", "train.lr=1e-4",
        "train.weight_decay=0.1", "train.grad_clip=1.0", f"train.threads={threads}", "train.progress=false",
        f"train.eval_every={10 ** 6}", f"train.ckpt_every={10 ** 6}", f"train.eval_tokens={args.seq_len}",
        f"train.dtype={args.trainer_dtype}", "train.log_every=1"])
    times, cpu, state = [], [], {"exit": None}

    def before_step(raw_model, step, progress):
        entered = (time.perf_counter(), time.process_time())
        if state["exit"] is not None and step > args.warmup:
            times.append(entered[0] - state["exit"][0])
            cpu.append(entered[1] - state["exit"][1])
        if step < total - 1:
            one_round(step)
        state["exit"] = (time.perf_counter(), time.process_time())

    summary = Trainer(cfg, DistInfo(), TrainHooks(before_step=before_step)).run()
    print(f"trainer ({args.trainer_dtype}, {threads} threads): val loss {summary['val_loss']:.4f} after {total} steps")
    return times, cpu


def run(args, mod, threads: int) -> dict:
    with num_threads(threads):
        load0 = machine_load()[0]
        peak0 = measure_matmul_peak(torch.float32, seconds=args.peak_seconds)
        nano, nano_step = make_nano(mod, args)
        ours, cfg, our_step = make_ours(args)
        steps = {"nanoGPT": nano_step, "scalelab": our_step}
        if args.bf16:
            steps["scalelab bf16"] = make_ours(args, bf16=True)[2]
        if args.only:  # one side per process (--as-shipped's children)
            steps = {"nanoGPT": nano_step} if args.only == "nanoGPT" else {}
        times: dict[str, list[float]] = {name: [] for name in steps}
        cpu: dict[str, list[float]] = {name: [] for name in steps}  # process CPU time: at 1 thread, load-proof
        losses: dict[str, list[float]] = {name: [] for name in steps}
        # --probe-each-step: MFU of each step against the peak probed right before and after it
        local_mfu: dict[str, list[float]] = {name: [] for name in steps}
        probe = (lambda: measure_matmul_peak(torch.float32, seconds=args.probe_each_step)) if args.probe_each_step else None
        gen = torch.Generator().manual_seed(0)
        tokens = args.batch * args.seq_len
        # each side's own FLOPs per token (they differ where SwiGLU's width rounds up, e.g. d 64);
        # every side but nanoGPT (bare, bf16, trainer) runs scalelab's model
        nano_fpt, ours_fpt = nano_flops_per_token(nano, args), flops_per_token(cfg)
        fpt_of = {"nanoGPT": nano_fpt}

        def one_round(i: int) -> None:
            x = torch.randint(0, args.vocab, (args.batch, args.seq_len + 1), generator=gen)
            inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()  # nanoGPT .view()s targets
            names = list(steps)
            k = i % max(1, len(names))
            order = names[k:] + names[:k]  # no fixed first
            timed = i >= args.warmup
            for name in order:
                before = probe() if probe and timed else 0.0
                t0, c0 = time.perf_counter(), time.process_time()
                loss = steps[name](inp, tgt)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                losses[name].append(float(loss.detach()))
                if timed:
                    times[name].append(dt)
                    cpu[name].append(dc)
                    if probe:
                        local_mfu[name].append(tokens * fpt_of.get(name, ours_fpt) / dt / ((before + probe()) / 2))

        if args.trainer:
            times["trainer"], cpu["trainer"] = run_in_trainer(args, threads, one_round)
        else:
            for i in range(args.warmup + args.steps):
                one_round(i)
        peak1 = measure_matmul_peak(torch.float32, seconds=args.peak_seconds)
        load1 = machine_load()[0]
    peak = max(peak0, peak1)
    out = {"threads": threads, "peak": peak, "load": (load0, load1), "losses": losses,
           "flops_per_token": (nano_fpt, ours_fpt)}
    for name, ts in times.items():
        tps = tokens / statistics.median(ts)
        fpt = fpt_of.get(name, ours_fpt)
        out[name] = {"tok_s": tps, "mfu": tps * fpt / peak, "n": len(ts), "cpu_s": statistics.median(cpu[name])}
        if local_mfu.get(name):
            out[name]["local_mfu"] = statistics.median(local_mfu[name])
    if args.only:
        return out
    out["ratio"] = out["scalelab"]["tok_s"] / out["nanoGPT"]["tok_s"]
    n_nano = sum(p.numel() for n, p in nano.named_parameters() if "wpe" not in n)
    n_ours = sum(p.numel() for p in ours.parameters())
    out["params"] = (n_nano, n_ours)
    return out


def as_shipped(args, argv: list[str]) -> int:
    """Whole processes, alternating: nanoGPT's step (glibc's default memory handling, as
    nanoGPT runs) and scalelab's trainer (as `scalelab train` runs). Medians over rounds."""
    keep, skip = [], False
    for a in argv:  # the same options, less --as-shipped N
        if not skip and not a.startswith("--as-shipped"):
            keep.append(a)
        skip = a == "--as-shipped"
    sides = {"nanoGPT": "default", "trainer": "kept"}
    results: dict[tuple[str, int], list[dict]] = {}
    for r in range(args.as_shipped):
        for side, memory in (list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]):
            with tempfile.NamedTemporaryFile(suffix=".json") as f:
                subprocess.run([sys.executable, __file__, *keep, "--only", side, "--host-memory", memory,
                                "--json", f.name], check=True, stdout=subprocess.DEVNULL)
                for row in json.loads(Path(f.name).read_text()):
                    results.setdefault((side, row["threads"]), []).append(row)
                    print(f"round {r} {side} threads {row['threads']}: {row[side]['tok_s']:.0f} tok/s "
                          f"({row[side]['cpu_s']:.3f} CPU s/step), load {row['load'][0]:.2f}/{row['load'][1]:.2f}",
                          flush=True)
    print("\n| threads | nanoGPT tok/s (own process, glibc default) | scalelab trainer tok/s (as shipped) "
          "| trainer / nanoGPT | rounds |\n|---|---|---|---|---|")
    for t in args.threads.split(","):
        nano = statistics.median(r["nanoGPT"]["tok_s"] for r in results[("nanoGPT", int(t))])
        ours = statistics.median(r["trainer"]["tok_s"] for r in results[("trainer", int(t))])
        print(f"| {t} | {nano:.0f} | {ours:.0f} | {ours / nano:.2f}x | {args.as_shipped} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", required=True, help="directory holding nanoGPT's model.py")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="timed steps per model and thread count")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-seconds", type=float, default=1.0)
    p.add_argument("--probe-each-step", type=float, default=0.0, metavar="SECONDS",
                   help="also probe the matmul peak for SECONDS right before and after every timed step "
                        "and print each side's median MFU against those probes (this box's matmul rate "
                        "drifts by 15%% within seconds, so one peak for the run can put MFU above 100%%)")
    p.add_argument("--trainer", action="store_true", help="also time scalelab's real trainer (Trainer.run)")
    p.add_argument("--trainer-dtype", default="fp32", choices=["fp32", "bf16"], help="train.dtype of --trainer "
                   "(bf16: autocast on CPU)")
    p.add_argument("--bf16", action="store_true", help="also time the bare scalelab step under CPU bf16 autocast")
    p.add_argument("--host-memory", default="kept", choices=["kept", "default"],
                   help="glibc's handling of freed memory for the whole process, both sides alike: kept "
                        "(what every scalelab command sets, train/host_memory.py) or glibc's default")
    p.add_argument("--as-shipped", type=int, default=0, metavar="ROUNDS",
                   help="instead: each side in its own process as its users run it (nanoGPT's step with "
                        "glibc's default, scalelab's trainer as `scalelab train` sets it), ROUNDS alternations")
    p.add_argument("--rope", default="pairs", choices=["pairs", "halves"],
                   help="the bare scalelab step's CPU RoPE: pair order (the default) or rotate-half halves")
    p.add_argument("--only", choices=["nanoGPT", "trainer"], help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.as_shipped:
        return as_shipped(args, argv if argv is not None else sys.argv[1:])
    if args.only:
        args.trainer = args.only == "trainer"
    # --host-memory decides, whatever the environment says; the trainer reads this variable too
    os.environ["SCALELAB_HOST_MEMORY"] = "default" if args.host_memory == "default" else ""
    print(f"host memory: {keep_freed_host_memory()}")
    mod = load_nanogpt(args.nanogpt)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"batch {args.batch} x {args.seq_len}, {args.steps} timed steps each")
    rows = [run(args, mod, int(t)) for t in args.threads.split(",")]
    if args.only:
        Path(args.json).write_text(json.dumps(rows))
        return 0
    print(f"params (nanoGPT without wpe, scalelab): {rows[0]['params']}; training FLOPs per token "
          f"(nanoGPT, scalelab): {rows[0]['flops_per_token'][0] / 1e6:.2f}M, {rows[0]['flops_per_token'][1] / 1e6:.2f}M"
          " (each side's MFU uses its own)")
    print("| threads | nanoGPT tok/s | scalelab tok/s | scalelab/nanoGPT | MFU nanoGPT % | MFU scalelab % "
          "| peak GFLOP/s | load 1m before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"threads {r['threads']}: CPU seconds per step (median) "
              + ", ".join(f"{k} {r[k]['cpu_s']:.3f}" for k in r if isinstance(r[k], dict) and "cpu_s" in r[k])
              + f"; scalelab/nanoGPT by CPU time {r['nanoGPT']['cpu_s'] / r['scalelab']['cpu_s']:.2f}x")
    for r in rows:
        print(f"| {r['threads']} | {r['nanoGPT']['tok_s']:.0f} | {r['scalelab']['tok_s']:.0f} | {r['ratio']:.2f}x "
              f"| {100 * r['nanoGPT']['mfu']:.1f} | {100 * r['scalelab']['mfu']:.1f} | {r['peak'] / 1e9:.1f} "
              f"| {r['load'][0]:.2f}/{r['load'][1]:.2f} |")
    if args.probe_each_step:
        for r in rows:
            print(f"threads {r['threads']}: MFU against the peak probed around each step (median): "
                  + ", ".join(f"{k} {100 * r[k]['local_mfu']:.1f}%" for k in r
                              if isinstance(r[k], dict) and "local_mfu" in r[k]))
    extra = [k for k in ("trainer", "scalelab bf16") if k in rows[0]]
    if extra:
        print("\n| threads | side | tok/s | / nanoGPT | / bare scalelab step | MFU % | timed steps |\n"
              "|---|---|---|---|---|---|---|")
        for r in rows:
            for k in extra:
                print(f"| {r['threads']} | {k} | {r[k]['tok_s']:.0f} | {r[k]['tok_s'] / r['nanoGPT']['tok_s']:.2f}x "
                      f"| {r[k]['tok_s'] / r['scalelab']['tok_s']:.3f}x | {100 * r[k]['mfu']:.1f} | {r[k]['n']} |")
        if "trainer" in rows[0]:
            for r in rows:
                over = r["scalelab"]["tok_s"] / r["trainer"]["tok_s"] - 1
                over_cpu = r["trainer"]["cpu_s"] / r["scalelab"]["cpu_s"] - 1
                print(f"threads {r['threads']}: trainer overhead over the bare step {100 * over:+.1f}% wall, "
                      f"{100 * over_cpu:+.1f}% CPU time (median step times; target <= 5%; at 1 thread CPU time "
                      "is what other processes cannot inflate)")
        if "scalelab bf16" in rows[0]:
            for r in rows:
                lf, lb = r["losses"]["scalelab"], r["losses"]["scalelab bf16"]
                print(f"threads {r['threads']}: losses fp32 {lf[0]:.4f} -> {lf[-1]:.4f}, bf16 autocast "
                      f"{lb[0]:.4f} -> {lb[-1]:.4f} (same init and batches)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
