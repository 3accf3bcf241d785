#!/usr/bin/env bash
# Quick start, step 1: set up .venv/ and run the main job on the embedded corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/scalelab study configs/study-cpu.yaml
