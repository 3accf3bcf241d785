"""Scaling-law fits: recovery of known laws, published Chinchilla numbers, formats, bad inputs."""

import json
import math

import numpy as np
import pytest

from scalelab.errors import DataError, ScalelabError
from scalelab.scaling.fit import (
    CHINCHILLA_PUBLISHED,
    FitError,
    FitResult,
    Points,
    chinchilla_loss,
    compute_optimal,
    fit_chinchilla,
    fit_isoflop,
    fit_kaplan,
    format_fit,
    hoffmann_grid,
    load_points,
    run_fit,
)

P = CHINCHILLA_PUBLISHED
SMALL_GRID = hoffmann_grid()[::9]  # 500 of the 4,500 starts: enough for the tests that are not about the search
TINY_GRID = hoffmann_grid()[::45]  # 100 starts, for the degenerate-data tests


def synth_chinchilla(n_sizes=10, per_size=12, sigma=0.01, seed=0):
    rng = np.random.default_rng(seed)
    N = np.repeat(np.logspace(np.log10(7e7), np.log10(1.6e10), n_sizes), per_size)
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), N.size))
    L = chinchilla_loss(N, D, **P) * np.exp(rng.normal(0, sigma, N.size))
    return N, D, L


def write_json(path, N, D, L, **extra):
    runs = []
    for i in range(len(N)):
        r = {"params": float(N[i]), "tokens": float(D[i]), "loss": float(L[i]), "seed": i % 2, "name": f"run{i}"}
        for k, v in extra.items():
            r[k] = float(v[i])
        runs.append(r)
    path.write_text(json.dumps({"version": 1, "runs": runs}))
    return path


# ------------------------------------------------------------------ published numbers


def test_published_chinchilla_loss_by_hand():
    def by_hand(N, D):
        return 1.69 + 406.4 * math.exp(-0.34 * math.log(N)) + 410.7 * math.exp(-0.28 * math.log(D))

    assert by_hand(70e9, 1.4e12) == pytest.approx(1.937, abs=5e-4)  # Chinchilla itself
    law = FitResult.from_params("chinchilla", **P)
    for N, D in [(70e9, 1.4e12), (280e9, 300e9), (1e9, 20e9), (175e9, 300e9)]:
        got = law.predict(N, D)
        assert round(got["loss"], 3) == round(by_hand(N, D), 3)
        assert float(chinchilla_loss(N, D, **P)) == pytest.approx(by_hand(N, D), rel=1e-12)
        assert math.isnan(got["lo"])  # no bootstrap, no CI -- not a fake one


def test_published_compute_optimal_exponents():
    co = compute_optimal(1e21, **P)
    assert float(co["a"]) == pytest.approx(0.28 / 0.62, abs=1e-12)
    assert round(float(co["a"]), 4) == 0.4516 and round(float(co["b"]), 4) == 0.5484
    # N_opt(C) really scales as C^a, and 6 N_opt D_opt = C
    c1, c2 = compute_optimal(1e20, **P), compute_optimal(1e24, **P)
    slope = math.log(float(c2["N_opt"]) / float(c1["N_opt"])) / math.log(1e4)
    assert slope == pytest.approx(0.4516, abs=1e-4)
    assert 6 * float(c2["N_opt"]) * float(c2["D_opt"]) == pytest.approx(1e24, rel=1e-10)
    # G by hand
    G = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
    assert float(co["G"]) == pytest.approx(G, rel=1e-12)
    # the optimum is a minimum of L along C = 6ND
    law = FitResult.from_params("chinchilla", **P)
    opt = law.predict_compute(5.76e23)
    for f in (0.8, 1.25):
        N = opt["N_opt"] * f
        assert law.predict(N, 5.76e23 / (6 * N))["loss"] > opt["loss"]


# ------------------------------------------------------------------ recovery


