"""The report of one training run: MODEL_CARD.md, BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md,
WRITEUP.md, and TRAJECTORY.png when checkpoints were evaluated (`eval --checkpoints`).

    report_run("runs/100m")          # writes the files into the run dir, returns a dict

The parts: run_files (reading the run and its numbers), run_card (MODEL_CARD.md),
run_benchmark (BENCHMARK.md, baselines), run_trajectory (the per-checkpoint table and
sentences), run_samples (SAMPLES.md), run_writeup (WRITEUP.md), run_plots (the figures).
Every number comes from the run's own files (run_files' docstring lists them) and
assets/baselines.json (published numbers of GPT-2 124M / Pythia-70M / Pythia-160M, with
sources). Missing optional inputs are said to be missing in the documents; only a
directory that is not a run at all is an error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from scalelab.io import atomic_write_bytes, atomic_write_text
from scalelab.report.markdown import count, f3
from scalelab.report.run_baselines import (  # noqa: F401 - names callers import from here
    BASELINES_ENV,
    baseline_value,
    baselines_path,
    load_baselines,
)
from scalelab.report.run_benchmark import benchmark_markdown
from scalelab.report.run_card import model_card_markdown
from scalelab.report.run_files import (  # noqa: F401
    RunFiles,
    eval_rows,
    load_run,
    progress,
    sizes,
    throughput,
    training_health,
    training_tasks,
)
from scalelab.report.run_samples import _no_samples_md, write_samples
from scalelab.report.run_trajectory import FIGURE, figure_panels
from scalelab.report.run_writeup import writeup_markdown

FILES = ("MODEL_CARD.md", "BENCHMARK.md", "LOSS_CURVE.png", "SAMPLES.md", "WRITEUP.md")


def is_run_dir(path: str | Path) -> bool:
    """A training run dir (what `scalelab train` writes), as opposed to a study dir."""
    p = Path(path)
    if (p / "results.json").is_file() and not (p / "metrics.jsonl").is_file():
        return False  # a study (or an eval output dir)
    return any((p / name).exists() for name in ("metrics.jsonl", "summary.json", "checkpoints"))


def report_run(run_dir: str | Path, samples: bool = True, device: str | None = None,
               baselines: str | Path | None = None, sample_tokens: int | None = None) -> dict[str, Any]:
    """Write MODEL_CARD.md, BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md and WRITEUP.md into `run_dir`
    (and TRAJECTORY.png when the run has per-checkpoint evaluations)."""
    from scalelab.report.run_plots import plot_loss_curve, plot_trajectory

    run = load_run(run_dir)
    d = run.dir
    out: dict[str, Any] = {"run_dir": str(d), "files": {}}
    p = progress(run)
    sz = sizes(run)
    base = load_baselines(baselines)
    title = (f"{run.name}: {count(sz.get('params'))} params, {count(p['tokens'])} tokens, "
             f"final val loss {f3(p['val_loss'], 4)}")
    marks = [r["tokens"] for r in run.trajectory + run.samples_log if isinstance(r.get("tokens"), (int, float))]
    atomic_write_bytes(d / "LOSS_CURVE.png", plot_loss_curve(run.train, run.evals, title, checkpoints=marks))
    if samples:
        samples_info = write_samples(run, d / "SAMPLES.md", device=device, max_tokens=sample_tokens)
    else:
        samples_info = {"ok": False, "reason": "sampling was skipped (samples=False / --no-samples)"}
        atomic_write_text(d / "SAMPLES.md", _no_samples_md(run, samples_info["reason"]))
    atomic_write_text(d / "MODEL_CARD.md", model_card_markdown(run, samples_info=samples_info))
    atomic_write_text(d / "BENCHMARK.md", benchmark_markdown(run, base))
    atomic_write_text(d / "WRITEUP.md", writeup_markdown(run, samples_info))
    out["files"] = {name: str(d / name) for name in FILES}
    panels = figure_panels(run, base)
    if panels:
        atomic_write_bytes(d / FIGURE, plot_trajectory(panels, f"{run.name}: metrics at each checkpoint"))
        out["files"][FIGURE] = str(d / FIGURE)
    out["numbers"] = {k: p[k] for k in ("steps", "tokens", "val_loss", "val_ppl", "val_bpb", "best_val_loss")}
    out["numbers"]["params"] = sz.get("params")
    out["trajectory"] = {"checkpoints": [r.get("step") for r in run.trajectory],
                         "samples_steps": samples_info.get("steps", [])}
    out["samples"] = samples_info
    out["inputs"] = run.read
    out["missing"] = [name for name, ok in (("summary.json", run.summary is not None),
                                            ("eval/results.json", run.eval_results is not None),
                                            ("lr_find.json", run.lr_find is not None),
                                            ("data meta.json", run.data_meta is not None)) if not ok]
    return out
