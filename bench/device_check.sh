#!/usr/bin/env bash
# GPU checks in one pass (~8 minutes on one H100): the GPU tests, parameter golf ours vs
# the baseline recipe, training MFU, FP8 vs bf16, and the ~100M pipeline (train, resume,
# eval) on CUDA.
# Prints the numbers; the small result files land in RESULTS (default runs/device-check).
#
#   bash bench/device_check.sh [RESULTS]
#
# Needs, relative to the repo root: data/bbcnews-sp1024 and data/bbcnews-gpt2 prepared
#   scalelab data configs/golf-cpu.yaml
#   scalelab data configs/100m.yaml data.source=builtin:bbcnews data.dir=data/bbcnews-gpt2 data.max_bytes=null data.val_fraction=0.05
# and a python3 with torch + CUDA; scalelab runs from src/ (PYTHONPATH), not installed.
# Optional: wheels in .whl/ (installed to /tmp/site) and extra packages in .devcarry/site.
# Every step has its own timeout, so one failure leaves the others' numbers.
set -uo pipefail
cd "$(dirname "$0")/.."
RES=${1:-runs/device-check}
WORK=${DEVICE_CHECK_WORK:-/tmp/device-check}
GOLF_CAP=${GOLF_CAP:-10}  # the corpus is 1.9M tokens: ~7 epochs in 10 s on an H100 (docs/bench-gpu.md)
PY=${PY:-python3}
mkdir -p "$RES" && rm -rf "$WORK" && mkdir -p "$WORK"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD/src:$PWD/tests:/tmp/site:$PWD/.devcarry/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 SCALELAB_NO_PROGRESS=1 WANDB_MODE=offline
T0=$(date +%s)
step() { echo; echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
nproc

step "GPU tests (tests/test_gpu.py)"
timeout 200 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$RES/gpu_tests.txt"

step "golf: ours (golf-8xh100) vs baseline recipe (golf-baseline-8xh100), 1 GPU, ${GOLF_CAP}s cap each"
# Same data (embedded corpus, sp1024), GPU, cap and batch for both; batch 65,536 tokens per
# step (the challenge's 524,288 is for 8 GPUs x 10 minutes).
timeout 330 $PY bench/bench_golf.py --ours configs/golf-8xh100.yaml --baseline configs/golf-baseline-8xh100.yaml \
  --cap "$GOLF_CAP" --out "$WORK/golf" \
  --set data.dir=data/bbcnews-sp1024 --set data.tokenizer=data/bbcnews-sp1024/tokenizer.model \
  --set train.parallel=auto --set train.batch_tokens=65536 --set train.log_every=20 2>&1 | tail -20
cp "$WORK/golf/bench_golf.md" "$WORK/golf/bench_golf.json" "$RES/" 2>/dev/null

step "training MFU (bench/bench_train.py, 124M, bf16, compile)"
timeout 150 $PY bench/bench_train.py --device cuda --compile --batch 32 --steps 20 --warmup 5 \
  --json "$RES/bench_train_gpu.json" 2>&1 | tail -8

step "FP8 vs bf16 step time (bench/bench_fp8.py), eager and compiled"
timeout 40 $PY bench/bench_fp8.py --steps 8 --rounds 2 2>&1 | tail -4
timeout 150 $PY bench/bench_fp8.py --steps 8 --rounds 2 --compile 2>&1 | tail -4

step "100M pipeline on CUDA: train 40 steps, resume to 50, eval"
RUN="$WORK/100m"
COMMON=(out_dir="$RUN" data.source=builtin:bbcnews data.dir=data/bbcnews-gpt2 data.max_bytes=null data.val_fraction=0.05
        train.batch_tokens=262144 train.warmup_steps=10 train.eval_every=20 train.eval_tokens=32768
        train.eval_tasks=[] train.ckpt_every=20 train.wandb=false train.tensorboard=false train.log_every=10
        train.progress=false)
timeout 150 $PY -m scalelab train configs/100m.yaml "${COMMON[@]}" train.max_steps=40 2>&1 | tail -6
timeout 90 $PY -m scalelab train configs/100m.yaml "${COMMON[@]}" train.max_steps=50 --resume 2>&1 | tail -4
cp "$RUN/metrics.jsonl" "$RES/100m_metrics.jsonl" 2>/dev/null
$PY - "$RUN/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tr = [r for r in rows if r.get("kind") == "train" and "tok_s" in r]
ev = [r for r in rows if r.get("kind") == "eval"]
for r in tr:
    print(f"step {r['step']:>3} loss {r['loss']:.3f} tok/s {r['tok_s']:,.0f} mfu {100 * r.get('mfu', 0):.1f}%")
for r in ev:
    print(f"eval step {r['step']}: val_loss {r['val_loss']:.4f} val_bpb {r.get('val_bpb', float('nan')):.4f}")
EOF
timeout 100 $PY -m scalelab eval "$RUN@best" --tasks hellaswag --limit 2000 --lm data/bbcnews-gpt2 \
  --out "$WORK/eval" 2>&1 | tail -12
cp "$WORK/eval/results.json" "$RES/100m_eval.json" 2>/dev/null
step "done"