def test_chinchilla_recovers_known_parameters_full_grid():
    N, D, L = synth_chinchilla(per_size=10)
    res = fit_chinchilla(N, D, L, n_boot=50, seed=0)  # the full 4,500-start grid
    assert not res.degenerate, res.warnings
    ci = res.ci
    for k, true in P.items():
        lo, hi = ci[k]
        assert lo <= true <= hi, (k, true, lo, hi)
        assert lo <= res.params[k] <= hi
    der = res.derived()
    lo, hi = der["a"]["ci"]
    assert lo <= 0.28 / 0.62 <= hi
    pr = res.predict(70e9, 1.4e12)
    assert pr["lo"] <= pr["loss"] <= pr["hi"]
    assert pr["lo"] <= float(chinchilla_loss(70e9, 1.4e12, **P)) <= pr["hi"]
    pc = res.predict_compute(1e22)
    assert pc["N_opt_ci"][0] <= pc["N_opt"] <= pc["N_opt_ci"][1]
    assert pc["tokens_per_param"] == pytest.approx(pc["D_opt"] / pc["N_opt"])


def test_chinchilla_group_bootstrap_and_grid_argument():
    N, D, L = synth_chinchilla(n_sizes=8, per_size=8, seed=1)
    res = fit_chinchilla(N, D, L, n_boot=30, seed=0, grid=SMALL_GRID, groups=N)
    assert res.resample == "groups" and res.n_boot == 30
    assert abs(res.params["alpha"] - 0.34) < 0.05 and abs(res.params["beta"] - 0.28) < 0.05
    with pytest.raises(FitError):
        fit_chinchilla(N, D, L, n_boot=0, grid=np.zeros((3, 4)))


def test_kaplan_recovers_known_parameters():
    rng = np.random.default_rng(1)
    N = np.repeat(np.logspace(6, 9, 8), 3)
    L = (1.8 + 30 * N**-0.25) * np.exp(rng.normal(0, 0.005, N.size))
    res = fit_kaplan(N, L, n_boot=100, seed=0)
    for k, true in {"E": 1.8, "A": 30.0, "alpha": 0.25}.items():
        lo, hi = res.ci[k]
        assert lo <= true <= hi, (k, true, lo, hi)
    assert not res.degenerate


def test_kaplan_fixed_E_zero():
    rng = np.random.default_rng(2)
    N = np.logspace(6, 9, 10)
    Nc, aN = 8.8e13, 0.076  # Kaplan et al. 2020: L = (Nc/N)^alphaN
    L = (Nc / N) ** aN * np.exp(rng.normal(0, 0.003, N.size))
    res = fit_kaplan(N, L, fix_E=0, n_boot=100, seed=0)
    d = res.to_dict()
    assert d["E"] == 0 and d["fixed"] == {"E": 0.0} and "E" not in d["ci"]
    lo, hi = d["ci"]["alpha"]
    assert lo <= aN <= hi and abs(d["alpha"] - aN) < 0.005
    assert res.params["A"] ** (1 / res.params["alpha"]) == pytest.approx(Nc, rel=0.5)
    assert "fixed" in format_fit(res)
    assert res.predict(1e10)["loss"] == pytest.approx((Nc / 1e10) ** aN, rel=0.01)


def _isoflop_points(seed=0, sigma=0.002, budgets=(1e18, 3e18, 1e19, 3e19, 1e20, 3e20)):
    rng = np.random.default_rng(seed)
    Ns = []
    Cs = []
    for C in budgets:
        n_opt = float(compute_optimal(C, **P)["N_opt"])
        for k in np.linspace(-1.2, 1.2, 9):
            Ns.append(n_opt * math.exp(k))
            Cs.append(C * rng.uniform(0.97, 1.03))  # realistic jitter: still one budget
    N, C = np.array(Ns), np.array(Cs)
    D = C / (6 * N)
    L = chinchilla_loss(N, D, **P) * np.exp(rng.normal(0, sigma, N.size))
    return Points(N=N, D=D, L=L, flops=C)


