#!/usr/bin/env bash
# Quick start, step 1: set up .venv/ and run the main job on the embedded corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/scalelab train configs/cpu-tiny.yaml out_dir=runs/quickstart train.resume=true
