"""A study's config: the YAML schema (plan, fit, eval, executor, SLURM, base training
config), its loading with overrides and checks, and the training config every run starts from."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab.config import RunConfig, apply_overrides, build_dataclass, config_from_dict, load_yaml_mapping
from scalelab.errors import ConfigError

DESIGNS = ("ratios", "isoflop")


@dataclass
class StudyPlan:
    # design "ratios": every size in `sizes` (or from `compute`) at every tokens/param ratio.
    # design "isoflop": per compute budget in `budgets` (6ND FLOPs), `sizes_per_budget` sizes from
    # N*/spread to N*·spread around the prior optimum N* = sqrt(C / (6 prior_tokens_per_param)),
    # each trained on D = C / 6N (Hoffmann et al. 2022, approach 2).
    design: str = "ratios"
    budgets: list[float] = field(default_factory=list)
    sizes_per_budget: int = 5
    spread: float = 4.0
    prior_tokens_per_param: float = 20.0
    n_layer: int | None = None  # fixed depth (one shape family, widths vary); None = aspect-ratio rule
    width_step: int = 8  # with n_layer: widths are multiples of this
    sizes: list[str] | None = None  # e.g. [10M, 50M, 200M, 600M] (non-embedding by default)
    gpu_peak_tflops: float | None = None  # with mfu: the plan prints the GPU-hours it implies
    mfu: float = 0.4
    compute: float | None = None  # or a total FLOP budget split over `models`
    models: int = 4
    spacing: float = 4.0
    tokens_per_param: list[float] = field(default_factory=lambda: [20.0])  # >1 value: L(N,D) becomes identifiable
    count: str = "non_embedding"
    lr_rule: str = "deepseek"
    lr: float | None = None
    batch_tokens: int | None = None
    max_micro_batch: int = 16
    devices: int = 1  # processes per run (e.g. 8 with launcher "torchrun --nproc_per_node 8")
    warmup_frac: float = 0.02
    aspect_ratio: float = 64.0
    head_dim: int = 64
    multiple_of: int = 64


@dataclass
class StudyFit:
    n_boot: int = 200
    resample: str = "points"  # bootstrap unit: points | size | seed
    seed: int = 0
    # targets [N, D] at which every task's two-step law predicts bpb and accuracy (with intervals)
    predict: list[list[float]] = field(default_factory=list)


@dataclass
class StudyEval:
    tasks: list[str] = field(default_factory=list)  # zero-shot tasks per finished run, e.g. [hellaswag, arc_easy]
    limit: int | None = 500  # fixed seeded subset per task (None = all examples)
    seed: int = 0
    # models scored elsewhere as extra ladder points for the accuracy step, e.g. public checkpoints:
    # [{name: pythia-160m, params: 1.6e8, tokens: 3e11, results: path/to/eval/results.json}]
    ladder_points: list[dict[str, Any]] = field(default_factory=list)


EXECUTORS = ("local", "slurm")
SLURM_CLUSTERS = ("slurm", "local")


@dataclass
class StudySlurm:
    """One SLURM job per run (executor: slurm); see docs/CLUSTER.md."""
    cluster: str = "slurm"  # slurm | local (submitit's local processes: try a setup without a cluster)
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 240  # per job; a run that times out is requeued and resumes from its checkpoint
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1  # processes per node: 1 with a launcher, else one per GPU
    cpus_per_task: int = 8
    mem_gb: float | None = None
    array_parallelism: int = 64  # jobs of the study's array running at once
    additional: dict[str, Any] = field(default_factory=dict)  # more sbatch flags, e.g. {constraint: h100}
    setup: list[str] = field(default_factory=list)  # shell lines run before the job, e.g. module load
    poll_s: float = 60.0  # status line / sacct refresh interval while waiting

    def __post_init__(self):
        if self.cluster not in SLURM_CLUSTERS:
            raise ConfigError(f"slurm.cluster must be one of {', '.join(SLURM_CLUSTERS)}; got '{self.cluster}'")
        for key in ("time_min", "nodes", "tasks_per_node", "cpus_per_task", "array_parallelism"):
            if getattr(self, key) < 1:
                raise ConfigError(f"slurm.{key} must be >= 1; got {getattr(self, key)}")
        if self.gpus_per_node < 0 or self.poll_s <= 0 or (self.mem_gb is not None and self.mem_gb <= 0):
            raise ConfigError("slurm.gpus_per_node must be >= 0, slurm.poll_s and slurm.mem_gb > 0")
        if self.cluster == "local" and self.nodes > 1:
            raise ConfigError("slurm.cluster: local runs on one machine; set slurm.nodes: 1 or cluster: slurm")


@dataclass
class StudyConfig:
    name: str = "study"
    out_dir: str = "runs/study"
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    parallel_runs: int = 1  # training processes at once (CPU: pair with train.threads=1)
    launcher: str = ""  # e.g. "torchrun --standalone --nproc_per_node 8"; empty = one process
    executor: str = "local"  # local (this machine) | slurm (one SLURM job per run, section slurm)
    slurm: StudySlurm = field(default_factory=StudySlurm)
    plan: StudyPlan = field(default_factory=StudyPlan)
    fit: StudyFit = field(default_factory=StudyFit)
    eval: StudyEval = field(default_factory=StudyEval)
    base: dict[str, Any] = field(default_factory=dict)  # a training config: data, model, train sections

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ConfigError(f"config key 'executor' must be one of {', '.join(EXECUTORS)}; got '{self.executor}'")
        if self.executor == "slurm" and self.launcher and self.slurm.tasks_per_node != 1:
            raise ConfigError("with executor: slurm and a launcher, set slurm.tasks_per_node: 1 (the launcher "
                              "starts the per-GPU processes on each node), or drop the launcher")


def load_study_config(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    tree = load_yaml_mapping(path, "study config", "configs/study-cpu.yaml")
    # Keys are checked when the dataclass is built (base.* is a free-form training config).
    tree = apply_overrides(tree, overrides or [], valid=[])
    cfg = build_dataclass(StudyConfig, tree)
    if cfg.plan.design not in DESIGNS:
        raise ConfigError(f"config key 'plan.design' must be one of {', '.join(DESIGNS)}; got '{cfg.plan.design}'")
    if cfg.plan.design == "isoflop":
        if not cfg.plan.budgets:
            raise ConfigError(f"study config '{path}': plan.design: isoflop needs plan.budgets, "
                              "e.g. [1e11, 2e11, 4e11] (6ND FLOPs per run)")
    elif not (cfg.plan.sizes or cfg.plan.compute):
        raise ConfigError(f"study config '{path}': set plan.sizes (e.g. [10M, 50M]) or plan.compute")
    if not cfg.seeds:
        raise ConfigError("seeds must list at least one seed")
    if cfg.parallel_runs < 1:
        raise ConfigError("parallel_runs must be >= 1")
    if not cfg.plan.tokens_per_param or any(r <= 0 for r in cfg.plan.tokens_per_param):
        raise ConfigError("plan.tokens_per_param must be a list of positive ratios, e.g. [20]")
    base = dict(cfg.base)
    base.setdefault("train", {})
    base["train"] = dict(base["train"], max_steps=1)
    config_from_dict(copy.deepcopy(base))  # the base must be a valid training config
    return cfg


def planned_vocab(cfg: StudyConfig) -> int:
    """The vocabulary the study's models get: model.vocab_size, else the tokenizer's."""
    base = base_run_config(cfg)
    if base.model.vocab_size:
        return int(base.model.vocab_size)
    return 50257 if base.data.tokenizer == "gpt2" else int(base.data.vocab_size)


def base_run_config(cfg: StudyConfig) -> RunConfig:
    tree = copy.deepcopy(cfg.base)
    tree.setdefault("train", {})["max_steps"] = 1
    return config_from_dict(tree)

