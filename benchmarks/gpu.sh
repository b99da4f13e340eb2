#!/usr/bin/env bash
# The gpu-marked tests and every whole-pipeline benchmark at full size on one CUDA GPU
# (H100/H200 class), in at most 8 minutes, with a markdown table of the results.
#
#   benchmarks/gpu.sh --prepare [DEST]       # here, once: the wheels the GPU image lacks
#   benchmarks/gpu.sh [RESULTS_DIR]          # on the GPU machine; default: $OUT, else benchmarks/results
#   benchmarks/gpu.sh --cpu-smoke [DIR]      # the same steps, scaled down, on the CPU
#
# --prepare (benchmarks/gpu_prepare.py) fills .gpu-wheels with the wheels for Python 3.12
# that the lent machines' image lacks (device_image_packages.txt), the project's own wheel
# included, and checks they fit in one device call (64 MiB). A run first installs them
# into a temporary folder (pip --no-index --no-deps --target, then PYTHONPATH), so the
# image's Python needs nothing else; without .gpu-wheels the Python's own packages are used.
#
# Steps (in order; each starts only if its time limit still fits in the 480 s budget):
#   gpu tests      the gpu-marked tests (pytest -m gpu over the files that hold them)
#   flops          FLOPs per forward, sgm vs diffusers, and compute floors (meta device)
#   sdxl           SDXL base 1024x1024, 30 Euler steps, CFG 5, fp16 (sample_sdxl.py --gpu)
#   svd-xt         SVD-XT 25 frames 576x1024, 25 steps, fp16 (sample_svd.py --gpu)
#   svd-xt low-vram  the same in low-VRAM mode (offloading, decoding_t 2): peak vs 24 GiB
#   sdxl compiled  as sdxl, sgm with compile_model (torch.compile) vs diffusers eager
# Results: results.md (benchmarks/gpu_table.py), rows.tsv, summary.txt (the one line per
# step that also goes to stdout) and logs.tar.gz (every step's log) in RESULTS_DIR; when
# that is $OUT the logs are packed (a device call returns at most 8 files), else they also
# stay in RESULTS_DIR as NAME.log / NAME.err.
# Exit status: 0 when no step failed or timed out (steps skipped for time are listed),
# 1 otherwise, 2 when the install or the import check fails (before any step runs).
#
# Environment: PYTHON (default python, else python3), GPU_WHEELS (default .gpu-wheels),
# GPU_WHEELS_HERE (more wheels to pick from, default .gpu-wheels-here when it exists: the
# compiled wheels for this machine's Python that --prepare fetches for --cpu-smoke),
# BUDGET (seconds, default 480), CPU_SCALE (--cpu-smoke: the time limits and the budget
# are multiplied by it, default 8).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
WHEELS="${GPU_WHEELS:-$ROOT/.gpu-wheels}"

if [[ "${1:-}" == "--prepare" ]]; then
  shift
  exec "$PY" "$HERE/gpu_prepare.py" "${1:-$WHEELS}"
fi

MODE=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then
  MODE=cpu
  shift
fi
DIR="${1:-${OUT:-$HERE/results}}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
WORK="$DIR"
if [[ -n "${OUT:-}" && "$DIR" == "$(cd "$OUT" 2>/dev/null && pwd)" ]]; then
  WORK="$(mktemp -d)"  # logs are packed into $OUT/logs.tar.gz
fi
: > "$WORK/rows.tsv"
: > "$DIR/summary.txt"
BUDGET=${BUDGET:-480}
SCALE=1  # time limits are GPU seconds; the CPU smoke run gets more
START=$SECONDS

say() {  # one summary line: stdout and summary.txt
  echo "$*"
  echo "$*" >> "$DIR/summary.txt"
}

