"""What every command shares: the CONFIG + dotted-overrides arguments and their loading,
parsing with late overrides, and running a command under the one-line-error contract."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing

from scalelab.errors import ScalelabError

OVERRIDES_HELP = ("dotted key=value overrides applied after the YAML file, e.g. train.lr=3e-3 "
                  "out_dir=runs/a model.n_layer=6 (see the key list below)")

# A dotted override word: `train.lr=3e-3`, `seeds=[0,1,2]` (never a flag, never a path).
_OVERRIDE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")


def keys_epilog(cls: type, head: str = "config keys (YAML sections or dotted overrides) and their defaults:\n") -> str:
    """Every dotted key of a config dataclass with its default, for a command's --help."""
    lines = []

    def walk(c, prefix, default_obj):
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            value = getattr(default_obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + f.name + ".", value)
            else:
                lines.append(f"  {prefix + f.name} = {value!r}")

    walk(cls, "", cls())
    return head + "\n".join(lines)


def command(sub, func, name: str, **parser_kwargs) -> argparse.ArgumentParser:
    """A subcommand whose handler is `func` (add_parser's keywords; an epilog keeps its line breaks)."""
    if parser_kwargs.get("epilog"):
        parser_kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    p = sub.add_parser(name, **parser_kwargs)
    p.set_defaults(func=func)
    return p


def output_flags(p: argparse.ArgumentParser, json: str | None = None, quiet: str | None = None) -> None:
    """--json (its help says what it prints: the JSON alone goes to stdout) and --quiet."""
    if json is not None:
        p.add_argument("--json", action="store_true", help=json)
    if quiet is not None:
        p.add_argument("--quiet", action="store_true", help=quiet or None)


def add_config_arguments(p: argparse.ArgumentParser, config_help: str, overrides_help: str = OVERRIDES_HELP,
                         optional: bool = True) -> None:
    """CONFIG (a YAML file, or the first override when there is none) and the overrides."""
    p.add_argument("config", nargs="?" if optional else None, help=config_help)
    p.add_argument("overrides", nargs="*", help=overrides_help)


def config_words(args: argparse.Namespace, resume: str | None = None) -> tuple[str | None, list[str]]:
    """The command's YAML path (or None) and overrides; with `resume`, a set --resume flag
    adds train.resume=<resume> last."""
    from scalelab.config import split_config_arg

    extra = [f"train.resume={resume}"] if resume and getattr(args, "resume", False) else []
    return split_config_arg(args.config, list(args.overrides) + extra)


def load_run_config(args: argparse.Namespace, resume: str | None = None):
    """"Config file + dotted overrides" of a training command, validated (config.load_run_config)."""
    from scalelab.config import load_run_config as load

    return load(*config_words(args, resume))


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """parse_args, except that dotted overrides may also follow flags
    (`train CFG --device cpu train.lr=1e-3`). argparse fills the `overrides` positional
    only from the words before the first flag and calls later ones unrecognized;
    parse_intermixed_args cannot be used with subcommands. Later overrides keep their order
    after the earlier ones; any other unknown word is the usual argparse error."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        late = [w for w in extra if _OVERRIDE_WORD.match(w)]
        if len(late) != len(extra) or not isinstance(getattr(args, "overrides", None), list):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.n_early_overrides = len(args.overrides)
        args.overrides.extend(late)
    return args


def run_parsed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Call the chosen subcommand; a user error prints one line and exits 2."""
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from scalelab.train.host_memory import keep_freed_host_memory

    keep_freed_host_memory()  # CPU work in every command (eval, golf, study) reuses freed memory
    try:
        if getattr(args, "device", None) is not None:  # every --device (train, eval, golf, ...) checked here, first
            from scalelab.train.hardware import resolve_device

            resolve_device(args.device)
        if getattr(args, "json", False):  # the JSON alone on stdout; progress and notes to stderr
            import contextlib

            from scalelab import io as sio

            sio.JSON_STREAM, real = sys.stdout, sys.stdout
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    return args.func(args) or 0
            finally:
                sio.JSON_STREAM = None if sio.JSON_STREAM is real else sio.JSON_STREAM
        return args.func(args) or 0
    except ScalelabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
