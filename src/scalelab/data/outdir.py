"""Output locations of `scalelab data` and `scalelab eval`: checked before any work, and
write failures (full disk, read-only mount, any exception) turned into one-line errors.

`check_writable(dir)` probes the nearest existing ancestor with a real temp file (root
passes `os.access` on mode bits; only a write tells about read-only mounts).
`write_failure(exc, path, need_bytes)` is the DataError to raise when a write failed
(the message comes from scalelab.io.describe_write_error). `stage_files` writes a set of
files all or nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from scalelab import io
from scalelab.errors import DataError
from scalelab.io import fsync_dir


def describe_write_error(exc: BaseException, path: str | Path, need_bytes: int | None = None,
                         hint: str = "") -> str:
    """scalelab.io.describe_write_error, naming the folder for a full disk ("no space
    left on device for '<dir>': free N MB ...") and the file for anything else."""
    path = Path(path)
    where = path if path.is_dir() or not path.suffix else path.parent
    return io.describe_write_error(exc, where if io.is_no_space(exc) else path, need_bytes, hint)


class WriteFailed(DataError):
    """A write failed; keeps what failed so a caller can name its own output location."""

    def __init__(self, exc: BaseException, path: Path, need_bytes: int | None = None, hint: str = ""):
        super().__init__(describe_write_error(exc, path, need_bytes, hint))
        self.exc, self.path, self.need_bytes = exc, Path(path), need_bytes

    def moved(self, tmp: Path, out: Path, hint: str = "") -> DataError:
        """The same failure, naming `out` where it named the temp dir `tmp` it is built in."""
        try:
            path = out / self.path.relative_to(tmp)
        except ValueError:
            path = self.path
        if io.is_no_space(self.exc):
            path = out.parent
        return DataError(describe_write_error(self.exc, path, self.need_bytes, hint))


def write_failure(exc: BaseException, path: str | Path, need_bytes: int | None = None, hint: str = "") -> WriteFailed:
    return WriteFailed(exc, Path(path), need_bytes, hint)


def check_writable(path: str | Path, what: str, fix: str, beside: bool = False) -> None:
    """Raise DataError unless files can be created in `path` (or where it would be made);
    `beside=True`: next to it (a folder built as a temp sibling and renamed into place).

    `what` names the location ("data.dir", "--out"), `fix` says what to change."""
    p = Path(path).absolute()
    start = p.parent if beside else p
    probe_dir = next((q for q in (start, *start.parents) if q.exists()), None)
    if probe_dir is None:
        return
    if not probe_dir.is_dir():
        raise DataError(f"{what} '{path}': '{probe_dir}' is a file, not a folder; {fix}")
    probe = probe_dir / f".scalelab-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        if io.is_no_space(e):
            raise DataError(f"{what} '{path}': " + describe_write_error(e, probe_dir)) from None
        raise DataError(f"{what} '{path}' is not writable ('{probe_dir}': {e.strerror or e}); {fix}") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def json_text(obj) -> str:
    """Indented JSON; numpy scalars and paths as plain values."""
    def default(o):
        if hasattr(o, "item"):
            return o.item()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serializable: {type(o).__name__}")

    return json.dumps(obj, indent=2, default=default) + "\n"


def stage_files(out: str | Path, files: dict[str, str | bytes], hint: str = "") -> None:
    """Write several files into `out` all or nothing: each into a temp file beside its
    target (mode from the umask, fsynced), then all renamed. A failure at any point
    removes every temp (and `out` when this call made it) and raises one DataError;
    files already in `out` keep their old content."""
    out = Path(out)
    blobs = {name: data.encode("utf-8") if isinstance(data, str) else data for name, data in files.items()}
    need = sum(len(b) for b in blobs.values())
    made = not out.exists()
    temps: dict[str, Path] = {}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in blobs.items():
            tmp = out / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            temps[name] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except Exception as e:  # noqa: BLE001 - any failed write: nothing half-written stays
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise DataError(describe_write_error(e, out, need, hint)) from None
    for name, tmp in temps.items():
        os.replace(tmp, out / name)
    fsync_dir(out)
