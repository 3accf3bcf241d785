"""Builders for tests/test_finetune*.py: a tiny random HF Llama with a small byte-level BPE
tokenizer (ChatML chat template, or none), and small instruction data files."""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

WORDS = ("the cat sat on a mat and two plus three is five what is the sum of four and six ten "
         "question answer add numbers apples oranges she has gives away left how many").split()


@functools.lru_cache(maxsize=None)
def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="scalelab-ft-tests-"))


def qa_records(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 25)))
        out.append({"instruction": f"what is {a} plus {b}? {filler}", "input": "" if i % 3 else "add numbers",
                    "output": f"{a} plus {b} is {a + b}. " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))})
    return out


@functools.lru_cache(maxsize=None)
def tokenizer_dir(chat_template: bool = True) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    out = workdir() / f"tok-{int(chat_template)}"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [json.dumps(r) for r in qa_records(300, seed=99)]
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>" if chat_template else None)
    if chat_template:
        fast.chat_template = CHATML
    fast.save_pretrained(out)
    return out


def tiny_llama_dir(chat_template: bool = True, layers: int = 2, hidden: int = 64) -> Path:
    # lru_cache keys on how the arguments were spelled (tiny_llama_dir() and
    # tiny_llama_dir(True, 2, 64) are two keys for one directory): normalize first.
    return _tiny_llama_dir(bool(chat_template), int(layers), int(hidden))


@functools.lru_cache(maxsize=None)
def _tiny_llama_dir(chat_template: bool, layers: int, hidden: int) -> Path:
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = workdir() / f"llama-{int(chat_template)}-{layers}-{hidden}"
    shutil.copytree(tokenizer_dir(chat_template), out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=400, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, eos_token_id=2, bos_token_id=1, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
