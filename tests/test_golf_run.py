"""The whole golf loop, as CI runs configs/golf-cpu.yaml: a tiny model, a 20-second cap."""
import json
from pathlib import Path

import pytest
import torch

from scalelab.cli import main as scalelab_main
from scalelab.golf.config import load_golf_config
from scalelab.golf.run import run_golf


def main(argv):
    """`scalelab golf ARGS` (the golf command's entry moved into scalelab/cli/)."""
    return scalelab_main(["golf", *argv])


REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "golf-cpu.yaml")
SHORT = [  # configs/golf-cpu.yaml, shortened: less data, a tiny model, a 20 s cap
    "data.max_docs=300", "data.vocab_size=512",
    "model.n_layer=2", "model.d_model=64", "model.n_head=2", "model.n_kv_head=1", "model.seq_len=64",
    "train.micro_batch=8", "train.batch_tokens=512", "train.warmup_steps=5", "train.max_time_s=20",
    "train.eval_tokens=2048", "train.threads=1", "train.progress=false",
    "train.ema_decay=0.9", "golf.sliding_stride=32",
]


@pytest.fixture(scope="module")
def golf_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("golf")
    overrides = SHORT + [f"data.dir={root / 'data'}", f"out_dir={root / 'run'}"]
    old = torch.get_num_threads()
    try:
        run, golf = load_golf_config(CONFIG, overrides)
        result = run_golf(run, golf, progress=False)
    finally:
        torch.set_num_threads(old)
    return root, overrides, result


def test_golf_loop_end_to_end(golf_run):
    root, _, result = golf_run
    out = root / "run"
    saved = json.loads((out / "golf.json").read_text())
    assert saved["val_bpb"] == result["val_bpb"]
    assert (out / "GOLF.md").read_text().startswith("# Golf run")
    pre, post = result["eval"]["pre"], result["eval"]["post"]
    # Trained: better than a uniform guess over the vocabulary.
    uniform = torch.log2(torch.tensor(512.0)).item() * post["tokens"] / post["bytes"]
    assert post["val_bpb"] < uniform
    # Quantization cannot make the model better, except by noise.
    assert post["val_bpb"] >= pre["val_bpb"] - 5e-3
    assert pre["tokens"] == post["tokens"] and pre["bytes"] == post["bytes"]
    assert result["roundtrip_bit_exact"] is True
    assert result["weights"] == "ema"  # golf.weights=auto with train.ema_decay set
    assert result["train"]["train_time_s"] >= 20 and result["train"]["steps"] > 0
    # The full validation split, and the sliding window scores every target once.
    meta = json.loads((root / "data" / "meta.json").read_text())
    val_tokens = meta["splits"]["val"]["tokens"]
    assert post["tokens"] == val_tokens - 1
    assert post["bytes"] == meta["splits"]["val"]["bytes"]  # exact: the UTF-8 bytes of the val documents
    sliding = result["eval"]["post_sliding"]
    assert sliding["tokens"] == val_tokens - 1 and sliding["stride"] == 32 and sliding["seconds"] > 0
    # Bytes: what the report says is what is on disk, and it fits.
    art = result["artifact"]
    on_disk = sum(p.stat().st_size for p in (out / "artifact").rglob("*") if p.is_file())
    assert art["total_bytes"] == on_disk == art["code_bytes"] + art["weights_bytes"]
    assert art["budget_ok"] and art["total_bytes"] <= art["budget_bytes"] == 1_000_000
    comp = result["compression"]
    assert comp["sizes"][comp["chosen"]] == art["weights_bytes"] == min(
        v for v in comp["sizes"].values() if isinstance(v, int))
    assert result["quant"]["schemes"]["tok_emb.weight"] == "int8"
    assert result["quant"]["schemes"]["blocks.0.mlp.w1.weight"] == "int6"


def test_budget_violation_is_an_error_with_the_numbers(golf_run, capsys):
    root, overrides, first = golf_run
    # Re-quantize the finished run (resume: no more training) under a budget it cannot meet.
    rc = main([CONFIG, *overrides, "golf.budget_bytes=20000", "golf.precheck=false", "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "over golf.budget_bytes=20,000" in err and f"{first['artifact']['code_bytes']:,}" in err
    saved = json.loads((root / "run" / "golf.json").read_text())
    assert saved["artifact"]["budget_ok"] is False and saved["artifact"]["budget_bytes"] == 20_000


def test_hopeless_model_is_refused_before_training(tmp_path, capsys):
    rc = main([CONFIG, "model.vocab_size=1024", "model.n_layer=12", "model.d_model=768", "model.n_head=12",
               f"out_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'none'}"])
    assert rc == 2
    assert "cannot fit golf.budget_bytes=1,000,000" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_json_output_is_the_json_alone_and_gptq_runs_end_to_end(golf_run, capsys):
    root, overrides, first = golf_run
    # --json: stdout parses as JSON (`| jq`); progress lines go to stderr.
    rc = main([CONFIG, *overrides, "golf.quant_method=gptq", "golf.gptq_calib_tokens=4096", "--resume", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0
    result = json.loads(out)
    assert "[golf]" in err and "[golf]" not in out
    assert result["quant"]["method"] == "gptq" and result["roundtrip_bit_exact"] is True
    methods = result["quant"]["methods"]  # the quantized (not fp16) tensors
    block_q = {k for k in methods if k.startswith("blocks.")}
    assert block_q and {k for k, v in methods.items() if v == "gptq"} == block_q
    assert result["quant"]["methods"]["tok_emb.weight"] == "rtn"  # tied with the head: no Hessian of its own
    assert result["eval"]["pre"]["val_bpb"] == first["eval"]["pre"]["val_bpb"]


def test_estimate_prints_the_size_without_training(tmp_path, capsys):
    rc = main([CONFIG, "model.vocab_size=1024", f"out_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'none'}",
               "--estimate", "--json"])
    est = json.loads(capsys.readouterr().out)
    assert rc == 0 and est["fits"] and est["budget_bytes"] == 1_000_000
    assert est["total_bytes"] == est["code_bytes"] + est["weights_bytes"]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    rc = main([CONFIG, "model.vocab_size=1024", "golf.budget_bytes=300000", f"data.dir={tmp_path / 'none'}",
               "--estimate"])
    assert rc == 2 and "OVER" in capsys.readouterr().out
