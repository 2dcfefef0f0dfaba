#!/usr/bin/env bash
# Download the wheels listed in wheels.txt for the GPU image (CPython 3.12, x86-64 Linux) into
# .whl/ at the repository root, which git ignores; the device tool carries it (carry: [".whl"])
# and benchmarks/accelerator/run.sh installs it. Needs the package index, not a GPU.
# promise ships only as a source archive: it is built here into a pure-Python wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
grep -v '^#' benchmarks/accelerator/wheels.txt | while read -r requirement; do
  if [[ $requirement == promise==* ]]; then
    python3 -m pip wheel -q --no-deps -w .whl "$requirement"
  else
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$requirement"
  fi
done
ls .whl | wc -l | xargs echo "wheels in .whl:"
du -sh .whl
