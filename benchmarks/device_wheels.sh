#!/usr/bin/env bash
# Wheels for a GPU machine with no package index (Python 3.12, x86_64), into .whl/ (git-ignored):
# what benchmarks/gpu_session.sh needs beyond torch, timm, transformers, OpenCV and scikit-image.
#   bash benchmarks/device_wheels.sh            # then carry .whl to the machine
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
wheels=(
  "dinov2==0.0.1.dev2"                                   # the official code (the oracle), --no-deps
  "albumentations==2.0.8" "albucore==0.0.24"             # pretrain imports albumentations
  "pydantic==2.13.4" "pydantic-core==2.46.4" "annotated-types" "typing-inspection" "simsimd" "stringzilla"
  "mmengine==0.10.7" "addict" "yapf" "platformdirs" "termcolor"
)
for spec in "${wheels[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done
ls .whl
