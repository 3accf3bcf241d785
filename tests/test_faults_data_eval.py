"""Fault injection for `scalelab data` and `scalelab eval`: full disks and failing writes
(OSError(ENOSPC) and other exceptions), read-only output locations, truncated and
corrupted shards. Each must end in one clear ScalelabError, leave no partial output and
keep what was there before."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from scalelab import cli
from scalelab.config import DataConfig
from scalelab.data import prepare as P
from scalelab.data import shards as S
from scalelab.data.loader import TokenLoader, iter_eval_batches
from scalelab.errors import DataError


def _cfg(tmp_path, name="d", **kw) -> DataConfig:
    base = dict(source="builtin:bbcnews", max_docs=40, tokenizer="bpe", vocab_size=280,
                tokenizer_train_bytes=100_000, dir=str(tmp_path / name), val_fraction=0.1, shard_tokens=4096,
                num_workers=1)
    base.update(kw)
    return DataConfig(**base)


class _FailingFile:
    """A file whose writes fail once `budget` bytes were written (a disk filling up)."""

    def __init__(self, f, budget: list[int], exc: BaseException):
        self._f, self._budget, self._exc = f, budget, exc

    def write(self, data):
        self._budget[0] -= len(data)
        if self._budget[0] < 0:
            raise self._exc
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class _OSProxy:
    """`os` for scalelab.data.shards, with fdopen handing out failing files."""

    def __init__(self, budget: int, exc: BaseException):
        self.budget, self.exc = [budget], exc

    def fdopen(self, fd, *a, **kw):
        return _FailingFile(os.fdopen(fd, *a, **kw), self.budget, self.exc)

    def __getattr__(self, name):
        return getattr(os, name)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _one_line(msg: str) -> None:
    assert "\n" not in msg and "Traceback" not in msg


# ---------------------------------------------------------------------------
# scalelab data: write failures


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("storage driver went away")], ids=["ENOSPC", "RuntimeError"])
def test_shard_write_failure_is_one_message_and_leaves_nothing(tmp_path, monkeypatch, exc):
    cfg = _cfg(tmp_path)
    # Enough for the first shard, not for all of them: the failure hits mid-stream.
    monkeypatch.setattr(S, "os", _OSProxy(budget=20_000, exc=exc))
    with pytest.raises(DataError) as ei:
        P.prepare_data(cfg, progress=False)
    msg = str(ei.value)
    _one_line(msg)
    if isinstance(exc, OSError):
        assert msg.startswith(f"no space left on device for '{tmp_path}")
        assert " free " in msg and " MB" in msg
    else:
        assert msg.startswith(f"could not write '{tmp_path / 'd' / 'train_0000'}") and "storage driver went away" in msg
    assert not Path(cfg.dir).exists()
    assert _leftovers(tmp_path) == []  # no .d.partial-* dir, no shard temp files


def test_disk_full_during_rebuild_keeps_the_old_data(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    P.prepare_data(cfg, progress=False)
    before = {p.name: p.read_bytes() for p in Path(cfg.dir).iterdir()}
    monkeypatch.setattr(S, "os", _OSProxy(budget=5_000, exc=OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(DataError, match="no space left on device"):
        P.prepare_data(_cfg(tmp_path, vocab_size=300), progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in Path(cfg.dir).iterdir()} == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), ValueError("I/O on closed file")],
                         ids=["ENOSPC", "ValueError"])
def test_meta_json_write_failure(tmp_path, monkeypatch, exc):
    real_open = open

    def failing_open(path, mode="r", *a, **kw):
        if "w" in mode and Path(path).name.startswith(".meta.json"):
            raise exc
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(P, "open", failing_open, raising=False)
    cfg = _cfg(tmp_path)
    with pytest.raises(DataError) as ei:
        P.prepare_data(cfg, progress=False)
    _one_line(str(ei.value))
    assert ("no space left on device" in str(ei.value)) == isinstance(exc, OSError)
    assert "meta.json" in str(ei.value) or isinstance(exc, OSError)
    assert not Path(cfg.dir).exists() and _leftovers(tmp_path) == []


def test_cli_data_disk_full_prints_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(S, "os", _OSProxy(budget=0, exc=OSError(errno.ENOSPC, "No space left on device")))
    rc = cli.main(["data", f"data.dir={tmp_path / 'd'}", "data.max_docs=20", "data.vocab_size=260",
                   "data.tokenizer_train_bytes=50000", "data.num_workers=1", "train.max_steps=1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: no space left on device for") and "\n" not in err
    assert _leftovers(tmp_path) == [] and not (tmp_path / "d").exists()


def _readonly(monkeypatch, root: Path) -> None:
    """Make creating anything below `root` fail as on a read-only mount (tests run as
    root, where permission bits do not stop writes)."""
    real_open, real_mkdir = os.open, os.mkdir

    def ro_open(path, flags, *a, **kw):
        if flags & os.O_CREAT and str(Path(path).absolute()).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **kw)

    def ro_mkdir(path, *a, **kw):
        if str(Path(path).absolute()).startswith(str(root)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


def test_data_read_only_location_fails_before_any_work(tmp_path, monkeypatch):
    import scalelab.data.prepare as prep

    def no_tokenizer(cfg):  # reading the corpus / training a tokenizer must not start
        raise AssertionError("work started before the output location was checked")

    monkeypatch.setattr(prep, "_make_tokenizer", no_tokenizer)
    _readonly(monkeypatch, tmp_path)
    with pytest.raises(DataError) as ei:
        P.prepare_data(_cfg(tmp_path, name="sub/d"), progress=False)
    msg = str(ei.value)
    _one_line(msg)
    assert msg.startswith(f"data.dir '{tmp_path / 'sub' / 'd'}' is not writable") and "Read-only" in msg


# ---------------------------------------------------------------------------
# Truncated and corrupted shards: a DataError naming the shard, never garbage


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    cfg = _cfg(tmp)
    P.prepare_data(cfg, progress=False)
    return cfg


def _copy(cfg, tmp_path) -> Path:
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(cfg.dir, d)
    return d


def test_truncated_shard_is_named(prepared, tmp_path):
    d = _copy(prepared, tmp_path)
    shard = d / "train_000001.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(DataError, match=r"token shard .*train_000001\.bin is truncated"):
        TokenLoader(d, "train", micro_batch=2, seq_len=32)
    shard.write_bytes(data[:500])  # shorter than the header
    with pytest.raises(DataError, match=r"train_000001\.bin is truncated: 500 bytes"):
        TokenLoader(d, "train", micro_batch=2, seq_len=32)
    # the data dir no longer matches its meta: a rebuild is asked for, not reused
    cfg = DataConfig(**{**prepared.__dict__, "dir": str(d)})
    with pytest.raises(DataError, match=r"has a missing or damaged shard \(token shard .*train_000001\.bin is trunc.*; pass --overwrite"):
        P.prepare_data(cfg, progress=False)


def test_corrupted_header_is_named(prepared, tmp_path):
    d = _copy(prepared, tmp_path)
    shard = d / "val_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[0:16] = os.urandom(16)
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"val_000000\.bin is not a token shard: magic number"):
        iter_eval_batches(d, "val", micro_batch=2, seq_len=32, max_tokens=1000)


def test_corrupted_body_is_named_not_fed_to_the_model(prepared, tmp_path):
    """4 KB of random bytes in a shard's body: token ids beyond the vocabulary must stop
    the loader with the shard's name (an embedding lookup would crash or read garbage)."""
    d = _copy(prepared, tmp_path)
    shard = d / "train_000000.bin"
    raw = bytearray(shard.read_bytes())
    rng = np.random.default_rng(0)
    raw[S.HEADER_BYTES + 1000:S.HEADER_BYTES + 1000 + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    shard.write_bytes(bytes(raw))
    loader = TokenLoader(d, "train", micro_batch=64, seq_len=32, shuffle=False)
    with pytest.raises(DataError, match=r"train_000000\.bin holds token id \d+ outside the vocabulary \(280"):
        for _ in range(10):
            loader.next_batch()
    with pytest.raises(DataError, match=r"train_000000\.bin holds token id"):
        list(iter_eval_batches(d, "train", micro_batch=64, seq_len=32, max_tokens=10_000))


def test_meta_json_corrupted_is_named(prepared, tmp_path):
    d = _copy(prepared, tmp_path)
    (d / "meta.json").write_text('{"format_version": 1, "splits": ')  # cut mid-write
    with pytest.raises(DataError, match=r"meta\.json is unreadable or not valid JSON"):
        P.load_meta(d)
    json.loads((Path(prepared.dir) / "meta.json").read_text())  # the original is untouched


# ---------------------------------------------------------------------------
# scalelab eval: NaN scores, failing result writes, read-only output


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory, one_thread):
    """A run dir with a tiny GPT (untrained: only the numbers' finiteness matters), one
    whose weights got 4 KB of random bytes, and a small multiple-choice task file."""
    import dataclasses

    import eval_helpers as H
    import torch

    from scalelab.train.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("evalfaults")
    tok = H.tokenizer()
    model = H.tiny_gpt(tok.vocab_size, seq_len=32)
    state = {"tokens_seen": 0, "model_config": dataclasses.asdict(model.cfg),
             "config": {"data": {"dir": str(H.data_dir())}}, "tokenizer_identity": tok.identity}
    save_checkpoint(tmp / "good", 10, model.state_dict(), None, state)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    # 4 KB of random bytes in the middle of a block weight every token passes through
    name = max((k for k in sd if k.startswith("blocks.0") and sd[k].ndim == 2), key=lambda k: sd[k].numel())
    raw = sd[name].view(-1).view(torch.uint8)
    mid = raw.numel() // 2 - 2048
    raw[mid:mid + 4096] = torch.from_numpy(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    assert not torch.isfinite(sd[name]).all()
    save_checkpoint(tmp / "corrupt", 10, sd, None, state)
    task = tmp / "my.jsonl"
    rows = [{"query": f"Question {i}: the answer is", "choices": [" yes", " no", " maybe"], "gold": i % 3}
            for i in range(6)]
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp, task


def test_nan_checkpoint_is_an_error_not_acc_1(eval_setup, capsys):
    tmp, task = eval_setup
    out = tmp / "out-corrupt"
    rc = cli.main(["eval", str(tmp / "corrupt"), "--tasks", str(task), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "model 'corrupt/step_000010'" in err and "model.safetensors" in err
    assert "non-finite log-likelihood" in err and "task 'my', document 0" in err
    assert not out.exists()  # no results.json with a made-up score
    rc = cli.main(["eval", str(tmp / "good"), "--tasks", str(task), "--out", str(tmp / "out-good"), "--quiet"])
    assert rc == 0 and json.loads((tmp / "out-good" / "results.json").read_text())["results"]["my"]["n"] == 6


def test_nan_in_lm_eval_names_the_shard(eval_setup):
    import eval_helpers as H

    from scalelab.eval.lm import evaluate_lm
    from scalelab.eval.loading import load_model_for_eval
    from scalelab.eval.scoring import EvalError

    tmp, _ = eval_setup
    model = load_model_for_eval(tmp / "corrupt", device="cpu")
    with pytest.raises(EvalError, match=r"model 'corrupt/.*non-finite log-likelihood .* shard .*val_000000\.bin"):
        evaluate_lm(model, H.data_dir(), max_tokens=2000, progress=False)
    (tmp / "doc.txt").write_text("A short document to score, with a few words in it.")
    with pytest.raises(EvalError, match=r"non-finite log-likelihood .* document 0 of '.*doc\.txt'"):
        evaluate_lm(model, str(tmp / "doc.txt"), progress=False)


def test_nan_in_hf_backend(eval_setup):
    import eval_helpers as H
    import torch

    from scalelab.eval import tasks as T
    from scalelab.eval.hf import load_hf
    from scalelab.eval.scoring import EvalError

    _, task = eval_setup
    model = load_hf(H.hf_llama_dir(), device="cpu")
    with torch.no_grad():
        model.model.model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")
    with pytest.raises(EvalError, match=r"model 'hf_llama' \(.*hf_llama\) gave a non-finite .* task 'my', document 0"):
        T.evaluate(model, [str(task)], progress=False)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 TypeError("write() argument must be bytes")], ids=["ENOSPC", "TypeError"])
def test_eval_results_write_failure_keeps_old_results(eval_setup, monkeypatch, capsys, exc):
    import scalelab.data.outdir as O

    tmp, task = eval_setup
    out = tmp / f"out-{type(exc).__name__}"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}\n')
    (out / "samples_my.jsonl").write_text("old\n")
    # results.md is the last file: the samples and results.json are written when it fails
    proxy = _OSProxy(budget=10**9, exc=exc)
    calls = []

    def fdopen(fd, *a, **kw):
        calls.append(fd)
        f = _FailingFile(os.fdopen(fd, *a, **kw), [0 if len(calls) == 3 else 10**9], exc)
        return f

    proxy.fdopen = fdopen
    monkeypatch.setattr(O, "os", proxy)
    rc = cli.main(["eval", str(tmp / "good"), "--tasks", str(task), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and len(calls) == 3
    if isinstance(exc, OSError):
        assert err.startswith(f"error: no space left on device for '{out}': ") and "MB" in err
        assert "--out DIR" in err
    else:
        assert err.startswith(f"error: could not write '{out}'") and "write() argument must be bytes" in err
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "samples_my.jsonl"]  # no temps
    assert (out / "results.json").read_text() == '{"old": true}\n' and (out / "samples_my.jsonl").read_text() == "old\n"


def test_eval_read_only_out_fails_before_loading(eval_setup, monkeypatch, capsys):
    import scalelab.eval.loading as L

    tmp, task = eval_setup

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the output location was checked")

    monkeypatch.setattr(L, "load_model_for_eval", no_load)
    ro = tmp / "ro"
    ro.mkdir(exist_ok=True)
    _readonly(monkeypatch, ro)
    rc = cli.main(["eval", str(tmp / "good"), "--tasks", str(task), "--out", str(ro / "eval"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith(f"error: --out '{ro / 'eval'}' is not writable") and "Read-only file system" in err
