"""What `scalelab tune` measures: a tune config's `job:` (pretrain | finetune).

A job says which config keys exist, its built-in knobs, the fixed global batch a
micro-batch must divide, how a trial is launched, and how the winner is run:

- `pretrain`: `scalelab train` on a training config; global batch train.batch_tokens;
  tokens/s = batch_tokens / world / step_time.
- `finetune`: the fine-tune job's real training step (`finetune.job.measure_steps`, run by
  `python -m scalelab.finetune.throughput`) on a fine-tune config; global batch
  train.batch_rows rows; tokens/s counts the real (non-padding) tokens of each step, so
  packing on and off compare on the data they train on.

Fine-tune knobs that change what is trained, not only its speed (`changes_math`): LoRA on/off
and its rank (another model), packing (at a fixed number of rows per step a packed row holds
several examples: more examples per optimizer step). RECIPE.md lists them apart.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from scalelab.errors import ConfigError
from scalelab.tune.measure import MeasureSettings, measurement_overrides
from scalelab.tune.space import KNOWN_KNOBS, PretrainRules, _get


def _launch(nproc: int, command: str) -> list[str]:
    if nproc > 1:
        return ["torchrun", f"--nproc_per_node={nproc}", "-m", "scalelab", command]
    return ["scalelab", command]


class Pretrain(PretrainRules):
    name = "pretrain"
    renamed: dict[str, str] = {}
    example = "configs/tune-cpu.yaml"
    metric = "tokens/s per process (per GPU): batch_tokens / world / step_time, mean of window throughputs"

    def valid_keys(self) -> set[str]:
        from scalelab.config import RunConfig, all_keys

        return set(all_keys(RunConfig))

    def load_base(self, path: Path, overrides: list[str]):
        from scalelab.config import load_config

        return load_config(path, list(overrides) + ["train.max_steps=1"])

    entry = ("scalelab", "train")  # the trial's module and arguments

    def measurement_overrides(self, base, run_dir: Path, settings: MeasureSettings) -> list[str]:
        return measurement_overrides(run_dir, settings, base.model.seq_len)

    def recipe_launch(self, nproc: int) -> list[str]:
        return _launch(nproc, "train")

    def tokens_per_step(self, base, nproc: int) -> float | None:
        return base.train.batch_tokens / nproc

    def threads(self, base) -> int | None:
        return base.train.threads

    def fingerprint_base(self, base) -> dict[str, Any]:
        d = base.to_dict()
        d["train"].pop("max_steps", None)
        d.pop("out_dir", None)
        return d

    def batch(self, base) -> dict[str, Any]:
        return {"batch_tokens": base.train.batch_tokens, "seq_len": base.model.seq_len,
                "text": f"global batch {base.train.batch_tokens:,} tokens of seq {base.model.seq_len}"}

    def prepare(self, base, progress: bool) -> dict[str, Any]:
        """Token shards (prepared once, before any trial) and the model's sizes."""
        import dataclasses

        from scalelab.data.prepare import load_meta, prepare_data
        from scalelab.model.sizing import count_params, flops_per_token

        data_dir = Path(base.data.dir)
        if not (data_dir.is_dir() and any(data_dir.glob("train_*.bin"))):  # as the trainer does (ensure_data)
            prepare_data(base.data, progress=progress)
        meta = load_meta(base.data.dir)
        vocab = base.model.vocab_size or (meta.get("tokenizer") or {}).get("vocab_size")
        if not vocab:
            return {}
        mcfg = dataclasses.replace(base.model, vocab_size=int(vocab))
        return {**count_params(mcfg), "flops_per_token": flops_per_token(mcfg), "config": dataclasses.asdict(mcfg)}


FINETUNE_KNOBS: dict[str, dict[str, Any]] = {
    "NCCL_ALGO": KNOWN_KNOBS["NCCL_ALGO"],
    "NCCL_PROTO": KNOWN_KNOBS["NCCL_PROTO"],
    "train.micro_batch": {"values": [1, 2, 4, 8, 16]},
    "model.compile": {"values": [False, True], "requires": ["compiler"]},
    "model.activation_checkpointing": {"values": [False, True]},
    "train.parallel": KNOWN_KNOBS["train.parallel"],
    "train.ddp_bucket_mb": KNOWN_KNOBS["train.ddp_bucket_mb"],
    "train.fsdp_reshard_after_forward": KNOWN_KNOBS["train.fsdp_reshard_after_forward"],
    "train.threads": KNOWN_KNOBS["train.threads"],
    "model.attn_implementation": {"values": ["auto", "sdpa"]},  # auto: scalelab_varlen on CPU
    "data.packing": {"values": [True, False], "changes_math": True},
    "model.lora": {"values": [True, False], "changes_math": True},
    "model.lora_rank": {"values": [8, 16, 32, 64], "requires": ["lora"], "changes_math": True},
    # The pretraining loader's knobs: accepted in a fine-tune space, dropped with the reason.
    "train.loader_workers": {"values": [0, 1, 2, 4], "requires": ["loader"]},
    "train.prefetch_factor": {"values": [2, 4], "requires": ["loader"]},
    "train.pin_memory": {"values": [False, True], "requires": ["loader"]},
}


