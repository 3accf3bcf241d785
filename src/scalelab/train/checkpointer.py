"""The trainer's checkpointer: when to save, and what a checkpoint of a run holds (full
model and optimizer state from every rank, each rank's loader position and RNG state,
the EMA weights), written atomically by train/checkpoint.py on rank 0."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from scalelab.io import git_hash, software_versions
from scalelab.train import checkpoint as ckpt_io
from scalelab.train.distributed import DistInfo, all_gather_objects, barrier
from scalelab.train.rng import rng_state


class Checkpointer:
    def __init__(self, out_dir: Path, cfg, info: DistInfo, model, optimizers, loader, parallel: str,
                 after_save=None):
        self.out_dir, self.cfg, self.info = out_dir, cfg, info
        self.model, self.optimizers, self.loader = model, optimizers, loader
        self.parallel = parallel
        self.after_save = after_save  # train.ckpt_samples (train/samples.py), rank 0 only

    def should_save(self, step: int, done: bool) -> bool:
        return step % self.cfg.train.ckpt_every == 0 or done

    def save(self, state: dict[str, Any], model_cfg, raw_model, ema=None, is_best: bool = False) -> None:
        """Write checkpoint `state["step"]`; `state` holds the run's counters (step, tokens_seen,
        train_time, best_val_loss, tokenizer_identity). Every rank must call it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(self.model, options=opts)
        optim_sd = get_optimizer_state_dict(self.model, self.optimizers, options=opts)
        loader_states = all_gather_objects(self.loader.state_dict())
        rng_states = all_gather_objects(rng_state())
        if self.info.is_main:
            full = {**state, "world_size": self.info.world_size, "loader": loader_states, "rng": rng_states,
                    "model_config": dataclasses.asdict(model_cfg), "config": self.cfg.to_dict(),
                    "git": git_hash(), "versions": software_versions()}
            extra = {}
            if ema is not None:
                extra["ema.safetensors"] = ema.module.state_dict()
                full["ema_updates"] = int(ema.n_averaged.item())
            t = self.cfg.train
            ckpt = ckpt_io.save_checkpoint(self.out_dir, state["step"], model_sd, optim_sd, full, is_best=is_best,
                                           keep_last=t.ckpt_keep, keep_every=t.ckpt_keep_every, extra_weights=extra)
            if self.after_save is not None:  # FSDP: samples from model_sd
                self.after_save(ckpt, model_sd, None if self.parallel == "fsdp" else raw_model)
        barrier()
