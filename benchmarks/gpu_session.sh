#!/usr/bin/env bash
# The open GPU checks of the speed work in one call, most wanted first, each step under its own time
# limit (at most 8 min 20 s of steps, under a 10-minute command limit):
#   bash benchmarks/gpu_session.sh [OUT_DIR]
# 1. the CUDA-only tests: the uint8 normalisation, the patch embedding as one GEMM, features written
#    batch by batch and the embedding in parts against the CPU (log: tests.log);
# 2. folders: embed_images with 16 workers over 2,000 and over 10,000 JPEGs (the rate apart from the
#    fixed costs of a short run): batches read whole or in 4 parts, the workers at this process's
#    priority or niceness +10 (features.WORKER_NICE), 15 workers against 16, reading alone, the
#    workers' hand-over (benchmarks/folder_speed.py);
# 3. the 10,000 JPEGs again with the blocks compiled into CUDA graphs (compile_blocks
#    "reduce-overhead"): whether the model's kernel launches in this process hold the folder back.
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
timeout 60 python3 -m pytest -q -p no:cacheprovider -rs tests/test_models_speed_cache.py tests/test_features.py \
  tests/test_cli.py tests/test_curation.py -k "cuda or normalise_8bit or uint8" 2>&1 | tee "$out/tests.log" | tail -5
timeout 100 python3 benchmarks/folder_speed.py --num-workers 16 --quick 2>&1 | tee "$out/folder.log"
timeout 170 python3 benchmarks/folder_speed.py --num-workers 16 --quick --count 10000 2>&1 | tee "$out/folder_10k.log"
timeout 170 python3 benchmarks/folder_speed.py --num-workers 16 --quick --count 10000 --compile reduce-overhead 2>&1 \
  | tee "$out/folder_10k_graphs.log"
