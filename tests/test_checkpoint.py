import os

import pytest
import torch

from scalelab.errors import CheckpointError
from scalelab.train import checkpoint as ck


def tied_state():
    w = torch.randn(8, 4)
    return {"tok_emb.weight": w, "lm_head.weight": w, "norm.weight": torch.ones(4)}


def test_roundtrip_with_tied_weights_and_pointers(tmp_path):
    sd = tied_state()
    optim = {"state": {"a": {"exp_avg": torch.ones(3), "step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": ["a"]}]}
    ck.save_checkpoint(tmp_path, 10, sd, optim, {"tokens_seen": 5})
    ck.save_checkpoint(tmp_path, 20, sd, optim, {"tokens_seen": 9}, is_best=True)
    ck.save_checkpoint(tmp_path, 30, sd, optim, {"tokens_seen": 12})
    last = ck.find_checkpoint(tmp_path, "last")
    best = ck.find_checkpoint(tmp_path, "best")
    assert last.name == "step_000030" and best.name == "step_000020"
    # keep_last=2 plus best: step 10 pruned, 20 kept as best
    names = sorted(p.name for p in ck.checkpoint_root(tmp_path).glob("step_*"))
    assert names == ["step_000020", "step_000030"]
    loaded = ck.load_weights(last / ck.MODEL_FILE)
    assert torch.equal(loaded["lm_head.weight"], sd["tok_emb.weight"])
    assert ck.load_state(last)["tokens_seen"] == 12
    assert torch.equal(ck.load_optimizer(last)["state"]["a"]["exp_avg"], torch.ones(3))


def test_resave_same_step_replaces(tmp_path):
    ck.save_checkpoint(tmp_path, 5, tied_state(), None, {"v": 1})
    ck.save_checkpoint(tmp_path, 5, tied_state(), None, {"v": 2})
    assert ck.load_state(ck.find_checkpoint(tmp_path))["v"] == 2


def test_readonly_dir_keeps_existing(tmp_path, monkeypatch):
    """A read-only file system (simulated: root ignores chmod) fails cleanly."""
    import pathlib

    ck.save_checkpoint(tmp_path, 1, tied_state(), None, {})
    real_mkdir = pathlib.Path.mkdir

    def readonly_mkdir(self, *a, **k):
        if self.name.startswith(".tmp-"):
            raise OSError(30, "Read-only file system")
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "mkdir", readonly_mkdir)
    with pytest.raises(CheckpointError, match="Read-only file system.*intact"):
        ck.save_checkpoint(tmp_path, 2, tied_state(), None, {})
    assert ck.find_checkpoint(tmp_path).name == "step_000001"


def test_write_failure_keeps_existing(tmp_path, monkeypatch):
    """A full disk mid-write (simulated) leaves the previous checkpoint and pointer intact."""
    ck.save_checkpoint(tmp_path, 1, tied_state(), None, {})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_weights", boom)
    with pytest.raises(CheckpointError, match="No space left"):
        ck.save_checkpoint(tmp_path, 2, tied_state(), None, {})
    assert ck.find_checkpoint(tmp_path).name == "step_000001"
    assert not list(ck.checkpoint_root(tmp_path).glob(".tmp-*"))


def test_corrupt_weights_and_newer_format(tmp_path):
    path = ck.save_checkpoint(tmp_path, 1, tied_state(), None, {})
    (path / ck.MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        ck.load_weights(path / ck.MODEL_FILE)
    (path / ck.STATE_FILE).write_text('{"format_version": 99}')
    with pytest.raises(CheckpointError, match="upgrade"):
        ck.load_state(path)


def test_optimizer_file_is_not_unpickled_arbitrarily(tmp_path):
    path = ck.save_checkpoint(tmp_path, 1, tied_state(), None, {})

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": Evil()}, path / ck.OPTIM_FILE)
    with pytest.raises(CheckpointError, match="unreadable"):
        ck.load_optimizer(path)
