"""Run logging: metrics.jsonl (always), TensorBoard and Weights & Biases (optional), progress bar.

Only rank 0 logs. metrics.jsonl has one JSON object per line with a `kind`
("train" every step, "eval" at each evaluation); it is the machine-readable record
that reports and tests read.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


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
    from scalelab.io import atomic_write_text

    p = Path(path)
    if not p.is_file():
        return 0
    records = read_metrics(p)
    kept = [json.dumps(r) for r in records if r.get("step", 0) <= after_step]
    atomic_write_text(p, "".join(line + "\n" for line in kept))
    return len(records) - len(kept)


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
            self._wandb = wandb_lib.init(project=wandb_project, name=run_name or Path(out_dir).name,
                                         config=config, dir=str(out_dir), resume="allow")

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
    """A tqdm bar over optimizer steps showing loss, tokens/s, MFU and ETA."""

    def __init__(self, total: int | None, initial: int, enabled: bool, desc: str = "train"):
        self.bar = None
        self.enabled = enabled
        self.start = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            file=sys.stderr, disable=os.environ.get("SCALELAB_NO_PROGRESS") == "1")

    def update(self, n: int, **fields: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(n)
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
                shown[k] = v
        self.bar.set_postfix(shown, refresh=False)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.enabled:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
