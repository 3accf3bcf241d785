"""The training loop: data -> model -> AdamW steps, with eval, checkpoints and exact resume.

`train(cfg)` is the library entry point (`scalelab train` calls it; so do the study and
the tests). It runs in one process or under torchrun; every rank executes the same code,
rank 0 alone writes files.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalelab.config import RunConfig
from scalelab.errors import CheckpointError, ConfigError, TrainingError
from scalelab.io import atomic_write_json, atomic_write_text, git_hash, software_versions
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.model.sizing import count_params, flops_per_token
from scalelab.train import checkpoint as ckpt_io
from scalelab.train import resume as resume_io
from scalelab.train.checkpointer import Checkpointer
from scalelab.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_float,
    cleanup,
    init_distributed,
    no_grad_sync,
    on_main,
    parallelize,
    resolve_parallel,
)
from scalelab.train.evaluator import Evaluator
from scalelab.train.hooks import TrainHooks, check_hooks
from scalelab.train.host_memory import host_memory_state, keep_freed_host_memory
from scalelab.train.logging import Progress, RunLogger, truncate_metrics
from scalelab.train.oom import OOM_HINT, is_oom
from scalelab.train.optim import build_optimizer, set_lr
from scalelab.train.rng import set_rng_state
from scalelab.train.samples import CheckpointSampler
from scalelab.train.schedule import lr_at
from scalelab.train.throughput import ThroughputMeter


def train(cfg: RunConfig, device: str | None = None, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by `cfg`; returns the summary dict. `hooks`:
    eval's task scores and samples (eval.train_hooks), needed by train.eval_tasks / ckpt_samples."""
    hooks = check_hooks(cfg, hooks)
    info = init_distributed(device)
    try:
        return Trainer(cfg, info, hooks).run()
    finally:
        cleanup()


# ---------------------------------------------------------------------------
# set-up helpers


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.dtype=bf16 but this GPU has no bf16 support; use train.dtype=fp32")
        return torch.bfloat16
    # auto: bf16 on GPUs that have it; fp32 on CPU, where bf16 matmuls can be several
    # times slower (measure with bench/bench_train.py before choosing bf16 there).
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def ensure_data(cfg: RunConfig, info: DistInfo) -> dict[str, Any]:
    """Prepare shards on rank 0 if the data dir has none yet; return its meta."""
    from scalelab.data.prepare import load_meta, prepare_data

    from scalelab.data.shards import list_shards
    from scalelab.errors import DataError as _DataError

    data_dir = Path(cfg.data.dir)
    try:  # our own names and the public ones (e.g. fineweb_train_000001.bin)
        has_shards = data_dir.is_dir() and bool(list_shards(data_dir, "train"))
    except _DataError:
        has_shards = False
    if not has_shards and info.is_main:
        prepare_data(cfg.data, progress=cfg.train.progress)
    barrier()
    return load_meta(data_dir)


def _tokenizer_info(meta: dict[str, Any]) -> dict[str, Any]:
    tok = meta.get("tokenizer") or {}
    return tok if isinstance(tok, dict) else {}


# ---------------------------------------------------------------------------


def ema_with_warmup(decay: float):
    """EMA update whose decay warms up as min(decay, (1 + n) / (10 + n)) after n updates.

    A fixed decay d keeps weight d^n on the first weights it saw: with d = 0.997, 180 steps
    in it is still 58% the early model (measured: it cost 0.5 bpb in a short GPU golf run).
    The warm-up (as TensorFlow's ExponentialMovingAverage with num_updates) makes the
    average cover about the last n/10..1/(1-d) steps instead."""
    def update(ema_params, params, num_averaged):
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(ema_params, params, weight)
    return update


