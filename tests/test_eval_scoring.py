"""The scoring engine equals brute force (full-sequence log-softmax sums) for our GPT and a
tiny HF Llama; truncation, prefix trees, packing and the acc / acc_norm rules."""

import numpy as np
import pytest
import torch

import eval_helpers as H

from scalelab.eval import scoring
from scalelab.eval.gpt_backend import GPTEvalModel


pytestmark = pytest.mark.usefixtures("one_thread")


def random_requests(vocab, n_questions=12, max_ctx=90, seed=0):
    g = np.random.default_rng(seed)
    reqs = []
    for _ in range(n_questions):
        ctx = [int(x) for x in g.integers(0, vocab, g.integers(1, max_ctx))]
        for _ in range(int(g.integers(2, 5))):
            reqs.append((ctx, [int(x) for x in g.integers(0, vocab, g.integers(1, 6))]))
    reqs.append(([1, 2, 3], [4]))
    reqs.append(([1, 2, 3], [4]))  # a duplicate request
    return reqs


def check_against_brute_force(em, logits_fn, reqs, tol=2e-4):
    out = em.loglikelihood(reqs)
    for (ctx, cont), (ll, greedy) in zip(reqs, out):
        ref_ll, ref_greedy = H.brute_force_ll(logits_fn, ctx, cont, em.max_length)
        assert ll == pytest.approx(ref_ll, abs=tol)
        assert greedy == ref_greedy
    return out


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2, "qk_norm": True, "logit_softcap": 30.0, "mlp": "relu2"}])
def test_gpt_loglikelihood_equals_brute_force(kw):
    tok = H.tokenizer()
    model = H.tiny_gpt(tok.vocab_size, **kw)
    em = GPTEvalModel(model, tok, device="cpu")
    assert em.backend.supports_masks  # the packed forward matches GPT.hidden
    reqs = random_requests(tok.vocab_size)
    check_against_brute_force(em, lambda x: model(x), reqs)
    # contexts longer than the 64-token window were truncated from the left and counted
    n_long = sum(len(c) + len(k) > em.max_length + 1 for c, k in reqs)
    assert n_long > 0 and em.n_truncated == n_long
    assert em.stats.padded - em.stats.tokens < 0.35 * em.stats.padded  # packed rows, little padding


def test_hf_llama_loglikelihood_equals_brute_force():
    from scalelab.eval.loading import load_model_for_eval

    em = load_model_for_eval(f"hf:{H.hf_llama_dir()}", device="cpu")
    assert em.kind == "hf" and em.backend.supports_masks and not em.backend.full
    assert em.max_length == 64
    reqs = random_requests(em.tokenizer.vocab_size, seed=1)
    check_against_brute_force(em, lambda x: em.model(x).logits, reqs)


def test_unpacked_fallback_gives_the_same_numbers():
    tok = H.tokenizer()
    model = H.tiny_gpt(tok.vocab_size)
    a = GPTEvalModel(model, tok, device="cpu")
    b = GPTEvalModel(model, tok, device="cpu")
    b.backend.supports_masks = False  # what happens when the packed forward no longer matches gpt.py
    reqs = random_requests(tok.vocab_size, seed=2)
    for (la, ga), (lb, gb) in zip(a.loglikelihood(reqs), b.loglikelihood(reqs)):
        assert la == pytest.approx(lb, abs=1e-4) and ga == gb


def test_continuation_longer_than_window_is_scored_in_pieces():
    tok = H.tokenizer()
    model = H.tiny_gpt(tok.vocab_size, seq_len=16)
    em = GPTEvalModel(model, tok, device="cpu")
    ctx, cont = list(range(5, 15)), list(range(20, 60))  # 40 continuation tokens, window 16
    (ll, _), = em.loglikelihood([(ctx, cont)])
    # reference: each 16-token piece after as much preceding text as fits
    ref = 0.0
    for s in range(0, len(cont), 16):
        ref += H.brute_force_ll(lambda x: model(x), ctx + cont[:s], cont[s:s + 16], 16)[0]
    assert ll == pytest.approx(ref, abs=2e-4)
    assert em.last_truncated == [True]


def test_tree_item_layout_and_pack_rows():
    item = scoring.tree_item([1, 2, 3], [[7], [8, 9], [10, 11, 12]])
    assert item.tokens.tolist() == [1, 2, 3, 8, 10, 11]
    assert item.branch.tolist() == [0, 0, 0, 2, 3, 3]
    assert item.pos.tolist() == [0, 1, 2, 3, 3, 4]
    assert [q[0].tolist() for q in item.queries] == [[2], [2, 3], [2, 4, 5]]
    rows = scoring.pack_rows([5, 3, 4, 2, 6, 1], capacity=7)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum([5, 3, 4, 2, 6, 1][i] for i in r) <= 7 for r in rows)
    assert len(rows) == 3  # 21 tokens, capacity 7: best fit is perfect here


