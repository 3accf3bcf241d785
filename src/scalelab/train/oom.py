"""Out-of-memory: how to recognise it and the one message that names the knobs to turn."""
from __future__ import annotations

import torch

OOM_HINT = ("out of memory. Lower train.micro_batch (train.batch_tokens stays the same: accumulation "
            "grows), lower model.seq_len, or set train.activation_checkpointing=true")


def is_oom(err: BaseException) -> bool:
    """torch's OutOfMemoryError, or a RuntimeError saying so (CPU allocators, older torch)."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()