def test_isoflop_recovers_exponent():
    out = fit_isoflop(_isoflop_points(), n_boot=200, seed=0, predict_compute=[5.76e23])
    cp = out["compute_predictions"][0]
    n_true = float(compute_optimal(5.76e23, **P)["N_opt"])
    assert cp["N_opt_ci"][0] <= n_true <= cp["N_opt_ci"][1]
    assert len(out["budgets"]) == 6 and all(b["used"] for b in out["budgets"])
    a_true = 0.28 / 0.62
    assert abs(out["a"] - a_true) < 0.02
    lo, hi = out["ci"]["a"]
    assert lo <= a_true <= hi
    assert out["a"] + out["b"] == pytest.approx(1.0, abs=0.02)
    json.dumps(out, allow_nan=False)
    assert "N_opt" in format_fit(out)


def test_isoflop_needs_three_sizes_per_budget():
    pts = _isoflop_points()
    keep = np.isin(np.arange(len(pts)) % 9, [3, 5])  # 2 sizes per budget
    bad = Points(N=pts.N[keep], D=pts.D[keep], L=pts.L[keep], flops=pts.flops[keep])
    with pytest.raises(FitError, match="at least 2 compute budgets"):
        fit_isoflop(bad, n_boot=0)


# ------------------------------------------------------------------ files and the CLI-facing dict


def test_run_fit_json_shape(tmp_path):
    N, D, L = synth_chinchilla(n_sizes=8, per_size=6, seed=3)
    path = write_json(tmp_path / "results.json", N, D, L, flops=6 * N * D)
    import scalelab.scaling.fit.fits as fitmod  # where fit_chinchilla looks the grid up

    orig = fitmod.hoffmann_grid
    fitmod.hoffmann_grid = lambda: SMALL_GRID  # keep the test fast; the full grid is tested above
    try:
        out = run_fit(path, law="chinchilla", n_boot=20, seed=0, predict=[(70e9, 1.4e12), (1e9, 2e10)],
                      predict_compute=[1e21])
    finally:
        fitmod.hoffmann_grid = orig
    for key in ("law", "E", "A", "B", "alpha", "beta", "objective", "n", "ci", "derived", "degenerate", "warnings"):
        assert key in out
    assert out["reason"] is None and "samples" not in out
    assert out["law"] == "chinchilla" and out["n"] == N.size and out["degenerate"] is False
    assert set(out["ci"]) == {"E", "A", "B", "alpha", "beta"}
    assert all(len(v) == 2 for v in out["ci"].values())
    assert set(out["derived"]) >= {"a", "b", "G", "compute_optimal"}
    assert set(out["derived"]["a"]) == {"value", "ci"}
    assert len(out["predictions"]) == 2 and set(out["predictions"][0]) == {"N", "D", "loss", "lo", "hi"}
    assert out["compute_predictions"][0]["C"] == 1e21
    text = json.dumps(out, allow_nan=False)  # strict JSON: no NaN
    assert json.loads(text)["law"] == "chinchilla"
    table = format_fit(out)
    assert "alpha" in table and "predicted loss" in table


def test_run_fit_kaplan_csv_uses_non_embedding(tmp_path):
    N = np.logspace(6, 8.5, 8)
    Nne = 0.8 * N
    L = 1.5 + 20 * Nne**-0.2
    p = tmp_path / "runs.csv"
    lines = ["params,non_embedding_params,tokens,loss,seed"]
    lines += [f"{n},{m},{20 * n},{l},0" for n, m, l in zip(N, Nne, L)]
    p.write_text("\n".join(lines) + "\n")
    out = run_fit(p, law="kaplan", n_boot=20, predict=[(1e9, None)])
    assert out["law"] == "kaplan" and out["n_column"] == "non_embedding_params"
    assert out["alpha"] == pytest.approx(0.2, abs=0.01)
    assert "B" not in out and out["derived"] == {}
    # N in --predict is in the fitted column's units (here non-embedding parameters)
    assert out["predictions"][0]["loss"] == pytest.approx(1.5 + 20 * 1e9**-0.2, rel=1e-3)
    out0 = run_fit(p, law="kaplan", fix_E=0, n_boot=10)
    assert out0["E"] == 0
    outs = run_fit(p, law="kaplan", n_boot=10, resample="size")
    assert outs["resample"] == "size"
    with pytest.raises(FitError, match="group bootstrap"):
        run_fit(p, law="kaplan", n_boot=10, resample="seed")  # every run has seed 0: one group


