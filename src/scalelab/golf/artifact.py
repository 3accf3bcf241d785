"""The golf artifact: the code needed to run the model + its compressed weights.

What counts as code (`CODE_FILES`): exactly the source files a reader needs to rebuild
and run the model from the weights file -- the GPT definition, the weights format /
decompression / dequantization (`golf/codec.py`), and the package files those imports
touch. Nothing else of scalelab is imported on that path (a test loads a model from an
artifact directory holding only these files). The training, quantization, evaluation
and CLI code are not counted: like the tokenizer and the data, they are not needed to
run the model. (The public challenge counts its single train_gpt.py script, which holds
all of it; our count is the honest minimum for "run the model", and it is reported
next to the weights so both can be compared.)

Layout written by `write_artifact(dir, blob)`:

    <dir>/model.slgf                     the weights file (codec.py format)
    <dir>/code/scalelab/<CODE_FILES>     verbatim copies of the counted sources
    <dir>/tokenizer.<file>               only with golf.count_tokenizer=true

artifact bytes = sum of the sizes of these files = code bytes + weights bytes
(+ tokenizer bytes when counted).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from scalelab.errors import ScalelabError
from scalelab.io import atomic_write_bytes

WEIGHTS_FILE = "model.slgf"
CODE_DIR = "code"
TOKENIZER_PREFIX = "tokenizer."  # <dir>/tokenizer.<name>, only with golf.count_tokenizer
# Relative to the scalelab package directory.
CODE_FILES = (
    "__init__.py",
    "errors.py",
    "model/__init__.py",
    "model/gpt.py",
    "golf/__init__.py",
    "golf/codec.py",
)
# Read only format-version-2 weights files (chunks, brotli, row permutations, low-rank
# corrections): counted in the artifacts whose weights file is one, and only there.
EXT_CODE_FILES = ("golf/codec_ext.py",)


def code_files_for(weights: bytes | None = None, extended: bool | None = None) -> tuple[str, ...]:
    """The counted sources needed to read `weights` (or, without it, `extended` or not)."""
    if extended is None:
        extended = weights is not None and len(weights) > 4 and weights[4] == 2
    return CODE_FILES + EXT_CODE_FILES if extended else CODE_FILES


class BudgetError(ScalelabError):
    """The artifact does not fit in the byte budget."""


def package_dir() -> Path:
    import scalelab

    return Path(scalelab.__file__).resolve().parent


def code_files(extended: bool = False) -> list[dict]:
    """[{"path": "scalelab/model/gpt.py", "bytes": n}, ...] for the counted sources."""
    root = package_dir()
    return [{"path": f"scalelab/{rel}", "bytes": (root / rel).stat().st_size}
            for rel in code_files_for(extended=extended)]


def code_bytes(extended: bool = False) -> int:
    return sum(f["bytes"] for f in code_files(extended))


def write_artifact(directory: str | Path, weights: bytes, tokenizer: str | Path | None = None) -> dict:
    """Write the artifact directory (replacing an old one); return its byte accounting.
    `tokenizer`: a tokenizer file to include and count (golf.count_tokenizer)."""
    d = Path(directory)
    code = d / CODE_DIR
    if code.exists():
        shutil.rmtree(code)
    for old in d.glob(TOKENIZER_PREFIX + "*"):
        old.unlink()
    if tokenizer is not None:
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer, d / (TOKENIZER_PREFIX + Path(tokenizer).name))
    root = package_dir()
    for rel in code_files_for(weights):
        target = code / "scalelab" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, target)
    atomic_write_bytes(d / WEIGHTS_FILE, weights)
    return measure_artifact(d)


def measure_artifact(directory: str | Path) -> dict:
    """Bytes of an artifact directory as found on disk."""
    d = Path(directory)
    files = sorted(p for p in (d / CODE_DIR).rglob("*") if p.is_file())
    code = sum(p.stat().st_size for p in files)
    weights = (d / WEIGHTS_FILE).stat().st_size
    tok = sum(p.stat().st_size for p in d.glob(TOKENIZER_PREFIX + "*"))
    return {"dir": str(d), "weights_file": str(d / WEIGHTS_FILE),
            "code_files": [{"path": str(p.relative_to(d / CODE_DIR)), "bytes": p.stat().st_size} for p in files],
            "code_bytes": code, "weights_bytes": weights, "tokenizer_file_bytes": tok,
            "total_bytes": code + weights + tok}


def check_budget(total_bytes: int, budget_bytes: int, code: int, weights: int) -> None:
    """Raise BudgetError with the numbers when code + weights exceed the budget."""
    if total_bytes > budget_bytes:
        over = total_bytes - budget_bytes
        if code >= budget_bytes:  # no model size fixes this: say so instead of "shrink the model"
            raise BudgetError(
                f"the counted code alone is {code:,} bytes, over golf.budget_bytes={budget_bytes:,} before any "
                f"weights (artifact {total_bytes:,} bytes). Raise golf.budget_bytes above the code size "
                f"(at least {code + 1:,} plus the weights)")
        raise BudgetError(
            f"golf artifact is {total_bytes:,} bytes (code {code:,} + compressed weights {weights:,}), "
            f"{over:,} bytes ({100 * over / budget_bytes:.2f}%) over golf.budget_bytes={budget_bytes:,}. "
            f"Shrink the model (model.d_model / model.n_layer), quantize harder (golf.quant=int6 or int5, or "
            f"golf.quant_overrides), or raise golf.budget_bytes")