publish() {  # copy the table inputs to DIR and pack the logs into DIR/logs.tar.gz
  local logs
  if [[ "$WORK" != "$DIR" ]]; then
    cp "$WORK/rows.tsv" "$DIR/rows.tsv"
    [[ -f "$WORK/results.md" ]] && cp "$WORK/results.md" "$DIR/results.md"
  fi
  mapfile -t logs < <(cd "$WORK" && ls -- *.log *.err 2>/dev/null)
  ((${#logs[@]})) && tar -czf "$DIR/logs.tar.gz" -C "$WORK" "${logs[@]}"
  return 0
}

cd "$ROOT"
if [[ -f "$WHEELS/requirements.txt" ]]; then
  SITE="$(mktemp -d)"
  FIND=(--find-links "$WHEELS")
  EXTRA="${GPU_WHEELS_HERE:-$ROOT/.gpu-wheels-here}"
  [[ -d "$EXTRA" ]] && FIND+=(--find-links "$EXTRA")
  if ! "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --target "$SITE" "${FIND[@]}" -r "$WHEELS/requirements.txt" \
      > "$WORK/install.log" 2>&1; then
    tail -n 5 "$WORK/install.log"
    say "install: failed (see install.log)"
    publish
    exit 2
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" "$HERE/gpu_prepare.py" --check-fresh "$WHEELS"; then
    say "install: the sgm wheel in $WHEELS is not this checkout's code"
    [[ $MODE == gpu ]] && { publish; exit 2; }  # the CPU smoke run goes on with it
  fi
  say "install: $(grep -c . "$WHEELS/requirements.txt") wheels from $WHEELS into $SITE ($((SECONDS - START)) s)"
else
  say "install: no $WHEELS/requirements.txt (gpu.sh --prepare makes it): using $PY's own packages"
fi
# Everything the steps import, checked before any of them runs.
if ! "$PY" -P -c "import sgm, diffusers, omegaconf, open_clip, kornia, torch, pytest" \
    > "$WORK/imports.log" 2>&1; then
  tail -n 3 "$WORK/imports.log"
  say "imports: failed: $(tail -n 1 "$WORK/imports.log")"
  publish
  exit 2
fi

if [[ $MODE == gpu ]]; then
  SIZE=(--gpu)
  LOWVRAM=(--gpu)
  if ! DEVICE="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null)"; then
    say "device: no CUDA device for $PY's torch (--cpu-smoke runs the steps on the CPU)"
    publish
    exit 2
  fi
else
  SIZE=(--quick --in-memory --repeats 1)
  LOWVRAM=()
  DEVICE="CPU smoke run (scaled down)"
  SCALE=${CPU_SCALE:-8}  # a shared 2-core machine under load may need more
  BUDGET=$((BUDGET * SCALE))
fi
say "python: $("$PY" -P -c 'import sys, torch, sgm; print(sys.version.split()[0], "torch", torch.__version__, "sgm from", sgm.__file__)'), device: $DEVICE"

SKIPPED=()
FAILED=()
fits() {  # fits NAME LIMIT: true if LIMIT seconds are left in the budget
  local left=$((BUDGET - (SECONDS - START)))
  if (($2 > left)); then
    SKIPPED+=("$1")
    say "$1: skipped (needs ${2}s, ${left}s left of ${BUDGET}s)"
    return 1
  fi
}

GPU_MARK='^\s*(@pytest\.mark\.gpu|pytestmark\b.*mark\.gpu)'
gpu_tests() {  # the gpu-marked tests; on a CPU they are collected (imports checked) and skipped
  local limit=$((90 * SCALE)) files
  fits "gpu tests" "$limit" || return
  mapfile -t files < <(grep -rlE --include='test_*.py' "$GPU_MARK" tests | sort)
  # -P: the installed sgm, not the checkout's folder, is the one imported.
  timeout --signal=INT --kill-after=10 "$limit" "$PY" -P -m pytest -q -p no:cacheprovider \
    -m gpu -ra "${files[@]}" > "$WORK/gpu_tests.log" 2>&1
  local rc=$? last
  last="$(grep -E '(passed|failed|skipped|deselected|error)' "$WORK/gpu_tests.log" | tail -n 1)"
  case "$rc" in
    0|5) say "gpu tests: ok, ${last:-no result line} (${#files[@]} files)" ;;
    124|130|137) FAILED+=("gpu tests"); say "gpu tests: timed out after ${limit}s" ;;
    *) FAILED+=("gpu tests"); say "gpu tests: failed (exit $rc), ${last:-no result line}" ;;
  esac
}

row() {  # row NAME LIMIT_S FLOOR_KEY ARGS...: run one benchmark under a time limit
  local name="$1" limit=$(($2 * SCALE)) floor="$3"
  shift 3
  local log="${name// /_}.log" status=ok t0=$SECONDS
  if ! fits "$name" "$limit"; then
    status="skipped (budget)"
  else
    echo "== $name: $* (limit ${limit}s)"
    timeout --signal=INT --kill-after=10 "$limit" "$PY" "$@" 2>"$WORK/${log%.log}.err" \
      > "$WORK/$log"
    case "$?" in
      0) ;;
      124|130|137) status="timed out"; FAILED+=("$name") ;;
      *) status="failed"; FAILED+=("$name"); tail -n 5 "$WORK/${log%.log}.err" ;;
    esac
    local ratio
    ratio="$(grep -E '^ratio sgm/diffusers|^compute floor|^low-VRAM' "$WORK/$log" | paste -sd '|' - | sed 's/|/; /g')"
    say "$name: $status in $((SECONDS - t0)) s${ratio:+: $ratio}"
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$floor" "$log" \
    "python $*" >> "$WORK/rows.tsv"
  publish
}

gpu_tests
publish
row flops 90 - benchmarks/flops.py
row sdxl 130 SDXL benchmarks/sample_sdxl.py --repeats 3 "${SIZE[@]}"
row svd-xt 200 SVD-XT benchmarks/sample_svd.py --repeats 1 "${SIZE[@]}"
row "svd-xt low-vram" 120 SVD-XT benchmarks/svd_low_vram.py "${LOWVRAM[@]}"
row "sdxl compiled" 150 SDXL benchmarks/sample_sdxl.py --compile sgm --repeats 2 "${SIZE[@]}"

"$PY" benchmarks/gpu_table.py "$WORK" "$DEVICE" > /dev/null
publish
skipped="$(IFS=,; echo "${SKIPPED[*]}")"
failed="$(IFS=,; echo "${FAILED[*]}")"
say "results: $DIR/results.md, $((SECONDS - START)) s${skipped:+, skipped: $skipped}${failed:+, failed: $failed}"
[[ -z "$failed" ]]
