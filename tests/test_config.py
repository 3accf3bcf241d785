import pytest

from scalelab.config import all_keys, load_config
from scalelab.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_dotted_overrides(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1e-3\n  max_steps: 5\nmodel:\n  n_layer: 2\n")
    cfg = load_config(p, ["train.lr=3e-3", "model.qk_norm=true", "out_dir=runs/x", "train.max_tokens=1_000_000"])
    assert cfg.train.lr == pytest.approx(3e-3)
    assert cfg.model.n_layer == 2 and cfg.model.qk_norm is True
    assert cfg.out_dir == "runs/x" and cfg.train.max_tokens == 1_000_000


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lrr.*Did you mean 'train\.lr'"):
        load_config(None, ["train.lrr=1", "train.max_steps=1"])
    p = write(tmp_path, "train:\n  max_step: 5\n")
    with pytest.raises(ConfigError, match="train.max_step'.*train.max_steps"):
        load_config(p)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.micro_batch.*integer"):
        load_config(None, ["train.micro_batch=abc", "train.max_steps=1"])
    with pytest.raises(ConfigError, match="model.qk_norm.*true or false"):
        load_config(None, ["model.qk_norm=maybe", "train.max_steps=1"])


@pytest.mark.parametrize("override,key", [
    ("train.schedule=linear", "train.schedule"),
    ("model.n_head=3", "model.d_model"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("train.batch_tokens=1000", "train.batch_tokens"),
    ("train.lr=-1", "train.lr"),
    ("model.mlp=gelu", "model.mlp"),
])
def test_impossible_values(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override, "train.max_steps=1"])


def test_needs_a_stopping_rule():
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(None, [])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))


def test_shipped_configs_load():
    import pathlib

    from scalelab.finetune.config import load_finetune_config

    for path in sorted(pathlib.Path(__file__).parents[1].glob("configs/*.yaml")):
        if path.name.startswith(("study", "tune", "golf")):
            continue  # not run configs (tests/test_study.py, test_tune_*, test_golf* load those)
        if path.name.startswith("finetune"):
            load_finetune_config(path)  # a fine-tune job's config
            continue
        load_config(path)


def test_all_keys_lists_sections():
    keys = all_keys()
    assert "train.lr" in keys and "model.n_layer" in keys and "data.source" in keys
