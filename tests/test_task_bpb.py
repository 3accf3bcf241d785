"""Task bits per byte: -log p(gold continuation) / (ln 2 * its UTF-8 bytes), per example and aggregated."""
import math

import pytest

import eval_helpers as H

from scalelab.eval import scoring
from scalelab.eval import tasks as T
from scalelab.eval.gpt_backend import GPTEvalModel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gold_bits_per_byte_formula():
    assert scoring.gold_bits_per_byte(-math.log(2) * 12, 6) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        scoring.gold_bits_per_byte(-1.0, 0)


def test_every_multiple_choice_task_reports_gold_bpb_with_a_ci():
    em = GPTEvalModel(H.trained_gpt(), H.tokenizer(), device="cpu")
    spec = H.fixture_spec("arc_easy")
    docs, _ = T.load_docs(spec)
    examples = [T.format_example(spec, d, i) for i, d in enumerate(docs)]
    recs = T.score_examples(em, spec, examples)
    for ex, r in zip(examples, recs):
        cont = ex.requests[ex.gold][1]
        assert r["gold_bytes"] == len(cont.encode("utf-8"))
        assert r["bpb"] == pytest.approx(-r["lls"][ex.gold] / (math.log(2) * r["gold_bytes"]))
    agg = T.aggregate(spec, recs, n_boot=200)
    assert agg["bpb"] == pytest.approx(sum(r["bpb"] for r in recs) / len(recs))
    lo, hi = agg["bpb_ci"]
    assert lo <= agg["bpb"] <= hi and agg["bpb_ci_method"] == "bootstrap"
