#!/bin/bash
# budget: 200
# decode helper, batch 7 (last): decode GPU tests; in-situ A/B of TransMamba decode at 32K x 16 (skinny GEMM
# with SSM kernel head / split / group, with and without PDL, and the old path: cuBLAS + head kernel); the
# full decode case with the fastest variant; all 4 models at 32K x 16 on the old path; SSM micro-bench; profile.
export PYTHONUNBUFFERED=1
T0=$(date +%s)
el() { echo "[$(( $(date +%s)-T0 ))s] $*"; }
el "decode GPU tests"
timeout 45 python3 -m pytest -q -p no:xdist -p no:cacheprovider tests/ops/test_skinny_gemm.py tests/ops/test_ssm_decode.py tests/ops/test_decode_attention.py tests/inference/test_static_decode.py -m gpu -rA --tb=short > "$RESULT_DIR/pytest-decode-gpu.txt" 2>&1
el "rc=$?"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$RESULT_DIR/pytest-decode-gpu.txt" | tail -32 | cut -c1-250
ab() {  # name timeout
  el "A/B transmamba-400m 32K x 16: $1 (skinny=${TRANSMAMBA_SKINNY_GEMM:-default} ssm=${TRANSMAMBA_SSM_DECODE_KERNEL:-default} pdl=${TRANSMAMBA_DECODE_PDL:-0})"
  DECODE_BENCH_MODELS=transmamba-400m timeout $2 python3 benchmarks/run.py --cases decode --decode-contexts 32768 --decode-batches 16 --decode-target-ms 40 --out "$RESULT_DIR/ab-$1" > "$RESULT_DIR/ab-$1.log" 2>&1
  el "rc=$?"; python3 -c "
import json
for r in json.load(open('$RESULT_DIR/ab-$1/decode.json'))['rows']:
    print({k: (round(v,4) if isinstance(v,float) else v) for k,v in r.items() if k in ('check','max_rel_diff','graph_ms','graph_tokens_per_s','graph_frac_of_bound','bound_ms','static_ms','error')})" 2>&1 | tail -3
}
TRANSMAMBA_SSM_DECODE_KERNEL=head ab head 25
TRANSMAMBA_SSM_DECODE_KERNEL=head TRANSMAMBA_DECODE_PDL=1 ab head-pdl 20
TRANSMAMBA_SSM_DECODE_KERNEL=split ab split 18
TRANSMAMBA_SSM_DECODE_KERNEL=split TRANSMAMBA_DECODE_PDL=1 ab split-pdl 18
TRANSMAMBA_SKINNY_GEMM=0 TRANSMAMBA_SSM_DECODE_KERNEL=head ab old 18
TRANSMAMBA_SSM_DECODE_KERNEL=group ab group 18
best=$(python3 -c "
import json
best = ('head', 1e9)
for k in ('head', 'head-pdl', 'split', 'split-pdl', 'group'):
    try:
        rows = [r for r in json.load(open('$RESULT_DIR/ab-%s/decode.json' % k))['rows'] if 'graph_ms' in r]
        if rows and rows[0]['graph_ms'] < best[1]: best = (k, rows[0]['graph_ms'])
    except Exception: pass
print(best[0])")
el "fastest variant: $best"
echo "$best" > "$RESULT_DIR/best-variant.txt"
export TRANSMAMBA_SSM_DECODE_KERNEL=${best%-pdl}
case $best in *-pdl) export TRANSMAMBA_DECODE_PDL=1;; esac
el "full decode case (skinny GEMM, ssm=$TRANSMAMBA_SSM_DECODE_KERNEL, pdl=${TRANSMAMBA_DECODE_PDL:-0})"
timeout 60 python3 benchmarks/run.py --cases decode --decode-contexts 4096,32768,131072 --decode-batches 1,16,64 --decode-target-ms 40 --out "$RESULT_DIR/full-new" > "$RESULT_DIR/full-new.log" 2>&1
el "rc=$?"; python3 benchmarks/decode_bench.py "$RESULT_DIR/full-new/decode.json" 2>&1 | head -16
el "profile"
timeout 15 python3 benchmarks/decode_profile.py transmamba-400m 32768 16 > "$RESULT_DIR/profile-new.txt" 2>&1
el "rc=$?"; head -22 "$RESULT_DIR/profile-new.txt" | cut -c1-160
unset TRANSMAMBA_SSM_DECODE_KERNEL TRANSMAMBA_DECODE_PDL
el "all models 32K x 16, old path"
TRANSMAMBA_SKINNY_GEMM=0 TRANSMAMBA_SSM_DECODE_KERNEL=head timeout 30 python3 benchmarks/run.py --cases decode --decode-contexts 32768 --decode-batches 16 --decode-target-ms 40 --out "$RESULT_DIR/full-old" > "$RESULT_DIR/full-old.log" 2>&1
el "rc=$?"; python3 benchmarks/decode_bench.py "$RESULT_DIR/full-old/decode.json" 2>&1 | head -8
left=$(( 194 - ($(date +%s)-T0) ))
if [ $left -gt 8 ]; then
  el "ssm kernel bench (bf16 state, ${left}s)"
  timeout $left python3 benchmarks/ssm_decode_bench.py "$RESULT_DIR/ssm-decode-kernels.json" --batch 16 > "$RESULT_DIR/ssm-decode-kernels.log" 2>&1
  el "rc=$?"; tail -7 "$RESULT_DIR/ssm-decode-kernels.log" | cut -c1-300
fi
el done
