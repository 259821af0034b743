#!/bin/bash
# budget: 150
# decode helper, batch 6: skinny-GEMM GPU tests; fused SSM decode kernel (group tile vs per head); skinny GEMM
# vs cuBLAS at the decode shapes; TransMamba decode 32K x 16 new (skinny GEMM + fusions + group-tile SSM
# kernel) vs old (cuBLAS + per-head kernel = the docs' configuration); decode/graph GPU tests; sweep.
export PYTHONUNBUFFERED=1
T0=$(date +%s)
el() { echo "[$(( $(date +%s)-T0 ))s] $*"; }
el "skinny tests"
timeout 25 python3 -m pytest -q -p no:xdist -p no:cacheprovider tests/ops/test_skinny_gemm.py -m gpu -rA --tb=short > "$RESULT_DIR/pytest-skinny.txt" 2>&1
el "rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed|Error" "$RESULT_DIR/pytest-skinny.txt" | tail -8 | cut -c1-300
el "ssm decode kernel bench"
timeout 20 python3 benchmarks/ssm_decode_bench.py "$RESULT_DIR/ssm-decode-kernels.json" --batch 16 > "$RESULT_DIR/ssm-decode-kernels.log" 2>&1
el "rc=$?"; tail -6 "$RESULT_DIR/ssm-decode-kernels.log" | cut -c1-400
el "skinny vs cuBLAS (default config)"
timeout 25 python3 benchmarks/skinny_gemm_bench.py "$RESULT_DIR/skinny-base.json" --rows 16,1,64 --deadline-s 18 > "$RESULT_DIR/skinny-base.log" 2>&1
el "rc=$?"; grep -c '"us"' "$RESULT_DIR/skinny-base.log"
run_bench() {
  el "decode bench transmamba-400m 32K x 16, $1"
  DECODE_BENCH_MODELS=transmamba-400m timeout $2 python3 benchmarks/run.py --cases decode --decode-contexts 32768 --decode-batches 16 --decode-target-ms 40 --out "$RESULT_DIR/bench-$1" > "$RESULT_DIR/bench-$1.log" 2>&1
  el "rc=$?"; grep -E '"context"|max_rel' "$RESULT_DIR/bench-$1.log" | cut -c1-1000; grep -m3 -i "error" "$RESULT_DIR/bench-$1.log" | cut -c1-300
}
run_bench new 35
el "profile of one step (new)"
timeout 25 python3 benchmarks/decode_profile.py transmamba-400m 32768 16 > "$RESULT_DIR/profile-new.txt" 2>&1
el "rc=$?"; head -30 "$RESULT_DIR/profile-new.txt" | cut -c1-200
el "decode GPU tests"
timeout 50 python3 -m pytest -q -p no:xdist -p no:cacheprovider tests/inference/test_static_decode.py tests/ops/test_ssm_decode.py -m gpu -rA --tb=short > "$RESULT_DIR/pytest-decode.txt" 2>&1
el "rc=$?"; grep -E "PASSED|FAILED|ERROR|passed|failed" "$RESULT_DIR/pytest-decode.txt" | tail -20 | cut -c1-300
TRANSMAMBA_SKINNY_GEMM=0 TRANSMAMBA_SSM_DECODE_KERNEL=head run_bench old 25
left=$(( 142 - ($(date +%s)-T0) ))
el "sweep for ${left}s"
if [ $left -gt 8 ]; then
  timeout $((left+4)) python3 benchmarks/skinny_gemm_bench.py "$RESULT_DIR/skinny-sweep.json" --rows 16,1,64 --sweep --sweep-only --deadline-s $left > "$RESULT_DIR/skinny-sweep.log" 2>&1
  el "rc=$?"
fi
el done
