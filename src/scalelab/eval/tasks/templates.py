"""Jinja templates of task fields, as in the harness: StrictUndefined, trailing newlines kept."""
from __future__ import annotations

import re
from typing import Any

_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        from jinja2 import BaseLoader, Environment, StrictUndefined

        _ENV = Environment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
        _ENV.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s, count=count)
    return _ENV


def _check_template(value, key, fail) -> None:
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        from jinja2 import TemplateSyntaxError

        try:
            _env().from_string(value)
        except TemplateSyntaxError as e:
            fail(f"{key} is not a valid Jinja template (line {e.lineno}: {e.message})")


_TEMPLATE_CACHE: dict[str, Any] = {}


def _render(template: str, doc: dict) -> str:
    t = _TEMPLATE_CACHE.get(template)
    if t is None:
        t = _TEMPLATE_CACHE[template] = _env().from_string(template)
    return t.render(**doc)
