#!/usr/bin/env bash
# The GPU check, for the first session lent a device: under 8 minutes on one GPU.
#
#   benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#
# 1. CUDA AMP (fp16, bf16) distillation steps of the paper pair at 512 x 512, batch 8, dense and
#    Gram affinity: finite losses, peak memory, step times, distillation overhead;
# 2. `kaseg bench` of the paper pair on the GPU;
# 3. `kaseg pipeline` on the built-in scenes under torchrun (one process, NCCL);
# 4. the study's demo regime at 256 px (the ladder's five arms, three seeds);
# 5. a `kaseg compare` report on CUDA (models loaded, evaluated, costed and pictured there).
# Each part has its own time limit; a part that fails or times out is listed as missing and the
# others still report. Results: DIR/gpu_check.json and DIR/gpu_check.md (default DIR:
# results/gpu_check-DATE). --dry-run: tiny sizes on the CPU (the test suite runs it).
set -u
DRY=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY="--dry-run" ;;
    --out) OUT="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument '$1' (--dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-results/gpu_check-$(date +%Y%m%d-%H%M)}"
PY="${PYTHON:-python}"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$OUT"
if [ -n "$DRY" ]; then  # tiny parts on the CPU: one process (one set of imports), one limit
  echo "== gpu_check --dry-run: every part (limit 400 s)"
  timeout 400 "$PY" "$HERE/gpu_check.py" amp bench torchrun study report --out "$OUT" $DRY \
    > "$OUT/dry-run.log" 2>&1 || { echo "   failed (log: $OUT/dry-run.log)"; tail -n 5 "$OUT/dry-run.log"; }
fi
for part in "amp 100" "bench 60" "torchrun 120" "study 200" "report 90"; do
  [ -n "$DRY" ] && break
  set -- $part
  echo "== gpu_check: $1 (limit $2 s)"
  if ! timeout "$2" "$PY" "$HERE/gpu_check.py" "$1" --out "$OUT" $DRY > "$OUT/$1.log" 2>&1; then
    echo "   $1: failed or timed out (log: $OUT/$1.log)"
    tail -n 5 "$OUT/$1.log"
  fi
done
"$PY" "$HERE/gpu_check.py" summarize --out "$OUT"
