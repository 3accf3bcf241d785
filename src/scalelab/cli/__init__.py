"""The `scalelab` command line: the only place that parses arguments.

    app.py       the parser (one family module registers its subcommands) and `main`
    common.py    CONFIG + dotted overrides, late overrides, the one-line-error contract
    train.py     data, train            scaling.py   fit, plan, study
    release.py   lr-find, export, report                eval.py      eval, sample
    golf.py      golf                   tune.py      tune, suggest
    finetune.py  finetune

Each subcommand is a thin shell over one library function that the tests call directly.
"""
import os

# OpenMP threads that spin while waiting make 2 threads on 2 shared cores 2-3x slower
# than 1 (bench/bench_train.py); passive waiting avoids it. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scalelab.cli.app import build_parser, main  # noqa: E402
from scalelab.cli.common import parse_args, run_parsed  # noqa: E402

__all__ = ["build_parser", "main", "parse_args", "run_parsed"]
