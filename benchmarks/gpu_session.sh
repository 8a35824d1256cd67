#!/usr/bin/env bash
# The GPU figures of the speed work in one call, most wanted first, each step under its own time
# limit (at most 9 min 10 s of steps, under a 10-minute command limit):
#   bash benchmarks/gpu_session.sh [OUT_DIR]
# 1. folders: embed_images at 0/12/16 workers, float and 8-bit resize (uint8 hand-over), pinned and
#    not; reading alone; the trial of a float resize on the GPU (benchmarks/folder_speed.py);
# 2. the uint8 normalisation on CUDA equals the CPU's floats (tests, CUDA branch);
# 3. ViT-L/14 518 batch 32: ours plain / bf16 / compiled / FP8 against the official code, timm and
#    transformers (benchmarks/gpu_speed.py);
# 4. where the +ms model's time goes (benchmarks/ms_profile.py), bf16 then FP8;
# 5. ViT-g/14 518 batch 16 with FP8 (not yet measured).
# On a machine without a package index, the wheels of what is missing (the official code,
# albumentations, mmengine and their needs) are carried in .whl/: benchmarks/device_wheels.sh fetches
# them beforehand, and this script installs them when it finds them.
set -o pipefail
out=${1:-gpu_session_out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
timeout 140 python3 benchmarks/folder_speed.py --num-workers 0 12 16 2>&1 | tee "$out/folder.log"
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_features.py -k "normalise_8bit or uint8" 2>&1 | tail -3
timeout 140 python3 benchmarks/gpu_speed.py --archs vitl14 --configs 518x32 --skip-full 2>&1 | tee "$out/vitl.log"
timeout 70 python3 benchmarks/ms_profile.py 2>&1 | tee "$out/ms.log"
timeout 60 python3 benchmarks/ms_profile.py --float8 --crop-batch-sizes 16 2>&1 | tee "$out/ms_fp8.log"
timeout 100 python3 benchmarks/gpu_speed.py --archs vitg14 --configs 518x16 --skip-full --repeats 3 2>&1 | tee "$out/vitg.log"
