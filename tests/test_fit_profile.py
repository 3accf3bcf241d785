"""Fits that give the same answer on every machine: curves agree where parameters are flat,
and the E profile picks a point that does not depend on starts or thread count."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalelab.scaling import fit as F
from scalelab.scaling.profile import deterministic_point, profile_E

FIXTURE = Path(__file__).parent / "fixtures" / "study_results_ratios.json"


def kaplan_family():
    """The two-ratio fixture's ratio-20 family: 4 sizes x 2 seeds, E flat (1.956 on AVX2, 2.001 on AVX-512)."""
    runs = [r for r in json.loads(FIXTURE.read_text())["runs"] if r.get("ratio") == 20.0]
    return (np.array([r["non_embedding_params"] for r in runs], float), np.array([r["loss"] for r in runs], float))


def _free_kaplan(N, L, grid):
    spec = F._Spec(names=("a", "e", "alpha"), terms=((0, 2, 0),), e_idx=1)
    _, bx, _, _, _ = F._fit_law(spec, np.log(N)[None, :], np.log(L), grid, 1e-3, 0, 0, None, 3)
    return {k: float(v) for k, v in F._natural(spec.names, bx, spec).items()}


def _curve(p, N):
    return p["E"] + p["A"] * N ** (-p["alpha"])


def test_perturbed_starts_move_flat_parameters_but_not_the_curve_or_the_deterministic_point():
    N, L = kaplan_family()
    rng = np.random.default_rng(0)
    base = F._kaplan_grid(True)
    fits = [_free_kaplan(N, L, base)]
    for _ in range(3):
        fits.append(_free_kaplan(N, L, base + rng.normal(0, 0.3, base.shape)))
    xs = np.geomspace(N.min(), N.max(), 50)
    ref = _curve(fits[0], xs)
    for p in fits[1:]:  # predictions over the data range agree to 0.1% whatever E did
        assert np.max(np.abs(_curve(p, xs) - ref)) < 1e-3 * ref.max()
    prof = profile_E("kaplan", N, None, L)
    assert not prof["identified"] and prof["tied_points"] >= 3
    lo, hi = prof["tied_range"]
    step = (hi - lo) / (prof["tied_points"] - 1)
    for p in fits:  # every free optimum sits on the flat segment the profile found
        assert lo - step <= p["E"] <= hi + step
    point = deterministic_point({"E": fits[0]["E"], "A": fits[0]["A"], "alpha": fits[0]["alpha"]}, prof)
    assert point["E"] == prof["best_grid_E"] and "free_optimum" in point
    assert np.max(np.abs(_curve(point, xs) - ref)) < 2e-3 * ref.max()


def test_identified_fit_keeps_its_point():
    N = np.geomspace(1e6, 1e9, 12)
    L = 1.8 + 400 * N ** -0.34
    prof = profile_E("kaplan", N, None, L)
    assert prof["identified"] and abs(prof["best_grid_E"] - 1.8) < 0.2
    fit = {"E": 1.8, "A": 400.0, "alpha": 0.34}
    assert deterministic_point(fit, prof) is fit


_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_fit_profile import kaplan_family
from scalelab.scaling.profile import profile_E
N, L = kaplan_family()
p = profile_E("kaplan", N, None, L)
print(json.dumps({{"E": p["best_grid_E"], **p["best_grid_fit"]}}))
"""


@pytest.fixture(scope="module")
def in_process():
    N, L = kaplan_family()
    prof = profile_E("kaplan", N, None, L)
    return {"E": prof["best_grid_E"], **prof["best_grid_fit"]}


@pytest.mark.parametrize("threads", ["1", "2"])
def test_deterministic_point_is_the_same_at_any_thread_count(threads, in_process):

    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(tests=str(Path(__file__).parent))],
                         capture_output=True, text=True, env=env, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for k in ("E", "A", "alpha"):
        assert got[k] == pytest.approx(in_process[k], rel=1e-6), k
