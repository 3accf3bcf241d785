"""Fit input: the ``Points`` table of runs, ``load_points`` (results.json or CSV) and input checks.

The file formats are described in the package docstring (``scalelab.scaling.fit``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scalelab.errors import DataError, ScalelabError


class FitError(ScalelabError):
    """A scaling-law fit cannot be made from these data (too few points, one size, ...)."""



@dataclass
class Points:
    """Training runs: one row per run. Arrays are float64 of equal length."""

    N: np.ndarray  # total parameters
    D: np.ndarray  # training tokens
    L: np.ndarray  # final loss
    N_ne: np.ndarray | None = None  # non-embedding parameters
    seed: np.ndarray | None = None
    flops: np.ndarray | None = None
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.N.size)

    @property
    def compute(self) -> np.ndarray:
        """Training compute per run: the ``flops`` column if given, else 6*N*D."""
        return self.flops if self.flops is not None else 6.0 * self.N * self.D


_REQUIRED = ("params", "tokens", "loss")
_OPTIONAL = ("non_embedding_params", "seed", "flops")


def _to_float(v) -> float:
    if v is None or (isinstance(v, str) and v.strip() == ""):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def load_points(path: str | Path, drop_invalid: bool = False) -> Points:
    """Read runs from a study ``results.json`` or a CSV (format in the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found (expected a study results.json or a CSV with columns params,tokens,loss)")
    rows: list[dict]
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc})") from None
        runs = doc.get("runs") if isinstance(doc, dict) else None
        if not isinstance(runs, list):
            raise DataError(f'{p}: expected a JSON object with a "runs" list (see scalelab.scaling.fit docs)')
        rows = []
        for i, r in enumerate(runs):
            if not isinstance(r, dict):
                raise DataError(f"{p}: runs[{i}] is not an object")
            if r.get("budget") is not None:  # an IsoFLOP study's planned budget groups its runs exactly
                r = dict(r, flops=r["budget"])
            rows.append(r)
        def where(i: int) -> str:
            return f"runs[{i}]"
    else:
        try:
            with p.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                header = [h.strip() for h in (reader.fieldnames or [])]
                missing = [c for c in _REQUIRED if c not in header]
                if missing:
                    raise DataError(
                        f"{p}: missing CSV column(s) {', '.join(missing)}; need a header with params,tokens,loss "
                        f"(optional: seed, flops, non_embedding_params); found: {', '.join(header) or '(no header)'}"
                    )
                rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{p}: not a UTF-8 text CSV ({type(exc).__name__}: {str(exc)[:80]}); give a study "
                            "results.json or a CSV with a params,tokens,loss header") from None
        except IsADirectoryError:
            raise DataError(f"{p}: is a directory; give a study's results.json or a CSV file") from None
        def where(i: int) -> str:  # 1-based file line (the header is line 1)
            return f"line {i + 2}"
    if not rows:
        raise DataError(f"{p}: no runs found")

    n = len(rows)
    cols: dict[str, np.ndarray] = {}
    for c in _REQUIRED + _OPTIONAL:
        present = [c in r and r[c] is not None and not (isinstance(r[c], str) and r[c].strip() == "") for r in rows]
        if c in _REQUIRED:
            if not all(present):
                if p.suffix.lower() == ".json":
                    bad = [i for i, ok in enumerate(present) if not ok]
                    if not drop_invalid:
                        raise DataError(
                            f'{p}: {len(bad)} run(s) lack "{c}" (' + ", ".join(where(i) for i in bad[:5])
                            + (", ..." if len(bad) > 5 else "") + "); fix them or pass --drop-invalid (drop_invalid=True)"
                        )
            cols[c] = np.array([_to_float(r.get(c)) for r in rows], dtype=float)
        elif any(present):
            cols[c] = np.array([_to_float(r.get(c)) for r in rows], dtype=float)

    valid = np.ones(n, dtype=bool)
    problems = []
    for c, arr in cols.items():
        if c == "seed":
            bad = ~np.isfinite(arr)
        else:
            bad = ~(np.isfinite(arr) & (arr > 0))
        if bad.any():
            idx = np.flatnonzero(bad)
            problems.append(
                f"{c} missing, NaN, infinite or <= 0 at " + ", ".join(where(int(i)) for i in idx[:5])
                + (f" (+{idx.size - 5} more)" if idx.size > 5 else "")
            )
            valid &= ~bad
    warn: list[str] = []
    if problems:
        if not drop_invalid:
            raise DataError(f"{p}: invalid values: " + "; ".join(problems) + ". Fix or drop those runs (--drop-invalid; drop_invalid=True in Python).")
        warn.append(f"dropped {int((~valid).sum())} invalid run(s): " + "; ".join(problems))
    if valid.sum() == 0:
        raise DataError(f"{p}: no valid runs left")
    cols = {c: a[valid] for c, a in cols.items()}
    return Points(
        N=cols["params"],
        D=cols["tokens"],
        L=cols["loss"],
        N_ne=cols.get("non_embedding_params"),
        seed=cols.get("seed"),
        flops=cols.get("flops"),
        source=str(p),
        warnings=warn,
    )


def _check_array(name: str, x, n: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=float).reshape(-1)
    if n is not None and arr.size != n:
        raise DataError(f"{name} has {arr.size} values, expected {n} (one per run)")
    if arr.size == 0:
        raise DataError(f"{name} is empty")
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        i = np.flatnonzero(bad)
        raise DataError(
            f"{name} must be finite and > 0; bad value(s) at index {', '.join(map(str, i[:5]))}"
            f"{' ...' if i.size > 5 else ''} (e.g. {arr[i[0]]!r})"
        )
    return arr

