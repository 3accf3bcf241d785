"""scalelab.finetune.data: formats, chat templates, response-only masking, truncation, packing."""
import json

import numpy as np
import pytest
import torch

from ft_helpers import qa_records, tiny_llama_dir, tokenizer_dir, workdir, write_jsonl
from scalelab.errors import ConfigError, DataError
from scalelab.finetune.config import FTDataConfig, load_finetune_config
from scalelab.finetune.data import (Example, RowSchedule, collate, detect_format, pack_rows, prepare_examples,
                                    read_records, to_messages, tokenize_conversation)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(True))


@pytest.fixture(scope="module")
def tok_plain():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir(False))


def trained_text(ex: Example, tok) -> str:
    return tok.decode(ex.tokens[ex.trained].tolist())


def test_loss_only_on_assistant_tokens_with_the_models_chat_template(tok):
    msgs = [{"role": "user", "content": "what is two plus three"},
            {"role": "assistant", "content": "five"},
            {"role": "user", "content": "and four and six"},
            {"role": "assistant", "content": "ten apples"}]
    ex = tokenize_conversation(msgs, tok, "auto")
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(ex.tokens.tolist()) == full  # the template's text, nothing added or lost
    assert trained_text(ex, tok) == "five<|im_end|>\nten apples<|im_end|>\n"
    # labels after collate: -100 on every prompt position; the targets are the trained tokens
    batch = collate([[ex]])
    labels = batch["labels"][0]
    kept = labels[labels != -100].tolist()
    assert tok.decode(kept) == "five<|im_end|>\nten apples<|im_end|>\n"
    prompt_len = len(tok.encode(tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True),
                                add_special_tokens=False))
    assert (labels[:prompt_len - 1] == -100).all() and labels[prompt_len - 1] != -100


def test_fallback_template_when_the_model_has_none(tok_plain):
    msgs = to_messages({"instruction": "add numbers", "input": "two and three", "output": "five"}, "alpaca",
                       "messages", 0, system_prompt="be brief")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[1]["content"] == "add numbers\n\ntwo and three"
    ex = tokenize_conversation(msgs, tok_plain, "auto")
    text = tok_plain.decode(ex.tokens.tolist())
    assert text == ("### System:\nbe brief\n\n### User:\nadd numbers\n\ntwo and three\n\n"
                    "### Assistant:\nfive<|endoftext|>\n\n")
    assert trained_text(ex, tok_plain) == "five<|endoftext|>"


def test_template_fallback_can_be_forced(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "five"}]
    ex = tokenize_conversation(msgs, tok, "fallback")
    assert tok.decode(ex.tokens.tolist()).startswith("<|im_start|>### User:\nhi")
    assert trained_text(ex, tok) == "five<|im_end|>"


def test_inconsistent_chat_template_is_refused(tok):
    from transformers import AutoTokenizer

    odd = AutoTokenizer.from_pretrained(tokenizer_dir(True))
    # renders the last message differently from the same message followed by more
    odd.chat_template = ("{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]{% else %}"
                         "{{ m['content'] }}|{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="data.template=fallback"):
        tokenize_conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], odd, "auto")


def test_formats_and_sources(tmp_path):
    chat = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    alpaca = qa_records(3)
    jl = write_jsonl(tmp_path / "chat.jsonl", chat)
    assert detect_format(read_records(str(jl))[0], "auto", "messages") == "chat"
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps(alpaca))
    assert read_records(str(arr)) == alpaca
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(alpaca), tmp_path / "a.parquet")
    assert read_records(str(tmp_path / "a.parquet"), limit=2) == alpaca[:2]
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(alpaca)}).save_to_disk(str(tmp_path / "ds"))
    assert read_records(str(tmp_path / "ds")) == alpaca
    gsm = read_records("builtin:gsm8k", limit=5)
    assert len(gsm) == 5 and gsm[0]["instruction"].startswith("Janet") and "#### 18" in gsm[0]["output"]


