"""Report: figures + NOTE.md from a study's results.json.

Fixtures (tests/fixtures/make_study_results.py): ``study_results.json`` (one tokens-per-parameter
ratio) and ``study_results_ratios.json`` (4 sizes x ratios 5 and 20 x 2 seeds, like
configs/study-cpu.yaml; one step of the ratio-5 family is not beyond the noise, every step of
the primary ratio-20 family is).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from scalelab.errors import DataError
from scalelab.report import markdown
from scalelab.report import study_plots as plots
from scalelab.report.study_note import write_note, write_report
from scalelab.scaling.results import fit_samples, lower_envelope, matched_compute_pairs, pairwise_check, study_check

FIXTURE = Path(__file__).parent / "fixtures" / "study_results.json"
FIXTURE_RATIOS = Path(__file__).parent / "fixtures" / "study_results_ratios.json"
STEMS = ("loss_vs_params", "metric_vs_params", "loss_curves", "compute_frontier")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def results() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def ratios() -> dict:
    return json.loads(FIXTURE_RATIOS.read_text())


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
    assert results["fits"]["kaplan"]["samples"]  # the fixture stores its bootstrap draws, as a study should
    out = write_report(study)
    _check_files(out, study)
    text = (study / "NOTE.md").read_text()
    assert "fitted L(N) = E + A·N^-α with its 95% bootstrap band" in text and "no band" not in text
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


def _no_refit(monkeypatch):
    import scalelab.scaling.fit as fit

    def boom(*a, **k):
        raise AssertionError("the report must not refit: it reads results.json only")

    monkeypatch.setattr(fit, "fit_kaplan", boom)
    monkeypatch.setattr(fit, "fit_chinchilla", boom)


def test_stored_samples_are_used_without_refit(tmp_path, results, monkeypatch):
    _no_refit(monkeypatch)
    res = _with_samples(_with_samples(results), "chinchilla")
    s, how = fit_samples(res, "kaplan")
    assert s is not None and "stored" in how
    paths = plots.plot_loss_vs_params(res, tmp_path, samples=s and (s, how)) + plots.plot_compute_frontier(res, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_no_band_without_stored_samples(tmp_path, ratios, monkeypatch):
    """A results.json without bootstrap draws: curves without bands, and the note says why (no refit)."""
    _no_refit(monkeypatch)
    res = copy.deepcopy(ratios)
    for fit in res["fits"].values():
        fit.pop("samples", None)
    for law in ("kaplan", "chinchilla"):
        s, how = fit_samples(res, law)
        assert s is None and how == "bootstrap samples not stored in results.json"
    out = write_report(_study(tmp_path, res))
    text = out["note"].read_text()
    assert "(red; no band: bootstrap samples not stored in results.json)" in text
    assert "**Band in Figure 1:** not drawn: bootstrap samples not stored in results.json" in text
    assert b"no band: bootstrap samples not stored" in (tmp_path / "study" / "figures" / "loss_vs_params.svg").read_bytes()


def test_figures_never_import_the_fitter():
    import subprocess
    import sys

    code = ("import sys, json; from scalelab.report import study_plots, study_note; "
            "from scalelab.report.study_plots import plot_study; "
            f"r = json.load(open({str(FIXTURE_RATIOS)!r})); import tempfile; plot_study(r, tempfile.mkdtemp()); "
            "assert 'scalelab.scaling.fit' not in sys.modules, 'the figures refit or import the fitter'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
                                                                 "PATH": "/usr/bin:/bin"})


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
    assert markdown.fci(0.3661, [0.2951, 0.3912]) == "0.366 [0.295, 0.391]"
    assert markdown.fci(None, [0, 1]) == "n/a"
    assert markdown.fci(0.5, [None, 1]) == "0.500 [no CI]"
    assert markdown.sci(3.05e11) == "3.05e11" and markdown.sci(9.999e11) == "1.00e12"
    assert markdown.count(50368) == "50.4K"


# --------------------------------------------------------------------------------------
# Studies with several tokens-per-parameter ratios
# --------------------------------------------------------------------------------------


def _section(text: str, start: str, end: str = "\n### ") -> str:
    i = text.index(start)
    j = text.find(end, i + len(start))
    return text[i:j if j > 0 else None]


def _table_rows(block: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]


def _ratio_by_name(res: dict) -> dict:
    return {s["name"]: s["ratio"] for s in res["sizes"]}


def test_two_ratio_note(tmp_path, ratios):
    text = write_note(ratios, tmp_path, []).read_text()
    chk = ratios["checks"]
    # summary: distinct sizes and ratios counted separately
    assert "4 model sizes × 2 tokens-per-parameter ratios (5, 20) × 2 seeds = 16 runs" in text
    assert "8 model sizes" not in text
    assert "At the primary ratio (tokens/param = 20), mean final validation loss falls from" in text
    # the verdict is the study's own check (true here, although one ratio-5 step fails the rule)
    assert chk["loss_decreases_beyond_noise"] is True
    assert any(not d["beyond_noise"] and not d["counts_for_verdict"] for d in chk["detail"])
    assert "**Verdict: yes**" in text and "**Loss decreases with size beyond seed noise:** **yes**" in text
    assert chk["rule"] in text
    # §3.2: one row per detail row, never a pair across ratios; the counted family is marked
    sec = _section(text, "### 3.2")
    by_ratio = _ratio_by_name(ratios)
    steps = [r[0] for r in _table_rows(sec) if "→" in r[0]]
    assert sorted(steps) == sorted(f"{d['from']} → {d['to']}" for d in chk["detail"])
    for st in steps:
        a, b = st.split(" → ")
        assert by_ratio[a] == by_ratio[b], st
    assert "**tokens/param = 20** — counts for the verdict" in sec
    assert "**tokens/param = 5** — for information (not in the verdict)" in sec
    for d in chk["detail"]:
        row = next(r for r in _table_rows(sec) if r[0] == f"{d['from']} → {d['to']}")
        assert row[1] == f"{d['drop']:+.3f}" and row[3] == f"{d['z']:.2f}"
        assert row[4] == ("**yes**" if d["beyond_noise"] else "no")
    # §3.1 sorted by ratio, then size, with the ratio shown
    rows = [r for r in _table_rows(_section(text, "### 3.1")) if r[0] != "tokens/param"]
    keys = [(float(r[0]), int(r[2].replace(",", ""))) for r in rows]
    assert keys == sorted(keys) and len(rows) == 8
    # hyper-parameters, Kaplan fit family, Chinchilla collinearity, caveat
    assert "D = r × N for r in {5, 20}" in text and "D = 20 × N tokens per model" not in text
    k = ratios["fits"]["kaplan"]
    assert f"fitted on the {k['runs_used']} runs at tokens/param = 20" in text
    assert "nearly collinear" not in text
    assert "Compute-optimal ratio not measured directly" in text and "assumed, not measured" not in text
    assert "separate the N" in text and "IsoFLOP grid" in text
    # appendix sorted by ratio too
    app = _table_rows(_section(text, "### Appendix A"))[1:]
    assert [by_ratio[r[0]] for r in app] == sorted(by_ratio[r[0]] for r in app)


def test_note_follows_the_stored_verdict(tmp_path, ratios):
    res = copy.deepcopy(ratios)
    res["checks"]["loss_decreases_beyond_noise"] = False  # whatever the rows say, the study's verdict is the headline
    text = write_note(res, tmp_path, []).read_text()
    assert "**Verdict: no**" in text and "does not match its own rows" in text


def test_legacy_checks_without_family_flags(tmp_path, ratios):
    """A results.json written before per-family verdicts (like runs/study-cpu): every family counted."""
    res = copy.deepcopy(ratios)
    chk = res["checks"]
    for d in chk["detail"]:
        for key in ("ratio", "counts_for_verdict"):
            d.pop(key)
    chk.pop("primary_ratio")
    chk["rule"] = "drop > 2 x combined stderr of the seed means"
    chk["loss_decreases_beyond_noise"] = all(d["beyond_noise"] for d in chk["detail"])
    assert chk["loss_decreases_beyond_noise"] is False
    sc = study_check(res)
    assert sc["verdict"] is False and not sc["per_family"] and all(x["counts"] for x in sc["steps"])
    assert {x["ratio"] for x in sc["steps"]} == {5.0, 20.0}  # recovered from the sizes
    text = write_note(res, tmp_path, []).read_text()
    assert "**Verdict: no**" in text and "counts the steps of every family" in text
    assert "Within the primary family alone (tokens/param = 20), 3 of 3 steps are beyond the noise" in text


def test_check_recomputed_when_absent(tmp_path, ratios):
    res = copy.deepcopy(ratios)
    stored = res.pop("checks")
    sc = study_check(res)
    assert sc["source"] == "recomputed" and sc["verdict"] is stored["loss_decreases_beyond_noise"]
    for x, d in zip(sc["steps"], stored["detail"]):
        assert (x["from"], x["to"], x["counts"]) == (d["from"], d["to"], d["counts_for_verdict"])
        assert x["z"] == pytest.approx(d["z"]) and x["beyond"] == d["beyond_noise"]
    assert "has no usable `checks`" in write_note(res, tmp_path, []).read_text()


def test_pairwise_and_matched_compute_stay_within_or_across_families(ratios):
    by_ratio = _ratio_by_name(ratios)
    pairs = pairwise_check(ratios)["pairs"]
    assert len(pairs) == 6 and all(by_ratio[p["smaller"]] == by_ratio[p["larger"]] for p in pairs)
    mc = matched_compute_pairs(ratios)
    assert mc and all(by_ratio[m["high"]["name"]] > by_ratio[m["low"]["name"]] for m in mc)
    assert all(0.8 < m["flops_high"] / m["flops_low"] < 1.25 for m in mc)


def test_single_ratio_note_keeps_its_wording(tmp_path, results, ratios):
    res = copy.deepcopy(results)
    res["fits"]["chinchilla"] = copy.deepcopy(ratios["fits"]["chinchilla"])  # a usable fit with warnings
    assert res["fits"]["chinchilla"]["warnings"]
    text = write_note(res, tmp_path, []).read_text()
    assert "4 model sizes at 20 tokens per parameter × 2 seeds = 8 runs" in text
    assert "D = 20 × N tokens per model" in text and "nearly collinear" in text
    assert "assumed, not measured" in text and "tokens/param" not in _section(text, "### 3.1")


def test_bands_come_from_stored_samples_only(ratios):
    for law in ("kaplan", "chinchilla"):
        stored = ratios["fits"][law]["samples"]
        s, how = fit_samples(ratios, law)
        assert s is not None and how == f"{len(stored['A'])} stored bootstrap refits"
        assert all(np.array_equal(s[k], stored[k]) for k in stored)
    res = copy.deepcopy(ratios)
    k = res["fits"]["kaplan"]
    k["samples"]["alpha"] = k["samples"]["alpha"][:-1]
    assert fit_samples(res, "kaplan") == (None, "the bootstrap samples in results.json have unequal lengths")
    del k["samples"]["alpha"]
    assert fit_samples(res, "kaplan") == (None, "the bootstrap samples in results.json lack alpha")
    k["samples"] = {"A": [1.0, 2.0], "alpha": [0.3, 0.4]}
    k["fixed"] = {"E": 1.5}  # a fixed parameter is not stored with the draws: its value is used
    s, _ = fit_samples(res, "kaplan")
    assert list(s["E"]) == [1.5, 1.5]
    k["degenerate"] = True
    assert fit_samples(res, "kaplan") == (None, "no usable fit")


def test_two_ratio_report_figures(tmp_path, ratios):
    res = _with_samples(_with_samples(ratios), "chinchilla")
    study = _study(tmp_path, res)
    out = write_report(study)
    _check_files(out, study)
    text = out["note"].read_text()
    assert "drawn only over the family it was fitted on (tokens/param = 20)" in text
    assert "C = 6·N·D with N = total parameters" in text  # Figure 4 uses the Chinchilla fit's N


# --------------------------------------------------------------------------------------
# scaling/results.py and scaling/laws.py agree with the code they will replace
# --------------------------------------------------------------------------------------


def test_results_queries_reproduce_what_the_study_wrote(ratios, results):
    """The study writes sizes and checks with scaling.results (its only copy): they match the fixtures."""
    from scalelab.scaling import results as q
    from scalelab.scaling import study

    assert study.summarize_sizes is q.summarize_sizes and study.check_monotone is q.check_monotone
    for res in (ratios, results):
        sizes = q.summarize_sizes(res["runs"])
        assert [s["name"] for s in sizes] == [s["name"] for s in res["sizes"]]
        assert [s["loss"]["mean"] for s in sizes] == pytest.approx([s["loss"]["mean"] for s in res["sizes"]])
        assert q.check_monotone(sizes, q.plan_primary_ratio(res["plan"])) == res["checks"]
    one = [dict(s, n_seeds=1) for s in q.summarize_sizes(ratios["runs"])]  # no noise estimate: fails, says so
    assert q.check_monotone(one, 20.0)["loss_decreases_beyond_noise"] is False


def test_law_formulas_match_the_fitter():
    from scalelab.scaling import fit, laws

    p = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}
    N, D = np.geomspace(1e5, 1e9, 7), np.geomspace(1e6, 1e11, 7)
    assert np.allclose(laws.chinchilla_loss(N, D, **p), fit.chinchilla_loss(N, D, **p), rtol=1e-12)
    assert np.allclose(laws.kaplan_loss(N, p["E"], p["A"], p["alpha"]), p["E"] + p["A"] / N ** p["alpha"], rtol=1e-12)
    C = np.geomspace(1e15, 1e24, 5)
    ours, theirs = laws.compute_optimal(C, **p), fit.compute_optimal(C, **p)
    assert ours.keys() == theirs.keys()
    assert all(np.allclose(ours[k], theirs[k], rtol=1e-12) for k in ours)
