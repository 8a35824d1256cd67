"""Pictures of what the patch features see: PCA maps (:mod:`.pca`), label and depth colouring
(:mod:`.colour`), figure grids and overlays (:mod:`.figures`), video in and out (:mod:`.video`)."""

from .colour import colour_depth, colour_labels
from .figures import overlay, save_curves, save_grid, write_image
from .pca import (ForegroundSplit, PCABasis, PCAMap, PCAMapStream, colour_basis, fit_pca, foreground_split,
                  otsu_threshold, pca_map_stream, pca_maps, pca_video, save_figure, save_maps)

__all__ = [
    "ForegroundSplit",
    "PCABasis",
    "PCAMap",
    "PCAMapStream",
    "colour_basis",
    "colour_depth",
    "colour_labels",
    "fit_pca",
    "foreground_split",
    "otsu_threshold",
    "overlay",
    "pca_map_stream",
    "pca_maps",
    "pca_video",
    "save_curves",
    "save_figure",
    "save_grid",
    "save_maps",
    "write_image",
]
