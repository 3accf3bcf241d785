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
    with pytest.raises(CheckpointError, match="read-only file system.*intact"):
        ck.save_checkpoint(tmp_path, 2, tied_state(), None, {})
    assert ck.find_checkpoint(tmp_path).name == "step_000001"


def test_write_failure_keeps_existing(tmp_path, monkeypatch):
    """A full disk mid-write (simulated) leaves the previous checkpoint and pointer intact."""
    ck.save_checkpoint(tmp_path, 1, tied_state(), None, {})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck, "save_weights", boom)
    with pytest.raises(CheckpointError, match="no space left on device.*train.ckpt_keep=1.*intact"):
        ck.save_checkpoint(tmp_path, 2, tied_state(), None, {})
    assert ck.find_checkpoint(tmp_path).name == "step_000001"
    assert not list(ck.checkpoint_root(tmp_path).glob(".tmp-*"))


def test_corrupt_weights_and_newer_format(tmp_path):
    path = ck.save_checkpoint(tmp_path, 1, tied_state(), None, {})
    (path / ck.MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        ck.load_weights(path / ck.MODEL_FILE)
    with pytest.raises(CheckpointError, match="unreadable"):
        ck.load_weights(path / ck.MODEL_FILE, verify=False)
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
        ck.load_optimizer(path, verify=False)  # past the checksum, weights_only still refuses it


# -- io helpers: file modes and write-failure messages ---------------------------------

@pytest.mark.parametrize("umask, fmode, dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_and_checkpoints_respect_the_umask(tmp_path, umask, fmode, dmode):
    from scalelab.io import atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        path = ck.save_checkpoint(tmp_path / "run", 1, tied_state(), {"state": {}, "param_groups": []}, {})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == fmode
    files = [p for p in ck.checkpoint_root(tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "optimizer.pt", "state.json", "last"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(fmode)}
    assert path.stat().st_mode & 0o777 == dmode


# Messages as torch.save and safetensors raise them on a full tmpfs (torch 2.13, safetensors 0.8).
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def test_describe_write_error_names_the_folder_the_size_and_the_fix(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from scalelab import io

    msg = io.describe_write_error(OSError(28, "No space left on device"), tmp_path, 5_000_000, "or set x.keep=1")
    assert msg.startswith(f"no space left on device for '{tmp_path}': free 5 MB") and msg.endswith("or set x.keep=1")
    assert "no space left" in io.describe_write_error(SafetensorError(SAFETENSORS_FULL), tmp_path, 10)
    # torch's short write carries no errno: it is a full disk only when the space is short
    assert io.describe_write_error(TORCH_FULL, tmp_path, 10).startswith("could not write")
    monkeypatch.setattr(io, "free_bytes", lambda p: 1_000_000)
    msg = io.describe_write_error(TORCH_FULL, tmp_path, 3_500_000)
    assert msg.startswith("no space left") and "free 3 MB" in msg and "needs 4 MB, 1 MB are free" in msg
    assert io.check_free_space(tmp_path, 3_500_000, "or y") .endswith("or y")
    assert io.check_free_space(tmp_path, 999_999) is None
    assert "read-only" in io.describe_write_error(OSError(30, "Read-only file system"), tmp_path)


# -- checksums, fallback selection ------------------------------------------------------

OPTIM = {"state": {"a": {"exp_avg": torch.ones(3), "step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": ["a"]}]}


def three_checkpoints(root):
    for step in (10, 20, 30):
        ck.save_checkpoint(root, step, tied_state(), OPTIM, {"tokens_seen": step}, keep_last=3,
                           extra_weights={"ema.safetensors": tied_state()})
    return [ck.checkpoint_root(root) / ck.step_dirname(s) for s in (10, 20, 30)]


def flip_bytes(path, seed=0):
    """Overwrite 8 bytes at a seeded offset with other bytes (same size: only a checksum sees it)."""
    import random

    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    at = rng.randrange(0, len(data) - 8)
    for i in range(at, at + 8):
        data[i] = (data[i] + rng.randrange(1, 256)) % 256
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"])
def test_checksums_catch_changed_bytes_in_every_file(tmp_path, name):
    c10, c20, c30 = three_checkpoints(tmp_path)
    state = ck.load_state(c30)
    assert set(state["files"]) == {"model.safetensors", "ema.safetensors", "optimizer.pt"}
    if name == "state.json":  # a valid-JSON change (a digit) is caught by the state's own checksum
        text = (c30 / name).read_text()
        (c30 / name).write_text(text.replace('"tokens_seen": 30', '"tokens_seen": 31'))
    else:
        flip_bytes(c30 / name)
    with pytest.raises(CheckpointError, match=f"'{c30 / name}' is corrupt.*--resume step_000020"):
        ck.verify_checkpoint(c30)
    path, state, notes = ck.select_checkpoint(tmp_path)  # resume falls back, and says why
    assert path == c20 and state["tokens_seen"] == 20
    assert len(notes) == 1 and notes[0].startswith("skipped step_000030:") and name in notes[0]
    loader = {"model.safetensors": lambda: ck.load_weights(c30 / name), "ema.safetensors": lambda: ck.load_weights(c30 / name),
              "optimizer.pt": lambda: ck.load_optimizer(c30), "state.json": lambda: ck.load_state(c30)}[name]
    with pytest.raises(CheckpointError, match="corrupt"):
        loader()


def test_checkpoints_without_checksums_still_load(tmp_path):
    import json

    c10, c20, c30 = three_checkpoints(tmp_path)
    state = json.loads((c30 / "state.json").read_text())
    del state["files"], state["state_sha256"]  # as written before checksums existed
    (c30 / "state.json").write_text(json.dumps(state))
    assert ck.verify_checkpoint(c30)["tokens_seen"] == 30
    assert torch.equal(ck.load_weights(c30 / ck.MODEL_FILE)["lm_head.weight"], ck.load_weights(c30 / ck.MODEL_FILE)["tok_emb.weight"])
    assert torch.equal(ck.load_optimizer(c30)["state"]["a"]["exp_avg"], torch.ones(3))
    assert ck.select_checkpoint(tmp_path)[0] == c30


def test_selection_when_last_dangles_is_corrupt_or_named(tmp_path):
    import shutil

    c10, c20, c30 = three_checkpoints(tmp_path)
    shutil.rmtree(c30)  # the newest checkpoint is gone; `last` dangles
    path, _, notes = ck.select_checkpoint(tmp_path)
    assert path == c20 and notes == ["step_000030 (named by 'last') is missing"]
    assert ck.select_checkpoint(tmp_path, "step_000010")[0] == c10
    with pytest.raises(CheckpointError, match="no checkpoint 'step_000030'.*step_000020, step_000010"):
        ck.select_checkpoint(tmp_path, "step_000030")
    # `last` names an older checkpoint (a run resumed from it): newer ones are not taken
    ck.set_last(tmp_path, c10)
    assert ck.select_checkpoint(tmp_path)[0] == c10
    (c10 / ck.MODEL_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"no valid checkpoint.*step_000010.*missing.*newer than 'last' \(step_000020\)"):
        ck.select_checkpoint(tmp_path)
    (ck.checkpoint_root(tmp_path) / "last").write_bytes(b"\x00\xff garbage")
    path, _, notes = ck.select_checkpoint(tmp_path)
    assert path == c20 and "unreadable" in notes[0]


def test_no_checkpoint_at_all_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="no valid checkpoint.*holds no checkpoint"):
        ck.select_checkpoint(tmp_path)


def test_pruning_keeps_checkpoints_newer_than_last(tmp_path):
    c10, c20, c30 = three_checkpoints(tmp_path)
    ck.set_last(tmp_path, c10)  # resumed from step 10: 20 and 30 stay until re-saved
    ck.save_checkpoint(tmp_path, 15, tied_state(), None, {}, keep_last=1)
    names = sorted(p.name for p in ck.checkpoint_root(tmp_path).glob("step_*"))
    assert names == ["step_000015", "step_000020", "step_000030"]


def test_too_little_free_space_fails_before_writing(tmp_path, monkeypatch):
    from scalelab import io

    ck.save_checkpoint(tmp_path, 1, tied_state(), OPTIM, {})
    monkeypatch.setattr(io, "free_bytes", lambda p: 1000)
    with pytest.raises(CheckpointError, match=r"step 2 not saved: no space left on device for '.*checkpoints': "
                                              r"free 2 MB \(this write needs 2 MB, 0 MB are free\) or set train.ckpt_keep=1 \(now 2\).*intact"):
        ck.save_checkpoint(tmp_path, 2, tied_state(), OPTIM, {})
    assert sorted(p.name for p in ck.checkpoint_root(tmp_path).iterdir()) == ["last", "step_000001"]
