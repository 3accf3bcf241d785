"""The search space of `scalelab tune`: knobs declared in YAML, resolved against the hardware.

A knob is either a training-config override (`train.micro_batch`, any dotted key that
`scalelab train` accepts) or an environment variable of the trial process (`NCCL_ALGO`).
Every knob is a categorical list of values, so every trial sets every knob (a static
space: Optuna's samplers and importance evaluators work best that way).

YAML forms (under the tune config's `space:` mapping):

    train.micro_batch: [4, 8, 16, 32]          # a list of values
    train.compile:                              # empty: the built-in values of a known knob
    NCCL_ALGO: {values: [default, Ring, Tree]}  # a mapping: values, env, requires, note
    MY_ENV_FLAG: {values: ["0", "1"], env: true, requires: [cuda]}

A knob that means nothing on the current hardware is dropped with a note
(`requires`): NCCL_* need CUDA and more than one process; DDP bucket size and FSDP
resharding need more than one process (and that parallel mode in play); pin_memory needs
CUDA; prefetch_factor needs loader workers; compile needs a C++ compiler (CPU) or Triton
(GPU). Env knobs get the value `default` (= leave the variable unset) if not listed.
Micro-batch values that do not divide the global batch are excluded with a note: the
global batch (train.batch_tokens) is fixed, so configurations compare like for like and
gradient accumulation follows (batch_tokens / (micro_batch * seq_len * processes)).

A knob marked `changes_math: true` changes what is trained (the model, or the examples in
an optimizer step), not only how fast: RECIPE.md lists it apart. The job-specific parts
(which keys exist, the built-in knobs, the fixed-batch rule) come from a `JobRules`;
`PretrainRules` here is `scalelab train`'s, tune/jobs.py has the fine-tune job's.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from typing import Any

from scalelab.config import RunConfig, all_keys
from scalelab.errors import ConfigError

DEFAULT = "default"  # env knob value meaning "leave the variable unset"

# Built-in values and requirements of the knobs the issue names; a YAML entry may
# override either. Requirement tokens are explained in `_requirement_met`.
KNOWN_KNOBS: dict[str, dict[str, Any]] = {
    "NCCL_ALGO": {"values": [DEFAULT, "Ring", "Tree", "NVLS"], "env": True, "requires": ["cuda", "multiprocess"]},
    "NCCL_PROTO": {"values": [DEFAULT, "LL", "LL128", "Simple"], "env": True, "requires": ["cuda", "multiprocess"]},
    "train.loader_workers": {"values": [0, 1, 2, 4]},
    "train.prefetch_factor": {"values": [2, 4], "requires": ["workers"]},
    "train.pin_memory": {"values": [False, True], "requires": ["cuda"]},
    "train.micro_batch": {"values": [1, 2, 4, 8, 16, 32, 64]},
    "train.compile": {"values": [False, True], "requires": ["compiler"]},
    "train.activation_checkpointing": {"values": [False, True]},
    "train.ddp_bucket_mb": {"values": [5, 25, 100], "requires": ["multiprocess", "ddp"]},
    "train.fsdp_reshard_after_forward": {"values": [True, False], "requires": ["multiprocess", "fsdp"]},
    "train.parallel": {"values": ["ddp", "fsdp"], "requires": ["multiprocess"]},
    "train.threads": {"values": [1, 2]},
}
KNOB_FIELDS = {"values", "env", "requires", "note", "changes_math"}

REQUIREMENT_TEXT = {
    "cuda": "needs CUDA GPUs (this run is on CPU)",
    "multiprocess": "only matters with more than one process per trial (nproc is 1)",
    "workers": "only matters with loader workers (train.loader_workers is 0 in every trial)",
    "compiler": "torch.compile needs a C++ compiler (CPU) or Triton (GPU); none found",
    "ddp": "only matters with train.parallel=ddp (no trial uses it)",
    "fsdp": "only matters with train.parallel=fsdp (no trial uses it)",
    "lora": "only matters with LoRA (model.lora is false in every trial)",
    "loader": "the fine-tune job has no loader processes: its rows are tokenized once and collated in memory",
}


@dataclass
class Knob:
    name: str  # dotted config key, or environment variable name
    values: list[Any]
    env: bool = False
    requires: list[str] = field(default_factory=list)
    note: str | None = None
    changes_math: bool = False  # changes what is trained (model or batch content), not only the speed

    def override(self, value: Any) -> str | None:
        """The `key=value` override for a config knob (None for env knobs)."""
        if self.env:
            return None
        return f"{self.name}={format_value(value)}"


@dataclass
class Hardware:
    """What a trial runs on: decides which knobs mean anything."""
    device: str = "cpu"  # cpu | cuda
    nproc: int = 1  # processes per trial (GPUs on CUDA)


@dataclass
class ResolvedSpace:
    knobs: list[Knob]  # active knobs, values filtered
    dropped: list[dict[str, str]]  # {"knob", "reason"}
    notes: list[str]  # value-level notes (excluded micro-batches, added base values)
    default_params: dict[str, Any]  # the base config's value of every active knob

    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def grid(self) -> dict[str, list[Any]]:
        return {k.name: list(k.values) for k in self.knobs}

    def size(self) -> int:
        n = 1
        for k in self.knobs:
            n *= len(k.values)
        return n

    def math_knobs(self) -> list[str]:
        return [k.name for k in self.knobs if k.changes_math]

    def split(self, params: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """(config overrides, env vars) for a trial's params; env value `default` = unset."""
        overrides, env = [], {}
        for k in self.knobs:
            if k.name not in params:
                continue
            v = params[k.name]
            if k.env:
                if v != DEFAULT and v is not None:
                    env[k.name] = str(v)
            else:
                overrides.append(k.override(v))
        return overrides, env

    def to_dict(self) -> dict[str, Any]:
        return {"knobs": [{"name": k.name, "values": k.values, "env": k.env, "requires": k.requires,
                           "changes_math": k.changes_math} for k in self.knobs],
                "dropped": self.dropped, "notes": self.notes, "default_params": self.default_params}


