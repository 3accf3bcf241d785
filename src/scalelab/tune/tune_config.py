"""The tune config: the YAML of `scalelab tune` (job + base config + space + budget),
its `key=value` overrides and its validation. search.py runs it.

    load_tune_config("configs/tune-cpu.yaml", ["trials=10"])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalelab.config import apply_overrides, build_dataclass, load_yaml_mapping
from scalelab.errors import ConfigError
from scalelab.tune.jobs import JOBS
from scalelab.tune.space import parse_space

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("percentile", "median", "none")
DEVICES = ("auto", "cpu", "cuda")

# The `scalelab tune` flags that set a key: messages name both, since either may be what the user typed.
FLAGS = {"trials": "--trials", "budget_s": "--budget-s", "budget_gpu_hours": "--budget-gpu-hours",
         "out_dir": "--out", "sampler": "--sampler", "pruner": "--pruner", "device": "--device"}


def key_name(key: str) -> str:
    """'trials' -> 'trials (--trials)': how a message names a key the CLI can also set."""
    return f"{key} ({FLAGS[key]})" if key in FLAGS else key



@dataclass
class TuneConfig:
    name: str = "tune"  # Optuna study name
    out_dir: str = "runs/tune"
    job: str = "pretrain"  # pretrain (scalelab train) | finetune (scalelab finetune's training step)
    base: Any = None  # the job's config: a YAML path (relative to cwd or to this file) or an inline mapping
    base_overrides: list[str] = field(default_factory=list)  # key=value applied to the base in every trial
    device: str = "auto"  # auto | cpu | cuda
    nproc: int = 0  # processes per trial (GPUs on CUDA, gloo processes on CPU); 0 = all GPUs / 1 on CPU
    warmup_steps: int = 5  # dropped from every measurement
    measure_steps: int = 30
    windows: int = 5  # measured steps are cut into this many windows (pruning reports, batch means)
    trials: int = 30  # measured trials of the study in total, over all sessions (see search.py)
    budget_s: float | None = None  # wall seconds for the whole study (search + re-measurement)
    budget_gpu_hours: float | None = None  # alternative: GPU-hours (= budget_s x nproc / 3600)
    trial_timeout_s: float = 600.0
    stall_timeout_s: float = 300.0
    sampler: str = "tpe"  # tpe | random | grid
    pruner: str = "percentile"  # percentile | median | none
    prune_slowest: float = 25.0  # percentile pruner: stop a trial in the slowest 25% at a window
    prune_startup_trials: int = 4  # no pruning before this many finished trials
    importance: str = "fanova"  # fanova | ped-anova
    seed: int = 0
    remeasure_top: int = 3
    remeasure_rounds: int = 1
    remeasure_share: float = 0.25  # share of the budget kept for the re-measurement
    storage: str | None = None  # default sqlite:///OUT_DIR/tune.db; any RDB URL, or journal:PATH
    # Several workers on one study: a running trial records a heartbeat every heartbeat_s; one
    # silent for heartbeat_grace_s (its worker died) is failed and retried (at most stale_retries times).
    heartbeat_s: float = 30.0
    heartbeat_grace_s: float = 180.0
    stale_retries: int = 1
    space: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # the YAML file this came from (set by the loader)


def load_tune_config(path: str | Path, overrides: list[str] | None = None) -> TuneConfig:
    """Read a tune YAML; `key=value` overrides set its keys: `trials=10`, `base.train.threads=1`
    (appended to base_overrides when the base is a file), `space.train.compile=[false]`."""
    p = Path(path)
    tree = load_yaml_mapping(p, "tune config", "configs/tune-cpu.yaml")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. trials=10)")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-")
        if key.startswith("base.") and not isinstance(tree.get("base"), dict):
            tree.setdefault("base_overrides", []).append(key[len("base."):] + "=" + text)
            continue
        if key.startswith("space."):  # knob names contain dots: space.train.compile=[false]
            if not isinstance(tree.get("space"), dict):
                tree["space"] = {}
            tree["space"][key[len("space."):]] = yaml.safe_load(text)
            continue
        apply_overrides(tree, [f"{key}={text}"], valid=[])  # TuneConfig's own keys: checked when built
    tree["source"] = str(p)
    cfg = build_dataclass(TuneConfig, tree)
    validate_tune_config(cfg)
    return cfg


def validate_tune_config(cfg: TuneConfig) -> None:
    def check(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    check(cfg.job in JOBS, f"tune config: job must be one of {', '.join(JOBS)}; got '{cfg.job}'")
    check(cfg.base is not None, f"tune config: set 'base' to a {'fine-tune' if cfg.job == 'finetune' else 'training'}"
          " config (a YAML path or an inline mapping)")
    check(isinstance(cfg.base, (str, dict)), f"tune config: 'base' must be a path or a mapping, got {cfg.base!r}")
    check(cfg.sampler in SAMPLERS,
          f"tune config: {key_name('sampler')} must be one of {', '.join(SAMPLERS)}; got '{cfg.sampler}'")
    check(cfg.pruner in PRUNERS, f"tune config: {key_name('pruner')} must be one of {', '.join(PRUNERS)}; got '{cfg.pruner}'")
    check(cfg.importance in ("fanova", "ped-anova"), f"tune config: importance must be fanova or ped-anova; got "
          f"'{cfg.importance}'")
    check(cfg.device in DEVICES, f"tune config: {key_name('device')} must be one of {', '.join(DEVICES)}; got "
          f"'{cfg.device}'")
    check(cfg.nproc >= 0, f"tune config: nproc must be >= 0 (0 = auto), got {cfg.nproc}")
    check(cfg.warmup_steps >= 0, f"tune config: warmup_steps must be >= 0, got {cfg.warmup_steps}")
    check(cfg.measure_steps >= 2, f"tune config: measure_steps must be >= 2, got {cfg.measure_steps}")
    check(2 <= cfg.windows <= cfg.measure_steps,
          f"tune config: windows must be in [2, measure_steps={cfg.measure_steps}], got {cfg.windows}")
    check(cfg.trials >= 1, f"tune config: {key_name('trials')} must be >= 1, got {cfg.trials}")
    for key in ("budget_s", "budget_gpu_hours"):
        v = getattr(cfg, key)
        check(v is None or v > 0, f"tune config: {key_name(key)} must be > 0 (or null), got {v}")
    check(cfg.trial_timeout_s > 0, "tune config: trial_timeout_s must be > 0")
    check(0 <= cfg.remeasure_share < 1, "tune config: remeasure_share must be in [0, 1)")
    check(cfg.remeasure_top >= 0 and cfg.remeasure_rounds >= 0, "tune config: remeasure_top/rounds must be >= 0")
    check(0 < cfg.prune_slowest < 100, "tune config: prune_slowest must be in (0, 100) (percent of trials)")
    check(cfg.heartbeat_s > 0, f"tune config: heartbeat_s must be > 0, got {cfg.heartbeat_s}")
    check(cfg.heartbeat_grace_s >= 2 * cfg.heartbeat_s,
          f"tune config: heartbeat_grace_s ({cfg.heartbeat_grace_s}) must be at least 2 x heartbeat_s "
          f"({cfg.heartbeat_s}), or a live worker's trial could be taken for a dead one")
    check(cfg.stale_retries >= 0, f"tune config: stale_retries must be >= 0, got {cfg.stale_retries}")
    job = JOBS[cfg.job]
    parse_space(cfg.space, job.known_knobs, job.valid_keys(), job.example, job.renamed)  # errors before any work


def copy_config(cfg: TuneConfig, **changes: Any) -> TuneConfig:
    new = copy.deepcopy(cfg)
    for k, v in changes.items():
        if v is not None:
            setattr(new, k, v)
    validate_tune_config(new)
    return new


def open_storage(url: str):
    """The study's Optuna storage: `journal:PATH` -> JournalStorage on a journal file (no
    database, safe for several processes on one file system), anything else an RDB URL
    (sqlite:///..., postgresql://..., mysql://...). A URL Optuna cannot open is a ConfigError."""
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(url)
    except (ImportError, ValueError, OSError) as e:
        raise ConfigError(f"storage '{url}' cannot be opened ({type(e).__name__}: {str(e).splitlines()[0]}); use "
                          "an RDB URL (sqlite:///PATH/tune.db, postgresql://...) or journal:PATH") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's errors for a bad URL or an unreachable server
        raise ConfigError(f"storage '{url}' cannot be opened ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "check the URL and that the database server is reachable") from None
