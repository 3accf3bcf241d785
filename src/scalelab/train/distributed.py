"""Process-group set-up and `parallelize`: the one place that knows about distribution.

Launch with `torchrun --nproc_per_node N -m scalelab train ...` (or any launcher that
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, e.g. SLURM + srun
with those exported). NCCL on GPU, gloo on CPU.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from scalelab.config import TrainConfig
from scalelab.errors import ConfigError, ScalelabError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Read the launcher's environment, pick the device and start the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None:  # the library path gets the CLI's check too: "tpu" never trains on the CPU
        from scalelab.train.hardware import resolve_device

        device = str(resolve_device(device))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def broadcast_float(value: float, device: torch.device) -> float:
    """Rank 0 decides (e.g. wall-clock progress) and every rank follows, so none diverges or hangs."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def all_gather_objects(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(info: DistInfo, fn):
    """Run `fn` on rank 0 and hand its result (or its ScalelabError) to every rank, so a user
    error found on rank 0 stops every rank with the same message."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except ScalelabError as e:
            error = e
    result, error = all_gather_objects((result, error))[0]
    if error is not None:
        raise error
    return result


def _checkpoint_block(block: nn.Module) -> None:
    """Recompute a block's activations in backward (trade compute for memory).

    Patching forward keeps parameter names unchanged (a wrapper module would add a
    prefix to every key of the state dict).
    """
    inner = block.forward

    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward


def resolve_parallel(cfg: TrainConfig, info: DistInfo) -> str:
    if cfg.parallel == "auto":
        return "ddp" if info.enabled else "none"
    if cfg.parallel in ("ddp", "fsdp") and not info.enabled:
        return "none"  # one process: nothing to shard or synchronize
    if cfg.parallel == "none" and info.enabled:
        raise ConfigError(
            f"train.parallel=none but {info.world_size} processes were launched; use ddp or fsdp"
        )
    return cfg.parallel


def parallelize(model: nn.Module, cfg: TrainConfig, info: DistInfo, param_dtype: torch.dtype) -> nn.Module:
    """Apply FP8 linears, activation checkpointing, torch.compile and DDP/FSDP2 to a built model.

    Order as in torchtitan: float8, checkpointing, then compile, then data parallelism.
    The model must expose `blocks` (an nn.ModuleList of transformer blocks).
    """
    mode = resolve_parallel(cfg, info)
    blocks = getattr(model, "blocks", [])
    if cfg.fp8:
        from scalelab.train.fp8 import enable_fp8

        enable_fp8(model, info.device)
    if cfg.activation_checkpointing:
        for block in blocks:
            _checkpoint_block(block)
    if cfg.compile:
        if mode == "fsdp":
            for block in blocks:
                block.compile()
        else:
            model.compile()
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids, bucket_cap_mb=cfg.ddp_bucket_mb)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for block in blocks:
            fully_shard(block, mp_policy=mp, reshard_after_forward=cfg.fsdp_reshard_after_forward)
        fully_shard(model, mp_policy=mp)
    return model


def parallel_mode(model: nn.Module) -> str:
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP):
        return "ddp"
    if isinstance(model, FSDPModule):
        return "fsdp"
    return "none"


def no_grad_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    mode = parallel_mode(model)
    if mode == "ddp" and not sync:
        return model.no_sync()
    if mode == "fsdp":
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if parallel_mode(model) == "ddp" else model
