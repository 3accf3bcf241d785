"""Output locations of `scalelab data` and `scalelab eval`: checked before any work, and
write failures (full disk, read-only mount, any exception) turned into one-line errors.

`check_writable(dir)` probes the nearest existing ancestor with a real temp file (root
passes `os.access` on mode bits; only a write tells about read-only mounts).
`write_failure(exc, path, need_bytes)` is the DataError to raise when a write failed
(the message comes from scalelab.io.describe_write_error where it exists).
"""
from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from scalelab.errors import DataError

try:  # the shared helpers, once scalelab.io has them
    from scalelab.io import describe_write_error as _describe
    from scalelab.io import is_no_space as _is_no_space
except ImportError:  # pragma: no cover - depends on the io.py version
    _describe = _is_no_space = None

_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def is_no_space(exc: BaseException) -> bool:
    if _is_no_space is not None:
        return _is_no_space(exc)
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def _free_mb(path: Path) -> float | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free / 1e6
        except OSError:
            continue
    return None


def describe_write_error(exc: BaseException, path: str | Path, need_bytes: int | None = None,
                         hint: str = "") -> str:
    """One line: what failed writing `path`, and the fix. A full disk names the folder
    ("no space left on device for '<dir>': free N MB ..."), anything else the file."""
    path = Path(path)
    where = path if path.is_dir() or not path.suffix else path.parent
    if _describe is not None:
        return _describe(exc, where if is_no_space(exc) else path, need_bytes, hint)
    if is_no_space(exc):
        free = _free_mb(where)
        need = f", this write needs {need_bytes / 1e6:,.0f} MB" if need_bytes else ""
        have = f" ({free:,.0f} MB are free{need})" if free is not None else ""
        return f"no space left on device for '{where}': free some space{have}" + (f" {hint}" if hint else "")
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write to '{where}' ({exc.strerror or exc}); choose a writable output location"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
    return f"could not write '{path}': {reason.splitlines()[0]}"


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
        if is_no_space(self.exc):
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
        if e.errno in _NO_SPACE:
            raise DataError(f"{what} '{path}': " + describe_write_error(e, probe_dir)) from None
        raise DataError(f"{what} '{path}' is not writable ('{probe_dir}': {e.strerror or e}); {fix}") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
