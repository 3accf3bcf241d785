"""Reading a task YAML written the harness's way: its local data as

    dataset_path: json                  # a `datasets` packaged builder: json, arrow, parquet
    dataset_kwargs:
      data_files:
        validation: data/my_task.jsonl  # relative paths: from the current directory, as datasets does
    validation_split: validation        # or test_split (evaluated first, as in the harness)

which `from_harness_form` turns into scalelab's `local: {file: ...}` before the task is
validated (spec.py); harness keys that do not change a 0-shot request (tag, training_split, ...)
are accepted and ignored, the ones that would (few-shot, description, include) are refused.
Writing a harness task file is eval/task_files.py.
"""
from __future__ import annotations

import os
from pathlib import Path

# `datasets` builders whose files scalelab reads itself (tasks.read_rows)
BUILDERS = {"json": (".jsonl", ".json", ".jsonl.gz"), "arrow": (".arrow",), "parquet": (".parquet",)}
# harness keys with no effect on 0-shot requests or scoring
IGNORED_KEYS = {"tag", "group", "task_alias", "training_split", "fewshot_split", "should_decontaminate",
                "doc_to_decontamination_query", "fewshot_delimiter", "fewshot_config", "repeats"}


def harness_split(raw: dict) -> str | None:
    """The split a task evaluates: scalelab's `split`, else the harness's order (test, then validation)."""
    return raw.get("split") or raw.get("test_split") or raw.get("validation_split")


def from_harness_form(raw: dict, fail) -> dict:
    """`raw` with the harness's local-file form turned into `local: {file: ...}` and the
    harness-only keys that do not matter at 0-shot removed. `fail(msg)` raises."""
    out = {k: v for k, v in raw.items() if k not in IGNORED_KEYS}
    if "include" in out:
        fail("'include' is not resolved by scalelab: copy the included keys into this file "
             "(`scalelab eval --export-harness-task NAME DIR` writes self-contained files)")
    if out.pop("num_fewshot", None) not in (None, 0):
        fail("num_fewshot: scalelab eval is 0-shot only; run few-shot through the harness adapter "
             "(python -m scalelab.eval.harness ..., docs/EVAL.md)")
    if out.pop("description", None) not in (None, ""):
        fail("description: scalelab eval builds 0-shot prompts without a description; remove it, or run "
             "the task through the harness adapter (python -m scalelab.eval.harness ..., docs/EVAL.md)")
    kwargs = out.pop("dataset_kwargs", None)
    if kwargs is None:
        return out
    if not isinstance(kwargs, dict):
        fail("dataset_kwargs must be a mapping (e.g. {data_files: {validation: my_task.jsonl}})")
    kwargs = {k: v for k, v in kwargs.items() if k != "trust_remote_code"}
    other = sorted(set(kwargs) - {"data_files"})
    if other:
        fail(f"dataset_kwargs {', '.join(other)}: scalelab reads only dataset_kwargs.data_files (local files "
             f"with dataset_path: {' / '.join(BUILDERS)})")
    if "data_files" not in kwargs:
        return out
    builder = out.get("dataset_path")
    if builder not in BUILDERS:
        fail(f"dataset_kwargs.data_files needs dataset_path: {' / '.join(BUILDERS)} (the file's format), "
             f"got {builder!r}")
    if out.get("local") is not None:
        fail("give the data once: 'local' or dataset_kwargs.data_files, not both")
    files = kwargs["data_files"]
    split = harness_split(out)
    if isinstance(files, dict):
        if split is None and len(files) == 1:
            split = next(iter(files))
        if split not in files:
            fail(f"dataset_kwargs.data_files has splits {', '.join(map(str, files))} but the task evaluates "
                 f"{split!r}: set test_split or validation_split to one of them")
        files = files[split]
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or len(files) != 1 or not isinstance(files[0], str):
        fail("dataset_kwargs.data_files must name one file for the evaluated split (concatenate several "
             "into one)")
    path = Path(os.path.expanduser(files[0]))
    if not path.name.lower().endswith(BUILDERS[builder]):
        fail(f"data file '{path}' does not look like dataset_path: {builder} (expected "
             f"{' / '.join(BUILDERS[builder])})")
    # datasets resolves relative data_files from the current directory, so both tools agree
    out["local"] = {"file": str(path if path.is_absolute() else Path.cwd() / path)}
    out["dataset_path"] = None  # a builder name, not a Hub dataset to fall back to
    out.setdefault("split", split or "validation")
    return out
