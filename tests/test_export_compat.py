"""Exports written with transformers 5 must load the same under transformers 4.x
(pyproject: transformers>=4.40). The 4.x loading code path is reproduced here from what
it reads: LlamaConfig takes RoPE's base from the top-level `rope_theta` (default 10000;
`rope_parameters` is a 5.x key it ignores), its tokenizers build their named special
tokens from a dict `extra_special_tokens`, and its Llama tokenizer adds a BOS unless
`add_bos_token` is false in tokenizer_config.json. (Checked against a real
transformers 4.57.1 install too: identical ids and logits; see docs/FORMATS.md.)"""
import json
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_export import _ours, _train  # noqa: E402  (same tiny runs as test_export.py)

THETA = 500000.0


@pytest.fixture(scope="module")
def sp_theta_run(tmp_path_factory):
    return _train(tmp_path_factory, "sp_theta", "data.tokenizer=sentencepiece", "data.vocab_size=512",
                  f"model.rope_theta={THETA}")


def load_model_like_4x(out):
    """LlamaForCausalLM built from config.json as transformers 4.x reads it."""
    from safetensors.torch import load_file

    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("rope_parameters", None)  # unknown to 4.x
    cfg.setdefault("rope_theta", 10000.0)  # 4.x LlamaConfig's default
    for key in ("architectures", "transformers_version", "model_type", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    sd = load_file(str(out / "model.safetensors"))
    model.load_state_dict(sd, strict=False)
    if cfg.get("tie_word_embeddings"):
        model.tie_weights()
    return model.eval(), cfg


def test_export_reads_the_same_under_transformers_4(sp_theta_run, tmp_path, caplog):
    from scalelab.export import export_hf
    from scalelab.export_compat import LOADER_KEYS

    run_dir, _ = sp_theta_run
    out = tmp_path / "hf"
    export_hf(run_dir, out)
    model, tok = _ours(run_dir)
    assert model.cfg.rope_theta == THETA
    hf4, cfg = load_model_like_4x(out)
    assert cfg["rope_theta"] == THETA
    x = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x).float() - hf4(x).logits.float()).abs().max().item() <= 1e-4

    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    assert isinstance(tcfg.get("extra_special_tokens", {}), dict)  # 4.x: .keys() on it
    assert not set(LOADER_KEYS) & set(tcfg)  # how it was loaded at export time is no tokenizer setting
    assert tcfg["add_bos_token"] is False and tcfg["add_eos_token"] is False and tcfg["legacy"] is False
    assert tcfg["tokenizer_class"] in ("LlamaTokenizer", "PreTrainedTokenizerFast")  # names 4.x resolves
    # 5.x reads the rewritten keys to the same tokenizer: the EOT piece still special, nothing added
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.convert_ids_to_tokens(tok.eot_id) in hf_tok.all_special_tokens
    text = "The match ended in a draw."
    assert hf_tok.encode(text) == tok.encode(text)
    # the BOS/EOT convention: EOT is the bos token (documents started with it), not added
    assert hf_tok.bos_token_id == tok.eot_id == hf_tok.eos_token_id
    assert f"id {tok.eot_id}" in (out / "README.md").read_text().split("## Tokenization")[1]

    gen = json.loads((out / "generation_config.json").read_text())
    assert "max_length" not in gen and gen["eos_token_id"] == tok.eot_id
    hf5 = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    transformers.utils.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            ids = torch.tensor([[tok.eot_id] + tok.encode(text)])
            assert hf5.generate(ids, max_new_tokens=40, do_sample=False).shape[1] == ids.shape[1] + 40
    finally:
        transformers.utils.logging.disable_propagation()
    assert "max_length" not in caplog.text


def test_portable_tokenizer_config_rewrites_only_what_4x_misreads(tmp_path):
    from scalelab.export_compat import portable_tokenizer_config

    p = tmp_path / "tokenizer_config.json"
    p.write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "extra_special_tokens": ["<a>", "<b>"],
                             "is_local": True, "local_files_only": False, "eos_token": "<a>"}))
    out = portable_tokenizer_config(p, add_bos_token=False)
    assert out == {"tokenizer_class": "PreTrainedTokenizerFast", "additional_special_tokens": ["<a>", "<b>"],
                   "eos_token": "<a>", "add_bos_token": False}
    assert json.loads(p.read_text()) == out
    p.write_text(json.dumps({"extra_special_tokens": {"image_token": "<img>"}}))  # 4.x's own dict form stays
    assert portable_tokenizer_config(p) == {"extra_special_tokens": {"image_token": "<img>"}}
