"""Language-modelling metrics: windows, exact byte accounting, sliding vs non-overlapping."""
import math

import numpy as np
import pytest
import torch

import eval_helpers as H

from scalelab.errors import DataError
from scalelab.eval.lm import evaluate_lm, window_plan
from scalelab.eval.gpt_backend import GPTEvalModel


pytestmark = pytest.mark.usefixtures("one_thread")


def model():
    return GPTEvalModel(H.trained_gpt(), H.tokenizer(), device="cpu")


@pytest.mark.parametrize("n,ctx,stride", [(2, 4, 4), (10, 4, 4), (11, 4, 2), (100, 16, 1), (37, 8, 3), (9, 8, 8)])
def test_window_plan_scores_every_target_once(n, ctx, stride):
    seen = []
    for a, b, t0 in window_plan(n, ctx, stride):
        assert b - a <= ctx and a < t0 <= b  # inputs s[a:b] predict s[a+1..b]
        assert t0 - 1 - a >= 0
        seen += list(range(t0, b + 1))
        if stride < ctx and a > 0:
            assert t0 - a >= ctx - stride  # each scored token sees >= ctx - stride tokens of context
    assert seen == list(range(1, n))


def test_stride_equal_context_matches_trainer_style_non_overlapping_windows():
    from scalelab.data.loader import iter_eval_batches

    em = model()
    L, k = 32, 40
    res = evaluate_lm(em, H.data_dir(), split="val", context=L, stride=L, max_tokens=k * L, progress=False)
    tb = torch.as_tensor(np.asarray(H.tokenizer().token_bytes(), dtype=np.int64))
    nats = tokens = nbytes = 0.0
    with torch.no_grad():
        for x, y in iter_eval_batches(H.data_dir(), "val", 8, L, k * L):
            nats += H.trained_gpt()(x, y, reduction="none").double().sum().item()
            tokens += y.numel()
            nbytes += tb[y].sum().item()
    assert res["tokens"] == tokens == k * L and res["n"] == k and res["units"] == "windows"
    assert res["bytes"] == nbytes
    assert res["loss"] == pytest.approx(nats / tokens, rel=1e-6)
    assert res["bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-6)
    assert res["ppl"] == pytest.approx(math.exp(nats / tokens), rel=1e-6)
    lo, hi = res["loss_ci"]
    assert lo < res["loss"] < hi and res["loss_stderr"] > 0


def test_smaller_stride_gives_lower_or_equal_loss_on_a_trained_model():
    em = model()
    full = evaluate_lm(em, H.data_dir(), context=32, stride=32, progress=False)
    slide = evaluate_lm(em, H.data_dir(), context=32, stride=8, progress=False)
    assert slide["tokens"] == full["tokens"] and slide["bytes"] == full["bytes"]  # same tokens scored once
    assert slide["loss"] <= full["loss"]
    assert slide["bpb"] <= full["bpb"]


def test_raw_text_exact_bytes_and_document_bootstrap(tmp_path):
    docs = ["The match ended in a draw after a late goal.", "Shares rose on Monday, café prices 😀 did not.",
            "A short one."]
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i}.txt").write_text(d, encoding="utf-8")
    em = model()
    res = evaluate_lm(em, folder, context=32, stride=16, progress=False)
    tok = H.tokenizer()
    assert res["kind"] == "text" and res["units"] == "documents" and res["n"] == 3
    assert res["tokens"] == sum(len(tok.encode(d)) for d in docs)
    assert res["bytes"] == sum(len(d.encode("utf-8")) for d in docs)  # byte-level BPE is lossless


def test_tokenizer_without_byte_info_is_a_clear_error(tmp_path):
    class NoBytes:
        def __init__(self, tok):
            self.t = tok
            self.vocab_size, self.eot_id, self.identity = tok.vocab_size, tok.eot_id, tok.identity

        def encode(self, s):
            return self.t.encode(s)

        def decode(self, ids):
            return self.t.decode(ids)

        def token_bytes(self):
            raise NotImplementedError

    (tmp_path / "a.txt").write_text("Some text to score, long enough for a few tokens.")
    em = GPTEvalModel(H.trained_gpt(), NoBytes(H.tokenizer()), device="cpu")
    with pytest.raises(DataError, match="no byte information"):
        evaluate_lm(em, tmp_path / "a.txt", bpb=True, progress=False)
    res = evaluate_lm(em, tmp_path / "a.txt", progress=False)  # auto: loss and perplexity only
    assert "bpb" not in res and res["loss"] > 0


def test_shards_of_another_tokenizer_are_refused():
    from scalelab.data.tokenizer import gpt2_tokenizer

    em = GPTEvalModel(H.tiny_gpt(50257, seq_len=16, d_model=16, n_head=2), gpt2_tokenizer(), device="cpu")
    with pytest.raises(DataError, match="tokenized with"):
        evaluate_lm(em, H.data_dir(), max_tokens=64, progress=False)


def test_bad_stride_is_an_error():
    from scalelab.eval.scoring import EvalError

    with pytest.raises(EvalError, match="stride"):
        evaluate_lm(model(), H.data_dir(), context=16, stride=32, progress=False)