def format_value(value: Any) -> str:
    """A value as `scalelab train` parses it back (YAML scalars)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def same_value(a: Any, b: Any) -> bool:
    """Equal as config values: 25 == 25.0, but True is not 1 and "1" is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


def params_key(params: dict[str, Any]) -> str:
    """A configuration as a string: equal strings = the same trial parameters."""
    import json

    return json.dumps(params, sort_keys=True, default=str)


def _is_env_name(name: str) -> bool:
    return "." not in name and name.upper() == name and name.replace("_", "").isalnum()


def parse_space(tree: Any, known_knobs: dict[str, dict[str, Any]] | None = None,
                valid_keys: set[str] | None = None, example: str = "configs/tune-cpu.yaml",
                renamed: dict[str, str] | None = None) -> list[Knob]:
    """Knobs from the YAML `space:` mapping (see the module doc). Raises ConfigError.
    `known_knobs` / `valid_keys`: the job's built-in knobs and config keys (default: pretraining's)."""
    known_knobs = KNOWN_KNOBS if known_knobs is None else known_knobs
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"tune config 'space' must be a mapping of knob -> values, got {tree!r}")
    if not tree:
        raise ConfigError("tune config 'space' is empty; list knobs, e.g. `train.micro_batch: [4, 8, 16]` "
                          f"(see {example})")
    valid = set(all_keys(RunConfig)) if valid_keys is None else set(valid_keys)
    knobs = []
    for name, spec in tree.items():
        name = str(name)
        known = known_knobs.get(name, {})
        if spec is None:
            spec = {}
        if isinstance(spec, (list, tuple)):
            spec = {"values": list(spec)}
        if not isinstance(spec, dict):
            raise ConfigError(f"space knob '{name}' must be a list of values or a mapping with 'values', got {spec!r}")
        unknown = set(spec) - KNOB_FIELDS
        if unknown:
            raise ConfigError(f"space knob '{name}' has unknown field(s) {sorted(unknown)}; "
                              f"allowed: {', '.join(sorted(KNOB_FIELDS))}")
        env = bool(spec.get("env", known.get("env", _is_env_name(name))))
        if not env and name not in valid and name not in known_knobs:  # a known knob is dropped with a note
            import difflib

            close = [(renamed or {})[name]] if name in (renamed or {}) else \
                difflib.get_close_matches(name, sorted(valid) + list(known_knobs), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"space knob '{name}' is not a key of the job's config nor an environment variable "
                              f"(UPPER_CASE, or env: true).{hint}")
        values = spec.get("values", known.get("values"))
        if not values:
            raise ConfigError(f"space knob '{name}' has no values; give a list, e.g. `{name}: [a, b]`")
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"space knob '{name}': values must be a list, got {values!r}")
        for v in values:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise ConfigError(f"space knob '{name}': value {v!r} is not a scalar (number, string, bool)")
        if env and DEFAULT not in [str(v) for v in values]:
            values = [DEFAULT] + list(values)
        if env:
            values = [str(v) for v in values]
        requires = spec.get("requires", known.get("requires", []))
        if isinstance(requires, str):
            requires = [requires]
        bad = [r for r in requires if r not in REQUIREMENT_TEXT]
        if bad:
            raise ConfigError(f"space knob '{name}': unknown requirement(s) {bad}; known: {sorted(REQUIREMENT_TEXT)}")
        uniq: list[Any] = []
        for v in values:  # de-duplicate, keeping 1 and True apart
            if not any(same_value(v, u) for u in uniq):
                uniq.append(v)
        knobs.append(Knob(name=name, values=uniq, env=env, requires=list(requires), note=spec.get("note"),
                          changes_math=bool(spec.get("changes_math", known.get("changes_math", False)))))
    return knobs


