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
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

run() {  # run SECONDS NAME CMD...: one step, never past SECONDS; its log in $OUT/tests.log
  local secs=$1 name=$2; shift 2   # (tests) or appended to $OUT/bench.log (benches)
  local log="$OUT/bench.log"; [ "$name" = tests ] && log="$OUT/tests.log"
  echo "== $name"; local t0=$SECONDS; local part; part=$(mktemp)
  timeout "$secs" "$@" >"$part" 2>&1; local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s"; tail -n "${TAIL:-4}" "$part"
  { echo "== $name (rc=$rc)"; cat "$part"; } >>"$log"; rm -f "$part"
}
STEPS=${STEPS:-tests bench}
bench="python3 -m crossent.cli bench --rounds 1 --warmup 2 --reps 6"
compiled="tests/contracts/test_compile_fused.py::test_inductor_fullgraph_cuda"
for step in $STEPS; do case $step in
  tests) TAIL=25 run 140 tests python3 -m pytest -q -p no:cacheprovider --timeout 120 \
           tests/gpu/test_gpu.py tests/contrastive/test_contrastive_triton.py tests/linear/test_linear_triton.py \
           "$compiled[linear_options]" "$compiled[linear_none]" \
           "$compiled[arcface_loss]" ${EXTRA_TESTS:-} ;;
  bench)
    TAIL=30 run 100 bench_linear $bench linear --preset llama3-8b --cases default \
      --impls crossent_torch crossent_triton torch_logits liger cce matmul_floor \
      --json "$OUT/linear_llama3.json"
    TAIL=30 run 40 bench_ce $bench ce --set device=cuda n=8192 c=50257 \
      --cases default bf16 --json "$OUT/ce_cuda.json"
    TAIL=30 run 60 bench_contrastive $bench contrastive --preset gpu --json "$OUT/contrastive_gpu.json"
    TAIL=20 run 40 bench_margin $bench margin --preset judged-cuda --impls crossent torch \
      --json "$OUT/margin_cuda.json" ;;
esac; done
