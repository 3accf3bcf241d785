"""`python -m scalelab.finetune.throughput CONFIG [key=value ...]`: the fine-tune job's
training step timed for `scalelab tune` (job: finetune). Runs train.max_steps steps through
`job.measure_steps` and writes one metrics.jsonl line per step on rank 0:

    {"kind": "train", "step": 3, "step_time": 0.41, "step_tokens": 1532, "world": 2, "loss": 1.9}

`step_tokens` are the real (non-padding) tokens of the step over all processes; the tuner
divides by `world` for tokens/s per process. Works under torchrun like `scalelab finetune`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from scalelab.errors import ScalelabError
    from scalelab.finetune.config import load_finetune_config
    from scalelab.finetune.job import measure_steps

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    config, overrides = (args[0], args[1:]) if not ("=" in args[0] and not args[0].endswith((".yaml", ".yml"))) \
        else (None, args)
    files: dict[str, object] = {}

    def on_step(info, step: int, seconds: float, real: int, loss: float) -> None:
        if not info.is_main:
            return
        if "f" not in files:
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            files["f"] = open(Path(cfg.out_dir) / "metrics.jsonl", "a", buffering=1)
        files["f"].write(json.dumps({"kind": "train", "step": step, "step_time": seconds, "step_tokens": real,
                                     "world": info.world_size, "loss": loss}) + "\n")

    try:
        cfg = load_finetune_config(config, overrides)
        measure_steps(cfg, on_step)
    except ScalelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if "f" in files:
            files["f"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
