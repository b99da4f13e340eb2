#!/usr/bin/env bash
# Every whole-pipeline benchmark at full size on one CUDA GPU (H100/H200 class), in at
# most 8 minutes, and a markdown table of the results.
#
#   benchmarks/gpu.sh [RESULTS_DIR]          # default: $OUT, else benchmarks/results
#   benchmarks/gpu.sh --cpu-smoke [DIR]      # the same rows, scaled down, on the CPU
#
# Rows (in order; a row starts only if its time limit still fits in the 480 s budget):
#   flops          FLOPs per forward, sgm vs diffusers, and compute floors (meta device)
#   sdxl           SDXL base 1024x1024, 30 Euler steps, CFG 5, fp16 (sample_sdxl.py --gpu)
#   svd-xt         SVD-XT 25 frames 576x1024, 25 steps, fp16 (sample_svd.py --gpu)
#   svd-xt low-vram  the same in low-VRAM mode (offloading, decoding_t 2): peak vs 24 GiB
#   sdxl compiled  as sdxl, sgm with compile_model (torch.compile) vs diffusers eager
# Each row writes NAME.log; results.md holds the table (benchmarks/gpu_table.py).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
MODE=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then
  MODE=cpu
  shift
fi
DIR="${1:-${OUT:-$HERE/results}}"
mkdir -p "$DIR"
: > "$DIR/rows.tsv"
BUDGET=${BUDGET:-480}
SCALE=1  # time limits are GPU seconds; the CPU smoke run gets more
START=$SECONDS

if [[ $MODE == gpu ]]; then
  SIZE=(--gpu)
  LOWVRAM=(--gpu)
  DEVICE="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo GPU)"
else
  SIZE=(--quick --in-memory --repeats 1)
  LOWVRAM=()
  DEVICE="CPU smoke run (scaled down)"
  SCALE=8
  BUDGET=$((BUDGET * SCALE))
fi

row() {  # row NAME LIMIT_S FLOOR_KEY ARGS...: run one benchmark under a time limit
  local name="$1" limit=$(($2 * SCALE)) floor="$3"
  shift 3
  local log="${name// /_}.log" status=ok
  local left=$((BUDGET - (SECONDS - START)))
  if ((limit > left)); then
    status="skipped (budget)"
    echo "== $name: $status, ${left}s left of ${BUDGET}s"
  else
    echo "== $name: $* (limit ${limit}s)"
    timeout --signal=INT --kill-after=10 "$limit" "$PY" "$@" 2>"$DIR/${log%.log}.err" \
      | tee "$DIR/$log"
    case "${PIPESTATUS[0]}" in
      0) ;;
      124|130|137) status="timed out" ;;
      *) status="failed"; tail -n 5 "$DIR/${log%.log}.err" ;;
    esac
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$floor" "$log" \
    "python $*" >> "$DIR/rows.tsv"
}

cd "$HERE/.."
row flops 90 - benchmarks/flops.py
row sdxl 130 SDXL benchmarks/sample_sdxl.py --repeats 3 "${SIZE[@]}"
row svd-xt 200 SVD-XT benchmarks/sample_svd.py --repeats 1 "${SIZE[@]}"
row "svd-xt low-vram" 120 SVD-XT benchmarks/svd_low_vram.py "${LOWVRAM[@]}"
row "sdxl compiled" 150 SDXL benchmarks/sample_sdxl.py --compile sgm --repeats 2 "${SIZE[@]}"

echo "== results ($((SECONDS - START)) s), $DIR/results.md"
"$PY" benchmarks/gpu_table.py "$DIR" "$DEVICE"
