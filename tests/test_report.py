"""Report: figures + NOTE.md from a study's results.json (fixture: tests/fixtures/study_results.json)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from scalelab.errors import DataError
from scalelab.report import note as note_mod
from scalelab.report import plots
from scalelab.report.note import pairwise_check, write_note, write_report
from scalelab.report.plots import lower_envelope

FIXTURE = Path(__file__).parent / "fixtures" / "study_results.json"
STEMS = ("loss_vs_params", "metric_vs_params", "loss_curves", "compute_frontier")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


def _with_samples(res: dict, law: str = "kaplan", n: int = 40) -> dict:
    """Attach fake bootstrap samples (jittered point estimates) so no refit is needed (fast)."""
    fit = res["fits"][law]
    rng = np.random.default_rng(0)
    keys = [k for k in ("E", "A", "B", "alpha", "beta") if k in fit]
    fit["samples"] = {k: (fit[k] * (1 + 0.02 * rng.standard_normal(n))).tolist() for k in keys}
    return res


def _study(tmp_path: Path, res: dict) -> Path:
    d = tmp_path / "study"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(res))
    return d


def _check_files(out: dict, study: Path) -> None:
    figs = [Path(f) for f in out["figures"]]
    assert sorted(f.name for f in figs) == sorted(f"{s}.{e}" for s in STEMS for e in ("png", "svg"))
    for f in figs:
        assert f.parent == study / "figures" and f.stat().st_size > 1000
        if f.suffix == ".png":
            assert f.read_bytes().startswith(PNG_MAGIC)
        else:
            assert b"<svg" in f.read_bytes()[:2000]
    assert Path(out["note"]) == study / "NOTE.md"


def test_report_on_fixture(tmp_path, results):
    study = _study(tmp_path, results)
    out = write_report(study)  # real path: Kaplan band recomputed from the runs
    _check_files(out, study)
    text = (study / "NOTE.md").read_text()
    for s in results["sizes"]:
        assert f"{s['loss']['mean']:.3f}" in text, s["name"]
        assert f"[{s['loss']['lo']:.3f}, {s['loss']['hi']:.3f}]" in text
        assert f"{s['val_bpb']['mean']:.3f}" in text
    k = results["fits"]["kaplan"]
    lo, hi = k["ci"]["alpha"]
    assert f"α = {k['alpha']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    for c in results["commands"]:
        assert c in text
    for stem in STEMS:
        assert f"](figures/{stem}.png)" in text
    assert "0.34" in text and "0.076" in text and "0.28" in text  # published exponents quoted
    assert "Muennighoff" in text  # the fixture's largest model runs > 4 epochs
    assert "Synthetic results" in text
    assert "**Verdict: yes**" in text  # the fixture's sizes are separated by construction
    assert len(text.split()) > 1500  # a note, not a stub


def test_degenerate_chinchilla_shown_as_degenerate(tmp_path, results):
    res = _with_samples(results)
    real = res["fits"]["chinchilla"]
    res["fits"]["chinchilla"] = {"law": "chinchilla", "degenerate": True,
                                 "reason": "log N and log D are collinear (one D per N)"}
    study = _study(tmp_path, res)
    out = write_report(study)
    _check_files(out, study)
    text = out["note"].read_text()
    assert "degenerate" in text and "log N and log D are collinear (one D per N)" in text
    row = next(line for line in text.splitlines() if line.startswith("| α (Chinchilla form)"))
    assert "| degenerate |" in row
    for k in ("alpha", "beta"):
        if isinstance(real.get(k), float):
            assert f"{real[k]:.3f} [" not in text


def test_degenerate_kaplan_prints_no_numbers(tmp_path, results):
    res = copy.deepcopy(results)
    k = res["fits"]["kaplan"]
    k["degenerate"] = True
    k["warnings"] = ["degenerate fit: alpha=-0.1 <= 0: the loss does not fall with N"]
    k["alpha"] = -0.1234
    del res["fits"]["chinchilla"]
    note = write_note(res, tmp_path, [])
    text = note.read_text()
    assert "-0.123" not in text and "-0.1234" not in text
    assert "alpha=-0.1 <= 0" in text  # the reason, as written by the fit
    assert "Chinchilla L(N, D) fit:** not fitted" in text
    paths = plots.plot_loss_vs_params(res, tmp_path / "figs")
    assert paths[0].read_bytes().startswith(PNG_MAGIC)


def test_runs_without_tasks(tmp_path, results):
    res = _with_samples(results)
    for r in res["runs"]:
        r.pop("tasks", None)
    study = _study(tmp_path, res)
    out = write_report(study)
    _check_files(out, study)
    assert "No downstream task results" in out["note"].read_text()


def test_minimal_results_without_sizes_plan_or_curves(tmp_path, results):
    res = {"runs": [{k: r[k] for k in ("name", "seed", "params", "non_embedding_params", "tokens", "loss")}
                    for r in results["runs"]]}
    res["runs"].append({"name": "bad", "seed": 0, "params": 1e6, "non_embedding_params": 9e5, "tokens": 1e7,
                        "loss": None})
    study = _study(tmp_path, res)
    out = write_report(study)
    _check_files(out, study)
    text = out["note"].read_text()
    assert "1 failed run(s)" in text
    assert "not fitted" in text


def test_missing_results_json(tmp_path):
    with pytest.raises(DataError) as e:
        write_report(tmp_path)
    assert "results.json" in str(e.value) and "scalelab study" in str(e.value)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"runs": []}', '{"kind": "other", "runs": [{}]}',
                                     '{"runs": [{"params": 10, "loss": null}]}'])
def test_malformed_results_json(tmp_path, content):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(DataError) as e:
        write_report(tmp_path)
    assert str(tmp_path / "results.json") in str(e.value) and "scalelab study" in str(e.value)


def test_stored_samples_are_used_without_refit(tmp_path, results, monkeypatch):
    import scalelab.scaling.fit as fit

    def boom(*a, **k):
        raise AssertionError("refit should not run when samples are stored")

    monkeypatch.setattr(fit, "fit_kaplan", boom)
    monkeypatch.setattr(fit, "fit_chinchilla", boom)
    res = _with_samples(_with_samples(results), "chinchilla")
    s, how = plots.fit_samples(res, "kaplan")
    assert s is not None and "stored" in how
    paths = plots.plot_loss_vs_params(res, tmp_path, samples=s and (s, how)) + plots.plot_compute_frontier(res, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_band_skipped_when_refit_disagrees(results):
    res = copy.deepcopy(results)
    res["fits"]["kaplan"]["alpha"] *= 1.5  # stored estimate no longer reproducible from the runs
    s, how = plots.fit_samples(res, "kaplan", max_boot=4)
    assert s is None and "does not reproduce" in how


def test_pairwise_check_overlap_and_single_seed(results):
    res = copy.deepcopy(results)
    a, b = res["sizes"][0]["loss"], res["sizes"][1]["loss"]
    b["hi"] = a["lo"] + 0.01  # overlap
    chk = pairwise_check(res)
    assert chk["verdict"] == "no" and chk["pairs"][0]["separated"] == "no"
    for s in res["sizes"]:
        s["loss"].update(lo=None, hi=None, n=1)
    assert pairwise_check(res)["verdict"] == "undetermined"


def test_lower_envelope():
    C = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    L = np.array([5.0, 4.0, 4.5, 3.0, 3.5])
    idx, ec, el = lower_envelope(C, L)
    assert list(idx) == [0, 1, 3] and list(el) == [5.0, 4.0, 3.0]


def test_formatting_helpers():
    assert note_mod.fci(0.3661, [0.2951, 0.3912]) == "0.366 [0.295, 0.391]"
    assert note_mod.fci(None, [0, 1]) == "n/a"
    assert note_mod.fci(0.5, [None, 1]) == "0.500 [no CI]"
    assert note_mod.sci(3.05e11) == "3.05e11" and note_mod.sci(9.999e11) == "1.00e12"
    assert note_mod.count(50368) == "50.4K"
