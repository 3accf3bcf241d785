"""Backwards-compatible import names: ``num`` / ``finite`` (used by report.run_report) now live in
``scalelab.scaling.results`` (re-exported by ``report.markdown``). Remove once run_report imports from there."""
from __future__ import annotations

from scalelab.scaling.results import finite, num

__all__ = ["num", "finite"]
