"""constraints.txt (what scripts/setup.sh installs with -c) pins exactly the tested venv's
versions of scalelab's dependency tree, and every pin satisfies pyproject's range."""
import importlib.util
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("update_constraints", ROOT / "scripts" / "update_constraints.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_constraints_match_the_venv_and_pyproject():
    mod = _script()
    extras = mod.setup_extras()
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()
    pins = _pins()
    installed = {n: v for n, v in mod.closure(extras).items() if not mod.SKIP.match(n)}
    stale = {n: (pins.get(n), v) for n, v in installed.items() if pins.get(n) != v}
    extra = sorted(set(pins) - set(installed))
    assert not stale and not extra, (f"constraints.txt is out of date (pinned, installed): {stale}, not in the tree: "
                                     f"{extra}; run .venv/bin/python scripts/update_constraints.py")
    for line in mod.project_requirements(extras):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if mod.SKIP.match(name):
            continue
        assert name in pins, f"{req.name} (pyproject) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates '{line}'"
