"""One CI formatter (eval.stats.format_ci): the reports, the study and fit screens and the
tune recipe print an estimate with its interval through it."""
import math

from scalelab.eval.stats import format_ci


def test_format_ci_cases():
    assert format_ci(0.36612, [0.2951, 0.3912]) == "0.366 [0.295, 0.391]"
    assert format_ci(0.5, None) == "0.500 [no CI]"
    assert format_ci(0.5, [0.4, math.nan], no_ci="") == "0.500"
    assert format_ci(None, [0.1, 0.2]) == "n/a" and format_ci("junk", [0.1, 0.2]) == "n/a"
    assert format_ci("0.25", ["0.2", "0.3"], ".2f") == "0.25 [0.20, 0.30]"  # values read back from JSON
    assert format_ci(-0.01234, (-0.05, 0.02), "+.4f") == "-0.0123 [-0.0500, +0.0200]"
    assert format_ci(25300, [2660, 43500], lambda x: f"{x / 1e3:.3g}K") == "25.3K [2.66K, 43.5K]"


def test_every_formatter_goes_through_it():
    from scalelab.report.ladder_context import nci
    from scalelab.report.markdown import count, fci
    from scalelab.report.plot_common import ci_text
    from scalelab.report.run_files import _ci as run_ci
    from scalelab.scaling.study import _ci as study_ci
    from scalelab.tune.recipe import _ci as recipe_ci

    for v, ci in ((0.36612, [0.2951, 0.3912]), (0.5, None), (None, [1, 2]), (1.5, [math.inf, 2.0])):
        assert fci(v, ci, 2) == format_ci(v, ci, ".2f")
        assert ci_text(v, ci) == format_ci(v, ci, no_ci=" (no CI)")
        assert study_ci(v, ci) == format_ci(v, ci, no_ci="")
        assert run_ci(v, ci) == format_ci(v, ci, ".4f", no_ci="")
        assert nci(v, ci) == format_ci(v, ci, count)
    assert run_ci(3.2e6, [3.1e6, 3.3e6]) == "3.20e6 [3.10e6, 3.30e6]"  # large numbers in scientific form
    assert recipe_ci({"mean": 12345.6, "lo": 12000, "hi": 12800}) == "12,346 [12,000, 12,800]"
    assert recipe_ci(None) == "n/a"
