"""The published baselines a run report compares with: assets/baselines.json (or the file
$SCALELAB_BASELINES names) and each entry's value with its standard error."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from scalelab.report.numbers import finite as _ok, num as _num
from scalelab.report.run_files import _read_json

BASELINES_ENV = "SCALELAB_BASELINES"


def baselines_path() -> Path | None:
    env = os.environ.get(BASELINES_ENV)
    if env:
        return Path(env)
    # Shipped as package data, so installed wheels find it too.
    cand = Path(__file__).resolve().parents[1] / "assets" / "baselines.json"
    return cand if cand.is_file() else None


def load_baselines(path: str | Path | None = None) -> dict[str, Any] | None:
    p = Path(path) if path else baselines_path()
    if p is None or not p.is_file():
        return None
    data = _read_json(p)
    if data is not None:
        data["_path"] = str(p)
    return data


def baseline_value(entry: dict[str, Any]) -> tuple[float, float | None, str]:
    """(value, stderr, how the stderr was obtained) of one baseline metric."""
    v = _num(entry.get("value"))
    se = entry.get("stderr")
    if se is not None and _ok(se):
        return v, float(se), "reported"
    n = entry.get("n")
    if n and 0 <= v <= 1:
        return v, math.sqrt(v * (1 - v) / float(n)), "binomial sqrt(p(1-p)/n)"
    return v, None, "none"
