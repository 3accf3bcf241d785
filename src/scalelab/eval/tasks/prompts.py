"""Formatting a document into requests: the harness's doc_to_text / doc_to_target / doc_to_choice,
and `format_example` (one `Example`: its requests, gold index and choices)."""
from __future__ import annotations

import ast
from dataclasses import dataclass

from scalelab.eval.tasks.spec import TaskError, TaskSpec
from scalelab.eval.tasks.templates import _render

def _from_doc(spec: TaskSpec, v: str, doc: dict, lists: bool = False):
    """A column's value, else the rendered template: an index when it renders to digits
    and the task has choices, a list when it renders to one (and `lists`), else the text."""
    if v in doc:
        return doc[v]
    s = _render(v, doc)
    if s.isdigit() and spec.doc_to_choice is not None:
        return ast.literal_eval(s)
    if lists and len(s) >= 2 and s[0] == "[" and s[-1] == "]":
        try:
            return ast.literal_eval(s)
        except (SyntaxError, ValueError):
            return s
    return s


def doc_to_text(spec: TaskSpec, doc: dict):
    v = spec.doc_to_text
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        return _from_doc(spec, v, doc)
    raise TaskError(f"task '{spec.name}': doc_to_text must be a string (column or template) or an int")


def doc_to_target(spec: TaskSpec, doc: dict):
    v = spec.doc_to_target
    if (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, list):
        return v
    if isinstance(v, str):
        return _from_doc(spec, v, doc, lists=True)
    raise TaskError(f"task '{spec.name}': doc_to_target must be a column, a template, an int or a list")


def doc_to_choice(spec: TaskSpec, doc: dict) -> list[str]:
    v = spec.doc_to_choice
    if isinstance(v, list):
        return v
    if isinstance(v, dict):
        return list(v.values())
    if isinstance(v, str):
        if v in doc:
            return list(doc[v])
        s = _render(v, doc)
        try:
            out = ast.literal_eval(s)
        except (SyntaxError, ValueError):
            raise TaskError(f"task '{spec.name}': doc_to_choice rendered {s[:120]!r}, which is not a list "
                            "literal") from None
        return list(out)
    raise TaskError(f"task '{spec.name}': doc_to_choice must be a column, a list or a template")


@dataclass
class Example:
    """One document turned into requests (text)."""

    doc_id: int
    requests: list[tuple[str, str]]  # (context, continuation)
    gold: int | None  # multiple choice: index of the right choice
    choices: list[str]  # the choice texts (acc_norm lengths); loglikelihood: [target]


def format_example(spec: TaskSpec, doc: dict, doc_id: int) -> Example:
    """The requests of one processed document, exactly as the harness builds them (0-shot)."""
    from jinja2 import TemplateError

    try:
        text = doc_to_text(spec, doc)
        target = doc_to_target(spec, doc)
        choices = doc_to_choice(spec, doc) if spec.doc_to_choice is not None else None
    except TemplateError as e:
        raise TaskError(f"task '{spec.name}' ({spec.origin}), document {doc_id}: a template failed: "
                        f"{type(e).__name__}: {e}. Document fields: {sorted(doc)}") from None
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        raise TaskError(f"task '{spec.name}' ({spec.origin}), document {doc_id}: cannot format it: "
                        f"{type(e).__name__}: {e}. Document fields: {sorted(doc)}") from None
    d = spec.target_delimiter
    if spec.output_type == "loglikelihood":
        if not isinstance(target, str) or not isinstance(text, str):
            raise TaskError(f"task '{spec.name}', document {doc_id}: a loglikelihood task needs text context "
                            f"and target, got {type(text).__name__} / {type(target).__name__}")
        return Example(doc_id, [(text, target)], None, [target])
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise TaskError(f"task '{spec.name}', document {doc_id}: doc_to_choice must give a list of at least 2 "
                        f"strings, got {str(choices)[:120]}")
    # as the harness: doc_to_text giving an index means the choices are the contexts
    if spec.multiple_input or (isinstance(text, int) and not isinstance(text, bool)):
        gold, cont = text, target
        if not isinstance(gold, int) or not isinstance(cont, str):
            raise TaskError(f"task '{spec.name}', document {doc_id}: with multiple_input, doc_to_text must give "
                            f"the gold index and doc_to_target the shared continuation")
        requests = [(c, f"{d}{cont}") for c in choices]
    else:
        gold = target
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -1
        if not isinstance(text, str):
            raise TaskError(f"task '{spec.name}', document {doc_id}: doc_to_text gave {type(text).__name__}, "
                            "expected text (set multiple_input: true for Winogrande-style tasks)")
        requests = [(text, f"{d}{c}") for c in choices]
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise TaskError(f"task '{spec.name}', document {doc_id}: the target {gold!r} is not an index into its "
                        f"{len(choices)} choices")
    return Example(doc_id, requests, int(gold), list(choices))
