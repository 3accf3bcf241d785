"""Backwards-compatible import names for callers not yet switched to the split report modules.

``write_report`` (scalelab.cli, scalelab.scaling.study) now lives in ``report.study_note``;
``count``, ``duration``, ``f3``, ``intc``, ``sci`` (report.run_report) in ``report.markdown``.
Remove this module once those callers import from there.
"""
from __future__ import annotations

from scalelab.report.markdown import count, duration, f3, intc, sci
from scalelab.report.study_note import write_report

__all__ = ["write_report", "count", "duration", "f3", "intc", "sci"]
