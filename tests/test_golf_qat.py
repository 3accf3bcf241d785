"""Quantization-aware training (golf/qat.py, golf.qat_frac): the forward pass sees exactly
the values post-training quantization will store, gradients pass straight through, and
the trainer switches it on late in the run through TrainHooks.before_step."""
import copy

import torch

from scalelab.config import load_config
from scalelab.golf.qat import disable, enable, fake_quant, is_enabled, qat_hook
from scalelab.golf.quantize import QuantSpec, quantize_rows, quantize_state_dict
from scalelab.golf.codec import dequantize
from scalelab.model.gpt import GPT, GPTConfig
from scalelab.train.hooks import TrainHooks
from scalelab.train.trainer import train

SPEC = QuantSpec(default="int5", overrides={"tok_emb.weight": "int8"}, clip="mse", keep_float_numel=256)


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=128, n_layer=2, d_model=32, n_head=2, n_kv_head=1, seq_len=16, mlp="relu2",
                         tie_embeddings=True))


def test_fake_quant_is_the_stored_value_forward_and_the_identity_backward():
    torch.manual_seed(1)
    w = (torch.randn(24, 40) * torch.linspace(0.1, 2.0, 24)[:, None]).requires_grad_(True)
    for bits in (8, 6, 4):
        q, scale = quantize_rows(w.detach(), bits, "mse")
        out = fake_quant(w, bits, "mse")
        assert torch.equal(out.detach(), dequantize(q, scale, bits, list(w.shape)))
        assert not torch.equal(out.detach(), w.detach())
        g = torch.randn_like(w)
        (grad,) = torch.autograd.grad((out * g).sum(), w)
        assert torch.equal(grad, g)


def test_enabled_model_computes_with_the_quantized_weights_and_keeps_its_state_dict():
    model = _model()
    idx = torch.randint(0, 128, (2, 16))
    keys = list(model.state_dict())
    before = model(idx)
    switched = enable(model, SPEC)
    assert "tok_emb" in switched and "lm_head" in switched and "blocks.0.attn.wqkv" in switched
    assert is_enabled(model) and list(model.state_dict()) == keys
    out = model(idx)
    # The same model with its integer-scheme weights replaced by their post-training values.
    ref = copy.deepcopy(model)
    disable(ref)
    deq = quantize_state_dict(model.state_dict(), SPEC).dequantized()
    ref.load_state_dict({k: (deq[k] if SPEC.scheme_for(k, v.numel()).startswith("int") else v)
                         for k, v in model.state_dict().items()})
    torch.testing.assert_close(out, ref(idx), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, before, atol=1e-4)
    disable(model)
    assert not is_enabled(model)
    torch.testing.assert_close(model(idx), before, rtol=0, atol=0)


TINY = [
    "data.source=builtin:bbcnews", "data.max_docs=150", "data.vocab_size=384",
    "model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.seq_len=32",
    "train.micro_batch=4", "train.batch_tokens=256", "train.warmup_steps=2", "train.max_steps=10",
    "train.max_time_s=100000", "train.eval_every=10", "train.eval_tokens=512", "train.ckpt_every=10",
    "train.log_every=5", "train.threads=1", "train.progress=false", "train.tensorboard=false",
]


def test_the_trainer_switches_qat_on_for_the_last_fraction_of_the_steps(tmp_path):
    cfg = load_config(None, TINY + [f"data.dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}"])
    seen = []
    inner = qat_hook(SPEC, 0.25)

    def before_step(model, step, progress):
        inner(model, step, progress)
        seen.append((step, progress, is_enabled(model)))

    train(cfg, hooks=TrainHooks(before_step=before_step))
    assert [s for s, _, _ in seen] == list(range(10))
    progress = [p for _, p, _ in seen]
    assert progress == sorted(progress) and progress[-1] < 1.0
    on = [s for s, p, e in seen if e]
    assert on and on == [s for s, p, _ in seen if p >= 0.75] and on[-1] == 9 and on[0] > 0
