"""Learning-rate range test (Smith 2017, "Cyclical Learning Rates"; the fastai `lr_find`).

`lr_find(cfg)` builds a fresh model exactly as `scalelab train` would for this config
(same GPT, same optimizer groups via `build_optimizer`, same `TokenLoader` stream, same
batch size with gradient accumulation, same clipping, dtype and activation
checkpointing via `parallelize`), then takes `steps` optimizer steps while the learning
rate grows exponentially from `min_lr` to `max_lr`:

    lr_i = min_lr * (max_lr / min_lr) ** (i / (steps - 1))

The loss of each step is smoothed with a bias-corrected exponential moving average
(beta = 0.98 by default, as fastai):

    avg_i = beta * avg_{i-1} + (1 - beta) * loss_i,   smooth_i = avg_i / (1 - beta ** (i + 1))

and the sweep stops early once smooth_i > `stop_factor` x the best smoothed loss so far
(the loss is diverging; fastai uses 4) or the loss is not finite.

Suggested learning rate. Two rules are computed; `suggested_lr` is the first:

* ``min/10`` -- the LR at the minimum of the smoothed curve divided by 10 (the rule of
  fastai v1 and of Smith's paper: the minimum is already at the edge of divergence, an
  order of magnitude below it is still on the steep descending part). It is the
  default because it is robust: a minimum of a smoothed curve is stable from run to
  run, and the EMA's lag (it shifts the curve to the right by ~1/(1-beta) steps)
  makes the minimum's LR an over-estimate that the /10 compensates.
* ``steepest`` -- the LR where the smoothed loss falls fastest per unit of log(lr)
  (the most negative finite-difference slope between the first points and the
  minimum). Reported as a second opinion; on short or noisy sweeps it jumps between
  neighbouring bumps, which is why it is not the default.

Both are clamped into the swept range. With AdamW the LR is the peak LR of the
schedule; with `train.optimizer=muon` every group is scaled by the same factor
(lr / train.lr), so the Muon LR moves in proportion and the suggestion is for train.lr.

The sweep writes `lr_find.json` (every step, the settings, the suggestions) and
`lr_find.png` (loss vs LR, log x) into `out_dir` (default `<cfg.out_dir>/lr_find`,
which `scalelab report RUN` picks up). Nothing of the training run is touched:
no checkpoint is written and the model is discarded.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalelab.config import RunConfig
from scalelab.errors import ConfigError, TrainingError
from scalelab.io import atomic_write_bytes, atomic_write_json, git_hash, software_versions

FORMAT_VERSION = 1
JSON_FILE = "lr_find.json"
PLOT_FILE = "lr_find.png"


@dataclasses.dataclass
class LRFindSettings:
    min_lr: float = 1e-6
    max_lr: float = 1.0
    steps: int = 100
    beta: float = 0.98  # EMA smoothing of the loss
    stop_factor: float = 4.0  # stop once smoothed loss > stop_factor * best
    skip_start: int = 5  # points ignored at the start by the "steepest" rule

    def validate(self) -> None:
        if not (0 < self.min_lr < self.max_lr):
            raise ConfigError(f"lr-find needs 0 < --min-lr < --max-lr, got {self.min_lr} and {self.max_lr}")
        if self.steps < 5:
            raise ConfigError(f"lr-find needs --steps >= 5, got {self.steps}")
        if not (0 <= self.beta < 1):
            raise ConfigError(f"lr-find --beta must be in [0, 1), got {self.beta}")
        if self.stop_factor <= 1:
            raise ConfigError(f"lr-find --stop-factor must be > 1, got {self.stop_factor}")


def lr_schedule(settings: LRFindSettings) -> np.ndarray:
    """The exponential sweep: steps values from min_lr to max_lr (both included)."""
    i = np.arange(settings.steps, dtype=np.float64)
    return settings.min_lr * (settings.max_lr / settings.min_lr) ** (i / (settings.steps - 1))


def smooth_losses(losses: list[float] | np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected EMA of the losses (fastai's `SmoothenValue`)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out, dtype=np.float64)


def suggest(lrs: np.ndarray, smoothed: np.ndarray, settings: LRFindSettings) -> dict[str, Any]:
    """The two suggestion rules (see the module docstring) on a finished sweep."""
    lrs = np.asarray(lrs, dtype=np.float64)
    smoothed = np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(smoothed)
    if finite.sum() < 2:
        raise TrainingError("lr-find: fewer than two finite losses; lower --max-lr or --min-lr")
    idx = np.flatnonzero(finite)
    i_min = int(idx[np.argmin(smoothed[idx])])
    lo, hi = float(lrs[0]), float(lrs[-1])
    min_rule = float(np.clip(lrs[i_min] / 10.0, lo, hi))
    # Steepest descent in log(lr) between the first points and the minimum.
    start = min(settings.skip_start, max(0, i_min - 2))
    seg = np.arange(start, i_min + 1)
    steepest, i_steep = None, None
    if len(seg) >= 3:
        slope = np.gradient(smoothed[seg], np.log(lrs[seg]))
        j = int(np.argmin(slope))
        if slope[j] < 0:
            i_steep = int(seg[j])
            steepest = float(lrs[i_steep])
    notes = []
    if i_min <= 1:
        notes.append("the smoothed loss is lowest at the very start of the sweep: --min-lr is already too "
                     "high (or the sweep too short); rerun with a lower --min-lr")
    if i_min >= len(lrs) - 2 and len(smoothed) == settings.steps:
        notes.append("the loss was still falling at --max-lr: the minimum may lie beyond the sweep; "
                     "rerun with a higher --max-lr")
    return {
        "suggested_lr": min_rule,
        "rule": "min/10",
        "min_loss_lr": float(lrs[i_min]),
        "min_loss_step": i_min,
        "min_smoothed_loss": float(smoothed[i_min]),
        "steepest_lr": steepest,
        "steepest_step": i_steep,
        "notes": notes,
    }


def _build(cfg: RunConfig, device: torch.device):
    """Model, optimizers, loader, grad-accumulation and dtype as the trainer builds them."""
    from scalelab.data.loader import TokenLoader
    from scalelab.data.prepare import load_meta, prepare_data
    from scalelab.model.gpt import GPT
    from scalelab.train.distributed import DistInfo, parallelize
    from scalelab.train.optim import build_optimizer
    from scalelab.train.trainer import resolve_dtype

    t = cfg.train
    data_dir = Path(cfg.data.dir)
    if not (data_dir.is_dir() and any(data_dir.glob("train_*.bin"))):
        prepare_data(cfg.data, progress=t.progress)
    meta = load_meta(data_dir)
    tok = meta.get("tokenizer") or {}
    vocab = cfg.model.vocab_size or (tok.get("vocab_size") if isinstance(tok, dict) else None)
    if not vocab:
        raise ConfigError(f"data dir '{cfg.data.dir}' has no tokenizer metadata: set model.vocab_size=...")
    model_cfg = dataclasses.replace(cfg.model, vocab_size=int(vocab))
    per_micro = t.micro_batch * model_cfg.seq_len
    if t.batch_tokens % per_micro:
        raise ConfigError(f"train.batch_tokens ({t.batch_tokens}) must be a multiple of micro_batch*seq_len ({per_micro})")
    grad_accum = t.batch_tokens // per_micro
    dtype = resolve_dtype(t.dtype, device)
    torch.manual_seed(cfg.seed)
    raw = GPT(model_cfg).to(device)
    info = DistInfo(device=device)  # one process: parallelize applies checkpointing / compile only
    model = parallelize(raw, t, info, dtype)
    optimizers = build_optimizer(model, t, device.type)
    loader = TokenLoader(cfg.data.dir, "train", t.micro_batch, model_cfg.seq_len, seed=cfg.seed)
    return model, optimizers, loader, grad_accum, dtype, model_cfg


def lr_find(cfg: RunConfig, settings: LRFindSettings | None = None, out_dir: str | Path | None = None,
            device: str | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run the LR range test for `cfg`; write lr_find.json + lr_find.png; return the result dict."""
    from scalelab.train.optim import set_lr

    settings = settings or LRFindSettings()
    settings.validate()
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir) if out_dir is not None else Path(cfg.out_dir) / "lr_find"
    show = t.progress if progress is None else progress

    model, optimizers, loader, grad_accum, dtype, model_cfg = _build(cfg, dev)
    autocast = dtype == torch.bfloat16
    lrs = lr_schedule(settings)
    records: list[dict[str, Any]] = []
    best = math.inf
    avg = 0.0
    stop_reason = "completed"
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, desc="lr-find", unit="step", dynamic_ncols=True, disable=None)  # None: off when not a TTY
    t0 = time.perf_counter()
    model.train()
    for i, lr in enumerate(lrs):
        set_lr(optimizers, float(lr) / t.lr)
        total = 0.0
        for _ in range(grad_accum):
            x, y = loader.next_batch()
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = model(x, y)
            (loss / grad_accum).backward()
            total += float(loss.detach())
        loss_value = total / grad_accum
        grad_norm = None
        if t.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip))
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if not math.isfinite(loss_value):
            records.append({"step": i, "lr": float(lr), "loss": None, "smoothed": None, "grad_norm": grad_norm})
            stop_reason = f"non-finite loss at lr {lr:.3g}"
            break
        avg = settings.beta * avg + (1 - settings.beta) * loss_value
        smoothed = avg / (1 - settings.beta ** (i + 1))
        best = min(best, smoothed)
        records.append({"step": i, "lr": float(lr), "loss": loss_value, "smoothed": smoothed,
                        "grad_norm": grad_norm})
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"lr": f"{lr:.2e}", "loss": f"{smoothed:.3f}"}, refresh=False)
        if i > 0 and smoothed > settings.stop_factor * best:
            stop_reason = f"smoothed loss {smoothed:.3f} > {settings.stop_factor:g} x best {best:.3f}"
            break
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0

    good = [r for r in records if r["smoothed"] is not None]
    sug = suggest(np.array([r["lr"] for r in good]), np.array([r["smoothed"] for r in good]), settings)
    result = {
        "format_version": FORMAT_VERSION,
        "kind": "scalelab.lr_find",
        "method": {"sweep": "exponential", "smoothing": "bias-corrected EMA", "beta": settings.beta,
                   "stop_factor": settings.stop_factor, "skip_start": settings.skip_start,
                   "suggestion_rule": "min/10 (steepest reported alongside)"},
        "settings": dataclasses.asdict(settings),
        "configured_lr": t.lr,
        "optimizer": t.optimizer,
        "batch_tokens": t.batch_tokens,
        "grad_accum": grad_accum,
        "dtype": str(dtype).replace("torch.", ""),
        "device": dev.type,
        "steps_run": len(records),
        "tokens": len(records) * t.batch_tokens,
        "stopped_early": stop_reason != "completed",
        "stop_reason": stop_reason,
        "time_s": round(elapsed, 3),
        **sug,
        "configured_vs_suggested": t.lr / sug["suggested_lr"],
        "records": records,
        "model_config": dataclasses.asdict(model_cfg),
        "config": cfg.to_dict(),
        "git": git_hash(),
        "versions": software_versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / JSON_FILE, result)
    atomic_write_bytes(out / PLOT_FILE, plot_lr_find(result))
    result["json_path"] = str(out / JSON_FILE)
    result["plot_path"] = str(out / PLOT_FILE)
    return result


