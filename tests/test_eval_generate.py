"""Sampling: reproducible with a seed, KV cache == no cache, SAMPLES.md with its settings."""

import pytest

import eval_helpers as H

from scalelab.eval.generate import DEFAULT_PROMPTS, SampleSettings, read_prompts, sample_prompts, write_samples
from scalelab.eval.gpt_backend import GPTEvalModel
from scalelab.eval.scoring import EvalError


pytestmark = pytest.mark.usefixtures("one_thread")


def model():
    return GPTEvalModel(H.trained_gpt(), H.tokenizer(), device="cpu", name="tiny")


def test_sampling_is_reproducible_and_seed_dependent():
    em = model()
    s = SampleSettings(temperature=1.0, top_k=40, top_p=0.95, max_tokens=12, seed=7)
    a = sample_prompts(em, ["The match", "Shares"], s)
    b = sample_prompts(em, ["The match", "Shares"], s)
    assert [x["completion"] for x in a] == [x["completion"] for x in b]
    c = sample_prompts(em, ["The match", "Shares"], SampleSettings(temperature=1.0, top_k=40, top_p=0.95,
                                                                   max_tokens=12, seed=8))
    assert [x["completion"] for x in a] != [x["completion"] for x in c]
    # prompt i uses seed + i: a prompt's sample does not depend on the others
    alone = sample_prompts(em, ["The match"], s)
    assert alone[0]["completion"] == a[0]["completion"]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_kv_cache_equals_no_cache(temperature):
    em = model()
    ids = H.tokenizer().encode("The government said on Monday")
    # 40 new tokens with a 32-token window: the cached part and the sliding part both run
    with_cache = em.generate(ids, 40, temperature=temperature, top_k=50, seed=3, use_cache=True, stop_at_eot=False)
    without = em.generate(ids, 40, temperature=temperature, top_k=50, seed=3, use_cache=False, stop_at_eot=False)
    assert with_cache == without and len(with_cache) == 40


def test_samples_markdown_and_prompt_files(tmp_path):
    em = model()
    settings = SampleSettings(temperature=0.8, top_k=50, max_tokens=8, seed=0)
    path, samples = write_samples(em, tmp_path / "SAMPLES.md", None, settings)
    text = path.read_text()
    assert len(samples) == 5 == len(DEFAULT_PROMPTS)
    assert "| temperature | 0.8 |" in text and "| top_k | 50 |" in text and "| max_tokens | 8 |" in text
    for p in DEFAULT_PROMPTS:
        assert p in text
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond\\nline\n")
    assert read_prompts(tmp_path / "p.txt") == ["first prompt", "second\nline"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"nope": 1}\n')
    with pytest.raises(EvalError, match="p.jsonl:2"):
        read_prompts(tmp_path / "p.jsonl")
    with pytest.raises(EvalError, match="temperature"):
        sample_prompts(em, ["x"], SampleSettings(temperature=-1))


def test_hf_model_sampling_is_reproducible():
    from scalelab.eval.loading import load_model_for_eval

    em = load_model_for_eval(f"hf:{H.hf_llama_dir()}", device="cpu")
    s = SampleSettings(temperature=1.0, top_k=20, max_tokens=6, seed=1)
    a = sample_prompts(em, ["The match"], s)
    b = sample_prompts(em, ["The match"], s)
    assert a[0]["completion"] == b[0]["completion"] and a[0]["tokens"] == b[0]["tokens"]
    greedy_cache = em.generate(em.encode("The match"), 6, temperature=0, use_cache=True, stop_at_eot=False)
    greedy_nocache = em.generate(em.encode("The match"), 6, temperature=0, use_cache=False, stop_at_eot=False)
    assert greedy_cache == greedy_nocache
