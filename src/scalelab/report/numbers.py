"""Numbers read from results/summary JSON files: None or junk becomes nan, never an error,
so a report of a partly failed run still renders (with "n/a" where a number is missing)."""
from __future__ import annotations

import math


def num(x) -> float:
    """float(x), or nan for None / junk."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def finite(x) -> bool:
    return math.isfinite(num(x))