def test_acc_and_acc_norm_differ_where_they_should():
    # choice 0 is short and likelier in total; choice 1 is long with a better per-character score
    m = scoring.multiple_choice_metrics([-5.0, -8.0], ["ab", "a much longer answer"], gold=1)
    assert m["pred"] == 0 and m["pred_norm"] == 1
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0
    # ties go to the first choice (numpy argmax), as in the harness
    assert scoring.multiple_choice_metrics([-1.0, -1.0], ["x", "y"], gold=1)["acc"] == 0.0


def test_encode_pair_moves_trailing_space_like_the_harness():
    tok = H.tokenizer()
    em = GPTEvalModel(H.tiny_gpt(tok.vocab_size), tok, device="cpu")
    ctx, cont = em.encode_pair("The answer is ", "yes")
    assert ctx == tok.encode("The answer is")
    assert ctx + cont == tok.encode("The answer is yes")
    ctx, cont = em.encode_pair("", "hello")
    assert ctx == [tok.eot_id] and cont == tok.encode("hello")


def test_empty_continuation_is_an_error():
    tok = H.tokenizer()
    em = GPTEvalModel(H.tiny_gpt(tok.vocab_size), tok, device="cpu")
    with pytest.raises(scoring.EvalError, match="empty continuation"):
        em.loglikelihood([([1, 2], [])])


def test_token_logprobs_sum_to_loglikelihood():
    tok = H.tokenizer()
    em = GPTEvalModel(H.tiny_gpt(tok.vocab_size), tok, device="cpu")
    reqs = random_requests(tok.vocab_size, n_questions=3, seed=5)
    lps = em.token_logprobs(reqs)
    lls = em.loglikelihood(reqs)
    for lp, (ll, _), (_, cont) in zip(lps, lls, reqs):
        assert lp.shape == (len(cont),) and lp.sum() == pytest.approx(ll, abs=1e-9)
        assert torch.all(torch.as_tensor(lp) <= 0)


@pytest.mark.parametrize("backend", ["gpt", "hf"])
def test_fixture_task_requests_equal_brute_force(backend):
    from scalelab.eval import tasks as T
    from scalelab.eval.loading import load_model_for_eval

    if backend == "gpt":
        em = GPTEvalModel(H.trained_gpt(), H.tokenizer(), device="cpu")
        fn = em.model
    else:
        em = load_model_for_eval(f"hf:{H.hf_llama_dir()}", device="cpu")
        fn = lambda x: em.model(x).logits  # noqa: E731
    reqs = []
    for task in ("arc_easy", "winogrande", "piqa", "lambada"):
        examples, _, _ = T.build_examples(H.fixture_spec(task))
        reqs += [em.encode_pair(c, k) for ex in examples for c, k in ex.requests]
    reqs = [(c, k) for c, k in reqs if len(k) <= em.max_length]  # longer ones: tested above, in pieces
    assert len(reqs) > 30
    check_against_brute_force(em, fn, reqs)
    assert em.n_truncated > 0  # PIQA / LAMBADA contexts exceed the tiny windows


def test_fsdp_sharded_gpt_goes_through_forward():
    """FSDP2-sharded parameters (as the trainer passes under FSDP) are gathered by forward
    hooks: the backend must use forward() and still give the same numbers."""
    import copy
    import os
    import socket

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from scalelab.eval import tasks as T

    assert not dist.is_initialized()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        base = H.trained_gpt()
        sharded = copy.deepcopy(base)
        for block in sharded.blocks:
            fully_shard(block)
        fully_shard(sharded)
        em = GPTEvalModel(sharded, H.tokenizer(), device="cpu")
        assert em.backend.full_logits and not em.backend.supports_masks
        spec = H.fixture_spec("arc_easy")
        examples, _, _ = T.build_examples(spec)
        a = T.score_examples(GPTEvalModel(base, H.tokenizer(), device="cpu"), spec, examples)
        b = T.score_examples(em, spec, examples)
        for ra, rb in zip(a, b):
            assert rb["lls"] == pytest.approx(ra["lls"], abs=1e-4)
    finally:
        dist.destroy_process_group()


def test_one_oversized_item_does_not_widen_every_row():
    """A long item (e.g. one HellaSwag context shared by many endings) gets a row and a batch of its
    own; the other rows stay pack_len long (they used to be sized, and padded, to the longest item)."""
    import torch

    from scalelab.eval import scoring

    class Fake:
        vocab_size, device, supports_masks = 8, torch.device("cpu"), True

        def hidden(self, idx, pos, mask):
            return torch.zeros(*idx.shape, 4)

        def logits(self, h):
            return torch.zeros(h.shape[0], 8)

    sizes = [100, 120, 90, 4000, 110, 130, 95, 105]
    items = [scoring.tree_item([1] * (n - 3), [[2, 3, 4]]) for n in sizes]
    stats = scoring.EngineStats()
    out = scoring.run_items(Fake(), items, batch_size=16, pack_len=512, stats=stats)
    assert all(len(r) == 1 for r in out)
    assert stats.padded <= 4000 + 2 * 512 and stats.tokens == sum(len(it) for it in items)
