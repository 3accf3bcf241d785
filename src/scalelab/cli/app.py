"""The `scalelab` parser: one module per command family registers its subcommands, and
`main` runs the chosen one under the one-line-error contract (cli/common.py)."""
from __future__ import annotations

import argparse
import sys

from scalelab.cli.common import parse_args, run_parsed


def build_parser() -> argparse.ArgumentParser:
    from scalelab import __version__
    from scalelab.cli.eval import register as register_eval
    from scalelab.cli.golf import register as register_golf
    from scalelab.cli.release import register as register_release
    from scalelab.cli.scaling import register as register_scaling
    from scalelab.cli.train import register as register_train
    from scalelab.cli.finetune import register as register_finetune
    from scalelab.cli.tune import register as register_tune

    parser = argparse.ArgumentParser(
        prog="scalelab",
        description="Language-model pretraining research at small and mid scale.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"scalelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in (register_train, register_scaling, register_release, register_eval, register_tune,
                     register_golf, register_finetune):
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_parsed(parser, parse_args(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
