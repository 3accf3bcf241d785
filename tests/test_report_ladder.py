"""Report of an IsoFLOP-design study (plan.design: isoflop): NOTE.md sections, key numbers, degenerate
fits with their reasons, figures, no refit, and the ratio design left unchanged.

Two inputs: a synthetic results.json built here (3 budgets x 5 sizes x 3 seeds on a known
L(N, D), with hand-set fits so every number is known), and ``fixtures/study_results_isoflop.json``
(a tiny real run: 3 budgets x 5 sizes x 2 seeds, too small for a real optimum, so several fits
are degenerate there).
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from scalelab.report import study_note
from scalelab.report.study_note import write_note, write_report
from scalelab.scaling import ladder_results as q
from scalelab.scaling.laws import chinchilla_loss, compute_optimal

FIXTURE = Path(__file__).parent / "fixtures" / "study_results_isoflop.json"
FIXTURE_RATIOS = Path(__file__).parent / "fixtures" / "study_results_ratios.json"
STEMS = ("isoflop_profiles", "nopt_vs_compute", "holdout", "downstream")
LAW = {"E": 2.0, "A": 40.0, "B": 40.0, "alpha": 0.34, "beta": 0.28}
BUDGETS = [1e12, 4e12, 1.6e13]
SECTIONS = ("## Summary", "## 2. Setup", "### 2.3 Design: budgets × sizes", "## 3. Results: loss per configuration",
            "## 4. Compute-optimal allocation", "## 5. The L(N, D) fit (approach 3)", "## 6. Consistency",
            "## 7. Measured extrapolation (holdout)", "## 8. Downstream metrics", "### 8.2 Accuracy vs chance",
            "### 8.3 The two-step law", "## 9. Caveats", "## References")


def _ci(v, w):
    return [v - w / 2, v + w / 2]


def synthetic() -> dict:
    """3 budgets x 5 sizes x 3 seeds on LAW (+ seed noise), with fits set by hand."""
    rng = np.random.default_rng(0)
    vocab, d_emb = 512, 64
    runs, models = [], []
    for k, C in enumerate(BUDGETS, 1):
        n_opt = compute_optimal(C, **LAW)["N_opt"]
        for j, f in enumerate((1 / 4, 1 / 2, 1, 2, 4)):
            N = int(n_opt * f)
            D = int(C / (6 * N))
            name = f"c{k}-s{j}"
            m = {"name": name, "params": N, "non_embedding_params": N - vocab * d_emb, "tokens": D,
                 "tokens_per_param": D / N, "steps": D // 4096, "lr": 3e-3, "batch_tokens": 4096, "epochs": D / 5e7,
                 "budget": C, "budget_index": k, "n_layer": 4, "d_model": 64 + 16 * j, "n_head": 4}
            models.append(m)
            for seed in range(3):
                L = float(chinchilla_loss(N, D, **LAW)) + 0.004 * rng.standard_normal()
                acc = 0.25 + 0.4 * (j == 4 and k == 3) + 0.01 * seed
                runs.append({"name": name, "seed": seed, "params": N, "non_embedding_params": N - vocab * d_emb,
                             "tokens": D, "budget": C, "budget_index": k, "loss": L, "val_bpb": L / 1.4,
                             "epochs": D / 5e7, "train_time_s": 10.0, "flops": 6.0 * N * D,
                             "tasks": {t: {"n": 500, "acc": acc, "acc_lo": acc - 0.04, "acc_hi": acc + 0.04,
                                           "acc_norm": acc, "acc_norm_lo": acc - 0.04, "acc_norm_hi": acc + 0.04,
                                           "bpb": L / 1.3 + 0.1 * i, "bpb_lo": L / 1.3 - 0.05, "bpb_hi": L / 1.3 + 0.05,
                                           "chance": 0.25} for i, t in enumerate(("hellaswag", "arc_easy"))}})
    n = 50
    chi_samples = {k: (v * (1 + 0.01 * rng.standard_normal(n))).tolist() for k, v in LAW.items()}
    front = []
    for C in BUDGETS:
        o = compute_optimal(C, **LAW)
        front.append({"C": C, "N_opt": float(o["N_opt"]), "N_opt_ci": [float(o["N_opt"]) * 0.8, float(o["N_opt"]) * 1.2],
                      "D_opt": float(o["D_opt"]), "tokens_per_param": float(o["tokens_per_param"]),
                      "tokens_per_param_ci": [10.0, 30.0], "loss": float(o["loss"]),
                      "loss_ci": [float(o["loss"]) - 0.01, float(o["loss"]) + 0.01]})
    chi = {"law": "chinchilla", **LAW, "ci": {"E": _ci(2.0, 0.1), "A": [30.0, 50.0], "B": [30.0, 50.0],
                                              "alpha": _ci(0.34, 0.08), "beta": _ci(0.28, 0.06)},
           "derived": {"a": {"value": 0.4516, "ci": [0.42, 0.48]}, "b": {"value": 0.5484, "ci": [0.52, 0.58]}},
           "degenerate": False, "reason": None, "warnings": [], "n_boot": n, "confidence": 0.95, "resample": "points",
           "delta": 0.001, "fixed": {}, "n_column": "params", "samples": chi_samples, "runs_used": len(runs),
           "frontier": front}
    iso_b = []
    for C, f in zip(BUDGETS, front):  # the parabola in ln N through the seed means (as approach 2 would fit it)
        at = [r for r in runs if r["budget"] == C]
        c2, c1, c0 = np.polyfit(np.log([r["params"] for r in at]), [r["loss"] for r in at], 2)
        x0 = -c1 / (2 * c2)
        iso_b.append({"C": C, "n_runs": 15, "n_sizes": 5, "N_opt": math.exp(x0),
                      "N_opt_ci": [math.exp(x0) * 0.85, math.exp(x0) * 1.15], "D_opt": C / (6 * math.exp(x0)),
                      "loss_opt": c0 - c1 ** 2 / (4 * c2), "curvature": c2, "inside_range": True, "used": True})
    a_s = 0.4612 + 0.01 * rng.standard_normal(n)
    k_s = math.log(iso_b[0]["N_opt"]) - a_s * math.log(BUDGETS[0])
    iso = {"law": "isoflop", "a": 0.4612, "b": 0.5388, "ci": {"a": [0.43, 0.49], "b": [0.51, 0.57]},
           "coef": {"N_opt": iso_b[0]["N_opt"] / BUDGETS[0] ** 0.4612, "D_opt": 1.0}, "budgets": iso_b,
           "samples": {"a": a_s.tolist(), "log_k_N": k_s.tolist(), "b": (1 - a_s).tolist(), "log_k_D": (-k_s).tolist()},
           "degenerate": False, "reason": None, "warnings": [], "n_column": "params"}
    env = {"law": "envelope", "degenerate": False, "reason": None, "a": 0.5123, "b": 0.4877,
           "ci": {"a": [0.47, 0.55]}, "coef": {"N_opt": iso_b[0]["N_opt"] / BUDGETS[0] ** 0.5123},
           "grid": [{"C": c, "N_opt": float(compute_optimal(c, **LAW)["N_opt"]), "loss": 3.0, "used": True}
                    for c in np.geomspace(1e12, 1.6e13, 8)],
           "samples": {"a": (0.5123 + 0.01 * rng.standard_normal(n)).tolist()},
           "warnings": ["intermediate points of cosine-schedule runs are not annealed: the envelope mixes end points "
                        "with un-decayed middles (Hoffmann et al. used several schedule lengths per size)"]}
    exps = [{"approach": "approach1", "law": "envelope", "a": 0.5123, "ci": [0.47, 0.55], "chinchilla_a": 0.5,
             "chinchilla_ci": [0.488, 0.502]},
            {"approach": "approach2", "law": "isoflop", "a": 0.4612, "ci": [0.43, 0.49], "chinchilla_a": 0.49,
             "chinchilla_ci": [0.462, 0.534]},
            {"approach": "approach3", "law": "chinchilla", "a": 0.4516, "ci": [0.42, 0.48], "chinchilla_a": 0.46,
             "chinchilla_ci": [0.454, 0.455]}]
    cons = {"checked": True, "flagged": False, "rule": "flag when the upper CI of the fitted L_opt(C) is below the "
            "lower CI of the best observed seed-mean loss at that budget", "max_abs_residual": 0.0123,
            "budgets": [{"C": C, "fit_loss_opt": f["loss"], "fit_ci": f["loss_ci"], "best_observed": f["loss"] + 0.01,
                         "best_observed_ci": [f["loss"], f["loss"] + 0.02], "best_N": f["N_opt"], "residual": -0.01,
                         "vertex_loss": f["loss"] + 0.002, "residual_vs_vertex": -0.002, "below_data": False}
                        for C, f in zip(BUDGETS, front)]}
    held = [r for r in runs if r["budget"] == BUDGETS[-1]]

    def hold(target, off):
        rows = [{"name": r["name"], "seed": r["seed"], "params": r["params"], "tokens": r["tokens"],
                 "observed": r["loss"], "predicted": r["loss"] - off, "pi": [r["loss"] - 0.05, r["loss"] + 0.05],
                 "error": off, "inside": True} for r in held]
        return {"target": target, "held_out": f"largest budget C = {BUDGETS[-1]:.3g}", "n_fit": 30, "n_held_out": 15,
                "residual_sd": 0.004, "mean_error": off, "mean_abs_error": off, "max_abs_error": off, "coverage": 0.9333,
                "confidence": 0.95, "runs": rows}

    tasks = {"hellaswag": {"bpb_law": {**copy.deepcopy(chi), "E": 1.5},
                           "accuracy": {"fitted": True, "metric": "acc_norm", "chance": 0.25, "n": 45,
                                        "n_above_chance": 9, "top": 0.7, "k": 4.0, "x0": 2.1,
                                        "ci": {"top": [0.6, 0.8], "k": [3.0, 5.0], "x0": [2.0, 2.2]}}},
             "arc_easy": {"bpb_law": {"law": "chinchilla", "degenerate": True, "reason": "arc bpb law reason XYZ"},
                          "accuracy": {"fitted": False, "metric": "acc_norm", "chance": 0.25, "n": 45,
                                       "n_above_chance": 0, "reason": "0 of 45 points have accuracy above chance"}}}
    steps = [{"from": "c1-s2", "to": "c2-s2", "gain": 0.2, "stderr": 0.003, "z": 66.7, "beyond_noise": True},
             {"from": "c2-s2", "to": "c3-s2", "gain": 0.15, "stderr": 0.003, "z": 50.0, "beyond_noise": True}]
    checks = {"rule": "along the frontier (lowest-loss size per budget), each improvement between neighbouring "
                      "budgets > 2 x combined stderr of the seed means",
              "frontier": [{"budget": C, "name": f"c{k}-s2", "params": 1} for k, C in enumerate(BUDGETS, 1)],
              "metrics": [{"task": "validation", "metric": "loss", "means": [3, 2.8, 2.65], "steps": steps,
                           "separates": True},
                          {"task": "hellaswag", "metric": "bpb", "means": [1, 1, 1], "steps": steps, "separates": True},
                          {"task": "hellaswag", "metric": "acc_norm", "means": [0.25] * 3,
                           "steps": [dict(s, gain=0.001, z=0.3, beyond_noise=False) for s in steps],
                           "separates": False}],
              "loss_decreases_beyond_noise": True, "downstream_separates": True}
    return {"format_version": 1, "kind": "scalelab.study", "name": "synthetic-isoflop", "created": "2026-01-01T00:00:00Z",
            "synthetic": {"note": "built by tests/test_report_ladder.py"},
            "commands": ["scalelab study configs/study-cpu.yaml plan.budgets=[1e12,4e12,1.6e13]"],
            "data": {"source": "builtin:test", "tokenizer": "bpe", "vocab_size": vocab, "train_tokens": 50_000_000,
                     "val_tokens": 100_000},
            "hardware": {"device": "cpu", "parallel_runs": 2}, "wall_time_s": 1234.0,
            "config": {"base": {"train": {"schedule": "cosine", "min_lr_ratio": 0.1}}},
            "plan": {"design": "isoflop", "budgets": BUDGETS, "total_flops": 3 * 5 * 3 * sum(BUDGETS) / 15,
                     "rules": {"vocab_size": vocab, "n_layer": 4, "width_step": 16, "head_dim": 16, "count": "total",
                               "lr_rule": "deepseek", "warmup_frac": 0.05},
                     "models": models},
            "runs": runs, "checks": checks,
            "fits": {"kaplan": {"law": "kaplan", "degenerate": True, "reason": "IsoFLOP design: no fixed family"},
                     "chinchilla": chi, "isoflop": iso, "envelope": env, "exponents": exps, "consistency": cons,
                     "holdout": {"loss": hold("loss", 0.0211), "hellaswag_bpb": hold("hellaswag bpb", 0.0312),
                                 "arc_easy_bpb": {"law": "holdout", "degenerate": True,
                                                  "reason": "holdout arc reason QQQ"}},
                     "tasks": tasks}}


def _study(tmp_path: Path, res: dict, name: str = "study") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(res))
    return d


def _no_junk_numbers(text: str) -> None:
    assert not re.search(r"\bnan\b|\bNone\b|\binf\b", text), re.findall(r".{40}\b(?:nan|None|inf)\b.{10}", text)


def _check_figures(out: dict, study: Path, text: str, linked=STEMS) -> None:
    names = sorted(Path(f).name for f in out["figures"])
    assert names == sorted(f"{s}.{e}" for s in STEMS for e in ("png", "svg"))
    for f in out["figures"]:
        assert Path(f).parent == study / "figures" and Path(f).stat().st_size > 1000
    for s in linked:
        assert f"](figures/{s}.png)" in text


def test_synthetic_note_sections_and_numbers(tmp_path):
    res = synthetic()
    study = _study(tmp_path, res)
    out = write_report(study)
    text = out["note"].read_text()
    _check_figures(out, study, text)
    pos = [text.index(s) for s in SECTIONS]
    assert pos == sorted(pos)  # in order
    _no_junk_numbers(text)
    summary = text[text.index("## Summary"):text.index("## 2. Setup")]
    assert 4 <= summary.count("\n- ") <= 7
    for a in ("0.51 [0.47, 0.55]", "0.46 [0.43, 0.49]", "0.45 [0.42, 0.48]"):  # a of approaches 1-3 with CIs
        assert a in summary
    assert "**identified**" in summary and "α = 0.340 [0.300, 0.380]" in summary
    assert "**consistent**" in summary and "0.012" in summary
    assert "mean |error| 0.021" in summary and "coverage 0.93" in summary and "mean |error| 0.031" in summary
    assert "hellaswag bpb" in summary and "hellaswag acc_norm" in summary and "of 45 runs" in summary
    # setup: design table, seeds, command, wall time
    assert "| 1.00e12 | c1-s0 |" in text and "Seeds: 0, 1, 2" in text and res["commands"][0] in text
    assert "20.6 min" in text
    # loss per configuration: the seed mean and its t CI of one configuration
    rows = q.budget_configs(res)
    assert len(rows) == 15 and all(r["n_seeds"] == 3 for r in rows)
    v = rows[7]["value"]
    assert f"{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" in text
    assert "0.500 [0.488, 0.502]" in text and "0.460 [0.454, 0.455]" in text  # published values beside ours
    assert "**Verdict: identified.**" in text
    assert "holdout arc reason QQQ" in text and "arc bpb law reason XYZ" in text
    assert "top = 0.700 [0.600, 0.800]" in text and "0 of 45 points have accuracy above chance" in text
    assert "Muennighoff" in text and "Besiroglu" in text and "2412.04403" in text and "Hoffmann" in text
    assert "cosine" in text and "70M to 16B" in text and "vocabulary of 512" in text
    assert "Synthetic results" in text


def test_poorly_identified_and_flagged(tmp_path):
    res = synthetic()
    res["fits"]["chinchilla"]["ci"]["alpha"] = [0.1, 0.9]
    c = res["fits"]["consistency"]
    c["flagged"] = True
    c["budgets"][1]["below_data"] = True
    text = write_report(_study(tmp_path, res))["note"].read_text()
    assert "**poorly identified**" in text and "α width 0.80" in text and "more budgets" in text and "seeds" in text
    assert "**flagged**" in text and "C = 4.00e12" in text


def test_degenerate_fits_render_with_their_reasons(tmp_path):
    res = synthetic()
    f = res["fits"]
    f["chinchilla"] = {"law": "chinchilla", "degenerate": True, "reason": "chin reason AAA"}
    f["isoflop"] = {"law": "isoflop", "degenerate": True, "reason": "iso reason BBB"}
    f["envelope"] = {"law": "envelope", "degenerate": True, "reason": "env reason CCC", "warnings": []}
    f["exponents"] = [{"approach": f"approach{i}", "law": law, "a": None, "ci": None, "chinchilla_a": pa,
                       "chinchilla_ci": None, "missing": why}
                      for i, law, pa, why in ((1, "envelope", 0.5, "env reason CCC"), (2, "isoflop", 0.49, "iso reason BBB"),
                                              (3, "chinchilla", 0.46, "chin reason AAA"))]
    f["consistency"] = {"checked": False, "reason": "cons reason DDD"}
    f["holdout"] = {"loss": {"law": "holdout", "degenerate": True, "reason": "hold reason EEE"}}
    f["tasks"] = {}
    study = _study(tmp_path, res)
    out = write_report(study)
    text = out["note"].read_text()
    _check_figures(out, study, text)
    _no_junk_numbers(text)
    for why in ("chin reason AAA", "iso reason BBB", "env reason CCC", "cons reason DDD", "hold reason EEE"):
        assert why in text
    assert "0.340 [" not in text  # no L(N, D) parameters printed for a degenerate fit
    assert "No parameters are reported" in text


def test_missing_fits_and_checks(tmp_path):
    res = synthetic()
    del res["fits"], res["checks"]
    study = _study(tmp_path, res)
    out = write_report(study)
    text = out["note"].read_text()
    _check_figures(out, study, text, linked=("isoflop_profiles", "nopt_vs_compute", "downstream"))
    _no_junk_numbers(text)
    assert "absent from results.json" in text and "No holdout check in results.json" in text


def test_real_mini_fixture(tmp_path):
    res = json.loads(FIXTURE.read_text())
    study = _study(tmp_path, res)
    out = write_report(study)
    text = out["note"].read_text()
    _check_figures(out, study, text)
    _no_junk_numbers(text)
    f = res["fits"]
    assert f["envelope"]["reason"] in text  # degenerate approach 1, with its reason
    assert f["holdout"]["arc_easy_bpb"]["reason"] in text
    assert f["isoflop"]["budgets"][0]["reason"] in text  # the budget without a minimum
    assert "**poorly identified**" in text
    assert f"{f['holdout']['loss']['mean_abs_error']:.3f}" in text
    k = q.above_chance_counts(res, "hellaswag", "acc_norm")
    assert f"{k['k']} of {k['n']} runs" in text and "Accuracy is at chance" in text


def test_report_never_imports_the_fitter(tmp_path):
    import subprocess
    import sys

    code = ("import sys, json, shutil, tempfile, pathlib; from scalelab.report.study_note import write_report; "
            f"d = pathlib.Path(tempfile.mkdtemp()); shutil.copy({str(FIXTURE)!r}, d / 'results.json'); "
            "write_report(d); "
            "assert 'scalelab.scaling.fit' not in sys.modules, 'the report refits or imports the fitter'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_ratio_design_unchanged(tmp_path):
    """The dispatch leaves the ratio design on its own note and figures."""
    res = json.loads(FIXTURE_RATIOS.read_text())
    assert not q.is_isoflop(res)
    note = write_note(res, tmp_path, [])
    assert note.read_text() == "\n".join(study_note.note_lines(res, tmp_path, []))
    assert note.read_text().startswith("# How does loss scale with model size?")


def test_queries(tmp_path):
    res = synthetic()
    assert q.is_isoflop(res) and q.study_budgets(res) == BUDGETS
    idn = q.identification(res["fits"]["chinchilla"])
    assert idn["identified"] and idn["widths"]["alpha"] == pytest.approx(0.08)
    assert not q.identification({"law": "chinchilla", "degenerate": True, "reason": "x"})["identified"]
    assert q.approach_status(res["fits"]["envelope"]) == "ok"
    assert q.approach_status(None) == "missing"
    b = res["fits"]["isoflop"]["budgets"][0]
    assert q.parabola(b, [b["N_opt"]])[0] == pytest.approx(b["loss_opt"])
    a, k = q.power_law_draws(res["fits"]["isoflop"])
    assert a.size == 50
    assert q.above_chance_counts(res, "hellaswag", "acc_norm")["k"] == 3


def test_synthetic_results_open_both_notes_with_the_warning(tmp_path):
    """Both designs' notes open with the synthetic-results warning when results.json says so."""
    from scalelab.report.study_note import write_note

    for fixture in (FIXTURE, FIXTURE_RATIOS):
        res = json.loads(fixture.read_text())
        res["synthetic"] = {"note": "made up for a test"}
        out = tmp_path / fixture.stem
        out.mkdir()
        text = write_note(res, out, []).read_text()
        assert ("> **Synthetic results.** results.json marks these numbers as synthetic: made up for a test. "
                "Do not read them as measurements.") in text
        del res["synthetic"]
        assert "Synthetic results" not in write_note(res, out, []).read_text()