class Finetune:
    name = "finetune"
    example = "configs/tune-finetune-cpu.yaml"
    known_knobs = FINETUNE_KNOBS
    renamed = {"train.compile": "model.compile", "train.activation_checkpointing": "model.activation_checkpointing"}
    metric = ("real (non-padding) tokens/s per process (per GPU): a window's tokens / world / its time, "
              "mean of window throughputs")

    def valid_keys(self) -> set[str]:
        from scalelab.config import all_keys
        from scalelab.finetune.config import FinetuneConfig

        return set(all_keys(FinetuneConfig))

    def load_base(self, path: Path, overrides: list[str]):
        from scalelab.finetune.config import load_finetune_config

        return load_finetune_config(path, list(overrides))

    def base_value(self, base, name: str, world: int) -> Any:
        v = _get(base, name)
        if name == "train.parallel" and v == "auto":
            return "ddp" if world > 1 else "none"
        return v

    def micro_batch_divides(self, base, micro: int, world: int) -> bool:
        return base.train.batch_rows % (micro * world) == 0

    def micro_batch_rule(self, base, world: int) -> str:
        return f"train.batch_rows={base.train.batch_rows} is not a multiple of micro_batch x processes ({world})"

    def restrict(self, k, base, world: int, notes: list[str]) -> None:
        return None

    entry = ("scalelab.finetune.throughput",)

    def measurement_overrides(self, base, run_dir: Path, settings: MeasureSettings) -> list[str]:
        return [f"out_dir={run_dir}", f"output.dir={Path(run_dir) / 'model'}", f"train.max_steps={settings.total_steps}",
                "train.epochs=null", "train.resume=false", "train.progress=false", "train.tensorboard=false",
                "train.wandb=false"]

    def recipe_launch(self, nproc: int) -> list[str]:
        return _launch(nproc, "finetune")

    def tokens_per_step(self, base, nproc: int) -> float | None:
        return None  # real tokens differ from step to step: read from each step's record

    def threads(self, base) -> int | None:
        return base.train.threads

    def fingerprint_base(self, base) -> dict[str, Any]:
        d = base.to_dict()
        for key in ("max_steps", "epochs"):
            d["train"].pop(key, None)
        d.pop("out_dir", None)
        d["output"].pop("dir", None)
        return d

    def batch(self, base) -> dict[str, Any]:
        d, t = base.data, base.train
        return {"batch_rows": t.batch_rows, "max_length": d.max_length, "packing": d.packing,
                "text": f"global batch {t.batch_rows} rows of up to {d.max_length} tokens"
                        + (", packed rows holding several examples" if d.packing else "")}

    def prepare(self, base, progress: bool) -> dict[str, Any]:
        """The model (a GGUF is converted once here, not in the first trial) and the data,
        checked readable before any trial."""
        from scalelab.finetune.data import read_records
        from scalelab.finetune.gguf import resolve_model_path

        m, d = base.model, base.data
        path = resolve_model_path(m.hf)
        records = read_records(d.source, hf_config=d.hf_config, hf_split=d.hf_split, limit=d.max_examples)
        if not records:
            raise ConfigError(f"tune: the fine-tune data '{d.source}' has no records")
        info: dict[str, Any] = {"hf": m.hf, "path": str(path), "lora": m.lora,
                                "lora_rank": m.lora_rank if m.lora else None, "records": len(records)}
        try:
            import json

            cfg = json.loads((Path(path) / "config.json").read_text())
            info["architecture"] = (cfg.get("architectures") or [cfg.get("model_type")])[0]
            info["layers"], info["hidden"] = cfg.get("num_hidden_layers"), cfg.get("hidden_size")
        except (OSError, ValueError):
            pass  # a Hub id resolved later by transformers: no local config to read
        return info


JOBS = {"pretrain": Pretrain(), "finetune": Finetune()}


def get_job(name: str):
    if name not in JOBS:
        raise ConfigError(f"tune config: job must be one of {', '.join(JOBS)}; got '{name}'")
    return JOBS[name]

