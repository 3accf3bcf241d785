"""The in-training evaluator: when to evaluate, val loss / perplexity / bits-per-byte, and
the zero-shot task scores of `train.eval_tasks` (through TrainHooks.task_scores)."""
from __future__ import annotations

import math

import torch

from scalelab.config import RunConfig
from scalelab.errors import ConfigError, DataError
from scalelab.train.distributed import DistInfo
from scalelab.train.hooks import TrainHooks


class Evaluator:
    def __init__(self, cfg: RunConfig, info: DistInfo, seq_len: int, autocast: bool, parallel: str,
                 token_bytes: torch.Tensor | None, hooks: TrainHooks):
        self.cfg, self.info, self.seq_len = cfg, info, seq_len
        self.autocast, self.parallel, self.hooks = autocast, parallel, hooks
        self.device = info.device
        self.token_bytes = token_bytes
        self.best_val = math.inf  # the lowest val loss so far (restored on resume)
        self._task_tokenizer = None

    def should_eval(self, step: int, done: bool) -> bool:
        return step % self.cfg.train.eval_every == 0 or done

    def is_best(self, result: dict[str, float]) -> bool:
        """Whether `result` is the best val loss so far (and remember it)."""
        if result["val_loss"] < self.best_val:
            self.best_val = result["val_loss"]
            return True
        return False

    @torch.no_grad()
    def evaluate(self, model, raw_model, ema=None) -> dict[str, float]:
        """Val loss / perplexity / bits-per-byte on the first eval_tokens of the val split
        (of the EMA weights when there are some), plus the task scores.

        Batches are dealt round-robin to ranks; a rank with none left runs a zero-weight
        batch so collective calls (FSDP all-gathers) stay in step.
        """
        from scalelab.data.loader import iter_eval_batches

        t = self.cfg.train
        model = ema.module if ema is not None else model
        model.eval()
        batches = list(iter_eval_batches(self.cfg.data.dir, "val", t.micro_batch, self.seq_len, t.eval_tokens))
        if not batches:
            raise DataError(f"val split of '{self.cfg.data.dir}' has no full window of {self.seq_len + 1} tokens")
        W = self.info.world_size
        per_rank = math.ceil(len(batches) / W)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # nats, tokens, bytes
        for i in range(per_rank):
            idx = i * W + self.info.rank
            weight = 1.0 if idx < len(batches) else 0.0
            x, y = batches[min(idx, len(batches) - 1)]
            x, y = x.to(self.device), y.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                losses = model(x, y, reduction="none").float()
            sums[0] += weight * losses.double().sum()
            sums[1] += weight * y.numel()
            if self.token_bytes is not None:
                sums[2] += weight * self.token_bytes.to(self.device)[y].sum()
        if self.info.enabled:
            torch.distributed.all_reduce(sums)
        model.train()
        loss = (sums[0] / sums[1]).item()
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": int(sums[1].item())}
        if self.token_bytes is not None and sums[2] > 0:
            out["val_bpb"] = (sums[0] / (math.log(2) * sums[2])).item()
        target = ema.module if ema is not None else (model if self.parallel == "fsdp" else raw_model)
        out.update(self._task_metrics(target))
        return out

    def _task_metrics(self, target) -> dict[str, float]:
        """Zero-shot task accuracy on a fixed subset (train.eval_tasks), logged as task_<name>."""
        t = self.cfg.train
        if not t.eval_tasks:
            return {}
        from scalelab.data.prepare import load_data_tokenizer

        if self._task_tokenizer is None:
            self._task_tokenizer = load_data_tokenizer(self.cfg.data.dir)
            if self._task_tokenizer is None:
                raise ConfigError(f"train.eval_tasks needs a tokenizer, and data dir '{self.cfg.data.dir}' has "
                                  f"none; set train.eval_tasks=[] or use data prepared by `scalelab data`")
        # Under FSDP the forward is collective: every rank scores the same requests.
        if self.parallel != "fsdp" and not self.info.is_main:
            return {}
        scores = self.hooks.task_scores(target, self._task_tokenizer, list(t.eval_tasks), limit=t.eval_tasks_limit,
                                        device=self.device, seed=self.cfg.seed)
        return {f"task_{k}": float(v) for k, v in scores.items()}
