#!/usr/bin/env bash
# The GPU checks in one call (the device tool's machine: one H200, torch 2.11, Triton 3.6,
# no network). Correctness first (tests that skip without CUDA), then the GPU bench
# presets side by side with PyTorch and the peers carried as wheels in .whl/.
# Usage there: bash scripts/gpu_check.sh   (writes logs and JSON under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

run() {  # run SECONDS NAME CMD...: one step, its log in $OUT/NAME.log, never past SECONDS
  local secs=$1 name=$2; shift 2
  echo "== $name"; local t0=$SECONDS
  timeout "$secs" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s"; tail -n "${TAIL:-4}" "$OUT/$name.log"
}
STEPS=${STEPS:-tests bench}
bench="python3 -m crossent.cli bench --rounds 1 --warmup 2 --reps 10"
for step in $STEPS; do case $step in
  tests) TAIL=25 run 200 tests python3 -m pytest -q -p no:cacheprovider --timeout 180 \
           tests/test_gpu.py tests/test_contrastive_triton.py tests/test_linear_triton.py \
           ${EXTRA_TESTS:-} ;;
  bench)
    TAIL=30 run 110 bench_linear $bench linear --preset llama3-8b --cases default \
      --impls crossent torch_logits liger cce --json "$OUT/linear_llama3.json"
    TAIL=30 run 70 bench_linear_gemma $bench linear --preset gemma2-2b \
      --impls crossent torch_logits liger cce --json "$OUT/linear_gemma2.json"
    TAIL=30 run 60 bench_ce $bench ce --set device=cuda n=8192 c=50257 \
      --cases default bf16 --json "$OUT/ce_cuda.json"
    TAIL=30 run 90 bench_contrastive $bench contrastive --preset gpu --json "$OUT/contrastive_gpu.json"
    TAIL=20 run 50 bench_margin $bench margin --preset judged-cuda --json "$OUT/margin_cuda.json" ;;
esac; done
