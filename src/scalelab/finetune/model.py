"""The fine-tuned model: load any HF causal LM, add LoRA, parallelize, compute the SFT loss,
and write the result with `save_pretrained`.

`SFTModel` wraps the HF model so that DDP / FSDP2 see one forward: it runs the decoder with
per-example position ids and the block-diagonal mask, then the output head only at
positions that have a label (prompt and padding positions cost no vocabulary projection),
and returns the summed cross-entropy. A self-check at build time compares this path with
the model's own `forward(...).logits` on a packed row against separate rows; a model where
the head cannot be split off falls back to full logits, one whose attention ignores the
mask is refused with packing on.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scalelab.errors import ConfigError, DataError


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "fp32" or (name == "auto" and device.type != "cuda"):
        return torch.float32
    return torch.bfloat16


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.hf '{path}': no tokenizer could be loaded ({str(e).splitlines()[0][:200]}); "
                          "give a Hugging Face model directory with tokenizer files, or a Hub id when online") from None
    return tok


def resolve_attention(name: str | None, device: torch.device) -> str | None:
    """model.attn_implementation as transformers takes it (None: transformers' pick)."""
    from scalelab.finetune.attention import NAME, register

    if name == "auto":
        name = NAME if device.type == "cpu" else None
    if name == NAME:
        register()
    return name


def load_hf_model(cfg, path: str, load_dtype: torch.dtype, attn_implementation: str | None = None):
    """The HF causal LM named by model.hf (cfg: FTModelConfig), in `load_dtype`, with LoRA
    when cfg.lora (adapter weights fp32), activation checkpointing when asked."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": load_dtype, "trust_remote_code": cfg.trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        if attn_implementation and "attn" in str(e).lower():
            raise ConfigError(f"model.attn_implementation={cfg.attn_implementation}: '{path}' does not support it "
                              f"({str(e).splitlines()[0][:160]}); use sdpa or eager") from None
        raise ConfigError(f"model.hf '{path}' could not be loaded as a causal LM ({str(e).splitlines()[0][:200]}); "
                          "give a Hugging Face model directory (config.json + weights), a .gguf file, or a Hub id "
                          "when online") from None
    model.config.use_cache = False
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        missing = [t for t in cfg.lora_target_modules if t not in names]
        if missing:
            raise ConfigError(f"model.lora_target_modules {missing} are not linear layers of '{path}'; "
                              f"its linear layers are named {sorted(names)}")
        lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
        import warnings

        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question; not the user's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = get_peft_model(model, lcfg)  # adapters in fp32 (peft's autocast_adapter_dtype)
    return model


def hf_core(model: nn.Module) -> nn.Module:
    """The transformers PreTrainedModel inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF causal LM (the units FSDP shards and compile wraps)."""
    core = hf_core(model)
    decoder = core.get_decoder() if hasattr(core, "get_decoder") else getattr(core, core.base_model_prefix, None)
    for attr in ("layers", "h", "blocks", "layer"):
        layers = getattr(decoder, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return list(layers)
    raise ConfigError(f"cannot find the decoder layers of {type(core).__name__} (looked for layers / h / blocks); "
                      "use train.parallel=ddp for this model")


def hf_attn(lm: nn.Module) -> str | None:
    return getattr(hf_core(lm).config, "_attn_implementation", None)


class SFTModel(nn.Module):
    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.split_head = True  # decoder + head at labelled positions; False: full logits
        core = hf_core(lm)
        self._softcap = getattr(core.config, "final_logit_softcapping", None)
        self._scale = getattr(core.config, "logit_scale", None)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        logits = hf_core(self.lm).get_output_embeddings()(h)
        if self._scale:
            logits = logits * self._scale
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def forward(self, input_ids, position_ids, attention_mask=None, labels=None, return_logits=False):
        """Summed cross-entropy over labelled positions (and their count), or the logits."""
        kw = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask}
        if return_logits or not self.split_head:
            logits = self.lm(**kw, use_cache=False).logits
            if return_logits:
                return logits
            keep = labels != -100
            return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")
        core = hf_core(self.lm)
        h = core.get_decoder()(**kw, use_cache=False).last_hidden_state
        keep = labels != -100
        logits = self._head(h[keep])
        return F.cross_entropy(logits.float(), labels[keep], reduction="sum")

    @torch.no_grad()
    def logits_split(self, input_ids, position_ids, attention_mask=None):
        core = hf_core(self.lm)
        h = core.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
        return self._head(h)


@torch.no_grad()
def self_check(model: SFTModel, device: torch.device, packing: bool, vocab: int, block_mask: bool = True,
               tol: float = 1e-3) -> dict:
    """Packed row == separate rows, and the split head == the model's own logits (on two
    random sequences, on `device`, in eval mode: dropout off). block_mask=False checks
    position ids alone (flash-attention varlen paths derive the boundaries from them)."""
    from scalelab.finetune.data import Example, collate

    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(3, max(4, vocab), (n,), generator=g) for n in (9, 6))
    exs = [Example(a.numpy(), torch.ones(9, dtype=torch.bool).numpy()),
           Example(b.numpy(), torch.ones(6, dtype=torch.bool).numpy())]
    to = {k: v.to(device) for k, v in collate([exs], block_mask=block_mask).items() if torch.is_tensor(v)}
    packed = model(to["input_ids"], to["position_ids"], to.get("attention_mask"), return_logits=True)[0].float()
    ref = []
    for ex in exs:
        one = {k: v.to(device) for k, v in collate([[ex]], block_mask=block_mask).items() if torch.is_tensor(v)}
        ref.append(model(one["input_ids"], one["position_ids"], one.get("attention_mask"),
                         return_logits=True)[0].float())
    ref = torch.cat(ref)
    scale = ref.abs().max().clamp_min(1.0)
    packed_ok = bool(((packed - ref).abs().max() / scale) < tol)
    split = model.logits_split(to["input_ids"], to["position_ids"], to.get("attention_mask"))[0].float()
    model.split_head = bool(((split - packed).abs().max() / scale) < tol)
    model.train(was)
    if packing and not packed_ok:
        raise ConfigError("this model's attention ignores the block-diagonal mask (a packed row differs from "
                          "separate rows), so packing would let examples attend to each other; set "
                          "data.packing=false or another model.attn_implementation (sdpa, eager)")
    return {"packed_matches_separate": packed_ok, "split_head": model.split_head, "block_mask": block_mask}


def parallelize(model: SFTModel, mode: str, device: torch.device, param_dtype: torch.dtype, *,
                compile: bool = False, reshard_after_forward: bool = True, bucket_mb: float = 25.0) -> nn.Module:
    """torch.compile on each decoder layer, then DDP or FSDP2 (`fully_shard` on each decoder
    layer, then the root); mode from train/distributed.resolve_parallel."""
    layers = decoder_layers(model.lm)
    if compile:
        for layer in layers:
            layer.compile()
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, bucket_cap_mb=bucket_mb)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        for layer in layers:
            fully_shard(layer, mp_policy=mp, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mp_policy=mp)
    return model


# ---------------------------------------------------------------------------- output


def merged_state_dict(full_sd: dict[str, torch.Tensor], lora_scaling: float | None) -> dict[str, torch.Tensor]:
    """A peft model's full state dict as the plain model's: W + scaling * B @ A for each
    adapted layer, `base_model.model.` and `.base_layer` dropped (no adapter keys left)."""
    out = {}
    for key, value in full_sd.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix("base_model.model.")
        if ".base_layer." in name:
            stem = key.rsplit(".base_layer.", 1)[0]
            name = name.replace(".base_layer.", ".")
            if key.endswith(".weight") and f"{stem}.lora_A.default.weight" in full_sd:
                a = full_sd[f"{stem}.lora_A.default.weight"].float()
                b = full_sd[f"{stem}.lora_B.default.weight"].float()
                value = (value.float() + lora_scaling * (b @ a)).to(value.dtype)
        out[name] = value
    return out


def adapter_state_dict(full_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in full_sd.items() if ".lora_" in k}


def save_output(lm: nn.Module, full_sd: dict[str, torch.Tensor], tokenizer, out: Path, *, merge: bool,
                dtype: torch.dtype) -> Path:
    """Write the fine-tuned model (merged, or the LoRA adapter) + tokenizer into `out`,
    via a temp dir renamed into place; an existing `out` is never replaced."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"output dir '{out}' already exists and is never overwritten; set output.dir=... "
                          "to another path or move it away")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    is_peft = hasattr(lm, "peft_config")
    try:
        if is_peft and not merge:
            lm.save_pretrained(tmp, state_dict=adapter_state_dict(full_sd))
        else:
            scaling = None
            core = hf_core(lm)
            if is_peft:
                pc = lm.peft_config["default"]
                scaling = pc.lora_alpha / (pc.r ** 0.5 if pc.use_rslora else pc.r)
                sd = merged_state_dict(full_sd, scaling)
            else:
                sd = dict(full_sd)
            sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
            _save_plain(core, sd, tmp, dtype)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_plain(core: nn.Module, sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """save_pretrained of a fresh model of core's class and config holding `sd` (no peft
    wrappers, no gradient-checkpointing flags, use_cache back on)."""
    config = core.config.__class__.from_dict(core.config.to_dict())
    config.use_cache = True
    config.dtype = dtype
    with torch.device("meta"):
        fresh = type(core)(config)
    missing, unexpected = fresh.load_state_dict(sd, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise DataError(f"the fine-tuned weights do not fit {type(core).__name__} (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")
    if tied:
        fresh.tie_weights()
    fresh.save_pretrained(path)
    if getattr(core, "generation_config", None) is not None:
        core.generation_config.save_pretrained(path)


def verify_output(out: Path, model: SFTModel, device: torch.device, merged: bool, tol: float = 2e-3) -> float:
    """Reload the written model with transformers (peft for an adapter) and compare its
    logits with the trained model's on a fixed sequence; returns the max relative error."""
    from transformers import AutoModelForCausalLM

    lm = model.lm
    vocab = hf_core(lm).config.vocab_size
    ids = torch.randint(3, vocab, (1, 12), generator=torch.Generator().manual_seed(1)).to(device)
    pos = torch.arange(12, device=device)[None]
    was = model.training
    model.eval()
    with torch.no_grad():
        ref = model(ids, pos, None, return_logits=True).float()
        if merged:
            loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        else:
            from peft import PeftModel

            import warnings

            base = hf_core(lm).config._name_or_path
            with warnings.catch_warnings():  # as in load_hf_model: peft's deprecated question to transformers
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), out)
        loaded.to(device).eval()
        got = loaded(input_ids=ids, position_ids=pos).logits.float()
    model.train(was)
    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1.0))
    if err > tol:
        raise DataError(f"the saved model '{out}' does not reproduce the trained model's logits (relative error "
                        f"{err:.2e}); it was kept for inspection, please report this")
    return err