def test_run_fit_isoflop_from_json(tmp_path):
    pts = _isoflop_points()
    path = write_json(tmp_path / "results.json", pts.N, pts.D, pts.L, flops=pts.flops)
    out = run_fit(path, law="isoflop", n_boot=50)
    assert out["law"] == "isoflop" and abs(out["a"] - 0.4516) < 0.02
    with pytest.raises(FitError):
        run_fit(path, law="isoflop", predict=[(1e9, 1e10)])
    with pytest.raises(FitError):
        run_fit(path, law="nonsense")


# ------------------------------------------------------------------ bad inputs


def test_load_points_missing_csv_column(tmp_path):
    p = tmp_path / "runs.csv"
    p.write_text("params,loss\n1e6,3.0\n2e6,2.9\n")
    with pytest.raises(DataError, match="tokens"):
        load_points(p)


def test_load_points_nan_and_negative(tmp_path):
    p = tmp_path / "runs.csv"
    p.write_text("params,tokens,loss\n1e6,2e7,3.0\n2e6,4e7,nan\n-3e6,6e7,2.8\n4e6,8e7,2.7\n")
    with pytest.raises(DataError) as exc:
        load_points(p)
    msg = str(exc.value)
    assert "loss" in msg and "line 3" in msg and "params" in msg and "line 4" in msg
    pts = load_points(p, drop_invalid=True)
    assert len(pts) == 2 and "dropped 2" in pts.warnings[0]
    j = tmp_path / "results.json"
    j.write_text(json.dumps({"runs": [{"params": 1e6, "tokens": 1e7, "loss": None}]}))
    with pytest.raises(DataError, match="loss"):
        load_points(j)
    j.write_text(json.dumps({"not_runs": []}))
    with pytest.raises(DataError, match="runs"):
        load_points(j)
    with pytest.raises(DataError, match="not found"):
        load_points(tmp_path / "missing.json")
    with pytest.raises(DataError):
        fit_kaplan([1e6, 2e6, float("nan")], [3.0, 2.9, 2.8])
    with pytest.raises(DataError):
        fit_chinchilla([1e6, 2e6, 3e6], [1e7, 2e7, 3e7], [3.0, -1.0, 2.8])


def test_too_few_points_and_one_size():
    with pytest.raises(FitError, match="5 free parameters"):
        fit_chinchilla([1e6, 2e6, 3e6, 4e6], [1e7, 3e7, 2e7, 5e7], [3.0, 2.9, 2.8, 2.7])
    with pytest.raises(FitError, match="model sizes"):
        fit_chinchilla([1e6] * 8, np.logspace(7, 9, 8), np.linspace(3, 2.5, 8))
    with pytest.raises(FitError, match="token counts"):
        fit_chinchilla(np.logspace(6, 8, 8), [1e9] * 8, np.linspace(3, 2.5, 8))
    with pytest.raises(FitError, match="fix_E"):
        fit_kaplan([1e6, 1e6, 1e7, 1e7], [3.0, 3.1, 2.5, 2.6])
    with pytest.raises(FitError):
        fit_kaplan([1e6] * 4, [3.0, 3.1, 2.9, 3.0], fix_E=0)
    with pytest.raises(FitError, match="below the smallest"):
        fit_kaplan(np.logspace(6, 8, 5), np.linspace(3, 2, 5), fix_E=2.5)
    assert issubclass(FitError, ScalelabError)


