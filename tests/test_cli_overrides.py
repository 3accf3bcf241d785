"""Dotted overrides may come before or after flags, for every subcommand that takes them."""
from pathlib import Path

import pytest
import yaml

from scalelab import cli

ROOT = Path(__file__).resolve().parents[1]
CFG = str(ROOT / "configs" / "cpu-tiny.yaml")


def printed_config(capsys, argv):
    assert cli.main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_train_overrides_after_flags(capsys):
    # the case argparse rejected: more than one override after --resume
    c = printed_config(capsys, ["train", CFG, "--resume", "train.lr=1e-3", "train.warmup_steps=3", "--print-config"])
    assert c["train"]["lr"] == 1e-3 and c["train"]["warmup_steps"] == 3 and c["train"]["resume"] == "last"
    c = printed_config(capsys, ["train", CFG, "--device", "cpu", "train.lr=2e-3", "--print-config"])
    assert c["train"]["lr"] == 2e-3 and c["train"]["resume"] is False
    # later words win, in command-line order, around --resume CHECKPOINT as well
    c = printed_config(capsys, ["train", CFG, "train.lr=5", "--resume", "step_000004", "train.lr=1e-3",
                                "--print-config"])
    assert c["train"]["lr"] == 1e-3 and c["train"]["resume"] == "step_000004"
    c = printed_config(capsys, ["train", CFG, "train.lr=5", "--resume", "train.lr=4e-3", "--print-config"])
    assert c["train"]["lr"] == 4e-3
    # only overrides, no YAML file, flags first
    c = printed_config(capsys, ["train", "--print-config", "train.max_steps=7", "model.n_layer=3"])
    assert c["train"]["max_steps"] == 7 and c["model"]["n_layer"] == 3


def test_other_subcommands_take_late_overrides():
    parser = cli.build_parser()
    args = cli.parse_args(parser, ["data", CFG, "--quiet", "data.max_docs=5"])
    assert args.overrides == ["data.max_docs=5"] and args.quiet
    args = cli.parse_args(parser, ["study", "s.yaml", "seeds=[0,1]", "--quiet", "out_dir=runs/x"])
    assert args.overrides == ["seeds=[0,1]", "out_dir=runs/x"]
    args = cli.parse_args(parser, ["lr-find", CFG, "--steps", "5", "train.lr=1e-3"])
    assert args.overrides == ["train.lr=1e-3"] and args.steps == 5


def test_every_command_with_overrides_takes_them_after_a_flag():
    """Each subcommand that has an `overrides` positional: a word after one of its flags
    still lands there, after the early ones."""
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    checked = []
    for name, sub in commands.items():
        dests = {a.dest: a for a in sub._actions}
        if "overrides" not in dests:
            continue
        flag = next(a.option_strings[0] for a in sub._actions
                    if a.option_strings and a.nargs == 0 and a.dest not in ("help",))
        args = cli.parse_args(parser, [name, "c.yaml", "a.b=1", flag, "c.d=2"])
        assert args.overrides == ["a.b=1", "c.d=2"], name
        checked.append(name)
    assert {"data", "train", "lr-find", "study", "golf", "tune", "finetune"} <= set(checked)


def test_unknown_words_are_still_argparse_errors(capsys):
    for argv in (["train", CFG, "--device", "cpu", "bogus"], ["train", CFG, "--nope", "train.lr=1"],
                 ["fit", "results.json", "--json", "train.lr=1"]):  # fit takes no overrides
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["lr-find", CFG, "--steps", "5", "other.yaml"])


def test_one_config_loader_for_every_cli(tmp_path):
    from scalelab.config import load_run_config, split_config_arg
    from scalelab.tune.tune_config import load_tune_config

    assert split_config_arg("train.lr=1", ["a.b=2"]) == (None, ["train.lr=1", "a.b=2"])
    assert split_config_arg(CFG, ["a.b=2"]) == (CFG, ["a.b=2"])
    cfg = load_run_config("train.max_steps=9", ["model.n_layer=3"])  # no YAML file: the word is an override
    assert cfg.train.max_steps == 9 and cfg.model.n_layer == 3
    assert load_run_config(CFG, ["train.lr=3e-3"]).train.lr == 3e-3
    # tune's own keys go through config.apply_overrides (YAML values, 5e-1 a number)
    tc = load_tune_config(ROOT / "configs" / "tune-cpu.yaml", ["trials=3", "remeasure_share=5e-1"])
    assert tc.trials == 3 and tc.remeasure_share == 0.5


def test_golf_config_takes_the_same_config_word_rule():
    from scalelab.golf.config import load_golf_config

    run, golf = load_golf_config("train.max_steps=9", ["train.max_time_s=60", "golf.budget_bytes=1000000"])
    assert run.train.max_steps == 9 and golf.budget_bytes == 1_000_000


def test_json_output_is_alone_on_stdout(tmp_path, capsys):
    """--json: progress and notes go to stderr, so `scalelab ... --json | jq` works."""
    import json

    from scalelab.cli import main

    rc = main(["data", "configs/cpu-tiny.yaml", f"data.dir={tmp_path / 'd'}", "data.max_docs=40",
               "data.vocab_size=300", "--json"])
    out = capsys.readouterr()
    assert rc == 0
    meta = json.loads(out.out)  # nothing but the JSON
    assert meta["splits"]["train"]["docs"] > 0 and "\r" not in out.err  # no bar in a pipe
