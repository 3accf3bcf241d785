"""Background batch preparation for TokenLoader with torch's DataLoader (workers, pinning).

The batch stream stays exactly TokenLoader's: local batch i of this rank is global
micro-batch `start + i * world_size + rank`, and DataLoader returns the batches of its
workers round-robin in order, so results and resume positions do not depend on the
number of workers. With workers=0 the plain in-process loader is used.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scalelab.data.loader import TokenLoader, _split_xy


class _Stream(IterableDataset):
    def __init__(self, loader: TokenLoader, start: int):
        self.loader = loader
        self.start = start  # global micro-batches consumed before this stream

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        L = self.loader
        i = worker
        while True:
            g = self.start + i * L.world_size + L.rank
            yield _split_xy(L._w.gather(L.windows_for(g)))
            i += n_workers


class PrefetchLoader:
    """TokenLoader's interface (next_batch, state_dict, load_state_dict) with prefetching."""

    def __init__(self, loader: TokenLoader, workers: int, prefetch_factor: int = 2, pin_memory: bool = False):
        self.loader = loader
        self.workers = workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self._it = None

    def __getattr__(self, name):  # sizes and progress come from the wrapped loader
        return getattr(self.loader, name)

    def _start(self) -> None:
        dl = DataLoader(_Stream(self.loader, self.loader._consumed), batch_size=None, num_workers=self.workers,
                        prefetch_factor=self.prefetch_factor if self.workers else None,
                        pin_memory=self.pin_memory, persistent_workers=False)
        self._it = iter(dl)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._start()
        batch = next(self._it)
        self.loader._consumed += self.loader.world_size
        return batch

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.loader.load_state_dict(d)
        self._it = None  # restart the workers at the restored position


def make_loader(loader: TokenLoader, workers: int = 0, prefetch_factor: int = 2, pin_memory: bool = False):
    if workers <= 0 and not pin_memory:
        return loader
    return PrefetchLoader(loader, workers, prefetch_factor, pin_memory)
