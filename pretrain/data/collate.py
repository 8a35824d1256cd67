"""Batch collation of multi-crop samples with iBOT masks, as DINOv2's ``collate_data_and_cast``.

Use it as a DataLoader ``collate_fn`` through :func:`functools.partial`::

    collate_fn = partial(collate_data_and_cast, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5,
                         dtype=torch.float32, n_tokens=16 * 16,
                         mask_generator=MaskingGenerator((16, 16), max_num_patches=0.5 * 16 * 16))

(DINOv2's training defaults: 224-pixel global crops, patch 14, masks on half the global crops
with ratios in 0.1-0.5.)
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch


def _crops(sample: Any) -> Mapping[str, Sequence[torch.Tensor]]:
    """The crop dict of a sample: ``(crops, target)`` as a data set returns it, or the dict alone."""
    crops = sample if isinstance(sample, Mapping) else sample[0]
    if not isinstance(crops, Mapping) or "global_crops" not in crops or "local_crops" not in crops:
        raise TypeError("collate_data_and_cast: each sample must be (crops, target) or crops, with crops a dict "
                        "holding 'global_crops' and 'local_crops' (the output of DataAugmentationDINO)")
    return crops


def _stack_by_crop(samples: list[Mapping[str, Sequence[torch.Tensor]]], key: str, dtype: torch.dtype) -> torch.Tensor:
    """Crop 0 of every sample, then crop 1, ...: ``(n_crops * B, C, H, W)``."""
    n = len(samples[0][key])
    if any(len(s[key]) != n for s in samples):
        raise ValueError(f"collate_data_and_cast: the samples have different numbers of {key!r}")
    if n == 0:
        return torch.empty(0, dtype=dtype)
    return torch.stack([s[key][i] for i in range(n) for s in samples]).to(dtype)


def collate_data_and_cast(samples_list: Sequence[Any], mask_ratio_tuple: tuple[float, float],
                          mask_probability: float, dtype: torch.dtype, n_tokens: int | None = None,
                          mask_generator: Callable[[int], np.ndarray] | None = None) -> dict[str, Any]:
    """Stack the crops of ``B`` samples and draw iBOT masks for their ``2B`` global crops.

    ``int(2B * mask_probability)`` of the global crops are masked; the ``i``-th of them masks
    ``int(n_tokens * U(r_i, r_i+1))`` patches, where ``r_0 .. r_n`` split ``mask_ratio_tuple``
    linearly (``torch.linspace``, float32 as in DINOv2), so the masked crops span the whole range
    of ratios; the other crops get empty masks, and the masks are shuffled (``random.shuffle``).
    Python's :mod:`random` is the only source of randomness: the same ``random.seed`` gives the
    same output as the official collate.

    Args:
        samples_list: ``(crops, target)`` pairs (or crop dicts) from :class:`DataAugmentationDINO`.
        mask_ratio_tuple: ``(min, max)`` fraction of the patches to mask in a masked crop.
        mask_probability: fraction of the global crops that are masked.
        dtype: dtype of the collated crops (masks and weights keep theirs).
        n_tokens: patches per global crop (None: the grid of ``mask_generator``).
        mask_generator: e.g. a :class:`MaskingGenerator`; called with a patch count, returns a
            bool ``(h, w)`` mask with ``h * w == n_tokens``.

    Returns:
        ``collated_global_crops`` ``(n_global * B, C, H, W)`` and ``collated_local_crops``
        ``(n_local * B, C, h, w)`` in ``dtype`` (crop 0 of every sample first; an empty tensor when
        there are no local crops); ``collated_masks`` bool ``(n_global * B, n_tokens)``;
        ``mask_indices_list`` int64 ``(M,)``, the flat indices of the masked patches;
        ``masks_weight`` float32 ``(M,)``, ``1 / (masked patches of its crop)`` for each masked
        patch; ``upperbound`` int, the sum of ``int(n_tokens * r_i+1)`` (a bound on ``M``, for
        buffer sizes); ``n_masked_patches`` int64 ``(1,)``, ``M``.
    """
    if mask_generator is None:
        raise ValueError("collate_data_and_cast: no mask_generator; pass e.g. "
                         "mask_generator=MaskingGenerator((16, 16), max_num_patches=128) for 224-pixel crops, patch 14")
    if not samples_list:
        raise ValueError("collate_data_and_cast: empty batch")
    lo, hi = mask_ratio_tuple
    if not 0 <= lo <= hi <= 1 or not 0 <= mask_probability <= 1:
        raise ValueError(f"collate_data_and_cast: need 0 <= mask_ratio_tuple[0] <= mask_ratio_tuple[1] <= 1 and "
                         f"0 <= mask_probability <= 1, got {mask_ratio_tuple}, {mask_probability}")
    if n_tokens is None:
        shape = getattr(mask_generator, "get_shape", None)
        if shape is None:
            raise ValueError("collate_data_and_cast: n_tokens=None needs a mask_generator with get_shape(); "
                             "pass n_tokens")
        n_tokens = int(np.prod(shape()))
    samples = [_crops(s) for s in samples_list]
    global_crops = _stack_by_crop(samples, "global_crops", dtype)
    local_crops = _stack_by_crop(samples, "local_crops", dtype)

    n_crops = len(global_crops)
    n_masked = int(n_crops * mask_probability)
    ratios = torch.linspace(lo, hi, n_masked + 1)  # float32, as the reference computes the counts
    masks, upperbound = [], 0
    for i in range(n_masked):
        masks.append(torch.as_tensor(mask_generator(int(n_tokens * random.uniform(ratios[i], ratios[i + 1])))))
        upperbound += int(n_tokens * ratios[i + 1])
    masks += [torch.as_tensor(mask_generator(0)) for _ in range(n_masked, n_crops)]
    random.shuffle(masks)

    collated_masks = torch.stack(masks).flatten(1).bool()
    if collated_masks.shape[1] != n_tokens:
        raise ValueError(f"collate_data_and_cast: the masks have {collated_masks.shape[1]} patches but n_tokens is "
                         f"{n_tokens}; give the mask generator the patch grid of the global crops")
    mask_indices = collated_masks.flatten().nonzero().flatten()
    per_crop = collated_masks.sum(-1).clamp(min=1).float()
    masks_weight = (1 / per_crop).unsqueeze(-1).expand_as(collated_masks)[collated_masks]
    return {
        "collated_global_crops": global_crops,
        "collated_local_crops": local_crops,
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices.shape[0], dtype=torch.long),
    }
