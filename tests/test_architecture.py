"""The package's shape (docs/ARCHITECTURE.md): no import circles, no over-long source files.

The import graph is read from the source with `ast` (nothing is imported). An import
inside a function body (or under `if TYPE_CHECKING:`) is *lazy*: it runs on call, or never;
every other one runs at import time. Tests and bench/ are not scanned.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 600  # the limit (~600); the longest file today is 546

# Files still over MAX_LINES, each with the reason. The test fails when one of them shrinks
# under the limit (drop it from this list then) or when any other file grows past it.
LONG_FILES: dict[str, str] = {
    # none: every source file is under the limit (add an entry here, with the reason, to allow one)
}

# Circles that exist only through lazy imports (function-level), so importing never fails,
# but the modules still depend on each other. Each is listed with the reason it is tolerated;
# the test fails on any new circle and on a listed one that no longer exists.
LAZY_CYCLES: dict[tuple[str, ...], str] = {
    # none: every module-level circle is gone, lazy ones included (add one here only with the reason)
}
LAZY_PACKAGE_CYCLES: dict[tuple[str, ...], str] = {
    # none: no package reaches back into one that imports it
}


# The layers of docs/ARCHITECTURE.md, lowest first: a package imports only from lower layers
# (lazy imports included; inside the base layer and inside the cli freely), apart from the
# edges in SIDEWAYS, each with its reason.
LAYERS = {
    "scalelab": 0, "scalelab.errors": 0, "scalelab.io": 0, "scalelab.config": 0,
    "scalelab.model": 1, "scalelab.data": 2, "scalelab.train": 3, "scalelab.eval": 4,
    "scalelab.scaling": 5, "scalelab.tune": 5, "scalelab.golf": 5, "scalelab.finetune": 5,
    "scalelab.export": 5, "scalelab.export_compat": 5,
    "scalelab.report": 6, "scalelab.cli": 7, "scalelab.__main__": 7,
}
SIDEWAYS = {
    ("scalelab.config", "scalelab.model"): "the run config embeds model.gpt.GPTConfig",
    ("scalelab.export", "scalelab.report"): "an export's README is the run's model card (lazily)",
    ("scalelab.tune", "scalelab.scaling"): "suggest reuses plan's size and batch rules",
    ("scalelab.tune", "scalelab.finetune"): "tuning a fine-tune job reads its config and data",
    ("scalelab.export", "scalelab.export_compat"): "export's compatibility checks: one tool in two files",
}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in (SRC / "scalelab").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _imports(name: str, mods, lazy: bool) -> set[str]:
    """scalelab modules `name` imports: at import time only, or also inside functions (lazy)."""
    path, is_pkg = mods[name]
    found: set[str] = set()

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) \
                or _type_checking_only(child)
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (lazy or not inside):
                if isinstance(child, ast.Import):
                    found.update(a.name for a in child.names)
                else:
                    if child.level:  # relative: from the module's package, up level - 1
                        base = name.split(".") if is_pkg else name.split(".")[:-1]
                        base = base[:len(base) - (child.level - 1)]
                        mod = ".".join(base + ([child.module] if child.module else []))
                    else:
                        mod = child.module or ""
                    found.add(mod)
                    found.update(f"{mod}.{a.name}" for a in child.names)  # `from pkg import submodule`
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return {m for m in found if m in mods and m != name}


def _type_checking_only(node) -> bool:
    """`if TYPE_CHECKING:` blocks never run: their imports count as lazy."""
    if not isinstance(node, ast.If):
        return False
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _package(mod: str) -> str:
    """A module's package node: scalelab.<subpackage>, or the top-level module itself."""
    parts = mod.split(".")
    return mod if len(parts) <= 2 else ".".join(parts[:2])


def _cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components with more than one node (Tarjan), as sorted tuples."""
    index, low, stack, on_stack, out = {}, {}, [], set(), set()

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in list(graph):
        if v not in index:
            strong(v)
    return out


def _graphs(lazy: bool):
    mods = _modules()
    modules = {m: _imports(m, mods, lazy) for m in mods}
    packages: dict[str, set[str]] = {}
    for m, deps in modules.items():
        for d in deps:
            a, b = _package(m), _package(d)
            if a != b:
                packages.setdefault(a, set()).add(b)
    return modules, packages


def test_no_import_circles_at_import_time():
    modules, packages = _graphs(lazy=False)
    assert len(modules) > 50  # the scan found the package
    assert _cycles(modules) == set()
    assert _cycles(packages) == set()


def test_lazy_import_circles_are_only_the_known_ones():
    modules, packages = _graphs(lazy=True)
    assert _cycles(modules) == set(LAZY_CYCLES)
    assert _cycles(packages) == set(LAZY_PACKAGE_CYCLES)


def test_packages_import_only_lower_layers():
    _, packages = _graphs(lazy=True)
    assert set(packages) <= set(LAYERS), f"add to LAYERS: {sorted(set(packages) - set(LAYERS))}"
    upward = {(a, b) for a, deps in packages.items() for b in deps
              if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and LAYERS[a] not in (0, 7))}
    assert upward == set(SIDEWAYS), f"not lower: {sorted(upward - set(SIDEWAYS))}; gone: {sorted(set(SIDEWAYS) - upward)}"


def test_argparse_only_in_the_cli():
    users = sorted(str(p.relative_to(SRC)) for p in (SRC / "scalelab").rglob("*.py")
                   if "argparse" in p.read_text(encoding="utf-8") and "cli" not in p.relative_to(SRC).parts[1:2])
    assert users == []


def test_no_source_file_over_the_limit():
    lengths = {str(p.relative_to(SRC)): len(p.read_text(encoding="utf-8").splitlines())
               for p in (SRC / "scalelab").rglob("*.py")}
    over = {f for f, n in lengths.items() if n > MAX_LINES}
    assert over <= set(LONG_FILES), f"over {MAX_LINES} lines: {sorted(over - set(LONG_FILES))}"
    assert set(LONG_FILES) <= over, f"now short enough, drop from LONG_FILES: {sorted(set(LONG_FILES) - over)}"
