"""Small file helpers: atomic writes (temp file + fsync + rename), write-failure messages
(disk full, read-only, ...), run provenance."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_dir_into_place(tmp: Path, final: Path, trash: Path | None = None) -> None:
    """Rename the finished directory `tmp` to `final`, replacing what is there (a directory,
    a file or a symlink). The old one is renamed aside first (to `trash`, by default a hidden
    sibling) and deleted only once the new one is in place: a crash at any moment leaves
    `final` whole (old or new), never half-written. The caller fsyncs `tmp`'s contents."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        old = Path(trash) if trash is not None else final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (threads may be running)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain open() would give a new file (0644 under the usual umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode a plain mkdir would give a new directory (0755 under umask 022)."""
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` so that `path` holds either the old or the new content, never half.

    The file gets the mode a plain open() would give it: mkstemp's 0600 would hide
    results and checkpoints from the other users of a shared machine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path, error: type[Exception], missing: str, unreadable: Callable[[Exception], str]) -> Any:
    """A JSON file's content; `error(missing)` when the file does not exist, `error(unreadable(e))`
    when it cannot be read or is not JSON (one message, no traceback)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(missing) from None
    except (OSError, ValueError) as e:
        raise error(unreadable(e)) from None


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


# -- write failures ---------------------------------------------------------------

_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How a full disk reads when it comes through a library instead of as an OSError:
# torch.save ("[enforce fail at inline_container.cc:...] . unexpected pos 576 vs 534",
# "PytorchStreamWriter failed writing file ...: file write failed") and safetensors
# ("Error while serializing: I/O error: No space left on device (os error 28)").
_NO_SPACE_TEXT = ("no space left", "os error 28", "disk quota exceeded", "os error 122", "storagefull")
_SHORT_WRITE_TEXT = ("unexpected pos", "file write failed", "inline_container")


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the file system holding `path` (or its nearest existing
    parent); None when the file system does not say (statvfs reports no size)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    if st.f_blocks == 0:  # e.g. some FUSE/network mounts: size unknown, not zero
        return None
    return st.f_bavail * st.f_frsize


def _mb(n: int) -> int:
    return max(1, math.ceil(n / 1e6))


def is_no_space(exc: BaseException, path: str | Path | None = None, need_bytes: int | None = None) -> bool:
    """Whether `exc` (an OSError, torch's RuntimeError, a SafetensorError, ...) is a full disk.

    torch reports a short write without the errno, so when `path` and `need_bytes` are
    given a short-write message also counts as a full disk if less than `need_bytes` is free."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(exc).lower()
    if any(t in text for t in _NO_SPACE_TEXT):
        return True
    if path is not None and need_bytes and any(t in text for t in _SHORT_WRITE_TEXT):
        free = free_bytes(path)
        return free is not None and free < need_bytes
    return False


def describe_write_error(exc: BaseException, path: str | Path, need_bytes: int | None = None,
                         hint: str = "") -> str:
    """One sentence for a failed write to `path`: what happened and what to do.

    `exc` may be anything a writer raises (OSError, torch.save's RuntimeError,
    safetensors' SafetensorError, ...); `need_bytes` is the size of what was being written
    (it sets the "free N MB"); `hint` is appended for a full disk (e.g. the config key that
    keeps fewer files). Callers wrap the text in their own ScalelabError subclass, e.g.
    `raise DataError(describe_write_error(e, out_dir, nbytes, "or set data.shard_tokens=..."))`.
    """
    where = f"'{path}'"
    if is_no_space(exc, path, need_bytes):
        free = free_bytes(path)
        if need_bytes:
            short = need_bytes - free if free is not None and free < need_bytes else need_bytes
            what = f"free {_mb(short)} MB (this write needs {_mb(need_bytes)} MB"
            what += f", {free / 1e6:.0f} MB are free)" if free is not None else ")"
        else:
            what = "free some space" + (f" ({free / 1e6:.0f} MB are free)" if free is not None else "")
        return f"no space left on device for {where}: {what}" + (f" {hint}" if hint else "")
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"{where} is on a read-only file system; choose a writable location"
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write {where} ({exc.strerror}); fix its permissions or choose another location"
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0] if str(exc)
              else type(exc).__name__)
    return f"could not write {where}: {reason}"


def check_free_space(path: str | Path, need_bytes: int, hint: str = "") -> str | None:
    """Before a large write: None if `need_bytes` fit on `path`'s file system (or it does
    not report its size), else the same message `describe_write_error` gives a full disk."""
    free = free_bytes(path)
    if free is None or free >= need_bytes:
        return None
    return describe_write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path, need_bytes, hint)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def git_hash(cwd: str | Path | None = None) -> str | None:
    """The commit of the scalelab source tree (suffix '-dirty' with local changes)."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def software_versions() -> dict[str, str]:
    import platform

    import numpy
    import torch

    import scalelab

    return {
        "scalelab": scalelab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


# Where machine-readable output goes. With --json, the CLI points everything printed to
# stdout at stderr while a command runs (progress, notes) and keeps the real stdout here,
# so `scalelab ... --json | jq` sees the JSON alone.
JSON_STREAM = None


def emit_json(obj: Any, **kwargs: Any) -> None:
    """Print `obj` as JSON on the command's machine-readable output (stdout)."""
    import sys

    stream = JSON_STREAM if JSON_STREAM is not None else sys.stdout
    print(json.dumps(obj, indent=2, **kwargs), file=stream, flush=True)