def test_data_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="cannot tell the data format.*data.format"):
        detect_format({"text": "x"}, "auto", "messages")
    with pytest.raises(DataError, match="record 3.*role"):
        to_messages({"messages": [{"role": "bot", "content": "x"}]}, "chat", "messages", 3)
    with pytest.raises(DataError, match="no assistant message"):
        to_messages({"messages": [{"role": "user", "content": "x"}]}, "chat", "messages", 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(DataError, match="line 2"):
        read_records(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        read_records(str(tmp_path / "missing.jsonl"))


def test_truncation_is_counted_and_empty_examples_dropped(tok):
    records = qa_records(40)
    records[0] = {"instruction": "apples " * 200, "output": "five"}  # the response falls past the cut
    cfg = FTDataConfig(source="mem", max_length=40, val_examples=4)
    full = [tokenize_conversation(to_messages(r, "alpaca", "messages", i), tok, "auto") for i, r in enumerate(records)]
    too_long = sum(len(e) > 40 for e in full)
    empty = sum(e.trained[1:40].sum() == 0 for e in full)  # no response token left within the cut
    assert too_long > empty >= 1
    prep = prepare_examples(records, tok, cfg)
    assert prep.stats["truncated"] == too_long and prep.stats["dropped_empty"] == empty
    assert prep.stats["max_example_tokens"] <= 40
    assert len(prep.train) + len(prep.val) + empty == 40
    assert all(len(e) <= 40 and e.n_targets > 0 for e in prep.train)


def test_best_fit_packing_fills_rows_and_keeps_every_example_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=300).tolist()
    rows = pack_rows(lengths, 128, True, seed=1)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    lower = -(-sum(lengths) // 128)
    assert len(rows) <= lower * 1.05 + 1  # near the bin-count lower bound
    assert pack_rows(lengths, 128, True, seed=1) == rows and pack_rows(lengths, 128, True, seed=2) != rows
    assert sorted(pack_rows(lengths, 128, False, seed=1)) == [[i] for i in range(300)]


def test_row_schedule_crosses_epochs_deterministically():
    exs = [Example(np.arange(n), np.ones(n, dtype=bool)) for n in (10, 20, 30, 40, 50)]
    s = RowSchedule(exs, 64, True, seed=3)
    per = s.rows_per_epoch
    rows = [s.row(k) for k in range(3 * per)]
    again = RowSchedule(exs, 64, True, seed=3)
    assert [len(r) for r in rows] == [len(again.row(k)) for k in range(3 * per)]
    for e in range(3):
        seen = sorted(len(x) for r in rows[e * per:(e + 1) * per] for x in r)
        assert seen == [10, 20, 30, 40, 50]


def test_packed_row_gives_the_same_loss_as_separate_rows(tok):
    from transformers import AutoModelForCausalLM

    from scalelab.finetune.model import SFTModel

    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir(True), dtype=torch.float32)
    model = SFTModel(lm).eval()
    prep = prepare_examples(qa_records(6), tok, FTDataConfig(source="mem", val_examples=0))
    exs = prep.train[:3]
    packed = collate([exs], width=200)
    with torch.no_grad():
        got = model(packed["input_ids"], packed["position_ids"], packed["attention_mask"], packed["labels"])
        ref = sum(model(b["input_ids"], b["position_ids"], b["attention_mask"], b["labels"])
                  for b in (collate([[e]]) for e in exs))
        # the block-diagonal mask is what keeps examples apart: a plain causal one leaks
        causal = torch.ones(200, 200, dtype=torch.bool).tril()[None, None]
        leaky = model(packed["input_ids"], packed["position_ids"], causal, packed["labels"])
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert abs(leaky.item() - ref.item()) > 1e-3
    assert int((packed["labels"] != -100).sum()) == sum(e.n_targets for e in exs)


def test_config_unknown_key_suggests_and_values_are_checked():
    with pytest.raises(ConfigError, match="Did you mean 'model.lora_rank'"):
        load_finetune_config(None, ["model.lora_rnk=4"])
    with pytest.raises(ConfigError, match="data.format"):
        load_finetune_config(None, ["data.format=sharegpt"])
    with pytest.raises(ConfigError, match="multiple of train.micro_batch"):
        load_finetune_config(None, ["train.batch_rows=6", "train.micro_batch=4"])
    cfg = load_finetune_config(None, ["model.lora_target_modules=[q_proj,v_proj]", "train.lr=1e-4"])
    assert cfg.model.lora_target_modules == ["q_proj", "v_proj"] and cfg.train.lr == 1e-4


def test_varlen_attention_matches_separate_rows_in_loss_and_gradients(tok):
    from transformers import AutoModelForCausalLM

    from scalelab.finetune.attention import register
    from scalelab.finetune.model import SFTModel

    def model(attn):
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir(True), dtype=torch.float32, attn_implementation=attn)
        return SFTModel(lm)

    varlen, sdpa = model(register()), model("sdpa")
    exs = prepare_examples(qa_records(8), tok, FTDataConfig(source="mem", val_examples=0)).train[:4]
    packed = collate([exs[:2], exs[2:]], width=160)  # two rows, padded tails
    lv = varlen(packed["input_ids"], packed["position_ids"], packed["attention_mask"], packed["labels"])
    lv.backward()
    ref = sum(sdpa(b["input_ids"], b["position_ids"], b["attention_mask"], b["labels"])
              for b in (collate([[e]]) for e in exs))
    ref.backward()
    assert lv.item() == pytest.approx(ref.item(), rel=1e-5)
    gv = dict(varlen.named_parameters())
    for name, p in sdpa.named_parameters():
        assert torch.allclose(gv[name].grad, p.grad, atol=1e-5, rtol=1e-4), name
    # the mask is not what it relies on: position ids alone mark the examples
    with torch.no_grad():
        no_mask = varlen(packed["input_ids"], packed["position_ids"], None, packed["labels"])
    assert no_mask.item() == pytest.approx(lv.item(), rel=1e-6)
