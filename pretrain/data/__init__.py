"""Data of the pretraining core: multi-crop augmentation, iBOT block masking, batch collation and
image sources (folders, file lists, scikit-image samples, synthetic scenes).

A DINOv2 pretraining loader::

    aug = DataAugmentationDINO(local_crops_number=8, seed=0)
    data = PretrainDataset("path/to/images", transform=aug)  # or build_dataset(config value, aug)
    masks = MaskingGenerator((16, 16), max_num_patches=0.5 * 16 * 16)
    collate_fn = partial(collate_data_and_cast, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5,
                         dtype=torch.float32, n_tokens=16 * 16, mask_generator=masks)
    loader = DataLoader(data, batch_size=64, shuffle=True, collate_fn=collate_fn, num_workers=8,
                        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(0))
"""

from .augmentations import (PAPER_BLUR_PROBABILITIES, RELEASED_BLUR_PROBABILITIES, BicubicRandomResizedCrop,
                            DataAugmentationDINO, seed_worker)
from .collate import collate_data_and_cast
from .datasets import (SKIMAGE_IMAGES, SOURCE_TYPES, ConcatSource, ImageFiles, ImageSource, PretrainDataset,
                       SyntheticScenes, build_dataset, dominant_class, make_source)
from .masking import MaskingGenerator

__all__ = [
    "BicubicRandomResizedCrop", "ConcatSource", "DataAugmentationDINO", "ImageFiles", "ImageSource", "MaskingGenerator",
    "PAPER_BLUR_PROBABILITIES", "PretrainDataset", "RELEASED_BLUR_PROBABILITIES", "SKIMAGE_IMAGES", "SOURCE_TYPES",
    "SyntheticScenes", "build_dataset", "collate_data_and_cast", "dominant_class", "make_source", "seed_worker",
]