class Trainer:
    def __init__(self, cfg: RunConfig, info: DistInfo, hooks: TrainHooks | None = None):
        self.cfg = cfg
        self.info = info
        self.hooks = check_hooks(cfg, hooks)
        self.out_dir = Path(cfg.out_dir)
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.start = self._prepare_out_dir()

        # Data first: the vocabulary size comes from the tokenizer.
        self.meta = ensure_data(cfg, info)
        tok = _tokenizer_info(self.meta)
        vocab = cfg.model.vocab_size or tok.get("vocab_size")
        if not vocab:
            raise ConfigError(f"data dir '{cfg.data.dir}' has no tokenizer metadata (public shards?): "
                              f"set model.vocab_size=... (e.g. 50257 for GPT-2 BPE, 1024 for sp1024)")
        self.model_cfg: GPTConfig = dataclasses.replace(cfg.model, vocab_size=int(vocab))
        self.model_cfg.validate()
        self.tokenizer_identity = tok.get("identity")
        self.token_bytes = self._load_token_bytes()

        # Batch geometry.
        per_micro = t.micro_batch * self.model_cfg.seq_len * info.world_size
        if t.batch_tokens % per_micro:
            raise ConfigError(
                f"train.batch_tokens ({t.batch_tokens}) must be a multiple of micro_batch*seq_len*world_size "
                f"({per_micro}) with {info.world_size} processes")
        self.grad_accum = t.batch_tokens // per_micro
        self.total_steps = self._total_steps()

        # Model, parallelism, optimizer.
        self.device = info.device
        if self.device.type == "cpu":  # activations re-faulted every step cost 2-3x in elementwise ops
            keep_freed_host_memory()
        self.dtype = resolve_dtype(t.dtype, self.device)
        self.parallel = resolve_parallel(t, info)
        torch.manual_seed(cfg.seed)  # identical init on every rank
        random.seed(cfg.seed)
        raw = GPT(self.model_cfg).to(self.device)
        self.raw_model = raw
        self.model = parallelize(raw, t, info, self.dtype)
        self.optimizers = build_optimizer(self.model, t, self.device.type)
        self.autocast = self.dtype == torch.bfloat16 and self.parallel != "fsdp"
        self.ema = None
        if t.ema_decay:
            from torch.optim.swa_utils import AveragedModel

            self.ema = AveragedModel(raw, multi_avg_fn=ema_with_warmup(t.ema_decay), use_buffers=False)

        from scalelab.data.loader import TokenLoader
        from scalelab.data.prefetch import make_loader

        self.loader = make_loader(
            TokenLoader(cfg.data.dir, "train", t.micro_batch, self.model_cfg.seq_len,
                        rank=info.rank, world_size=info.world_size, seed=cfg.seed),
            workers=t.loader_workers, prefetch_factor=t.prefetch_factor, pin_memory=t.pin_memory)
        self.sizes = count_params(self.model_cfg)
        self.flops_per_token = flops_per_token(self.model_cfg, self.model_cfg.seq_len)

        # The components that own their timing: checkpoints, evaluation, throughput.
        sampler = (CheckpointSampler(self.out_dir, cfg.data.dir, self.model_cfg, self.device, self.hooks.sample,
                                     wandb=t.wandb) if t.ckpt_samples and info.is_main else None)
        self.checkpointer = Checkpointer(self.out_dir, cfg, info, self.model, self.optimizers, self.loader,
                                         self.parallel, after_save=sampler)
        self.evaluator = Evaluator(cfg, info, self.model_cfg.seq_len, self.autocast, self.parallel,
                                   self.token_bytes, self.hooks)
        self.meter = ThroughputMeter(self.flops_per_token, info.world_size, compiled=bool(t.compile))

        self.step = 0
        self.tokens_seen = 0
        if self.start.resume:
            self._maybe_resume()

    # -- set-up ------------------------------------------------------------

    def _prepare_out_dir(self) -> resume_io.Start:
        def prepare() -> resume_io.Start:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                probe = self.out_dir / ".write-test"
                probe.write_text("ok")
                probe.unlink()
            except OSError as e:
                raise ConfigError(f"out_dir '{self.out_dir}' is not writable ({e.strerror or e}); "
                                  f"choose another with out_dir=...") from None
            start = resume_io.plan_start(self.out_dir, self.cfg.train.resume, self.cfg.train.reuse_out_dir)
            ckpt_io.clean_stale(self.out_dir)  # torn writes of a killed run (its first save, too)
            if start.reset_logs:
                resume_io.reset_logs(self.out_dir)
            for note in start.notes:
                print(f"note: {note}", flush=True)
            return start

        return on_main(self.info, prepare)

    def _load_token_bytes(self) -> torch.Tensor | None:
        from scalelab.data.prepare import load_data_tokenizer

        tokenizer = load_data_tokenizer(self.cfg.data.dir)
        if tokenizer is None:
            return None
        return torch.as_tensor(np.asarray(tokenizer.token_bytes(), dtype=np.int64))

    def _total_steps(self) -> int | None:
        t = self.cfg.train
        candidates = []
        if t.max_steps is not None:
            candidates.append(t.max_steps)
        if t.max_tokens is not None:
            candidates.append(max(1, math.ceil(t.max_tokens / t.batch_tokens)))
        return min(candidates) if candidates else None

    def _maybe_resume(self) -> None:
        def pick() -> tuple[Path, list[str]]:
            path, _, notes = resume_io.choose_checkpoint(self.out_dir, self.start.resume)
            return path, notes

        path, notes = on_main(self.info, pick)
        state = ckpt_io.load_state(path)
        resume_io.check_compatible(path, state, dataclasses.asdict(self.model_cfg), self.tokenizer_identity,
                                   self.cfg.data.dir)
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        # choose_checkpoint verified every file's checksum; the loads need not hash them again.
        weights = ckpt_io.load_weights(path / ckpt_io.MODEL_FILE, verify=False)
        try:
            set_model_state_dict(self.model, weights)
            optim = ckpt_io.load_optimizer(path, verify=False)
            if optim is not None:
                set_optimizer_state_dict(self.model, self.optimizers, optim)
            if self.ema is not None:
                ema_path = path / "ema.safetensors"
                if ema_path.is_file():
                    self.ema.module.load_state_dict(ckpt_io.load_weights(ema_path, verify=False))
                    self.ema.n_averaged.fill_(state.get("ema_updates", self.step))
                else:
                    self.ema = type(self.ema)(self.raw_model, multi_avg_fn=self.ema.multi_avg_fn, use_buffers=False)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit this model: {str(e).splitlines()[0]}") from None
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.meter.train_time = state.get("train_time", 0.0)
        self.evaluator.best_val = state.get("best_val_loss") or math.inf
        # The loader position is global (all ranks together), so rank 0's state serves any world size.
        self.loader.load_state_dict(state["loader"][0])
        set_rng_state(state["rng"][self.info.rank % len(state["rng"])])
        if self.info.is_main:
            for note in notes:
                print(f"note: {note}", flush=True)
            dropped = truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
            print(f"resumed from {path} at step {self.step} ({self.tokens_seen:,} tokens)"
                  + (f"; dropped {dropped} metrics records after step {self.step}" if dropped else ""), flush=True)

    # -- the components' work -------------------------------------------------

    @property
    def train_time(self) -> float:
        return self.meter.train_time

    @property
    def best_val(self) -> float:
        return self.evaluator.best_val

    def save(self, is_best: bool = False) -> None:
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_time": self.train_time,
                 "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                 "tokenizer_identity": self.tokenizer_identity}
        self.checkpointer.save(state, self.model_cfg, self.raw_model, self.ema, is_best=is_best)
        self.meter.pause()  # checkpoint time is not billed to throughput

    def evaluate(self) -> dict[str, float]:
        return self.evaluator.evaluate(self.model, self.raw_model, self.ema)

    # -- the loop ------------------------------------------------------------

    def _peak_flops(self) -> float | None:
        from scalelab.train.hardware import gpu_peak_flops, measure_matmul_peak

        if self.device.type == "cuda":
            return gpu_peak_flops(self.device)
        if not self.info.is_main:
            return None
        return measure_matmul_peak(dtype=self.dtype, seconds=0.3)

    def _progress_value(self, elapsed: float) -> float | None:
        """Schedule progress when a wall-clock cap ends the run before a step count does."""
        t = self.cfg.train
        if t.max_time_s is None:
            return None
        by_time = elapsed / t.max_time_s
        by_steps = (self.step - t.warmup_steps) / max(1, self.total_steps - t.warmup_steps) if self.total_steps else 0.0
        return broadcast_float(max(by_time, by_steps), self.device)

    def _done(self) -> bool:
        t = self.cfg.train
        if self.total_steps is not None and self.step >= self.total_steps:
            return True
        if t.max_time_s is not None:
            return broadcast_float(1.0 if self.train_time >= t.max_time_s else 0.0, self.device) > 0.5
        return False

    def run(self) -> dict[str, Any]:
        t = self.cfg.train
        logger, progress = self._open_logs()
        last_eval: dict[str, float] = {}
        try:
            while not self._done():
                step_start = time.perf_counter()
                lr = self._set_lr()
                loss_sum, grad_norm = self._train_step()
                self.step += 1
                self.tokens_seen += t.batch_tokens
                self.meter.step_done(t.batch_tokens, time.perf_counter() - step_start)
                self._log_step(logger, progress, self._checked(loss_sum.item()), lr, grad_norm, step_start)
                done = self._done()
                if self.evaluator.should_eval(self.step, done):
                    last_eval, is_best = self._evaluate_and_log(logger, progress)
                    if t.keep_best and is_best:
                        self.save(is_best=True)
                        continue
                if self.checkpointer.should_save(self.step, done):
                    self.save()
        except RuntimeError as e:
            if is_oom(e):
                raise TrainingError(f"{OOM_HINT} (at step {self.step + 1})") from None
            raise
        finally:
            progress.close()
            logger.close()
        if not last_eval:  # resumed a finished run: report its final numbers
            last_eval = self.evaluate()
        return self._summary(last_eval)

    def _log_step(self, logger: RunLogger, progress: Progress, loss: float, lr: float, grad_norm: float | None,
                  step_start: float) -> None:
        """metrics.jsonl gets every step; tok_s / mfu and the progress line every log_every."""
        t = self.cfg.train
        record = {"kind": "train", "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens": self.tokens_seen, "time": round(self.train_time, 4),
                  "step_time": round(time.perf_counter() - step_start, 6)}
        if self.step % t.log_every == 0 or self.step == self.total_steps:
            record.update(self.meter.report())
            progress.update(t.log_every if self.step % t.log_every == 0 else self.step % t.log_every,
                            loss=loss, tok_s=record.get("tok_s"), mfu=record.get("mfu"), lr=f"{lr:.2e}")
        logger.log(record)

    def _evaluate_and_log(self, logger: RunLogger, progress: Progress) -> tuple[dict[str, float], bool]:
        result = self.evaluate()
        is_best = self.evaluator.is_best(result)
        logger.log({"kind": "eval", "step": self.step, "tokens": self.tokens_seen, **result})
        progress.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()
                                                          if isinstance(v, float)))
        return result, is_best

    def _set_lr(self) -> float:
        """The schedule's lr for this step, set on every optimizer; then TrainHooks.before_step
        (e.g. golf's QAT switch)."""
        t = self.cfg.train
        lr = lr_at(self.step, self.total_steps or 0, t, self._progress_value(self.train_time))
        set_lr(self.optimizers, lr / t.lr)
        if self.hooks.before_step is not None:
            self.hooks.before_step(self.raw_model, self.step, self._progress_value(self.train_time))
        return lr

    def _checked(self, loss: float) -> float:
        if not math.isfinite(loss):
            raise TrainingError(
                f"loss is {loss} at step {self.step}; stopped. The last good checkpoint is kept in "
                f"'{ckpt_io.checkpoint_root(self.out_dir)}'. Try a lower train.lr, train.grad_clip=1.0, "
                f"or a longer train.warmup_steps")
        return loss

    def _open_logs(self) -> tuple[RunLogger, Progress]:
        """config.yaml, the metrics logger and the progress line (with the run's header)."""
        cfg, t, info = self.cfg, self.cfg.train, self.info
        if info.is_main:
            import yaml

            atomic_write_text(self.out_dir / "config.yaml",
                              resume_io.RUN_HEADER + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        logger = RunLogger(self.out_dir, info.is_main, cfg.to_dict(), tensorboard=t.tensorboard,
                           wandb=t.wandb, wandb_project=t.wandb_project)
        progress = Progress(self.total_steps, self.step, info.is_main and t.progress)
        self.meter.peak_flops = self._peak_flops()
        if info.is_main:
            epochs = (self.total_steps or 0) * t.batch_tokens / max(1, self.loader.tokens_per_epoch)
            progress.write(
                f"model: {self.sizes['total']:,} params ({self.sizes['non_embedding']:,} non-embedding), "
                f"{self.model_cfg.n_layer}x{self.model_cfg.d_model}, seq {self.model_cfg.seq_len}, "
                f"vocab {self.model_cfg.vocab_size} | batch {t.batch_tokens:,} tokens = {info.world_size} proc x "
                f"{t.micro_batch} x {self.model_cfg.seq_len} x {self.grad_accum} accum | {self.dtype} "
                f"{self.parallel} on {self.device.type} | "
                + (f"{self.total_steps} steps, {epochs:.2f} epochs of {self.loader.tokens_per_epoch:,} train tokens"
                   if self.total_steps else f"time cap {t.max_time_s}s"))
            if epochs > 4:
                progress.write(f"warning: this run repeats the training data {epochs:.1f} times; past ~4 epochs "
                               f"repeated tokens are worth much less than fresh ones (Muennighoff et al. 2023)")
        self.meter.pause()  # set-up is not billed to the first window
        return logger, progress

    def _summary(self, last_eval: dict[str, float]) -> dict[str, Any]:
        summary = {
            "out_dir": str(self.out_dir),
            "steps": self.step,
            "tokens": self.tokens_seen,
            "train_time_s": self.train_time,
            "compile_time_s": self.meter.compile_time,
            "params": self.sizes["total"],
            "non_embedding_params": self.sizes["non_embedding"],
            "flops_per_token": self.flops_per_token,
            "epochs": self.tokens_seen / max(1, self.loader.tokens_per_epoch),
            "world_size": self.info.world_size,
            "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
            **last_eval,
            "model_config": dataclasses.asdict(self.model_cfg),
            "tokenizer_identity": self.tokenizer_identity,
            "git": git_hash(),
            "versions": software_versions(),
            "host_memory": host_memory_state(),  # train/host_memory.py: it changes CPU step times
        }
        if self.info.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
        return summary

    def _train_step(self) -> tuple[torch.Tensor, float | None]:
        t = self.cfg.train
        total = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum):
            x, y = self.loader.next_batch()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with no_grad_sync(self.model, sync=micro == self.grad_accum - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                    loss = self.model(x, y)
                (loss / self.grad_accum).backward()
            total += loss.detach()
        grad_norm = None
        if t.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        return all_reduce_mean(total / self.grad_accum), grad_norm
