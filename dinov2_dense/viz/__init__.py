"""Pictures of what the patch features see: PCA maps (:mod:`.pca`), figure grids and overlays
(:mod:`.figures`), video in and out (:mod:`.video`)."""

from .figures import overlay, save_grid, write_image
from .pca import PCABasis, PCAMap, fit_pca, otsu_threshold, pca_maps, pca_video, save_figure, save_maps

__all__ = [
    "PCABasis",
    "PCAMap",
    "fit_pca",
    "otsu_threshold",
    "overlay",
    "pca_maps",
    "pca_video",
    "save_figure",
    "save_grid",
    "save_maps",
    "write_image",
]
