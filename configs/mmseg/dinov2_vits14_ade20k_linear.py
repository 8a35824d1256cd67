# ADE20K lin. with mmseg's tools: tools/train.py / tools/test.py of mmsegmentation (or `mim train mmseg`).
# Other sizes: backbone.arch=dinov2_vit{b,l,g}14 and decode_head.in_channels=[768|1024|1536].
_base_ = ["./_base_/seg_model.py", "./_base_/ade20k.py", "../_base_/schedules/seg_40k.py", "./_base_/runtime.py"]
