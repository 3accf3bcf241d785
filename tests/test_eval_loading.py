"""Loading targets (run dir, checkpoint dir, HF dir), tokenizer checks, and the CLI."""
import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

import eval_helpers as H

from scalelab.errors import CheckpointError, DataError, ScalelabError
from scalelab.eval.loading import load_model_for_eval


pytestmark = pytest.mark.usefixtures("one_thread")


def copy_run(tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(H.run_dir(), dst)
    return dst


def edit_state(run: Path, **changes):
    ckpt = next((run / "checkpoints").glob("step_*"))
    p = ckpt / "state.json"
    state = json.loads(p.read_text())
    had_sum = state.pop("state_sha256", None) is not None
    for k, v in changes.items():
        state[k] = v
    if had_sum:  # a consistent edit (the checksum guards against damage, not against tests)
        from scalelab.train.checkpoint import _canonical_sha256

        state["state_sha256"] = _canonical_sha256(state)
    p.write_text(json.dumps(state))


def test_load_run_dir_matches_the_trained_model():
    em = load_model_for_eval(H.run_dir(), device="cpu")
    assert em.kind == "scalelab" and em.max_length == 32 and em.eot_id == H.tokenizer().eot_id
    assert em.name == "run/step_000200" and len(em.hash) == 16
    assert em.tokenizer.identity == H.tokenizer().identity
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        assert torch.allclose(em.model(x), H.trained_gpt()(x), atol=1e-6)
    assert load_model_for_eval(f"{H.run_dir()}@last", device="cpu").hash == em.hash
    ckpt = next((H.run_dir() / "checkpoints").glob("step_*"))
    assert load_model_for_eval(ckpt, device="cpu").hash == em.hash
    assert em.token_bytes()[em.eot_id] == 0


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    run = copy_run(tmp_path)
    edit_state(run, config={"data": {"dir": str(tmp_path / "gone")}})
    with pytest.raises(DataError, match="tokenizer of checkpoint .* is missing.*--tokenizer"):
        load_model_for_eval(run, device="cpu")
    # an explicit tokenizer with the right identity works
    em = load_model_for_eval(run, device="cpu", tokenizer=H.data_dir())
    assert em.tokenizer.identity == H.tokenizer().identity


def test_wrong_tokenizer_identity_is_refused(tmp_path):
    run = copy_run(tmp_path)
    edit_state(run, tokenizer_identity="bpe:0000000000000000")
    with pytest.raises(CheckpointError, match="wrong tokenizer"):
        load_model_for_eval(run, device="cpu")


def test_not_a_checkpoint_and_bad_suffix(tmp_path):
    with pytest.raises(CheckpointError, match="no scalelab checkpoint"):
        load_model_for_eval(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_for_eval(tmp_path / "nope", device="cpu")
    with pytest.raises(CheckpointError, match="'last' or 'best'"):
        load_model_for_eval(f"{H.run_dir()}@worst", device="cpu")


def test_hf_directory_is_detected_without_prefix():
    em = load_model_for_eval(H.hf_llama_dir(), device="cpu")
    assert em.kind == "hf" and em.name == "hf_llama" and em.hash
    tb = em.token_bytes()  # byte-level BPE: bytes per token known
    assert tb is not None and tb[em.eot_id] == 0
    text = "Shares rose on Monday."
    assert sum(int(tb[i]) for i in em.encode(text)) == len(text.encode())


def run_cli(argv):
    from scalelab.cli.eval import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_eval_sample_and_compare(tmp_path, capsys):
    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"query": "The match ended", "choices": [" in a draw", " purple"], "gold": 0}) + "\n"
        + json.dumps({"query": "Shares", "choices": [" rose", " fish"], "gold": 0}) + "\n")
    out = tmp_path / "ev"
    assert run_cli(["eval", str(H.run_dir()), "--tasks", str(tmp_path / "qa.jsonl"), "--lm", str(H.data_dir()),
                    "--sliding-window", "32", "--stride", "16", "--max-tokens", "512", "--out", str(out),
                    "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["results"]["qa"]["n"] == 2 and res["results"]["lm"]["tokens"] == 512
    assert res["results"]["lm"]["stride"] == 16 and "bpb_ci" in res["results"]["lm"]
    assert res["model"]["hash"] and (out / "samples_qa.jsonl").is_file() and (out / "results.md").is_file()
    capsys.readouterr()
    assert run_cli(["eval", "--compare", str(out), str(out), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["tasks"]["qa"]["acc"]["p_value"] > 0.99
    with pytest.raises(ScalelabError, match="did you mean 'hellaswag'"):
        run_cli(["eval", str(H.run_dir()), "--tasks", "hellaswg"])
    with pytest.raises(ScalelabError, match="nothing to evaluate"):
        run_cli(["eval", str(H.run_dir())])
    assert run_cli(["sample", str(H.run_dir()), "--max-tokens", "5", "--out", str(tmp_path / "S.md")]) == 0
    assert "| max_tokens | 5 |" in (tmp_path / "S.md").read_text()