def test_collinear_family_is_flagged_degenerate():
    rng = np.random.default_rng(3)
    N = np.repeat(np.logspace(6.5, 8.5, 6), 3)
    D = 20 * N  # a fixed tokens/param family: N and D cannot be told apart
    L = chinchilla_loss(N, D, **P) * np.exp(rng.normal(0, 0.005, N.size))
    res = fit_chinchilla(N, D, L, n_boot=10, grid=TINY_GRID)
    assert res.degenerate and any("vary together" in w for w in res.warnings)
    d = res.to_dict(include_samples=True)
    assert d["degenerate"] is True and "vary together" in d["reason"]
    assert set(d["samples"]) == {"E", "A", "B", "alpha", "beta"} and len(d["samples"]["alpha"]) == 10
    json.dumps(d, allow_nan=False)
    assert "DEGENERATE" in format_fit(res)


def test_no_trend_is_flagged_degenerate():
    rng = np.random.default_rng(4)
    N = np.repeat(np.logspace(6.5, 8.5, 6), 4)
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e10), N.size))
    L = 2.5 * np.exp(rng.normal(0, 0.005, N.size))
    res = fit_chinchilla(N, D, L, n_boot=10, grid=TINY_GRID)
    assert res.degenerate and any("degenerate" in w for w in res.warnings)


def test_predict_validation():
    law = FitResult.from_params("chinchilla", **P)
    with pytest.raises(FitError):
        law.predict(1e9)  # Chinchilla needs D
    with pytest.raises(DataError):
        law.predict(-1e9, 1e10)
    with pytest.raises(FitError):
        FitResult.from_params("kaplan", E=1.0, A=2.0).predict(1e9)  # missing alpha -> FitError at build


# -- the CLI: one clear line for every bad input, --holdout ---------------------------------


def _cli(argv, capsys):
    from scalelab.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_fit_cli_bad_inputs_end_in_one_line(tmp_path, capsys):
    N, D, L = synth_chinchilla(n_sizes=4, per_size=3)
    good = write_json(tmp_path / "r.json", N, D, L)
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\x00\x01\xff\xfe\x89PNG\r\n")
    for argv, needle in (([str(binary)], "not a UTF-8 text CSV"),
                         ([str(good), "--predict=abc"], "--predict 'abc'"),
                         ([str(good), "--predict=1e9,2e10,3"], "give N or N,D"),
                         ([str(good), "--boot", "-3"], "--boot must be >= 0"),
                         ([str(tmp_path)], "is a directory")):
        rc, text = _cli(["fit", *argv], capsys)
        assert rc != 0 and needle in text and "Traceback" not in text, (argv, text)
        assert len(text.strip().splitlines()) == 1


def test_fit_hints_name_the_cli_flags(tmp_path):
    N, D, L = synth_chinchilla(n_sizes=4, per_size=3)
    L[0] = float("nan")
    with pytest.raises(DataError, match="--drop-invalid"):
        load_points(write_json(tmp_path / "r.json", N, D, L))
    with pytest.raises(FitError, match="--fix-E 0"):
        fit_kaplan(np.array([1e6, 1e6, 2e6]), np.array([3.0, 3.1, 2.9]), n_boot=0)


def test_fit_cli_holdout_predicts_the_largest_budget(tmp_path, capsys):
    rng = np.random.default_rng(1)
    runs = []
    for C in (1e19, 3e19, 1e20, 3e20):
        n_star = compute_optimal(C, **P)["N_opt"]
        for N in n_star * np.logspace(-0.5, 0.5, 5):
            D = C / (6 * N)
            runs.append({"params": N, "tokens": D, "flops": C,
                         "loss": float(chinchilla_loss(N, D, **P) * np.exp(rng.normal(0, 0.003)))})
    path = tmp_path / "iso.json"
    path.write_text(json.dumps({"runs": runs}))
    res = run_fit(path, law="chinchilla", n_boot=30, holdout=True)
    ho = res["holdout"]
    assert ho["n_held_out"] == 5 and ho["n_fit"] == 15 and "largest budget" in ho["held_out"]
    assert ho["mean_abs_error"] < 0.03 and all(r["params"] > 0 for r in ho["runs"])
    rc, text = _cli(["fit", str(path), "--holdout", "--boot", "20"], capsys)
    assert rc == 0 and "**Holdout**" in text and "prediction interval" in text
