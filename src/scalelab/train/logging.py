"""Run logging: metrics.jsonl (always), TensorBoard and Weights & Biases (optional), progress bar.

Only rank 0 logs. metrics.jsonl has one JSON object per line with a `kind`
("train" every step, "eval" at each evaluation); it is the machine-readable record
that reports and tests read.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from scalelab.io import atomic_write_text


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    records = []
    p = Path(path)
    if not p.is_file():
        return records
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if kind is None or rec.get("kind") == kind:
            records.append(rec)
    return records


def truncate_metrics(path: str | Path, after_step: int) -> int:
    """On resume, drop records past the checkpoint's step (a killed run's, or those of the
    steps after an older checkpoint chosen to resume from): each step is logged once.
    Returns how many records were dropped."""

    p = Path(path)
    if not p.is_file():
        return 0
    records = read_metrics(p)
    kept = [json.dumps(r) for r in records if r.get("step", 0) <= after_step]
    atomic_write_text(p, "".join(line + "\n" for line in kept))
    return len(records) - len(kept)


WANDB_ID_FILE = "wandb_run_id"
DEFAULT_WANDB_PROJECT = "scalelab"
PROGRESS_INTERVAL_S = float(os.environ.get("SCALELAB_PROGRESS_INTERVAL", "30"))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        elif v is not None:
            out[key] = str(v)
    return out


def _log_tensorboard_config(writer, config: dict[str, Any]) -> None:
    """The run's config in TensorBoard too: as text, and as hparams (the HParams dashboard)."""
    import yaml
    from torch.utils.tensorboard.summary import hparams

    writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "\n```", 0)
    exp, ssi, sei = hparams(_flat(config), metric_dict={})
    fw = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        fw.add_summary(summary)


class RunLogger:
    def __init__(self, out_dir: str | Path, enabled: bool, config: dict[str, Any], *,
                 tensorboard: bool = True, wandb: bool = False, wandb_project: str = "scalelab",
                 run_name: str | None = None):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
            except ImportError:
                print("note: tensorboard is not installed; skipping TensorBoard logs", file=sys.stderr)
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                from scalelab.errors import ConfigError

                raise ConfigError("train.wandb=true but wandb is not installed: pip install wandb "
                                  "(or set train.wandb=false)") from None
            # One W&B run per scalelab run: its id lives in the run dir, so --resume continues
            # the same W&B run; WANDB_PROJECT (and WANDB_ENTITY, read by wandb) win over the default.
            id_file = Path(out_dir) / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
            if not id_file.is_file():
                atomic_write_text(id_file, run_id + "\n")
            if wandb_project == DEFAULT_WANDB_PROJECT:
                wandb_project = os.environ.get("WANDB_PROJECT") or wandb_project
            self._wandb = wandb_lib.init(project=wandb_project, name=run_name or Path(out_dir).name, id=run_id,
                                         config=config, dir=str(out_dir), resume="allow")
        if self._tb is not None:
            _log_tensorboard_config(self._tb, config)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: v for k, v in record.items() if v is not None}
        self._file.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        kind = record.get("kind", "train")
        scalars = {f"{kind}/{k}": v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "kind")
                   and math.isfinite(v)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class Progress:
    """Progress over optimizer steps (loss, tokens/s, MFU, ETA): a tqdm bar on a terminal; in a
    pipe or log file one plain line per interval (no carriage returns), plus the last step."""

    def __init__(self, total: int | None, initial: int, enabled: bool, desc: str = "train",
                 interval_s: float | None = None, stream=None):
        self.bar = None
        self.stream = stream or sys.stderr
        self.enabled = enabled and os.environ.get("SCALELAB_NO_PROGRESS") != "1"
        self.start = time.perf_counter()
        self.total, self.step, self.first, self.desc = total, initial, initial, desc
        self.interval_s = PROGRESS_INTERVAL_S if interval_s is None else interval_s
        self._last_line = self.start
        self._fields: dict[str, str] = {}
        if self.enabled and _is_tty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            file=self.stream)

    def update(self, n: int, **fields: Any) -> None:
        if not self.enabled:
            return
        self.step += n
        shown = {}
        for k, v in fields.items():
            if v is None:
                continue
            if k == "tok_s":
                shown["tok/s"] = f"{v:,.0f}"
            elif k == "mfu":
                shown["MFU"] = f"{100 * v:.1f}%"
            elif isinstance(v, float):
                shown[k] = f"{v:.4f}"
            else:
                shown[k] = str(v)
        self._fields = shown
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(shown, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval_s or (self.total is not None and self.step >= self.total):
            self._last_line = now
            print(self._line(now), file=self.stream, flush=True)

    def _line(self, now: float) -> str:
        done = self.step - self.first
        rate = done / max(now - self.start, 1e-9)
        head = f"{self.desc} step {self.step:,}"
        if self.total:
            head += f"/{self.total:,} ({100 * self.step / self.total:.0f}%)"
            if rate > 0 and self.step < self.total:
                head += f" ETA {_duration((self.total - self.step) / rate)}"
        return head + "".join(f" {k} {v}" for k, v in self._fields.items())

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif self.enabled:
            print(text, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")
