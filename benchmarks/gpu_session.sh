#!/usr/bin/env bash
# The open GPU checks of the speed work in one call, most wanted first, each step under its own time
# limit (at most 8 min of steps):
#   bash benchmarks/gpu_session.sh [OUT_DIR]
# 1. the CUDA-only tests: the uint8 normalisation, the patch embedding as one GEMM, features written
#    batch by batch, the embedding in parts against the CPU, batches straight from the workers' slots
#    to the GPU (features.SLOTS_TO_DEVICE) (log: tests.log);
# 2. folders: timelines of embed_images over 10,000 JPEGs with 16 workers (where the feeding process's
#    time goes, including the start before the first batch: starting the workers, the weights' host
#    copy for the hash; batches through pinned memory against straight to the GPU, two runs each,
#    alternating; benchmarks/folder_speed.py --timeline), in batches of 64 with the workers reading 2
#    (the default) and 4 items ahead (features.PREFETCH: more read during the start), and in batches of 128;
# 3. the ADE20K +ms model (ViT-L, one 512x683 image, bf16 compiled, 16 windows a batch) on an 8-bit image,
#    whose views predict now resizes in 8 bits on the CPU as mmseg does (benchmarks/ms_profile.py);
# 4. starting 16 DataLoader workers before and after the model is loaded on the GPU
#    (benchmarks/worker_start.py): whether forking them before the model would cut the folders' start.
# On a machine without a package index, the wheels of what is missing (the official code,
# albumentations, mmengine and their needs) are carried in .whl/: benchmarks/device_wheels.sh fetches
# them beforehand, and this script installs them when it finds them.
set -o pipefail
out=${1:-gpu_session_out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  # one wheel at a time: a wheel for another Python (a binary one fetched for 3.12) is skipped, said, and
  # does not stop the session's checks
  for wheel in .whl/*.whl; do
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheel" \
      > /dev/null 2>&1 || echo "skipped $wheel (not installable here)"
  done
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
timeout 60 python3 -m pytest -q -p no:cacheprovider -rs tests/test_models_speed_cache.py tests/test_features.py tests/test_speed.py \
  tests/test_cli.py tests/test_curation.py -k "cuda or normalise_8bit or uint8 or straight" 2>&1 | tee "$out/tests.log" | tail -5
timeout 70 python3 benchmarks/folder_speed.py --num-workers 16 --count 10000 --timeline 2>&1 | tee "$out/timeline_10k.log"
timeout 70 python3 benchmarks/folder_speed.py --num-workers 16 --count 10000 --timeline --prefetch 4 2>&1 \
  | tee "$out/timeline_10k_prefetch4.log"
timeout 70 python3 benchmarks/folder_speed.py --num-workers 16 --count 10000 --timeline --batch-size 128 2>&1 \
  | tee "$out/timeline_10k_128.log"
timeout 150 python3 benchmarks/ms_profile.py --crop-batch-sizes 16 2>&1 | tee "$out/ms_profile.log"
timeout 45 python3 benchmarks/worker_start.py 2>&1 | tee "$out/worker_start.log"
