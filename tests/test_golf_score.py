"""The golf scoring evaluation: sliding window on by default, score-first TTT, the eval cap."""
import json
from pathlib import Path

import pytest
import torch

from scalelab.golf.config import GolfConfig, load_golf_config
from scalelab.golf.run import run_golf

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "golf-cpu-regime.yaml")
TINY = ["data.source=builtin:bbcnews", "data.max_docs=300", "data.vocab_size=320", "model.d_model=16", "model.n_head=2",
        "train.micro_batch=4", "train.batch_tokens=512", "train.warmup_steps=5", "train.max_steps=30",
        "train.max_time_s=600", "train.threads=1", "train.progress=false", "golf.budget_bytes=200000"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("golf-score")
    base = TINY + [f"data.dir={root / 'data'}", f"out_dir={root / 'run'}"]
    old = torch.get_num_threads()
    try:
        run, golf = load_golf_config(CONFIG, base + ["golf.ttt=lora", "golf.ttt_lr=3e-3", "golf.eval_cap_s=1e-6"])
        with_ttt = run_golf(run, golf, progress=False)
        files = json.loads((root / "run" / "golf.json").read_text()), (root / "run" / "GOLF.md").read_text()
        run, golf = load_golf_config(CONFIG, base + ["train.resume=true", "golf.sliding_stride=null"])
        plain = run_golf(run, golf, progress=False)
    finally:
        torch.set_num_threads(old)
    return files, with_ttt, plain


def test_sliding_window_is_on_by_default_and_capped_at_seq_len():
    assert GolfConfig().sliding_stride == 64 and GolfConfig().eval_cap_s == 600.0
    run, golf = load_golf_config(CONFIG, TINY + ["model.seq_len=32"])  # 64 > seq_len: accepted, capped
    assert golf.sliding_stride == 64


def test_ttt_is_the_score_and_over_the_cap_is_flagged(scored):
    (on_disk, md), r, _ = scored
    e = r["eval"]
    assert e["post_sliding"]["stride"] == 64 and e["post_ttt"]["stride"] == 64
    assert e["post_ttt"]["tokens"] == e["post"]["tokens"] and e["post_ttt"]["bytes"] == e["post"]["bytes"]
    assert e["post_ttt"]["mode"] == "lora" and e["post_ttt"]["n_chunks"] >= 1
    assert e["score"] == {"method": "ttt", "val_bpb": e["post_ttt"]["val_bpb"], "seconds": e["post_ttt"]["seconds"],
                          "cap_s": 1e-6, "over_cap": True}
    assert r["score_bpb"] == r["val_bpb_ttt"] and r["eval_over_cap"] is True
    assert on_disk["eval_over_cap"] is True and "OVER" in md


def test_without_sliding_or_ttt_the_plain_windows_score_within_the_cap(scored):
    _, with_ttt, r = scored
    assert "post_sliding" not in r["eval"] and "post_ttt" not in r["eval"]
    assert r["eval"]["score"]["method"] == "windows" and r["eval"]["score"]["over_cap"] is False
    assert r["score_bpb"] == r["val_bpb"] == pytest.approx(with_ttt["val_bpb"], abs=0)  # same weights (resume)


@pytest.mark.parametrize("bad,word", [("golf.ttt=sgd", "golf.ttt"), ("golf.eval_cap_s=0", "golf.eval_cap_s"),
                                      ("golf.ttt_rank=0", "golf.ttt_rank")])
def test_bad_ttt_settings_are_refused(bad, word):
    from scalelab.errors import ConfigError

    with pytest.raises(ConfigError, match=word):
        load_golf_config(CONFIG, TINY + [bad])


def test_the_cpu_default_recipe_loads_with_its_stack():
    run, golf = load_golf_config(str(REPO / "configs" / "golf-cpu-best.yaml"))
    assert (run.data.vocab_size, run.model.d_model, run.train.optimizer, run.train.muon_ns) == \
        (1024, 24, "muon", "polar_express")
    assert (golf.ttt, golf.sliding_stride, golf.eval_cap_s, golf.budget_bytes) == ("full", 64, 180.0, 72_000)
    base, bgolf = load_golf_config(str(REPO / "configs" / "golf-baseline-regime.yaml"))
    assert (bgolf.budget_bytes, base.train.max_time_s) == (golf.budget_bytes, run.train.max_time_s)  # one setting
