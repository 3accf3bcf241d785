"""`scalelab data`: corpus -> tokenizer -> token shards + meta.json, in one directory.

Steps: read the source (sources.py); train the tokenizer on up to
`tokenizer_train_bytes` of the training documents (or load gpt2 / a saved one); split
documents into train/val by a seeded hash of their index; tokenize chunks of documents
in `num_workers` processes (order kept, a bounded number of chunks in flight, so memory
stays constant); stream `[EOT] + tokens(doc)` for every document into shards of
`shard_tokens` tokens; write meta.json last. Everything is built in a hidden sibling
directory and renamed into place, so a crash never leaves a half-written data dir.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import platform
import re
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scalelab.data import shards as S
from scalelab.data.outdir import WriteFailed, check_writable, write_failure
from scalelab.data.sources import iter_documents
from scalelab.data.tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer, train_tokenizer
from scalelab.errors import DataError
from scalelab.io import read_json, swap_dir_into_place

if TYPE_CHECKING:
    from scalelab.config import DataConfig

FORMAT_VERSION = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")
# Fields of DataConfig that determine the directory's contents (not dir / num_workers).
FINGERPRINT_KEYS = ("source", "hf_config", "hf_split", "text_column", "encoding", "max_docs", "max_bytes",
                    "tokenizer", "vocab_size", "tokenizer_train_bytes", "val_fraction", "shard_tokens", "split_seed")
CHUNK_BYTES = 256 << 10  # text per work item sent to a tokenizer process
CHUNK_DOCS = 2048
_RUN_HINT = "run `scalelab data CONFIG`"
_DISK_HINT = "or set data.dir to a folder on a disk with room"


# ---------------------------------------------------------------------------
# Split


def is_val_doc(index: int, val_fraction: float, seed: int) -> bool:
    """Deterministic document-level split: a seeded hash of the document's index."""
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2**64


# ---------------------------------------------------------------------------
# Tokenization work (runs in worker processes, or inline with one worker)

_WORKER_TOK: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOK
    # One thread per process: the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    if _WORKER_TOK is None:  # spawn; with fork the parent's tokenizer is inherited
        _WORKER_TOK = load_tokenizer(tokenizer_dir)


