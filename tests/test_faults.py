"""Fault injection on training and checkpoints: kill -9, a full disk, damaged files.

Every case ends in one of two outcomes, and the test fails on anything else:
  recovered  the resumed run's losses (and eval losses) equal an uninterrupted run's, bit
             for bit, each step logged once, from the newest checkpoint that was intact;
  refused    a ScalelabError whose message names the damaged file and another checkpoint.
The default run injects a sample of each kind; `-m slow` runs the matrix that
docs/RELIABILITY.md reports (set SCALELAB_FAULT_REPORT=path.json to save the counts).
"""
import collections
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from scalelab.config import load_config
from scalelab.errors import CheckpointError
from scalelab.train import checkpoint as ck
from scalelab.train.distributed import DistInfo
from scalelab.train.logging import read_metrics
from scalelab.train.trainer import Trainer, train

FAULT_RUN = [
    "data.source=builtin:bbcnews", "data.max_docs=150", "data.vocab_size=384",
    "model.n_layer=2", "model.d_model=64", "model.n_head=2", "model.seq_len=32",
    "train.micro_batch=4", "train.batch_tokens=256", "train.warmup_steps=2", "train.lr=3e-3",
    "train.eval_every=4", "train.eval_tokens=1024", "train.ckpt_every=2", "train.ckpt_keep=3",
    "train.log_every=2", "train.max_steps=10", "train.ema_decay=0.9",  # ema: every checkpoint file kind
    "train.threads=1", "train.deterministic=true", "train.progress=false", "train.tensorboard=false",
]
CKPT_FILES = ["model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"]
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def report_outcomes():
    yield
    if not OUTCOMES:
        return
    lines = ["", "fault kind                 injected  recovered  refused"]
    for kind, c in sorted(OUTCOMES.items()):
        lines.append(f"{kind:26s} {sum(c.values()):8d} {c['recovered']:10d} {c['refused']:8d}")
    print("\n".join(lines))
    if os.environ.get("SCALELAB_FAULT_REPORT"):
        Path(os.environ["SCALELAB_FAULT_REPORT"]).write_text(json.dumps(OUTCOMES, indent=2) + "\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from scalelab.data.prepare import prepare_data

    d = tmp_path_factory.mktemp("data") / "bbc"
    prepare_data(load_config(None, FAULT_RUN + [f"data.dir={d}"]).data, progress=False)
    return d


def args(data_dir, out, *extra):
    return FAULT_RUN + [f"data.dir={data_dir}", f"out_dir={out}", *extra]


def cfg(data_dir, out, *extra):
    return load_config(None, args(data_dir, out, *extra))


def curves(out):
    records = read_metrics(Path(out) / "metrics.jsonl")
    return ([(r["step"], r["loss"]) for r in records if r["kind"] == "train"],
            [(r["step"], r["val_loss"]) for r in records if r["kind"] == "eval"])


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted run: its curves, and how long its training loop took."""
    out = tmp_path_factory.mktemp("ref") / "run"
    t0 = time.perf_counter()
    train(cfg(data_dir, out))
    return {"curves": curves(out), "seconds": time.perf_counter() - t0}


def valid_checkpoints(out) -> list[int]:
    """Steps of the checkpoints that pass verification (newest first)."""
    steps = []
    for d in ck.list_checkpoints(out):
        try:
            ck.verify_checkpoint(d)
            steps.append(ck.step_of(d.name))
        except CheckpointError:
            pass
    return steps


def assert_recovered(out, reference, kind):
    assert curves(out) == reference["curves"], f"{kind}: resumed run differs from the uninterrupted one"
    OUTCOMES[kind]["recovered"] += 1


class Stop(Exception):
    """Ends a run in-process between two steps."""


def interrupted_run(data_dir, out, monkeypatch, after_step):
    """A run stopped right after step `after_step` (and its checkpoint) was done."""
    trainer = Trainer(cfg(data_dir, out), DistInfo())
    real = trainer._train_step

    def step():
        if trainer.step == after_step:
            raise Stop()
        return real()

    with monkeypatch.context() as m:
        m.setattr(trainer, "_train_step", step)
        with pytest.raises(Stop):
            trainer.run()


# -- kill -9 -----------------------------------------------------------------------------

def run_cli(argv, env_extra=None):
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "scalelab", "train", *argv], capture_output=True, text=True,
                          env=env, timeout=600)


def kill_at_random_moment(data_dir, out, reference, rng) -> bool:
    """Start a run and SIGKILL it at a uniform moment of its training loop; False if it
    finished first."""
    env = dict(os.environ, SCALELAB_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "scalelab", "train", *args(data_dir, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 1.5 * reference["seconds"]))
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return not finished


def check_kill(data_dir, out, reference, kind):
    """After a kill: resume from the newest intact checkpoint (or start over) and match."""
    logged = [s for s, _ in curves(out)[0]]
    valid = valid_checkpoints(out)
    done_before_kill = [s for s in range(2, 11, 2) if logged and s < max(logged)]  # saves that had finished
    if done_before_kill:
        assert valid and valid[0] >= done_before_kill[-1], f"{kind}: a finished checkpoint was lost ({valid})"
    last = out / "checkpoints" / "last"  # absent when the kill came before the first pointer
    pointer = ck.step_of(last.read_text().strip()) if last.is_file() else None
    r = run_cli(args(data_dir, out, "train.resume=true"))
    assert r.returncode == 0, f"{kind}: {r.stderr[-2000:]}"
    if valid:  # the newest intact one up to `last` (a step renamed in but not yet pointed to is redone)
        expected = max(s for s in valid if pointer is None or s <= pointer)
        assert f"at step {expected} " in r.stdout, f"{kind}: did not resume from the newest intact checkpoint"
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert_recovered(out, reference, kind)


@pytest.mark.parametrize("phase", ["weights", "pointer"])
def test_kill_9_during_a_checkpoint_write(data_dir, reference, tmp_path, phase):
    out = tmp_path / "run"
    r = run_cli(args(data_dir, out), {"SCALELAB_TEST_CRASH_IN_CHECKPOINT": f"6:{phase}"})
    assert r.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "last").read_text().strip() == ("step_000006" if phase == "pointer" else "step_000004")
    check_kill(data_dir, out, reference, "kill -9 in checkpoint")


def test_kill_9_at_a_random_moment(data_dir, reference, tmp_path):
    rng = random.Random()
    out = tmp_path / "run"
    while not kill_at_random_moment(data_dir, out, reference, rng):
        shutil.rmtree(out)
    check_kill(data_dir, out, reference, "kill -9 at random time")


@pytest.mark.slow
def test_kill_9_matrix(data_dir, reference, tmp_path):
    """Every phase of a checkpoint write at two steps, and 24 kills at random moments."""
    for step in (4, 6):
        for phase in ("start", "weights", "optimizer", "state", "renamed", "pointer"):
            out = tmp_path / f"{phase}-{step}"
            r = run_cli(args(data_dir, out), {"SCALELAB_TEST_CRASH_IN_CHECKPOINT": f"{step}:{phase}"})
            assert r.returncode == -signal.SIGKILL
            check_kill(data_dir, out, reference, "kill -9 in checkpoint")
    rng = random.Random(20240520)
    kills = 0
    while kills < 24:
        out = tmp_path / f"random-{kills}"
        if kill_at_random_moment(data_dir, out, reference, rng):
            check_kill(data_dir, out, reference, "kill -9 at random time")
            kills += 1
        else:
            shutil.rmtree(out)


# -- a full disk --------------------------------------------------------------------------

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def inject_disk_full(m, target, error, at_step=6):
    """Make the write of `target` in step `at_step`'s checkpoint fail with `error` the way
    the real writer does on a full disk: torch.save and safetensors leave half a file; the
    atomic writers (state.json, the `last` pointer) leave the old content."""
    from scalelab import io

    step = ck.step_dirname(at_step)
    full = {"now": False}

    def failing(real, where, torn):
        def wrapper(*a, **k):
            path = Path(a[where])
            if path.name == target and step in (str(path) if target != "last" else a[1]):
                full["now"] = True
                if torn:
                    path.write_bytes(b"\0" * 1000)
                raise error
            return real(*a, **k)
        return wrapper

    m.setattr(ck, "save_file", failing(ck.save_file, 1, torn=True))
    m.setattr(torch, "save", failing(torch.save, 1, torn=True))
    m.setattr(ck, "atomic_write_json", failing(ck.atomic_write_json, 0, torn=False))
    m.setattr(ck, "atomic_write_text", failing(ck.atomic_write_text, 0, torn=False))
    if isinstance(error, RuntimeError):  # torch's message has no errno: the disk must look full
        real_free = io.free_bytes
        m.setattr(io, "free_bytes", lambda p: 0 if full["now"] else real_free(p))


DISK_FULL_CASES = [
    ("model.safetensors", SafetensorError(SAFETENSORS_FULL)),
    ("ema.safetensors", OSError(errno.ENOSPC, "No space left on device")),
    ("optimizer.pt", RuntimeError(TORCH_FULL)),
    ("optimizer.pt", OSError(errno.EDQUOT, "Disk quota exceeded")),
    ("state.json", OSError(errno.ENOSPC, "No space left on device")),
    ("last", OSError(errno.ENOSPC, "No space left on device")),
]


def check_disk_full(data_dir, reference, out, monkeypatch, target, error):
    with monkeypatch.context() as m:
        inject_disk_full(m, target, error)
        with pytest.raises(CheckpointError) as e:
            train(cfg(data_dir, out))
    msg = str(e.value)
    assert msg.startswith(f"checkpoint step 6 not saved: no space left on device for '{out / 'checkpoints'}': free ")
    assert " MB" in msg and "train.ckpt_keep=2 (now 3)" in msg and msg.endswith("earlier checkpoints are intact")
    root = out / "checkpoints"
    assert not list(root.glob(".tmp-*")), "the half-written temp dir was left"
    assert (root / "last").read_text().strip() == "step_000004"  # pointers untouched
    assert valid_checkpoints(out)[-2:] == [4, 2]  # the earlier checkpoints are intact
    train(cfg(data_dir, out, "train.resume=true"))  # space freed: continue
    assert_recovered(out, reference, "disk full in checkpoint")


@pytest.mark.parametrize("target, error", DISK_FULL_CASES[:3], ids=[c[0] for c in DISK_FULL_CASES[:3]])
def test_disk_full_during_a_checkpoint(data_dir, reference, tmp_path, monkeypatch, target, error):
    check_disk_full(data_dir, reference, tmp_path / "run", monkeypatch, target, error)


@pytest.mark.slow
def test_disk_full_matrix(data_dir, reference, tmp_path, monkeypatch):
    for i, (target, error) in enumerate(DISK_FULL_CASES * 2):
        check_disk_full(data_dir, reference, tmp_path / f"run{i}", monkeypatch, target, error)


def test_too_little_space_is_seen_before_writing(data_dir, reference, tmp_path, monkeypatch):
    from scalelab import io

    out = tmp_path / "run"
    real = io.free_bytes
    with monkeypatch.context() as m:
        m.setattr(io, "free_bytes", lambda p: 0 if list((out / "checkpoints").glob("step_000004")) else real(p))
        with pytest.raises(CheckpointError, match=r"step 6 not saved: no space left on device.*: free \d+ MB"):
            train(cfg(data_dir, out))
    assert sorted(os.listdir(out / "checkpoints")) == ["best", "last", "step_000002", "step_000004"]
    train(cfg(data_dir, out, "train.resume=true"))
    assert_recovered(out, reference, "disk full (seen before)")


# -- damaged checkpoint files -----------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_at_8(data_dir, tmp_path_factory):
    """A run stopped after step 8: checkpoints 4, 6 and 8, each with all four files."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as m:
        interrupted_run(data_dir, out, m, after_step=8)
    assert [d.name for d in ck.list_checkpoints(out)] == ["step_000008", "step_000006", "step_000004"]
    assert {p.name for p in (ck.list_checkpoints(out)[0]).iterdir()} == set(CKPT_FILES)
    return out


def write_random_bytes(path, rng) -> bool:
    """Change 1-64 bytes at a random place; False if that left the content the same
    (state.json only: one whitespace byte turned into another)."""
    before = path.read_bytes()
    data = bytearray(before)
    n = rng.randint(1, 64)
    at = rng.randrange(0, len(data) - n)
    for i in range(at, at + n):
        data[i] = (data[i] + rng.randrange(1, 256)) % 256  # every byte changes
    path.write_bytes(bytes(data))
    if path.name != "state.json":
        return True
    try:
        return json.loads(bytes(data)) != json.loads(before)
    except ValueError:
        return True


def check_damaged(data_dir, reference, stopped, tmp_path, damaged: dict[str, list[str]], seed):
    """Damage files of some checkpoints; resume must skip exactly those, or refuse."""
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    rng = random.Random(seed)
    changed = set()
    for ckpt, files in damaged.items():
        for name in files:
            if write_random_bytes(out / "checkpoints" / ckpt / name, rng):
                changed.add(ckpt)
    damaged = {c: f for c, f in damaged.items() if c in changed}
    intact = [s for s in (8, 6, 4) if ck.step_dirname(s) not in damaged]
    kind = "damaged checkpoint file"
    if not intact:
        with pytest.raises(CheckpointError, match="no valid checkpoint to resume.*skipped step_000004: checkpoint"):
            Trainer(cfg(data_dir, out, "train.resume=true"), DistInfo())
        OUTCOMES[kind]["refused"] += 1
        return
    for name in damaged:  # asked for by name, a damaged checkpoint is refused
        with pytest.raises(CheckpointError, match=f"{name}.*(corrupt|unreadable).*--resume step_"):
            Trainer(cfg(data_dir, out, f"train.resume={name}"), DistInfo())
    trainer = Trainer(cfg(data_dir, out, "train.resume=true"), DistInfo())
    assert trainer.step == intact[0]
    trainer.run()
    assert_recovered(out, reference, kind)


@pytest.mark.parametrize("name", CKPT_FILES)
def test_damaged_newest_checkpoint_is_skipped(data_dir, reference, stopped_at_8, tmp_path, name):
    check_damaged(data_dir, reference, stopped_at_8, tmp_path, {"step_000008": [name]}, seed=CKPT_FILES.index(name))


def test_all_checkpoints_damaged_is_a_clear_error(data_dir, reference, stopped_at_8, tmp_path):
    check_damaged(data_dir, reference, stopped_at_8, tmp_path,
                  {"step_000008": ["optimizer.pt"], "step_000006": ["state.json"], "step_000004": ["model.safetensors"]},
                  seed=1)


@pytest.mark.slow
def test_damaged_files_matrix(data_dir, reference, stopped_at_8, tmp_path):
    rng = random.Random(7)
    case = 0
    for name in CKPT_FILES:
        for seed in range(3):
            for damaged in ({"step_000008": [name]}, {"step_000008": [name], "step_000006": [rng.choice(CKPT_FILES)]},
                            {c: [rng.choice(CKPT_FILES)] for c in ("step_000008", "step_000006", "step_000004")}):
                check_damaged(data_dir, reference, stopped_at_8, tmp_path / f"c{case}", damaged, seed=100 * case + seed)
                case += 1


def test_a_damaged_last_pointer_falls_back(data_dir, reference, stopped_at_8, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_at_8, out)
    (out / "checkpoints" / "last").write_bytes(os.urandom(12))
    trainer = Trainer(cfg(data_dir, out, "train.resume=true"), DistInfo())
    assert trainer.step == 8
    trainer.run()
    assert_recovered(out, reference, "damaged last pointer")

