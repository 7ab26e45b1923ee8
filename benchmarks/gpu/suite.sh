#!/usr/bin/env bash
# Every GPU throughput benchmark in one prepared run, sized to finish in under 9 minutes on one
# H100/H200 with 16 CPU cores (each step has its own time limit, so a slow step cannot starve the
# others). From the repository root, on the GPU machine:
#
#     bash benchmarks/gpu/suite.sh [RESULTS_DIR]        # default: $OUT if set, else benchmarks/results
#     SMOKE=1 PYTHON=.venv/bin/python ITEMS=96 bash benchmarks/gpu/suite.sh /tmp/smoke   # plumbing, on a CPU
#
# 1. installs the wheels in .whl/ (from benchmarks/gpu/fetch_wheels.sh) when the image lacks them,
#    and runs mmrec from this checkout (no `pip install -e .`, no network);
# 2. writes one full-size synthetic catalogue (320 px JPEG posters, 10.24 s FLAC clips), 2 shards per worker;
# 3. embed_throughput (base.yaml, bf16, encoders alone vs loader alone vs end to end, + profile),
#    train_throughput (frozen + cache, top 2 layers, all layers) and eval_speed (100k x 50k) on it.
# JSON (named by GPU) lands in benchmarks/results/ and is copied, with suite.log, to RESULTS_DIR.
set -uo pipefail
cd "$(dirname "$0")/../.."
RESULTS=${1:-${OUT:-benchmarks/results}}
PY=${PYTHON:-python3}
ITEMS=${ITEMS:-3072}
mkdir -p "$RESULTS"
LOG="$RESULTS/suite.log"
exec > >(tee "$LOG") 2>&1

if ! "$PY" -c "import webdataset, open_clip, soundfile" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mmrec-site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/mmrec-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
df -h /dev/shm || true  # DataLoader workers hand batches over in shared memory: a small /dev/shm breaks them
"$PY" -c "import torch, transformers, timm, webdataset, open_clip, soundfile; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'timm', timm.__version__)" || exit 1
if "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  KEEP=()  # results go to benchmarks/results/ under the GPU's name
elif [ "${SMOKE:-0}" = 1 ]; then
  echo "no GPU: SMOKE=1, a plumbing check; results go to $RESULTS only"
  KEEP=(--out "$RESULTS/smoke.json")
else
  echo "no GPU here: this suite is for a GPU machine (SMOKE=1 checks its plumbing on a CPU)"; exit 1
fi
CORES=$(nproc)
WORKERS=${WORKERS:-$((CORES > 3 ? CORES - 2 : 1))}  # leave the main process and the pin-memory thread a core each
DATA=${DATA:-/tmp/mmrec-bench}
echo "cores $CORES, DataLoader workers $WORKERS, items $ITEMS"

step() {  # step NAME SECONDS COMMAND...: run under a time limit, progress bars filtered out of the log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s) $(date +%T)"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v -E '^(train|cache|embed)[: ]'
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  return "$rc"
}

PER_SHARD=$(((ITEMS + 2 * WORKERS - 1) / (2 * WORKERS)))  # 2 shards per worker: no worker idles early
step catalogue 110 "$PY" datasets/synthetic.py --out "$DATA" --full-size-media --num-items "$ITEMS" \
  --num-users $((ITEMS / 8)) --num-ratings $((ITEMS * 10)) --split random --items-per-shard "$PER_SHARD" \
  --workers "$CORES" --no-progress || exit 1
step embed_throughput 200 "$PY" benchmarks/embed_throughput.py --data "$DATA/data" --workers "$WORKERS" --profile \
  "${KEEP[@]/smoke/embed_smoke}"
step train_throughput 200 "$PY" benchmarks/train_throughput.py --data "$DATA/data" --workers "$WORKERS" \
  "${KEEP[@]/smoke/train_smoke}"
step eval_speed 50 "$PY" benchmarks/eval_speed.py --device cuda

for f in benchmarks/results/*NVIDIA*; do
  [ -e "$f" ] && [ "$(realpath "$RESULTS")" != "$(realpath benchmarks/results)" ] && cp "$f" "$RESULTS"/
done
ls -l "$RESULTS"
