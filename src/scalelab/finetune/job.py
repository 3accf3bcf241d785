"""The SFT loop: `finetune(cfg)` trains any HF causal LM on instruction data, in one process
or under torchrun (DDP / FSDP2), with eval loss on a held-out split, atomic checkpoints,
exact resume, metrics.jsonl, and a `save_pretrained` output at the end.

Batches: an optimizer step takes train.batch_rows rows (packed rows of data.max_length
tokens, or one padded example per row) from the run's row schedule; micro-step m of rank
r at step s reads rows [(s*A + m)*W + r] * micro_batch ... (A = accumulation, W = world
size), so 2 processes x 1 micro-step see the same rows as 1 process x 2. The loss is the
sum of cross-entropy over the step's response tokens divided by their count over the
whole step (every rank knows it from the schedule): the mean over tokens, not over rows.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from scalelab.errors import CheckpointError, ConfigError, TrainingError
from scalelab.finetune.config import FinetuneConfig
from scalelab.finetune.data import RowSchedule, collate, data_fingerprint, pack_rows, prepare_examples, read_records
from scalelab.finetune.gguf import resolve_model_path
from scalelab.finetune.model import (SFTModel, hf_attn, load_hf_model, load_tokenizer, parallelize,
                                     resolve_attention, resolve_dtype, save_output, self_check, verify_output)
from scalelab.io import atomic_write_json, atomic_write_text, git_hash, software_versions
from scalelab.train import checkpoint as ckpt_io
from scalelab.train import resume as resume_io
from scalelab.train.distributed import (DistInfo, all_gather_objects, all_reduce_mean, barrier, cleanup,
                                        init_distributed, no_grad_sync, on_main, resolve_parallel)
from scalelab.train.logging import Progress, RunLogger, truncate_metrics
from scalelab.train.schedule import lr_at
from scalelab.train.oom import OOM_HINT, is_oom
from scalelab.train.rng import rng_state, set_rng_state


def finetune(cfg: FinetuneConfig, device: str | None = None) -> dict[str, Any]:
    """Fine-tune (or resume) the job described by `cfg`; returns the summary dict."""
    info = init_distributed(device)
    try:
        return FinetuneJob(cfg, info).run()
    finally:
        cleanup()


class FinetuneJob:
    def __init__(self, cfg: FinetuneConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        d, m, t = cfg.data, cfg.model, cfg.train
        self.out_dir = Path(cfg.out_dir)
        if t.threads:
            torch.set_num_threads(t.threads)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if cfg.output_dir.exists() and not t.resume:
            raise ConfigError(f"output dir '{cfg.output_dir}' already exists and is never overwritten; set "
                              "output.dir=... or out_dir=... to a new path")
        self.start = on_main(info, self._prepare_out_dir)
        self.device = info.device
        self.parallel = resolve_parallel(t, info)
        self.compute_dtype = resolve_dtype(m.dtype, self.device)
        # Trained weights stay fp32 (Adam on bf16 weights loses small updates); a frozen
        # LoRA base can live in the compute dtype. Under FSDP, compute casts via mp_policy.
        self.load_dtype = self.compute_dtype if m.lora else torch.float32
        self.autocast = self.compute_dtype == torch.bfloat16 and self.parallel != "fsdp"

        path = on_main(info, lambda: resolve_model_path(m.hf))  # a GGUF converts once, on rank 0
        self.model_path = path
        self.tokenizer = load_tokenizer(path, m.trust_remote_code)
        records = read_records(d.source, hf_config=d.hf_config, hf_split=d.hf_split, limit=d.max_examples)
        self.data = prepare_examples(records, self.tokenizer, d, model_name=m.hf)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.schedule = RowSchedule(self.data.train, d.max_length, d.packing, cfg.seed)
        self.fingerprint = data_fingerprint(self.data.train)

        per_micro = t.micro_batch * info.world_size
        if t.batch_rows % per_micro:
            raise ConfigError(f"train.batch_rows ({t.batch_rows}) must be a multiple of train.micro_batch x processes "
                              f"({t.micro_batch} x {info.world_size} = {per_micro})")
        self.grad_accum = t.batch_rows // per_micro
        steps = []
        if t.max_steps is not None:
            steps.append(t.max_steps)
        if t.epochs is not None:
            steps.append(max(1, math.ceil(t.epochs * self.schedule.rows_per_epoch / t.batch_rows)))
        self.total_steps = min(steps)

        torch.manual_seed(cfg.seed)  # the same LoRA init on every rank
        self.attn = resolve_attention(m.attn_implementation, self.device)
        lm = load_hf_model(m, path, self.load_dtype, self.attn)
        self.raw = SFTModel(lm).to(self.device)
        # A 4D block-diagonal mask (sdpa/eager); flash-attention kernels take the example
        # boundaries from the position ids instead.
        block_mask = "flash" not in (self.attn or "")
        self.check = self_check(self.raw, self.device, d.packing, len(self.tokenizer), block_mask)
        self.model = parallelize(self.raw, self.parallel, self.device, self.compute_dtype, compile=m.compile,
                                 reshard_after_forward=t.fsdp_reshard_after_forward, bucket_mb=t.ddp_bucket_mb)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ConfigError("nothing to train: every parameter is frozen; check model.lora_target_modules")
        fused = {"fused": True} if self.device.type == "cuda" else {"foreach": True}
        decay = [p for p in self.trainable if p.dim() >= 2]
        rest = [p for p in self.trainable if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [g for g in ({"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0})
             if g["params"]], lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, **fused)
        self.n_params = sum(p.numel() for p in self.raw.parameters())
        self.n_trainable = sum(p.numel() for p in self.raw.parameters() if p.requires_grad)
        self.step, self.tokens_seen, self.targets_seen, self.train_time = 0, 0, 0, 0.0
        self.best_val = math.inf
        if self.start.resume:
            self._resume()
        if cfg.output_dir.exists() and self.step < self.total_steps:  # only a finished run keeps its output
            raise ConfigError(f"output dir '{cfg.output_dir}' already exists and is never overwritten; move it away "
                              f"(or set output.dir=...) to train on from step {self.step}")

    # -- set-up ------------------------------------------------------------

    def _prepare_out_dir(self) -> resume_io.Start:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"out_dir '{self.out_dir}' is not writable ({e.strerror or e}); choose another "
                              "with out_dir=...") from None
        start = resume_io.plan_start(self.out_dir, self.cfg.train.resume, self.cfg.train.reuse_out_dir)
        ckpt_io.clean_stale(self.out_dir)
        if start.reset_logs:
            resume_io.reset_logs(self.out_dir)
        for note in start.notes:
            print(f"note: {note}", flush=True)
        return start

    def _identity(self) -> dict[str, Any]:
        m = self.cfg.model
        return {"hf": m.hf, "lora": m.lora, "lora_rank": m.lora_rank, "lora_alpha": m.lora_alpha,
                "lora_target_modules": list(m.lora_target_modules), "max_length": self.cfg.data.max_length,
                "packing": self.cfg.data.packing, "data_fingerprint": self.fingerprint}

    def _state_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        # LoRA: only the adapters (and their optimizer state) go into a checkpoint; the
        # frozen base comes from model.hf again.
        lora = self.cfg.model.lora
        return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=lora, strict=not lora)

    def _resume(self) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        path, notes = on_main(self.info, lambda: resume_io.choose_checkpoint(self.out_dir, self.start.resume)[::2])
        state = ckpt_io.load_state(path)
        resume_io.check_compatible(path, state, self._identity(), None, self.cfg.data.source)
        weights = ckpt_io.load_weights(path / ckpt_io.MODEL_FILE, verify=False)
        opts = self._state_options()
        try:
            set_model_state_dict(self.model, weights, options=opts)
            optim = ckpt_io.load_optimizer(path, verify=False)
            if optim is not None:
                set_optimizer_state_dict(self.model, self.optimizer, optim, options=opts)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit this model: {str(e).splitlines()[0]}") from None
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.targets_seen, self.train_time = state.get("targets_seen", 0), state.get("train_time", 0.0)
        self.best_val = state.get("best_val_loss") or math.inf
        set_rng_state(state["rng"][self.info.rank % len(state["rng"])])
        if self.info.is_main:
            for note in notes:
                print(f"note: {note}", flush=True)
            dropped = truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
            print(f"resumed from {path} at step {self.step}" + (f"; dropped {dropped} metrics records" if dropped else ""),
                  flush=True)

    def save(self, is_best: bool = False) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        opts = self._state_options()
        model_sd = get_model_state_dict(self.model, options=opts)
        optim_sd = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        rng = all_gather_objects(rng_state())
        if self.info.is_main:
            state = {"step": self.step, "tokens_seen": self.tokens_seen, "targets_seen": self.targets_seen,
                     "train_time": self.train_time, "world_size": self.info.world_size, "rng": rng,
                     "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                     "model_config": self._identity(), "config": self.cfg.to_dict(), "git": git_hash(),
                     "versions": software_versions(), "kind": "finetune"}
            ckpt_io.save_checkpoint(self.out_dir, self.step, model_sd, optim_sd, state, is_best=is_best,
                                    keep_last=self.cfg.train.ckpt_keep)
        barrier()

    # -- batches -----------------------------------------------------------

    def _width(self, rows) -> int:
        if self.cfg.data.packing:
            return self.cfg.data.max_length  # fixed shapes (torch.compile compiles once)
        longest = max(sum(len(e) for e in r) for r in rows)
        return min(self.cfg.data.max_length, -(-longest // 8) * 8)

    def _micro_rows(self, step: int, micro: int, rank: int):
        t, W = self.cfg.train, self.info.world_size
        chunk = (step * self.grad_accum + micro) * W + rank
        return [self.schedule.row(chunk * t.micro_batch + j) for j in range(t.micro_batch)]

    def _step_targets(self, step: int) -> int:
        rows = self.cfg.train.batch_rows
        return sum(self.schedule.targets(step * rows + j) for j in range(rows))

    def _to_device(self, batch):
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}

    def _forward(self, model, batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return model(batch["input_ids"], batch["position_ids"], batch.get("attention_mask"), batch["labels"])

    def train_step(self) -> tuple[float, float | None, int]:
        """One optimizer step; returns (mean loss per response token, grad norm, real tokens)."""
        t = self.cfg.train
        n_targets = self._step_targets(self.step)
        scale = self.info.world_size / max(1, n_targets)  # DDP/FSDP average over ranks: undo it
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        real = 0
        for micro in range(self.grad_accum):
            rows = self._micro_rows(self.step, micro, self.info.rank)
            batch = collate(rows, self._width(rows), self.pad_id, self.check["block_mask"])
            real += batch["real_tokens"]
            batch = self._to_device(batch)
            with no_grad_sync(self.model, sync=micro == self.grad_accum - 1):
                loss_sum = self._forward(self.model, batch)
                (loss_sum * scale).backward()
            total += loss_sum.detach().double()
        grad_norm = None
        if t.grad_clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(self.trainable, t.grad_clip)
            grad_norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(all_reduce_mean(total).item()) * self.info.world_size / max(1, n_targets)
        real_all = int(all_reduce_mean(torch.tensor(float(real), device=self.device)).item() * self.info.world_size)
        self.targets_seen += n_targets
        return loss, grad_norm, real_all

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean NLL per response token on the held-out split (its first train.eval_rows rows).
        Rows are dealt round-robin; a rank with none left runs a zero-weight batch so that
        FSDP's collective forward stays in step."""
        val = self.data.val
        if not val:
            return {}
        t, W = self.cfg.train, self.info.world_size
        rows = pack_rows([len(e) for e in val], self.cfg.data.max_length, self.cfg.data.packing, seed=0)[:t.eval_rows]
        chunks = [rows[i:i + t.micro_batch] for i in range(0, len(rows), t.micro_batch)]
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.model.eval()
        for i in range(math.ceil(len(chunks) / W)):
            idx = i * W + self.info.rank
            weight = 1.0 if idx < len(chunks) else 0.0
            chunk = [[val[j] for j in r] for r in chunks[min(idx, len(chunks) - 1)]]
            batch = self._to_device(collate(chunk, self._width(chunk), self.pad_id, self.check["block_mask"]))
            loss_sum = self._forward(self.model, batch)
            sums[0] += weight * loss_sum.double()
            sums[1] += weight * (batch["labels"] != -100).sum()
        self.model.train()
        if self.info.enabled:
            torch.distributed.all_reduce(sums)
        loss = (sums[0] / sums[1].clamp_min(1)).item()
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_targets": int(sums[1].item())}

    # -- the loop ----------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, t, info = self.cfg, self.cfg.train, self.info
        if info.is_main:
            import yaml

            atomic_write_text(self.out_dir / "config.yaml", resume_io.RUN_HEADER
                              + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            atomic_write_json(self.out_dir / "data_stats.json", self.data.stats)
        logger = RunLogger(self.out_dir, info.is_main, cfg.to_dict(), tensorboard=t.tensorboard, wandb=t.wandb,
                           wandb_project=t.wandb_project)
        progress = Progress(self.total_steps, self.step, info.is_main and t.progress, desc="finetune")
        s = self.data.stats
        if info.is_main:
            fill = s["train_tokens"] / max(1, self.schedule.rows_per_epoch * cfg.data.max_length)
            progress.write(
                f"finetune {cfg.model.hf}: {self.n_params:,} params, {self.n_trainable:,} trained "
                f"({'LoRA r=' + str(cfg.model.lora_rank) if cfg.model.lora else 'full'}) | {s['format']} data: "
                f"{s['train_examples']:,} train / {s['val_examples']:,} held-out examples, {s['truncated']} truncated "
                f"to {cfg.data.max_length} tokens, {self.schedule.rows_per_epoch:,} rows/epoch"
                + (f" ({100 * fill:.0f}% full)" if cfg.data.packing else "")
                + f" | {t.batch_rows} rows/step = {info.world_size} proc x {t.micro_batch} x {self.grad_accum} accum | "
                f"{self.compute_dtype} {self.parallel} on {self.device.type} | {self.total_steps} steps")
        last_eval: dict[str, float] = {}
        compiled = not cfg.model.compile
        if self.step == 0:  # the starting point, to compare the fine-tuned model with
            first = self.evaluate()
            if first:
                logger.log({"kind": "eval", "step": 0, "tokens": 0, **first})
                progress.write(f"step 0: val_loss {first['val_loss']:.4f}")
        try:
            window_start, window_tokens = time.perf_counter(), 0
            while self.step < self.total_steps:
                step_start = time.perf_counter()
                lr = lr_at(self.step, self.total_steps, t)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                loss, grad_norm, real = self.train_step()
                self.step += 1
                self.tokens_seen += real
                seconds = time.perf_counter() - step_start
                if not compiled:  # the compiling first step is billed to neither time nor tok/s
                    compiled, window_start, window_tokens = True, time.perf_counter(), 0
                else:
                    self.train_time += seconds
                    window_tokens += real
                if not math.isfinite(loss):
                    raise TrainingError(f"loss is {loss} at step {self.step}; stopped. The last good checkpoint is "
                                        f"kept in '{ckpt_io.checkpoint_root(self.out_dir)}'. Try a lower train.lr")
                record = {"kind": "train", "step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens": self.tokens_seen, "targets": self.targets_seen, "time": round(self.train_time, 4)}
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    dt = time.perf_counter() - window_start
                    record["tok_s"] = window_tokens / dt if window_tokens and dt > 0 else None
                    window_start, window_tokens = time.perf_counter(), 0
                    progress.update(t.log_every if self.step % t.log_every == 0 else self.step % t.log_every,
                                    loss=loss, tok_s=record["tok_s"], lr=f"{lr:.2e}")
                logger.log(record)
                done = self.step >= self.total_steps
                if self.step % t.eval_every == 0 or done:
                    last_eval = self.evaluate()
                    is_best = bool(last_eval) and last_eval["val_loss"] < self.best_val
                    if is_best:
                        self.best_val = last_eval["val_loss"]
                    if last_eval:
                        logger.log({"kind": "eval", "step": self.step, "tokens": self.tokens_seen, **last_eval})
                        progress.write(f"step {self.step}: val_loss {last_eval['val_loss']:.4f}")
                    if is_best:
                        self.save(is_best=True)
                        window_start = time.perf_counter()
                        continue
                if self.step % t.ckpt_every == 0 or done:
                    self.save()
                    window_start = time.perf_counter()
        except RuntimeError as e:
            if is_oom(e):
                raise TrainingError(f"{OOM_HINT.replace('model.seq_len', 'data.max_length')} "
                                    f"(at step {self.step + 1})") from None
            raise
        finally:
            progress.close()
            logger.close()
        if not last_eval:
            last_eval = self.evaluate()
        output = self._write_output()
        summary = {"out_dir": str(self.out_dir), "output": str(output), "steps": self.step,
                   "tokens": self.tokens_seen, "targets": self.targets_seen, "train_time_s": self.train_time,
                   "tok_s": self.tokens_seen / self.train_time if self.train_time else None,
                   "params": self.n_params, "trainable_params": self.n_trainable, "world_size": info.world_size,
                   "parallel": self.parallel, "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                   **last_eval, "data": self.data.stats, "self_check": self.check,
                   "attn_implementation": hf_attn(self.raw.lm), "git": git_hash(),
                   "versions": software_versions()}
        if info.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
        return summary

    def _write_output(self) -> Path:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        out = self.cfg.output_dir
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.info.is_main and not out.exists():  # a resumed finished run keeps its output
            sd = {k.removeprefix("lm."): v for k, v in full.items()}
            merged = self.cfg.output.merge_lora or not self.cfg.model.lora
            dtype = self.compute_dtype  # fp32 on CPU; bf16 on GPU (what HF checkpoints ship in)
            save_output(self.raw.lm, sd, self.tokenizer, out, merge=merged, dtype=dtype)
            if self.cfg.output.verify and self.parallel != "fsdp":
                tol = 2e-3 if dtype == torch.float32 else 5e-2
                verify_output(out, self.raw, self.device, merged, tol=tol)
        barrier()
        return out


def measure_steps(cfg: FinetuneConfig, on_step, device: str | None = None) -> None:
    """Throughput entry point (`scalelab tune` with `job: finetune`): set the job up as
    `finetune` does, then run train.max_steps optimizer steps of the real `train_step` with
    the run's learning-rate schedule, calling `on_step(info, step, seconds, real_tokens, loss)`
    after each. No evaluation, checkpoint or output: only the training step is timed."""
    info = init_distributed(device)
    try:
        job = FinetuneJob(cfg, info)
        while job.step < job.total_steps:
            start = time.perf_counter()
            lr = lr_at(job.step, job.total_steps, cfg.train)
            for g in job.optimizer.param_groups:
                g["lr"] = lr
            loss, _, real = job.train_step()  # ends in all-reduces: the step is complete on every rank
            job.step += 1
            on_step(info, job.step, time.perf_counter() - start, real, loss)
    finally:
        cleanup()
