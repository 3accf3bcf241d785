"""Sampling from a model: a fixed prompt set rendered to SAMPLES.md with its settings.

Sampling uses the model's own `generate` (our GPT: KV cache, temperature / top-k /
top-p; Hugging Face models: `model.generate`). Prompt i is sampled with seed
`seed + i`, so one prompt's text does not depend on which others are in the set, and the
same settings reproduce the same file.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from scalelab.eval.scoring import EvalError

DEFAULT_PROMPTS = [
    "The government announced on Monday that",
    "In a surprise result, the match",
    "Shares in the company fell sharply after",
    "Scientists say the new technology could",
    "The film, which opened in cinemas last week,",
]


@dataclass
class SampleSettings:
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    max_tokens: int = 64
    seed: int = 0
    use_cache: bool = True

    def validate(self) -> None:
        if self.temperature < 0:
            raise EvalError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise EvalError(f"--top-k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise EvalError(f"--max-tokens must be >= 1, got {self.max_tokens}")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: .jsonl (field "prompt"), else one prompt per non-blank line
    (write a literal \\n for a newline inside a prompt)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalError(f"cannot read prompts file '{p}': {e.strerror or e}") from None
    prompts = []
    if p.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts.append(str(row["prompt"]))
            except (ValueError, KeyError, TypeError):
                raise EvalError(f"{p}:{i} must be a JSON object with a 'prompt' field") from None
    else:
        prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise EvalError(f"prompts file '{p}' holds no prompts")
    return prompts


def sample_prompts(model, prompts: list[str] | None = None, settings: SampleSettings | None = None) -> list[dict]:
    """One completion per prompt: dict(prompt, completion, tokens, seconds)."""
    settings = settings or SampleSettings()
    settings.validate()
    out = []
    for i, prompt in enumerate(prompts or DEFAULT_PROMPTS):
        ids = model.encode(prompt)
        t0 = time.perf_counter()
        new = model.generate(ids, settings.max_tokens, temperature=settings.temperature, top_k=settings.top_k,
                             top_p=settings.top_p, seed=settings.seed + i, use_cache=settings.use_cache)
        out.append({"prompt": prompt, "completion": model.decode(new), "tokens": len(new),
                    "seconds": round(time.perf_counter() - t0, 3)})
    return out


def render_samples_md(model, samples: list[dict], settings: SampleSettings) -> str:
    d = model.describe() if hasattr(model, "describe") else {"name": getattr(model, "name", "?")}
    s = asdict(settings)
    lines = [f"# Samples: {d.get('name')}", "",
             f"Model `{d.get('name')}` (hash `{d.get('hash')}`), {d.get('device', '')} {d.get('dtype', '')}.", "",
             "| setting | value |", "|---|---|"]
    for k in ("temperature", "top_k", "top_p", "max_tokens", "seed", "use_cache"):
        lines.append(f"| {k} | {s[k]} |")
    lines += ["", f"Prompt i uses seed {settings.seed} + i. Generation stops at the end-of-text token or after "
              f"{settings.max_tokens} tokens.", ""]
    for i, smp in enumerate(samples, 1):
        lines += [f"## {i}. {smp['prompt'].splitlines()[0][:80]}", "", "```text",
                  smp["prompt"] + smp["completion"], "```", "",
                  f"*{smp['tokens']} tokens in {smp['seconds']:.2f} s*", ""]
    return "\n".join(lines)


def write_samples(model, path: str | Path, prompts: list[str] | None = None,
                  settings: SampleSettings | None = None) -> tuple[Path, list[dict]]:
    from scalelab.io import atomic_write_text

    settings = settings or SampleSettings()
    samples = sample_prompts(model, prompts, settings)
    p = Path(path)
    atomic_write_text(p, render_samples_md(model, samples, settings))
    return p, samples
