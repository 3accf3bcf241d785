"""TokenLoader: windows, shuffling, determinism, resume, rank interleaving; eval batches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalelab.data import shards as S
from scalelab.data.loader import TokenLoader, WindowPermutation, iter_eval_batches
from scalelab.errors import DataError

T = 16
SHARD_SIZES = (1000, 517, 33, 10, 700)  # uneven, one shard too short for a window


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Shards whose token at global offset k is k % 60000, so windows are recognizable."""
    d = tmp_path_factory.mktemp("loader")
    off = 0
    for i, n in enumerate(SHARD_SIZES):
        S.write_shard(d / S.shard_name("train", i), (off + np.arange(n)) % 60000, vocab_size=60000)
        off += n
    S.write_shard(d / "val_000000.bin", np.arange(300), vocab_size=60000)
    return d


def _n_windows(sizes=SHARD_SIZES, t=T):
    return sum(max(0, (n - 1) // t) for n in sizes)


def _take(loader, k):
    return [loader.next_batch() for _ in range(k)]


def _same(a, b):
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_permutation_is_bijection_and_seeded():
    for n in (1, 2, 3, 7, 64, 65, 1000, 4099):
        for e in (0, 1):
            v = WindowPermutation(n, seed=3, epoch=e)(np.arange(n))
            assert sorted(v.tolist()) == list(range(n))
    a = WindowPermutation(1000, 0, 0)(np.arange(1000))
    assert not np.array_equal(a, WindowPermutation(1000, 0, 1)(np.arange(1000)))
    assert not np.array_equal(a, WindowPermutation(1000, 1, 0)(np.arange(1000)))
    assert np.array_equal(a, WindowPermutation(1000, 0, 0)(np.arange(1000)))


def test_windows_shapes_and_boundaries(data):
    L = TokenLoader(data, "train", micro_batch=4, seq_len=T, seed=1)
    assert L.num_windows == _n_windows() and L.tokens_per_epoch == _n_windows() * T
    starts = np.cumsum((0,) + SHARD_SIZES)
    for _ in range(60):
        x, y = L.next_batch()
        assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in torch.cat([x, y[:, -1:]], 1).numpy():
            assert np.array_equal(np.diff(row), np.ones(T))  # consecutive tokens: one shard
            s = np.searchsorted(starts, row[0], side="right") - 1
            assert row[-1] < starts[s + 1]  # ends inside the shard it starts in
            assert (row[0] - starts[s]) % T == 0  # aligned to the shard's window grid


def test_one_epoch_covers_every_window_once(data):
    n = _n_windows()
    L = TokenLoader(data, "train", micro_batch=1, seq_len=T, seed=5)
    seen = [L.windows_for(g)[0] for g in range(n)]
    assert sorted(seen) == list(range(n))
    nxt = [L.windows_for(g)[0] for g in range(n, 2 * n)]
    assert sorted(nxt) == list(range(n)) and nxt != seen  # re-drawn next epoch
    _take(L, n + 3)
    assert L.epoch == 1 and L.epochs_consumed == pytest.approx((n + 3) / n)


def test_deterministic_and_seed_dependent(data):
    a = _take(TokenLoader(data, "train", 3, T, seed=7), 20)
    b = _take(TokenLoader(data, "train", 3, T, seed=7), 20)
    c = _take(TokenLoader(data, "train", 3, T, seed=8), 20)
    assert _same(a, b) and not _same(a, c)
    seq = TokenLoader(data, "train", 2, T, shuffle=False)
    assert seq.windows_for(0).tolist() == [0, 1] and seq.windows_for(1).tolist() == [2, 3]


def test_resume_gives_the_same_batches(data):
    ref = TokenLoader(data, "train", 4, T, seed=3)
    _take(ref, 37)
    state = json.loads(json.dumps(ref.state_dict()))  # JSON-serializable
    expected = _take(ref, 30)  # crosses an epoch boundary (n=~136 windows, 4/batch)
    fresh = TokenLoader(data, "train", 4, T, seed=3)
    fresh.load_state_dict(state)
    assert fresh.epochs_consumed == pytest.approx(37 * 4 / fresh.num_windows)
    assert _same(_take(fresh, 30), expected)


def test_ranks_interleave_like_accumulation(data):
    single = _take(TokenLoader(data, "train", 2, T, seed=11), 40)
    r0 = TokenLoader(data, "train", 2, T, seed=11, rank=0, world_size=2)
    r1 = TokenLoader(data, "train", 2, T, seed=11, rank=1, world_size=2)
    got0, got1 = _take(r0, 20), _take(r1, 20)
    assert _same(got0, single[0::2]) and _same(got1, single[1::2])
    # Resume the 2-rank job's position on one process, and with a different micro-batch.
    state = r0.state_dict()
    assert state == {**r1.state_dict(), "world_size": 2}
    one = TokenLoader(data, "train", 2, T, seed=11)
    one.load_state_dict(state)
    assert _same(_take(one, 4), _take(TokenLoader(data, "train", 2, T, seed=11), 44)[40:])
    four = TokenLoader(data, "train", 4, T, seed=11)
    four.load_state_dict(state)  # 80 windows consumed = 20 batches of 4
    x, _ = four.next_batch()
    ref = _take(TokenLoader(data, "train", 2, T, seed=11), 42)[40:]
    assert torch.equal(x, torch.cat([ref[0][0], ref[1][0]]))


def test_resume_mismatch_is_refused(data):
    L = TokenLoader(data, "train", 2, T, seed=1)
    _take(L, 3)
    with pytest.raises(DataError, match="seq_len"):
        TokenLoader(data, "train", 2, T * 2, seed=1).load_state_dict(L.state_dict())
    with pytest.raises(DataError, match="seed"):
        TokenLoader(data, "train", 2, T, seed=2).load_state_dict(L.state_dict())
    with pytest.raises(DataError, match="micro_batch=2"):
        TokenLoader(data, "train", 4, T, seed=1).load_state_dict(L.state_dict())  # 6 windows % 4
    with pytest.raises(DataError, match="malformed"):
        L.load_state_dict({"position": 3})


def test_too_few_tokens(data, tmp_path):
    with pytest.raises(DataError) as e:
        TokenLoader(data, "val", 2, seq_len=300)
    msg = str(e.value)
    assert "'val'" in msg and "300 tokens" in msg and "seq_len + 1 = 301" in msg
    with pytest.raises(DataError, match="no 'train' shards"):
        TokenLoader(tmp_path, "train", 2, T)
    with pytest.raises(DataError, match="rank"):
        TokenLoader(data, "train", 2, T, rank=2, world_size=2)


def test_eval_batches(data):
    batches = list(iter_eval_batches(data, "val", micro_batch=4, seq_len=T, max_tokens=10 * T))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x.reshape(-1), torch.arange(10 * T)) and torch.equal(y.reshape(-1), torch.arange(1, 10 * T + 1))
    everything = list(iter_eval_batches(data, "val", 8, T, max_tokens=10**9))
    assert sum(b[0].shape[0] for b in everything) == (300 - 1) // T
    again = list(iter_eval_batches(data, "val", 4, T, max_tokens=10 * T))
    assert _same(again, batches)
    with pytest.raises(DataError, match="'val'"):
        iter_eval_batches(data, "val", 4, seq_len=400, max_tokens=1000)


def test_public_shards_load_unchanged(tmp_path):
    toks = (np.arange(5000) * 7) % 1024
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, len(toks)
    with open(tmp_path / "fineweb_train_000001.bin", "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype(np.uint16).tobytes())
    L = TokenLoader(tmp_path, "train", 2, 64, shuffle=False)
    x, y = L.next_batch()
    assert x[0].tolist() == toks[:64].tolist() and y[1].tolist() == toks[65:129].tolist()


def test_memory_is_bounded(data):
    L = TokenLoader(data, "train", 8, T)
    for _ in range(3000):  # many epochs
        L.next_batch()
    assert len(L._blocks) <= 2 and len(L._perms) <= 5