def _get(cfg: RunConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def compiler_available(device: str) -> bool:
    if device == "cuda":
        return importlib.util.find_spec("triton") is not None
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


class PretrainRules:
    """`scalelab train`'s side of the space: its config keys, its built-in knobs, and the
    fixed global batch (train.batch_tokens) that a micro-batch must divide."""
    known_knobs = KNOWN_KNOBS

    def base_value(self, base: Any, name: str, world: int) -> Any:
        v = _get(base, name)
        if name == "train.parallel" and v == "auto":
            return "ddp" if world > 1 else "none"
        return v

    def micro_batch_divides(self, base: Any, micro: int, world: int) -> bool:
        return base.train.batch_tokens % (micro * base.model.seq_len * world) == 0

    def micro_batch_rule(self, base: Any, world: int) -> str:
        return (f"train.batch_tokens={base.train.batch_tokens} is not a multiple of micro_batch x seq_len "
                f"({base.model.seq_len}) x processes ({world})")

    def restrict(self, k: Knob, base: Any, world: int, notes: list[str]) -> None:
        """Values a job cannot run, removed with a note."""
        if k.name == "train.parallel" and base.train.optimizer == "muon" and "fsdp" in k.values:
            k.values = [v for v in k.values if v != "fsdp"]
            notes.append("train.parallel=fsdp excluded: train.optimizer=muon needs whole matrices (ddp)")


def resolve_space(knobs: list[Knob], base: Any, hw: Hardware, rules: Any = None) -> ResolvedSpace:
    """Drop knobs that mean nothing here, filter micro-batches, add the base values.

    The base config's own value of each knob is always a candidate (added when absent),
    so the default configuration is a point of the space and can be measured as a trial.
    `rules`: the job's (PretrainRules by default; tune/jobs.py for the fine-tune job).
    """
    rules = rules or PretrainRules()
    dropped: list[dict[str, str]] = []
    notes: list[str] = []
    world = hw.nproc

    def base_value(k: Knob) -> Any:
        return DEFAULT if k.env else rules.base_value(base, k.name, world)

    by_name = {k.name: k for k in knobs}

    def possible(name: str) -> list[Any]:
        vals = list(by_name[name].values) if name in by_name else []
        vals.append(base_value(by_name.get(name) or Knob(name, [])))
        return vals

    def met(req: str) -> bool:
        if req == "cuda":
            return hw.device == "cuda"
        if req == "multiprocess":
            return world > 1
        if req == "workers":
            return any(int(v) > 0 for v in possible("train.loader_workers"))
        if req == "compiler":
            return compiler_available(hw.device)
        if req in ("ddp", "fsdp"):  # base "auto" already reads as ddp with several processes
            return world > 1 and req in possible("train.parallel")
        if req == "lora":
            return any(v is True for v in possible("model.lora"))
        if req == "loader":
            return False
        raise AssertionError(req)

    active: list[Knob] = []
    for k in knobs:
        failed = [r for r in k.requires if not met(r)]
        if "multiprocess" in failed:  # the parallel-mode reasons follow from it
            failed = [r for r in failed if r not in ("ddp", "fsdp")]
        if failed:
            dropped.append({"knob": k.name, "reason": "; ".join(REQUIREMENT_TEXT[r] for r in failed)})
            continue
        active.append(Knob(k.name, list(k.values), k.env, list(k.requires), k.note, k.changes_math))

    for k in active:
        if k.name == "train.parallel" and world > 1 and "none" in k.values:
            k.values = [v for v in k.values if v != "none"]
            notes.append(f"train.parallel=none excluded: {world} processes need ddp or fsdp")
        rules.restrict(k, base, world, notes)
        if k.name == "train.micro_batch":
            ok, bad = [], []
            for v in k.values:
                try:
                    iv = int(v)
                except (TypeError, ValueError):
                    raise ConfigError(f"space knob train.micro_batch: {v!r} is not an integer") from None
                (ok if iv >= 1 and rules.micro_batch_divides(base, iv, world) else bad).append(iv)
            if bad:
                notes.append(f"train.micro_batch {bad} excluded: {rules.micro_batch_rule(base, world)}")
            k.values = ok

    default_params: dict[str, Any] = {}
    for k in active:
        bv = base_value(k)
        if k.name == "train.micro_batch" and bv not in k.values and not rules.micro_batch_divides(base, bv, world):
            raise ConfigError(f"the base config's train.micro_batch={bv} does not fit: "
                              f"{rules.micro_batch_rule(base, world)}; fix the base config")
        match = [v for v in k.values if same_value(bv, v)]
        if match:
            bv = match[0]
        else:
            k.values = k.values + [bv]
            notes.append(f"{k.name}: added the base config's value {format_value(bv)} (the default configuration)")
        default_params[k.name] = bv
        if not k.values:
            raise ConfigError(f"space knob '{k.name}' has no valid value left")
    return ResolvedSpace(knobs=active, dropped=dropped, notes=notes, default_params=default_params)
