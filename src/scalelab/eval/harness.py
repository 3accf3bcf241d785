"""lm-evaluation-harness adapter: run any harness task on a scalelab checkpoint.

    python -m scalelab.eval.harness --model scalelab --model_args path=runs/tiny --tasks hellaswag
    # (the same arguments as `lm_eval`; this entry point registers "scalelab" first)

or from Python:

    import lm_eval
    from scalelab.eval.harness import register
    register()
    lm_eval.simple_evaluate(model="scalelab", model_args="path=runs/tiny", tasks=["arc_easy"])

model_args: path (a run dir, RUN@best, a checkpoint dir, or hf:DIR), device, dtype,
tokenizer (when the run's data dir is elsewhere), batch_size (packed rows per forward
pass; the harness's own --batch_size counts sequences and is ignored).
The plain `lm_eval` command does not know "scalelab" (the harness has no plug-in
mechanism for models), hence the module entry point.

The adapter implements the harness's three request types on top of `EvalModel`:
loglikelihood (prefix-shared, packed scoring), loglikelihood_rolling (the harness's
disjoint rolling windows, via its own window utilities) and generate_until (greedy or
sampled decoding with the model's generate, cut at the stop strings). lm_eval is
imported only here, lazily.
"""
from __future__ import annotations

import logging
import sys

_CLASS = None


def harness_device(device):
    """The harness's --device (default "cuda:0", even on a CPU-only machine), as its hf
    backend treats it: used when it exists here, else the best device here (a warning).
    A device given in model_args is the user's own choice and stays strictly checked."""
    from scalelab.errors import ConfigError
    from scalelab.train.hardware import resolve_device

    try:
        resolve_device(device)
        return device
    except ConfigError as exc:
        fallback = "cuda" if torch_cuda_available() else "cpu"
        logging.getLogger(__name__).warning("%s; using %s (set model_args device=... to choose)", exc, fallback)
        return fallback


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def register():
    """Define and register the "scalelab" model class with lm_eval (idempotent)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    try:
        from lm_eval.api.model import LM
        from lm_eval.api.registry import register_model
    except ImportError:
        from scalelab.eval.scoring import EvalError

        raise EvalError("the harness adapter needs lm-evaluation-harness: pip install lm_eval") from None

    @register_model("scalelab")
    class ScalelabLM(LM):
        """A scalelab checkpoint (or hf:DIR) as an lm_eval model."""

        def __init__(self, path: str | None = None, pretrained: str | None = None, device: str | None = None,
                     dtype: str | None = None, tokenizer: str | None = None, batch_size=None,
                     max_batch_size=None, model=None, **kwargs):
            super().__init__()
            from scalelab.eval.loading import load_model_for_eval

            if model is not None:  # an EvalModel already loaded
                self.em = model
            else:
                target = path or pretrained
                if not target:
                    raise ValueError("model_args needs path=RUN_DIR (or hf:DIR)")
                bs = int(batch_size) if batch_size not in (None, "auto") and str(batch_size).isdigit() else None
                self.em = load_model_for_eval(target, device=device, dtype=dtype, tokenizer=tokenizer, batch_size=bs)

        @classmethod
        def create_from_arg_obj(cls, arg_dict, additional_config=None):
            # model_args win over the harness's --device; its --batch_size (sequences, default 1)
            # is ignored: ours counts packed rows -- pass model_args batch_size=N to set it
            extra = {k: v for k, v in (additional_config or {}).items()
                     if v is not None and k not in arg_dict and k not in ("batch_size", "max_batch_size")}
            if "device" in extra:
                extra["device"] = harness_device(extra["device"])
            return cls(**arg_dict, **extra)

        @classmethod
        def create_from_arg_string(cls, arg_string, additional_config=None):
            from lm_eval import utils

            return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

        # -- properties the harness reads --------------------------------------
        @property
        def eot_token_id(self):
            return self.em.eot_id

        @property
        def prefix_token_id(self):
            return self.em.prefix_id

        @property
        def max_length(self):
            return self.em.max_length

        @property
        def max_gen_toks(self):
            return 256

        @property
        def batch_size(self):
            return self.em.batch_size

        @property
        def device(self):
            return self.em.device

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.em.tokenizer, "identity", self.em.name))

        def tok_encode(self, string: str, **kwargs):
            return self.em.encode_context(string)

        def tok_decode(self, tokens, **kwargs):
            return self.em.decode(tokens)

        # -- requests ---------------------------------------------------------------
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            pairs = [req.args for req in requests]
            out = self.em.loglikelihood([self.em.encode_pair(c, k) for c, k in pairs], progress=not disable_tqdm)
            for (c, k), ans in zip(pairs, out):
                self.cache_hook.add_partial("loglikelihood", (c, k), ans)
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            from lm_eval import utils

            windows, owner = [], []
            for i, req in enumerate(requests):
                (string,) = req.args
                for ctx, cont in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                        token_list=self.em.encode_context(string), prefix_token=self.em.prefix_id,
                        max_seq_len=self.em.max_length, context_len=1)):
                    windows.append((ctx, cont))
                    owner.append(i)
            scores = self.em.loglikelihood(windows, progress=not disable_tqdm) if windows else []
            out = [0.0] * len(requests)
            for i, (ll, _) in zip(owner, scores):
                out[i] += ll
            for req, ll in zip(requests, out):
                self.cache_hook.add_partial("loglikelihood_rolling", req.args, ll)
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            out = []
            eos = self.em.decode([self.em.eot_id])
            for req in requests:
                context, gen_kwargs = req.args
                kw = dict(gen_kwargs or {})
                until = kw.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                if eos and eos not in until:
                    until.append(eos)
                max_gen = int(kw.pop("max_gen_toks", self.max_gen_toks))
                sample = bool(kw.pop("do_sample", False))
                temperature = float(kw.pop("temperature", 1.0 if sample else 0.0) or 0.0) if sample else 0.0
                ids = self.em.encode_context(context)
                room = max(1, self.em.max_length - max_gen)
                ids = ids[-room:]
                new = self.em.generate(ids, max_gen, temperature=temperature, top_k=kw.get("top_k"),
                                       top_p=kw.get("top_p"), seed=int(kw.get("seed", 0)))
                text = self.em.decode(new)
                for stop in until:
                    if stop and stop in text:
                        text = text.split(stop)[0]
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out.append(text)
            return out

    _CLASS = ScalelabLM
    return _CLASS


def main(argv: list[str] | None = None) -> None:
    """`python -m scalelab.eval.harness ...`: lm_eval's command line with "scalelab" registered."""
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
