"""Score-first test-time training (golf/ttt.py): the order is proven, not assumed."""
import numpy as np
import pytest
import torch

from scalelab.golf.evaluate import ByteCounter, evaluate_bpb
from scalelab.golf.ttt import score_first_ttt
from scalelab.model.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

N = 700  # stream length; with token id = stream position the model reveals what it sees


def _model(vocab=N, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layer=2, d_model=32, n_head=2, seq_len=32, mlp="relu2"))


class Recorder(torch.nn.Module):
    """Wraps the GPT; on the stream tokens[i] = i every id is a stream position. Scoring
    calls (eval mode, no grad) raise the high-water mark of scored targets; a training
    call asserts that every input and target it sees is at or below that mark."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.scored_upto = -1
        self.updates = 0

    def forward(self, x, y=None, reduction="mean"):
        if torch.is_grad_enabled() and self.training:
            seen = torch.cat([x.flatten(), y[y >= 0].flatten()])
            assert int(seen.max()) <= self.scored_upto, "trained on a token not yet scored"
            self.updates += 1
        else:
            self.scored_upto = max(self.scored_upto, int(y.max()))
        return self.model(x, y, reduction=reduction)


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("stride", [None, 8])
def test_every_token_trained_on_was_scored_before(mode, stride, monkeypatch):
    import scalelab.golf.ttt as ttt

    rec = Recorder(_model())
    monkeypatch.setattr(ttt.copy, "deepcopy", lambda m: m)  # adapt the recorder itself, to read it after
    counter = ByteCounter(np.ones(N, dtype=np.int64))
    r = score_first_ttt(rec, torch.arange(N), counter, seq_len=32, stride=stride, mode=mode, lr=1e-3,
                        chunk_tokens=100, batch_size=4)
    assert rec.updates >= r["n_chunks"] - 1 > 3  # it did train, after every chunk
    assert r["tokens"] == N - 1 and r["bytes"] == N - 1  # every target scored once
    spans = [c["targets"] for c in r["chunks"]]
    assert spans[0][0] == 1 and spans[-1][1] == N - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:]))  # in order, no gap, no overlap


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_score_of_chunk_k_does_not_depend_on_later_tokens(mode):
    """Change the stream from position p on: the chunks before p score bit-identically,
    the later ones do not."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 64, (N,), generator=g)
    b = a.clone()
    p = 400
    b[p:] = torch.randint(0, 64, (N - p,), generator=g)
    counter = ByteCounter(np.ones(64, dtype=np.int64))
    kw = dict(counter=counter, seq_len=32, stride=16, mode=mode, lr=3e-3, chunk_tokens=96, batch_size=4)
    ra = score_first_ttt(_model(64), a, **kw)
    rb = score_first_ttt(_model(64), b, **kw)
    before = [(ca, cb) for ca, cb in zip(ra["chunks"], rb["chunks"]) if ca["targets"][1] < p]
    after = [(ca, cb) for ca, cb in zip(ra["chunks"], rb["chunks"]) if ca["targets"][0] > p + 32]
    assert len(before) >= 3 and after
    assert all(ca["nats"] == cb["nats"] for ca, cb in before)
    assert all(ca["nats"] != cb["nats"] for ca, cb in after)


def test_without_updates_it_is_the_plain_evaluation():
    tokens = torch.randint(0, 64, (N,), generator=torch.Generator().manual_seed(1))
    counter = ByteCounter(np.arange(64) % 3 + 1)
    m = _model(64)
    for stride in (None, 8):
        plain = evaluate_bpb(m, tokens, counter, seq_len=32, stride=stride, batch_size=4)
        ttt = score_first_ttt(m, tokens, counter, seq_len=32, stride=stride, lr=0.0, chunk_tokens=100)
        assert ttt["bytes"] == plain["bytes"] and ttt["tokens"] == plain["tokens"]
        assert ttt["val_bpb"] == pytest.approx(plain["val_bpb"], rel=1e-6)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_ttt_learns_a_repeating_stream_and_leaves_the_model_alone(mode):
    """A random 50-token phrase repeated: after its first occurrences are scored, the
    adapted model predicts the rest better than the frozen one."""
    phrase = torch.randint(0, 64, (50,), generator=torch.Generator().manual_seed(2))
    tokens = phrase.repeat(N // 50)
    counter = ByteCounter(np.ones(64, dtype=np.int64))
    m = _model(64)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    frozen = evaluate_bpb(m, tokens, counter, seq_len=32)["val_bpb"]
    adapted = score_first_ttt(m, tokens, counter, seq_len=32, mode=mode, lr=1e-2, steps=2, chunk_tokens=64)
    assert adapted["val_bpb"] < 0.9 * frozen
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="full, lora"):
        score_first_ttt(_model(64), torch.arange(10), ByteCounter(np.ones(64)), seq_len=32, mode="sgd")
