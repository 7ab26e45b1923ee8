#!/usr/bin/env bash
# Download, into .whl/ (git-ignored), the wheels a bare GPU image may lack for the benchmarks:
# the versions installed in this checkout's .venv, built for CPython 3.12 on x86-64 Linux.
# Run it where a package registry is reachable; then carry .whl to the GPU machine, where
# benchmarks/gpu/suite.sh installs them (no network needed there).
#
#     bash benchmarks/gpu/fetch_wheels.sh [PYTHON_VERSION]      # default 3.12
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${1:-3.12}
# what mmrec needs beyond torch/torchaudio/torchvision/transformers/timm/accelerate/numpy/PyYAML/...
NEEDED="webdataset braceexpand open_clip_torch ftfy wcwidth soundfile cffi pycparser"
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl
for name in $NEEDED; do
  spec="$name==$(version "$name")"
  echo "$spec"
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$spec"
done
ls -l .whl