def plot_lr_find(result: dict[str, Any]) -> bytes:
    """PNG bytes: raw and smoothed loss vs LR (log x), the suggestions and the configured LR."""
    import io

    from matplotlib.figure import Figure

    recs = [r for r in result["records"] if r.get("loss") is not None]
    lrs = np.array([r["lr"] for r in recs])
    raw = np.array([r["loss"] for r in recs])
    sm = np.array([r["smoothed"] for r in recs])
    fig = Figure(figsize=(7.5, 4.8), dpi=150)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(lrs, raw, color="0.7", lw=1, label="loss (per step)")
    ax.plot(lrs, sm, color="C0", lw=2, label=f"smoothed (EMA, beta={result['settings']['beta']:g})")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss (nats/token)")
    if len(sm):
        # Show all of the smoothed curve and the raw dips below it; raw spikes may leave the frame.
        lo = float(min(np.nanmin(sm), np.nanmin(raw)))
        hi = float(max(np.nanmax(sm), sm[0]))
        pad = 0.05 * max(hi - lo, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
    s = result["suggested_lr"]
    ax.axvline(s, color="C2", ls="-", lw=1.5, label=f"suggested (min/10): {s:.2e}")
    ax.axvline(result["min_loss_lr"], color="C3", ls=":", lw=1.2, label=f"smoothed-loss minimum: {result['min_loss_lr']:.2e}")
    if result.get("steepest_lr"):
        ax.axvline(result["steepest_lr"], color="C1", ls="--", lw=1.2,
                   label=f"steepest descent: {result['steepest_lr']:.2e}")
    ax.axvline(result["configured_lr"], color="k", ls="-.", lw=1, label=f"configured train.lr: {result['configured_lr']:.2e}")
    ax.set_title(f"LR range test: {result['steps_run']} steps x {result['batch_tokens']:,} tokens "
                 f"({result['stop_reason'] if result['stopped_early'] else 'full sweep'})", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def format_lr_find(result: dict[str, Any]) -> str:
    lines = [f"LR range test: {result['steps_run']} steps from {result['settings']['min_lr']:.1e} to "
             f"{result['records'][-1]['lr']:.2e} ({result['stop_reason']}), {result['time_s']:.1f} s",
             f"  loss minimum at lr {result['min_loss_lr']:.3e} (smoothed loss {result['min_smoothed_loss']:.4f})",
             f"  suggested lr {result['suggested_lr']:.3e}  (rule: min/10)"]
    if result.get("steepest_lr"):
        lines.append(f"  steepest descent at lr {result['steepest_lr']:.3e}  (second opinion)")
    lines.append(f"  configured train.lr {result['configured_lr']:.3e} = {result['configured_vs_suggested']:.2f} x suggested")
    lines += [f"  note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)