def _encode_docs(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[EOT] + tokens(doc) for each doc, concatenated; each doc's length (EOT included);
    each doc's UTF-8 byte count."""
    encoded = tok.encode_serial(texts)
    lengths = np.fromiter((len(ids) + 1 for ids in encoded), dtype=np.int64, count=len(encoded))
    nbytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    eot = [tok.eot_id]
    flat = np.fromiter(itertools.chain.from_iterable(itertools.chain(eot, ids) for ids in encoded),
                       dtype=dtype, count=int(lengths.sum()))
    return flat, lengths, nbytes


def _worker_encode(texts: list[str], dtype_str: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    assert _WORKER_TOK is not None
    return _encode_docs(_WORKER_TOK, texts, np.dtype(dtype_str))


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= CHUNK_BYTES or len(chunk) >= CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encoded_chunks(docs: Iterable[str], tok: Tokenizer, tok_dir: Path, dtype: np.dtype,
                    num_workers: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (number of docs, tokens, lengths, bytes) per chunk, in document order."""
    if num_workers <= 1:
        for chunk in _chunks(docs):
            yield (len(chunk), *_encode_docs(tok, chunk, dtype))
        return
    # fork on Linux: workers start at once (no re-import of the caller's __main__, which
    # for the CLI imports torch). The workers only load the tokenizer and encode, with
    # library threading off, so forking a threaded parent is safe here. spawn elsewhere.
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    global _WORKER_TOK
    method = "fork" if sys.platform == "linux" else "spawn"
    ctx = multiprocessing.get_context(method)
    _WORKER_TOK = tok if method == "fork" else None
    try:
        with _quiet_fork(), ProcessPoolExecutor(num_workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(str(tok_dir),)) as pool:
            pending: collections.deque = collections.deque()
            max_in_flight = 2 * num_workers  # bounded: constant memory however big the corpus
            for chunk in _chunks(docs):
                pending.append((len(chunk), pool.submit(_worker_encode, chunk, dtype.str)))
                while len(pending) >= max_in_flight:
                    count, fut = pending.popleft()
                    yield (count, *fut.result())
            while pending:
                count, fut = pending.popleft()
                yield (count, *fut.result())
    except BrokenProcessPool as e:
        raise DataError(f"a tokenizer worker process died ({e}); set data.num_workers=1 to tokenize in "
                        "this process (where workers are spawned, the main script must be importable "
                        "and guarded by `if __name__ == '__main__':`)") from None


@contextlib.contextmanager
def _quiet_fork():
    """Silence the fork notices of HF tokenizers ("disabling parallelism") and Python 3.12+
    ("process is multi-threaded") while the pool exists; restore the environment after."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
            yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


# ---------------------------------------------------------------------------
# Public API


def _fingerprint(cfg: DataConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in FINGERPRINT_KEYS}


def _recorded_fingerprint(meta: dict) -> dict[str, Any]:
    """meta.json's settings; keys added to FINGERPRINT_KEYS later read as their default
    (a dir prepared before `encoding` existed was decoded as utf-8)."""
    from scalelab.config import DataConfig

    old = meta.get("config")
    if not isinstance(old, dict):
        return {}
    defaults = DataConfig()
    return {**{k: getattr(defaults, k) for k in FINGERPRINT_KEYS if k not in old}, **old}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("scalelab", "numpy", "tokenizers", "sentencepiece", "tiktoken", "datasets", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _make_tokenizer(cfg: DataConfig) -> tuple[Tokenizer, float]:
    t0 = time.perf_counter()
    kind = cfg.tokenizer
    if kind in ("bpe", "sentencepiece"):
        if cfg.tokenizer_train_bytes <= 0:
            raise DataError(f"data.tokenizer_train_bytes must be > 0 to train a '{kind}' tokenizer, "
                            f"got {cfg.tokenizer_train_bytes}")
        texts: list[str] = []
        budget = cfg.tokenizer_train_bytes
        for i, doc in enumerate(iter_documents(cfg)):
            if budget <= 0:
                break
            if is_val_doc(i, cfg.val_fraction, cfg.split_seed):
                continue
            texts.append(doc)
            budget -= len(doc.encode("utf-8"))
        if not texts:
            raise DataError(f"data.source '{cfg.source}' has no training documents to train the tokenizer on; "
                            "it needs at least 2 documents")
        tok = train_tokenizer(kind, texts, cfg.vocab_size)
    elif kind == "gpt2":
        tok = gpt2_tokenizer()
    else:
        tok = load_tokenizer(kind)
    return tok, time.perf_counter() - t0


def _check_existing(out: Path, cfg: DataConfig) -> tuple[dict | None, str]:
    """(the existing meta, "") when `out` already holds exactly this config's data, else
    (None, what differs or is damaged)."""
    meta = _read_meta_file(out / META_FILE)
    old, new = _recorded_fingerprint(meta), _fingerprint(cfg)
    if old != new:
        diff = [f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in FINGERPRINT_KEYS if old.get(k) != new[k]]
        return None, f"was prepared with other settings ({'; '.join(diff) or 'unrecorded'})"
    try:
        for split in SPLITS:
            for item in meta["splits"][split]["shards"]:
                n = S.read_header(out / item["file"]).num_tokens
                if n != item["tokens"]:
                    return None, f"has a damaged shard ({item['file']}: {n:,} tokens, {META_FILE} says {item['tokens']:,})"
    except DataError as e:
        return None, f"has a missing or damaged shard ({e})"
    except (KeyError, TypeError):
        return None, f"has a damaged {META_FILE} (no shard list)"
    return meta, ""


def prepare_data(cfg: DataConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Build cfg.dir (tokenizer, shards, meta.json) from cfg.source; return the meta.

    Idempotent: a directory already prepared from the same settings is returned as is.
    A directory holding anything else is refused. `overwrite=True` always rebuilds (e.g.
    after the files of a local source changed: the settings record its path only).
    """
    out = Path(cfg.dir)
    if (out / META_FILE).is_file() and not overwrite:
        existing, problem = _check_existing(out, cfg)
        if existing is not None:
            return existing
        raise DataError(f"data dir {out} {problem}; pass --overwrite to rebuild it, or choose another data.dir")
    if not (out / META_FILE).is_file() and out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(f"data dir {out} exists and was not written by `scalelab data` (no {META_FILE}); "
                        "choose another data.dir or pass --overwrite to replace it")
    if overwrite and out.exists():
        foreign = _foreign_entries(out)
        if foreign:
            raise DataError(f"refusing to replace {out}: it holds things `scalelab data` does not write "
                            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); move them away "
                            "or choose another data.dir")

    # Before reading or tokenizing anything: a read-only location fails in a second.
    check_writable(out, "data.dir", "choose another data.dir (a folder you can write to)", beside=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(out)
        tmp = out.parent / partial_name(out)
        tmp.mkdir()
    except OSError as e:
        raise write_failure(e, out.parent, hint=_DISK_HINT) from None
    try:
        try:
            meta = _build(cfg, tmp, progress)
        except WriteFailed as e:  # name data.dir, not the hidden temp dir (removed below)
            raise e.moved(tmp, out, _DISK_HINT) from None
        try:
            _publish(tmp, out)
        except Exception as e:  # noqa: BLE001 - any failure to publish is a write failure
            raise write_failure(e, out, hint=_DISK_HINT) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


# ---------------------------------------------------------------------------
# Temp dirs of killed runs

_HOST = hashlib.blake2b(platform.node().encode(), digest_size=3).hexdigest()
_PARTIAL_RE = re.compile(r"\.partial-(?:([0-9a-f]{6})-(\d+)-)?[0-9a-f]{8}$")


def partial_name(out: Path) -> str:
    """`.NAME.partial-<host>-<pid>-<random>`: the writer's host and pid tell a later run
    whether the dir is still being written."""
    return f".{out.name}.partial-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a live process, from /proc (None where unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_alive(pid: int, since: float) -> bool:
    """Whether process `pid` exists and is old enough to have written a dir last changed
    at `since` (a newer process with a recycled pid is not the writer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start = _process_start(pid)
    return start is None or start <= since + 1.0


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove `.NAME.partial-*` dirs that a killed `scalelab data` left beside `out`: on
    this host, those whose writer process is gone; an unnamed writer (older scalelab)
    counts as gone when the dir is older than this process. Returns what was removed."""
    removed = []
    prefix = f".{out.name}.partial-"
    me = _process_start(os.getpid()) or time.time()
    for p in out.parent.glob(f"{glob.escape(prefix)}*"):
        m = _PARTIAL_RE.search(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        host, pid = m.group(1), m.group(2)
        if pid is None:
            stale = mtime < me
        elif host != _HOST:
            continue  # another machine's run on a shared filesystem: not ours to judge
        else:
            stale = int(pid) != os.getpid() and not _writer_alive(int(pid), mtime)
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _build(cfg: DataConfig, tmp: Path, progress: bool) -> dict:
    t_start = time.perf_counter()
    tok, tok_s = _make_tokenizer(cfg)
    try:
        tok.save(tmp)
    except Exception as e:  # noqa: BLE001 - the tokenizer libraries raise their own types
        raise write_failure(e, tmp) from None
    version = S.version_for_vocab(tok.vocab_size)
    dtype = S.token_dtype(version)
    writers = {s: S.SplitWriter(tmp, s, cfg.shard_tokens, version) for s in SPLITS}
    docs = {s: 0 for s in SPLITS}
    nbytes = {s: 0 for s in SPLITS}

    from tqdm import tqdm

    bar = tqdm(total=cfg.max_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc="tokenizing",
               disable=None if progress else True,  # None: off when not a TTY
               mininterval=0.5, dynamic_ncols=True)
    t0 = time.perf_counter()
    held: tuple[np.ndarray, int] | None = None  # last train doc, kept back while val is empty
    index = 0
    try:
        for count, flat, lengths, doc_bytes in _encoded_chunks(iter_documents(cfg), tok, tmp, dtype, cfg.num_workers):
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            for k in range(count):
                piece = flat[offsets[k]:offsets[k + 1]]
                b = int(doc_bytes[k])
                if is_val_doc(index, cfg.val_fraction, cfg.split_seed):
                    split = "val"
                    if held is not None:  # val is no longer empty: release the held train doc
                        writers["train"].write(held[0])
                        docs["train"] += 1
                        nbytes["train"] += held[1]
                        held = None
                else:
                    split = "train"
                    if docs["val"] == 0:
                        # Keep the newest train doc back until val has a doc: if the corpus
                        # ends first, it becomes the validation split (val is never empty).
                        if held is not None:
                            writers["train"].write(held[0])
                            docs["train"] += 1
                            nbytes["train"] += held[1]
                        held = (piece.copy(), b)
                        index += 1
                        continue
                writers[split].write(piece)
                docs[split] += 1
                nbytes[split] += b
                index += 1
            bar.update(int(doc_bytes.sum()))
            bar.set_postfix_str(f"{writers['train'].num_tokens + writers['val'].num_tokens:,} tokens", refresh=False)
        if held is not None:
            writers["val"].write(held[0])
            docs["val"] += 1
            nbytes["val"] += held[1]
        if docs["train"] == 0:
            raise DataError(f"data.source '{cfg.source}' has too few documents ({index}) for a train and a "
                            "validation split; it needs at least 2")
        shard_lists = {s: writers[s].close() for s in SPLITS}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    tokenize_s = time.perf_counter() - t0
    total_bytes = sum(nbytes.values())

    meta = {
        "format_version": FORMAT_VERSION,
        "source": cfg.source,
        "config": _fingerprint(cfg),
        "tokenizer": {"name": tok.name, "identity": tok.identity, "vocab_size": tok.vocab_size,
                      "eot_id": tok.eot_id},
        "shard_version": version,
        "shard_dtype": dtype.name,
        "eot_placement": "before_each_document",
        "splits": {s: {"docs": docs[s], "tokens": writers[s].num_tokens, "bytes": nbytes[s],
                       "shards": [{"file": p.name, "tokens": n} for p, n in shard_lists[s]]}
                   for s in SPLITS},
        "timing": {"tokenizer_s": round(tok_s, 3), "tokenize_s": round(tokenize_s, 3),
                   "tokenize_mb_per_s": round(total_bytes / 1e6 / max(tokenize_s, 1e-9), 3),
                   "num_workers": cfg.num_workers, "total_s": round(time.perf_counter() - t_start, 3)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    _write_json(tmp / META_FILE, meta)
    return meta


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(obj, indent=2) + "\n"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - any failure: no half-written meta.json
        tmp.unlink(missing_ok=True)
        raise write_failure(e, path, len(text)) from None


_OWN_FILES = {META_FILE, "tokenizer_meta.json", "tokenizer.json", "tokenizer.model"}


def _foreign_entries(out: Path) -> list[str]:
    """What in `out` scalelab did not write (so --overwrite never deletes a user's folder)."""
    if not out.is_dir() or out.is_symlink():
        return [out.name]
    return sorted(p.name for p in out.iterdir()
                  if not (p.is_file() and (p.name in _OWN_FILES or p.suffix == ".bin"
                                           or (p.name.startswith(".") and p.name.endswith(".tmp")))))


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished temp dir to `out`, replacing what was there."""
    swap_dir_into_place(tmp, out)


def _read_meta_file(path: Path) -> dict:
    meta = read_json(path, DataError, f"{path} does not exist; {_RUN_HINT}",
                     lambda e: f"{path} is unreadable or not valid JSON ({e}); {_RUN_HINT} --overwrite")
    if not isinstance(meta, dict):
        raise DataError(f"{path} is not a JSON object; {_RUN_HINT} --overwrite")
    fv = meta.get("format_version")
    if not isinstance(fv, int) or fv > FORMAT_VERSION:
        raise DataError(f"{path} has format_version {fv!r}; this scalelab reads up to {FORMAT_VERSION} "
                        "(upgrade scalelab, or re-run `scalelab data CONFIG --overwrite`)")
    return meta


def load_meta(data_dir: str | Path) -> dict:
    """meta.json of a data dir; for a folder of public shards without one, a minimal meta
    built from the shard headers (tokenizer None, docs/bytes None)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"data dir {d} does not exist; {_RUN_HINT} to create it")
    if (d / META_FILE).is_file():
        return _read_meta_file(d / META_FILE)
    splits: dict[str, Any] = {}
    version = None
    for split in SPLITS:
        try:
            files = S.list_shards(d, split)
        except DataError:
            continue
        headers = [S.read_header(p) for p in files]
        version = headers[0].version
        splits[split] = {"docs": None, "tokens": sum(h.num_tokens for h in headers), "bytes": None,
                         "shards": [{"file": h.path.name, "tokens": h.num_tokens} for h in headers]}
    if not splits:
        raise DataError(f"data dir {d} has no {META_FILE} and no token shards (train_*.bin / val_*.bin); "
                        f"{_RUN_HINT}")
    return {"format_version": FORMAT_VERSION, "source": None, "config": None, "tokenizer": None,
            "shard_version": version, "shard_dtype": S.token_dtype(version).name,
            "eot_placement": None, "splits": splits}


def load_data_tokenizer(data_dir: str | Path) -> Tokenizer | None:
    """The tokenizer a data dir was prepared with (None for bare public shards)."""
    meta = load_meta(data_dir)
    info = meta.get("tokenizer")
    if not info:
        return None
    tok = load_tokenizer(Path(data_dir))
    if info.get("identity") and tok.identity != info["identity"]:
        raise DataError(f"the tokenizer files in {data_dir} ({tok.identity}) do not match its {META_FILE} "
                        f"({info['identity']}); {_RUN_HINT} --overwrite")
    return tok
