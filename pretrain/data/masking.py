"""Block-wise masking of the patch grid for the iBOT masked-token loss.

BEiT (Bao et al., 2022, "BEiT: BERT Pre-Training of Image Transformers", section 2.5) masks
random rectangles of patches instead of independent patches; iBOT and DINOv2 ("DINOv2: Learning
Robust Visual Features without Supervision", Oquab et al., 2023) keep that scheme. Each block has
an area drawn uniformly in ``[min_num_patches, patches still allowed]`` and an aspect ratio
log-uniform in ``[min_aspect, max_aspect]`` (``max_aspect = 1 / min_aspect`` by default); a block
is kept only if it adds at least one new patch and no more than allowed, with ten tries per block.
Blocks are added until the target count is reached or a block cannot be placed, so a mask holds
*at most* the requested number of patches.

Randomness comes from Python's :mod:`random` module, drawn in the order of the official DINOv2
generator (area, aspect, top, left), so the same ``random.seed`` gives the same masks. PyTorch
seeds ``random`` in each DataLoader worker, which makes masking reproducible under a seeded loader.
"""

from __future__ import annotations

import math
import random

import numpy as np


class MaskingGenerator:
    """Random block masks of a ``(height, width)`` patch grid.

    Args:
        input_size: the patch grid, ``(height, width)`` or one int for a square grid.
        num_masking_patches: the default target of :meth:`__call__` (None: 0, no patch).
        min_num_patches: the smallest block area that is drawn (4 in DINOv2). Blocks are rounded
            to whole patches, so a drawn area of 4 may give a 1x3 block at extreme aspects.
        max_num_patches: the largest block area (None: ``num_masking_patches``, or the whole grid
            when that is None too). DINOv2 trains with half the grid.
        min_aspect, max_aspect: bounds of a block's height / width (None: ``1 / min_aspect``).
    """

    def __init__(self, input_size: int | tuple[int, int], num_masking_patches: int | None = None,
                 min_num_patches: int = 4, max_num_patches: float | None = None, min_aspect: float = 0.3,
                 max_aspect: float | None = None):
        height, width = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else input_size
        if height < 1 or width < 1:
            raise ValueError(f"MaskingGenerator: input_size={input_size!r}, expected a patch grid of at least 1x1")
        if not min_aspect > 0 or (max_aspect is not None and not max_aspect > 0):
            raise ValueError(f"MaskingGenerator: aspect bounds must be positive, got min_aspect={min_aspect}, "
                             f"max_aspect={max_aspect}")
        self.height, self.width = int(height), int(width)
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        if max_num_patches is None:
            max_num_patches = num_masking_patches if num_masking_patches is not None else self.num_patches
        self.max_num_patches = max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        lo, hi = (math.exp(a) for a in self.log_aspect_ratio)
        return (f"MaskingGenerator(grid={self.height}x{self.width}, block area {self.min_num_patches} to "
                f"{self.max_num_patches}, aspect {lo:.3f} to {hi:.3f}, default target {self.num_masking_patches})")

    def get_shape(self) -> tuple[int, int]:
        """The patch grid ``(height, width)``."""
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, max_patches: float) -> tuple[int, int, int, int] | None:
        """Mask one block adding between 1 and ``max_patches`` new patches, in up to ten tries.

        Returns the block ``(top, left, h, w)`` or None when no try succeeded. A block must fit
        strictly inside the grid (``h < height`` and ``w < width``, as in the official code).
        """
        for _ in range(10):
            area = random.uniform(self.min_num_patches, max_patches)
            aspect = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w >= self.width or h >= self.height:
                continue
            top = random.randint(0, self.height - h)
            left = random.randint(0, self.width - w)
            block = mask[top:top + h, left:left + w]
            new = h * w - int(block.sum())
            if 0 < new <= max_patches:
                block[...] = True
                return top, left, h, w
        return None

    def __call__(self, num_masking_patches: int | None = None) -> np.ndarray:
        """A bool mask ``(height, width)`` with at most ``num_masking_patches`` patches set, as
        blocks (None: the constructor's ``num_masking_patches``, else 0)."""
        if num_masking_patches is None:
            num_masking_patches = self.num_masking_patches or 0
        mask = np.zeros(self.get_shape(), dtype=bool)
        count = 0
        while count < num_masking_patches:
            allowed = min(num_masking_patches - count, self.max_num_patches)
            if self._add_block(mask, allowed) is None:
                break
            count = int(mask.sum())
        return mask
