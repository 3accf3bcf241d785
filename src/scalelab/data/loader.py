"""Batches of token windows from memory-mapped shards: shuffled, resumable, rank-aware.

Windows. Shard s with N_s tokens holds (N_s - 1) // seq_len windows; window k covers its
tokens [k*seq_len, k*seq_len + seq_len + 1), so x = w[:-1] and y = w[1:] and windows
never straddle a shard boundary. Windows are numbered 0..n-1 across the split's shards.

Order. One global stream of windows: stream position p reads window perm_e(p mod n)
in epoch e = p // n, where perm_e is a seeded bijection of [0, n) drawn anew for each
epoch (a Feistel network with cycle-walking: O(1) memory whatever the corpus size).
Global micro-batch g is stream positions [g*B, (g+1)*B). Rank r of W reads global
micro-batches r, r+W, r+2W, ..., so W processes together read exactly what one process
reads with W times more gradient accumulation.

State. `state_dict()` holds the number of global micro-batches consumed (the same on
every rank); `load_state_dict` continues the stream exactly, also with another world
size or micro-batch as long as the position falls on a micro-batch boundary.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from scalelab.data.shards import list_shards, open_shard
from scalelab.errors import DataError

STATE_VERSION = 1
_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


class WindowPermutation:
    """A seeded bijection of [0, n), evaluated on demand in O(1) memory.

    A 4-round Feistel network over the smallest even number of bits covering n is a
    bijection of [0, 2^bits); cycle-walking (re-applying it while the value is >= n)
    restricts it to a bijection of [0, n). 2^bits < 4n, so walks are short.
    """

    ROUNDS = 4

    def __init__(self, n: int, seed: int, epoch: int):
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(epoch), 0x5CA1E1AB])
        self.keys = np.random.Generator(np.random.PCG64(ss)).integers(0, 2**63, size=self.ROUNDS, dtype=np.uint64)

    def _round(self, r: np.ndarray, key: np.uint64) -> np.ndarray:
        z = (r ^ key) * _M1  # splitmix64-style mixing (uint64 arrays wrap on overflow)
        z ^= z >> np.uint64(30)
        z *= _M2
        z ^= z >> np.uint64(27)
        z *= _M3
        z ^= z >> np.uint64(31)
        return z & self.mask

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self.half) | right

    def __call__(self, i: np.ndarray) -> np.ndarray:
        x = np.asarray(i, dtype=np.uint64).reshape(-1)
        out = self._feistel(x)
        n = np.uint64(self.n)
        bad = out >= n
        while bad.any():
            out[bad] = self._feistel(out[bad])
            bad = out >= n
        return out.astype(np.int64)


class _Windows:
    """The split's shards, memory-mapped, and the window numbering over them."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int):
        if seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {seq_len}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.seq_len = seq_len
        self.paths = list_shards(data_dir, split)
        self.shards = [open_shard(p) for p in self.paths]
        counts = [int(s.shape[0]) for s in self.shards]
        per_shard = [max(0, (c - 1) // seq_len) for c in counts]
        self.starts = np.concatenate(([0], np.cumsum(per_shard))).astype(np.int64)  # one entry per shard
        self.num_windows = int(self.starts[-1])
        self.num_tokens = sum(counts)
        self.vocab_size = _meta_vocab_size(self.data_dir)
        if self.num_windows == 0:
            raise DataError(f"split '{split}' in {self.data_dir} has {self.num_tokens:,} tokens (largest shard "
                            f"{max(counts):,}), fewer than one window of seq_len + 1 = {seq_len + 1} tokens; "
                            "lower model.seq_len or prepare more data")

    def gather(self, windows: np.ndarray) -> np.ndarray:
        """int64 [len(windows), seq_len + 1]."""
        T = self.seq_len
        shard = np.searchsorted(self.starts, windows, side="right") - 1
        offset = (windows - self.starts[shard]) * T
        out = np.empty((len(windows), T + 1), dtype=np.int64)
        for b in range(len(windows)):
            o = int(offset[b])
            out[b] = self.shards[int(shard[b])][o:o + T + 1]
        # A damaged shard body reads as ids past the vocabulary: stop here, naming the
        # file, instead of an index error deep in the model (or, on GPU, garbage).
        if self.vocab_size is not None and out.size and int(out.max()) >= self.vocab_size:
            b = int(np.argmax(out.max(axis=1)))
            raise DataError(f"token shard {self.paths[int(shard[b])]} holds token id {int(out[b].max())} outside "
                            f"the vocabulary ({self.vocab_size} tokens, per {self.data_dir / 'meta.json'}): the "
                            "shard is corrupt; re-run `scalelab data CONFIG --overwrite`")
        return out


def _meta_vocab_size(data_dir: Path) -> int | None:
    """The tokenizer's vocabulary size recorded in meta.json (None for bare public shards)."""
    if not (data_dir / "meta.json").is_file():
        return None
    from scalelab.data.prepare import load_meta

    info = load_meta(data_dir).get("tokenizer") or {}
    v = info.get("vocab_size")
    return int(v) if isinstance(v, int) and v > 0 else None


def _split_xy(w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(w[:, :-1])), torch.from_numpy(np.ascontiguousarray(w[:, 1:]))


class TokenLoader:
    """Micro-batches (x, y), int64 [micro_batch, seq_len], from `<data_dir>/<split>_*.bin`."""

    BLOCK = 4096  # stream positions whose windows are computed together (constant memory)

    def __init__(self, data_dir: str | Path, split: str, micro_batch: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if micro_batch < 1:
            raise DataError(f"micro_batch must be >= 1, got {micro_batch}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        self._w = _Windows(data_dir, split, seq_len)
        self.split = split
        self.micro_batch = micro_batch
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self._consumed = 0  # global micro-batches consumed by all ranks together
        self._perms: dict[int, WindowPermutation] = {}
        self._blocks: dict[int, np.ndarray] = {}

    # -- sizes and progress

    @property
    def num_windows(self) -> int:
        return self._w.num_windows

    @property
    def tokens_per_epoch(self) -> int:
        """Training tokens (targets) in one pass over the split's windows."""
        return self._w.num_windows * self.seq_len

    @property
    def epochs_consumed(self) -> float:
        return self._consumed * self.micro_batch / self._w.num_windows

    @property
    def epoch(self) -> int:
        """Completed passes over the split by the whole job (all ranks)."""
        return (self._consumed * self.micro_batch) // self._w.num_windows

    # -- batches

    def _perm(self, epoch: int) -> WindowPermutation:
        p = self._perms.get(epoch)
        if p is None:
            if len(self._perms) > 4:
                self._perms.clear()
            p = self._perms[epoch] = WindowPermutation(self._w.num_windows, self.seed, epoch)
        return p

    def _block(self, block: int) -> np.ndarray:
        """Window indices of stream positions [block*BLOCK, (block+1)*BLOCK), cached:
        evaluating the permutation on many positions at once amortizes numpy overhead."""
        out = self._blocks.get(block)
        if out is None:
            n = self._w.num_windows
            pos = block * self.BLOCK + np.arange(self.BLOCK, dtype=np.int64)
            epochs, j = pos // n, pos % n
            if self.shuffle:
                out = np.empty_like(j)
                for e in np.unique(epochs):
                    m = epochs == e
                    out[m] = self._perm(int(e))(j[m])
            else:
                out = j
            if len(self._blocks) >= 2:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[block] = out
        return out

    def windows_for(self, global_micro_batch: int) -> np.ndarray:
        """Window indices of global micro-batch g (for tests and inspection)."""
        start = global_micro_batch * self.micro_batch
        stop = start + self.micro_batch
        parts = []
        while start < stop:
            block, off = divmod(start, self.BLOCK)
            take = min(stop - start, self.BLOCK - off)
            parts.append(self._block(block)[off:off + take])
            start += take
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self._consumed + self.rank
        self._consumed += self.world_size
        return _split_xy(self._w.gather(self.windows_for(g)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    # -- checkpointing

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "split": self.split, "position": self._consumed,
                "windows_consumed": self._consumed * self.micro_batch, "epoch": self.epoch,
                "micro_batch": self.micro_batch, "seq_len": self.seq_len, "seed": self.seed,
                "shuffle": self.shuffle, "num_windows": self._w.num_windows, "world_size": self.world_size}

    def load_state_dict(self, d: dict) -> None:
        try:
            windows = int(d["windows_consumed"])
            mine = {"seq_len": self.seq_len, "seed": self.seed, "shuffle": self.shuffle,
                    "num_windows": self._w.num_windows}
            diff = [f"{k} {d[k]!r} -> {v!r}" for k, v in mine.items() if d[k] != v]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"loader state is malformed (missing/invalid {e}); the checkpoint's state.json "
                            "is damaged") from None
        if diff:
            raise DataError(f"cannot resume the '{self.split}' loader: the saved position was for other data or "
                            f"settings ({', '.join(diff)}); resume with the same data dir, model.seq_len and seed")
        if windows % self.micro_batch:
            raise DataError(f"cannot resume: {windows} windows were consumed, not a multiple of micro_batch "
                            f"{self.micro_batch}; resume with train.micro_batch={d.get('micro_batch')}")
        self._consumed = windows // self.micro_batch


def iter_eval_batches(data_dir: str | Path, split: str, micro_batch: int, seq_len: int,
                      max_tokens: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows in order from the start of the split, max(1, max_tokens //
    seq_len) windows at most, in batches of micro_batch (the last may be smaller)."""
    if micro_batch < 1:
        raise DataError(f"micro_batch must be >= 1, got {micro_batch}")
    w = _Windows(data_dir, split, seq_len)  # validated now, not at the first next()
    total = min(w.num_windows, max(1, max_tokens // seq_len))
    return _eval_batches(w, micro_batch, total)


def _eval_batches(w: _Windows, micro_batch: int, total: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, total, micro_batch):
        idx = np.arange(start, min(start + micro_batch, total), dtype=np.int64)
        yield _split_xy(w.gather(idx))
