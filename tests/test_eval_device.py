"""--device is checked once, up front, for every command: a typo or a GPU that is not there
is one clear message naming the device and what is available, never a traceback and never
a silent fall-back to the CPU."""
from __future__ import annotations

import pytest
import torch

from scalelab import cli
from scalelab.errors import ConfigError
from scalelab.train import hardware


def test_resolve_device_accepts_what_exists():
    assert hardware.resolve_device("cpu") == torch.device("cpu")
    assert hardware.resolve_device(" CPU:0 ".lower()) == torch.device("cpu")
    auto = hardware.resolve_device(None)
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu") == hardware.resolve_device("auto").type
    assert "cpu" in hardware.available_devices()


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x"])
def test_unknown_device_names_what_is_available(name):
    with pytest.raises(ConfigError) as e:
        hardware.resolve_device(name)
    msg = str(e.value)
    assert f"--device '{name}'" in msg and "Available here: cpu" in msg and "\n" not in msg


def test_other_torch_device_types_are_refused():
    with pytest.raises(ConfigError, match=r"--device 'meta': scalelab runs on cpu or cuda\[:N\], not meta"):
        hardware.resolve_device("meta")


def test_cuda_on_cpu_only_torch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    with pytest.raises(ConfigError, match=r"--device 'cuda': this torch \(.*\) is a CPU-only build.*Available here: cpu$"):
        hardware.resolve_device("cuda")


def test_cuda_index_past_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert hardware.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device 'cuda:2': only 2 CUDA GPU\(s\) are visible. Available here: "
                                          r"cpu, cuda, cuda:0, cuda:1"):
        hardware.resolve_device("cuda:2")


@pytest.mark.parametrize("argv", [
    ["train", "train.max_steps=1", "--device", "tpu"],
    ["eval", "runs/none", "--tasks", "hellaswag", "--device", "tpu"],
    ["sample", "runs/none", "--device", "tpu"],
    ["golf", "--device", "tpu"],
])
def test_every_command_checks_device_first(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --device 'tpu' is not a device") and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # nothing prepared, trained or written


def test_library_train_refuses_an_unknown_device_before_any_work(tmp_path):
    """`train(cfg, device=...)` called from Python gets the same check as the CLI."""
    from scalelab.config import load_config
    from scalelab.errors import ConfigError
    from scalelab.train.trainer import train

    cfg = load_config("configs/cpu-tiny.yaml", [f"out_dir={tmp_path / 'run'}", "train.max_steps=1"])
    with pytest.raises(ConfigError, match="tpu"):
        train(cfg, device="tpu")
    assert not (tmp_path / "run").exists()
