"""Markdown building blocks of the reports: number formatting, CI text, tables.

Numbers come from JSON files written by earlier stages, so every formatter takes None or
junk and prints "n/a" instead of failing: a report of a partly failed run still renders.
``num`` / ``finite`` (the tolerant readers) live in ``scalelab.scaling.results`` and are
re-exported here for the report modules.
"""
from __future__ import annotations

import math

from scalelab.eval.stats import format_ci
from scalelab.scaling.results import finite, fmt_ratio, num

__all__ = ["num", "finite", "fmt_ratio", "f3", "fci", "count", "intc", "sci", "duration", "table", "where_in_ci"]


def f3(x, nd: int = 3) -> str:
    """Fixed decimals, or 'n/a'."""
    return f"{num(x):.{nd}f}" if finite(x) else "n/a"


def fci(v, ci, nd: int = 3) -> str:
    """'0.366 [0.295, 0.391]' (estimate and 95% CI; eval.stats.format_ci), 'n/a' where missing."""
    return format_ci(v, ci, f".{nd}f")


def count(n) -> str:
    """1,234,567 -> '1.23M'."""
    n = num(n)
    if not math.isfinite(n):
        return "n/a"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def intc(n) -> str:
    """1234567 -> '1,234,567'."""
    return f"{int(round(num(n))):,}" if finite(n) else "n/a"


def sci(x) -> str:
    """3.05e11 style."""
    x = num(x)
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    e = int(math.floor(math.log10(abs(x))))
    m = x / 10**e
    if round(m, 2) >= 10:
        m, e = m / 10, e + 1
    return f"{m:.2f}e{e}"


def duration(s) -> str:
    """Seconds as '45 s', '12.5 min' or '3.2 h'."""
    s = num(s)
    if not math.isfinite(s):
        return "n/a"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table as lines."""
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _inside(x: float, ci) -> bool | None:
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and finite(ci[0]) and finite(ci[1])):
        return None
    return num(ci[0]) <= x <= num(ci[1])


def where_in_ci(x: float, ci) -> str:
    """Where a published value lies relative to our CI: 'inside our 95% CI', 'below ...', 'above ...'."""
    inside = _inside(x, ci)
    if inside is None:
        return "cannot be compared (no CI)"
    if inside:
        return "inside our 95% CI"
    return "below our 95% CI" if x < num(ci[0]) else "above our 95% CI"


def synthetic_banner(results: dict) -> list[str]:
    """The warning a note opens with when results.json marks its numbers as synthetic."""
    syn = results.get("synthetic")
    if not syn:
        return []
    note = f": {syn.get('note')}" if isinstance(syn, dict) and syn.get("note") else ""
    return [f"> **Synthetic results.** results.json marks these numbers as synthetic{note}. "
            "Do not read them as measurements.", ""]
