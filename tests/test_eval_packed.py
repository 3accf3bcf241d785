"""Packed evaluation runs the model's own forward pass (GPT.hidden with pos/mask), so it is
exact for every model option, golf's U-Net skips included, and self_check keeps it on."""

import numpy as np
import pytest
import torch

import eval_helpers as H

from scalelab.eval.gpt_backend import GPTEvalModel

pytestmark = pytest.mark.usefixtures("one_thread")

# the golf recipe's options (configs/golf-*.yaml) at toy size; odd n_layer: a middle block without a skip
GOLF = dict(n_layer=5, n_kv_head=2, mlp="relu2", qk_norm=True, logit_softcap=30.0, unet_skips=True)


def golf_gpt(vocab_size, **kw):
    model = H.tiny_gpt(vocab_size, **{**GOLF, **kw})
    with torch.no_grad():  # skip weights away from their init of 1, so a path without them would show
        model.skip_weights.copy_(torch.tensor([0.3, -1.7]))
    return model


def test_hidden_with_positions_and_mask_equals_separate_documents():
    model = golf_gpt(97)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 97, (1, 9), generator=g), torch.randint(0, 97, (1, 14), generator=g)
    row = torch.cat((a, b), dim=1)  # two documents in one row, each from position 0
    pos = torch.cat((torch.arange(9), torch.arange(14)))[None]
    doc = torch.tensor([0] * 9 + [1] * 14)
    mask = ((doc[:, None] == doc[None, :]) & (pos[0][None, :] <= pos[0][:, None]))[None]
    with torch.no_grad():
        packed = model.hidden(row, pos=pos, mask=mask)
        sep = torch.cat((model.hidden(a), model.hidden(b)), dim=1)
        assert torch.allclose(packed, sep, atol=1e-5, rtol=0)
        # the defaults are the causal forward itself
        assert torch.equal(model.hidden(row, pos=torch.arange(23)[None]), model.hidden(row))
    with pytest.raises(ValueError, match="KV cache"):
        from scalelab.model.gpt import KVCache

        model.hidden(a, KVCache(model.cfg, 1, 64, torch.float32, "cpu"), pos=pos[:, :9], mask=mask[:, :9, :9])


@pytest.mark.parametrize("kw", [{}, {"n_layer": 4, "tie_embeddings": False}])
def test_golf_model_packed_equals_unpacked(kw):
    from test_eval_scoring import check_against_brute_force, random_requests

    tok = H.tokenizer()
    model = golf_gpt(tok.vocab_size, **kw)
    packed = GPTEvalModel(model, tok, device="cpu")
    assert packed.backend.supports_masks  # self_check no longer turns packing off for skip models
    plain = GPTEvalModel(model, tok, device="cpu")
    plain.backend.supports_masks = False  # one plain causal sequence per row
    reqs = random_requests(tok.vocab_size, seed=3)
    got = check_against_brute_force(packed, lambda x: model(x), reqs)
    ref = plain.loglikelihood(reqs)
    assert np.allclose([ll for ll, _ in got], [ll for ll, _ in ref], atol=1e-5, rtol=0)
    assert [g for _, g in got] == [g for _, g in ref]
    assert packed.stats.padded < plain.stats.padded  # it really packed (trees share their context)
