"""Where a training run starts: check out_dir, and pick the checkpoint to resume from.

`plan_start` looks at out_dir before any work: a new or empty folder starts a run; a
folder of a scalelab run continues (train.resume) or is refused (it holds checkpoints)
or starts over cleanly (it stopped before its first checkpoint, so metrics.jsonl would
mix two runs); a folder of someone else's files is refused unless train.reuse_out_dir.
`choose_checkpoint` resolves train.resume to a verified checkpoint, falling back past a
missing or corrupt newest one and saying so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalelab.errors import CheckpointError, ConfigError
from scalelab.train import checkpoint as ckpt_io

# First line of the config.yaml a run writes: how a run stopped before its first
# checkpoint is told apart from a user's folder that happens to hold a config.yaml.
RUN_HEADER = "# scalelab train: the resolved config of this run (rewritten at each start)\n"
# What `scalelab train` writes into out_dir (a foreign file of one of these names gets replaced).
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "samples.jsonl", "tensorboard", "wandb", "checkpoints")
# Put into out_dir before training starts by whatever launched it (the study's train.log,
# tune's trial.log, a scheduler's *.log): the trainer writes none of these names.
def _launcher_file(name: str) -> bool:
    return name.endswith(".log") or name == ".write-test"


@dataclass
class Start:
    resume: str | None = None  # checkpoint to resume ("last" or a step_* name); None: a new run
    reset_logs: bool = False  # drop metrics.jsonl / summary.json of a run that left no checkpoint
    notes: list[str] = field(default_factory=list)


def resume_target(value: bool | str | int) -> str | None:
    """train.resume as a checkpoint request: None (new run), 'auto', 'last' or 'step_NNNNNN'."""
    if value is False:
        return None
    if value is True:
        return "auto"
    if isinstance(value, int):
        return ckpt_io.step_dirname(value)
    return value


def _written_by_run(out: Path) -> bool:
    try:
        with open(out / "config.yaml") as f:
            return f.readline() == RUN_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def plan_start(out_dir: str | Path, resume: bool | str | int, reuse_out_dir: bool) -> Start:
    """Decide how a run starts in out_dir (see the module doc); ConfigError/CheckpointError
    with the fix when it must not start there."""
    out = Path(out_dir)
    target = resume_target(resume)
    strict = target not in (None, "auto")  # --resume / a named checkpoint: there must be one
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    has_ckpts = bool(ckpt_io.list_checkpoints(out))
    if has_ckpts:
        if target is None:
            names = ", ".join(d.name for d in ckpt_io.list_checkpoints(out)[:3])
            raise ConfigError(
                f"out_dir '{out}' already holds checkpoints ({names}); pass train.resume=true (or --resume) "
                f"to continue that run, or choose another out_dir=...")
        return Start(resume="last" if target == "auto" else target)
    is_run = _written_by_run(out) or (out / "checkpoints").is_dir()
    foreign = [] if is_run else [n for n in entries if not _launcher_file(n)]
    if foreign and not reuse_out_dir:
        replaced = [n for n in foreign if n in RUN_FILES]
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(
            f"out_dir '{out}' is not empty and holds no scalelab run ({shown})"
            + (f"; training would replace {', '.join(replaced)}" if replaced else "")
            + ". Choose a new or empty out_dir=..., or set train.reuse_out_dir=true to train there anyway")
    if strict:
        if is_run:
            why = "its run has no checkpoint (stopped before the first save, or they were deleted)"
        else:
            why = "it holds no scalelab run" if entries else "it is empty or does not exist"
        raise CheckpointError(f"nothing to resume in out_dir '{out}': {why}. Check out_dir=..., or drop "
                              f"--resume / train.resume to start a new run there")
    start = Start(reset_logs=is_run or bool(foreign))
    if is_run and any((out / n).exists() for n in ("metrics.jsonl", "summary.json")):
        start.notes.append(f"out_dir '{out}' holds a run stopped before its first checkpoint; starting it over "
                           f"(its metrics.jsonl and summary.json are replaced)")
    return start


def reset_logs(out_dir: str | Path) -> None:
    """A run starting over: its metrics must not follow an earlier run's."""
    from scalelab.io import atomic_write_text

    out = Path(out_dir)
    if (out / "metrics.jsonl").exists():
        atomic_write_text(out / "metrics.jsonl", "")
    (out / "summary.json").unlink(missing_ok=True)


def choose_checkpoint(out_dir: str | Path, which: str) -> tuple[Path, dict[str, Any], list[str]]:
    """Pick the checkpoint (`last` or a step name), verify it, and point `last` at it so
    that a later resume continues the same line of steps."""
    path, state, notes = ckpt_io.select_checkpoint(out_dir, which)
    if ckpt_io.find_checkpoint(out_dir, "last") != path:
        newer = [d.name for d in ckpt_io.list_checkpoints(out_dir) if ckpt_io.step_of(d.name) > state["step"]]
        if newer and which != "last":
            notes.append(f"checkpoints after it ({', '.join(newer)}) are kept until this run saves those steps again")
        ckpt_io.set_last(out_dir, path)
    return path, state, notes


def check_compatible(path: Path, state: dict[str, Any], model_config: dict[str, Any],
                     tokenizer_identity: str | None, data_dir: str) -> None:
    """Refuse a checkpoint of another model shape or tokenizer (a user error, not corruption)."""
    saved_model = state.get("model_config", {})
    diffs = [f"model.{k}: checkpoint {saved_model.get(k)!r} vs config {v!r}"
             for k, v in model_config.items() if k in saved_model and saved_model[k] != v]
    if diffs:
        raise CheckpointError(f"checkpoint '{path}' was trained with a different model shape: "
                              + "; ".join(diffs) + ". Use the original config or a new out_dir")
    saved_tok = state.get("tokenizer_identity")
    if saved_tok and tokenizer_identity and saved_tok != tokenizer_identity:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with tokenizer {saved_tok} but data dir "
            f"'{data_dir}' uses {tokenizer_identity}; point data.dir at the original data")
