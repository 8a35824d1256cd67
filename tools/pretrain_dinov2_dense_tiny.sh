#!/usr/bin/env bash
# Reproduce the embedded backbone dinov2_dense_tiny: the stages of configs/pretrain/dinov2_dense_tiny/
# in order, each starting from the previous one's export; a finished stage is skipped and an
# interrupted one resumes from its newest checkpoint, so the script can be rerun until it is done.
# Extra arguments go to every `dinov2-dense pretrain` (e.g. --no-progress). At the end the files to
# ship are in work_dirs/dinov2_dense_tiny/package/ (copy them into dinov2_dense/weights/).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES=(s1_cls s2_cell1 s3_cell4 s4_cell8 s5_colour s6_hue s7_colour)
for stage in "${STAGES[@]}"; do
    dir="work_dirs/dinov2_dense_tiny/$stage"
    if [ -f "$dir/export/backbone.safetensors" ]; then
        echo "$stage: done ($dir/export)"
        continue
    fi
    resume=()
    if compgen -G "$dir/checkpoint_*.pth" > /dev/null; then resume=(--resume); fi
    echo "$stage: dinov2-dense pretrain configs/pretrain/dinov2_dense_tiny/$stage.py ${resume[*]:-}"
    dinov2-dense pretrain "configs/pretrain/dinov2_dense_tiny/$stage.py" "${resume[@]}" "$@"
done
last="work_dirs/dinov2_dense_tiny/${STAGES[-1]}/export"
out=work_dirs/dinov2_dense_tiny/package
mkdir -p "$out"
cp "$last/backbone.safetensors" "$out/dinov2_dense_tiny.safetensors"
cp "$last/backbone.json" "$out/dinov2_dense_tiny.json"
echo "done: $out (score it: dinov2-dense demo --weights $out/dinov2_dense_tiny.safetensors)"
