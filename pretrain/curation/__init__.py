"""Data curation before pretraining (DINOv2's pipeline; Vo et al. 2024 for the clustering):
embed an image pool, remove near-duplicates, retrieve around curated seeds, cluster with
hierarchical k-means and resampling, and sample a balanced subset.

    dinov2-dense curate my_images --target 100000 --out curated --model dinov2_vits14
    # then, in a pretraining config: train = dict(dataset="curated/selected.txt", ...)
"""

from .dedup import DedupResult, build_index, deduplicate, retrieve, similar_pairs
from .kmeans import HierarchicalClusters, KMeansResult, assign, balanced_sample, hierarchical_kmeans, kmeans
from .pipeline import curate, default_clusters, normalized_entropy
from .store import CurationError, EmbeddingStore, embed_images, list_images, load_embeddings

__all__ = [
    "CurationError", "DedupResult", "EmbeddingStore", "HierarchicalClusters", "KMeansResult", "assign",
    "balanced_sample", "build_index", "curate", "deduplicate", "default_clusters", "embed_images",
    "hierarchical_kmeans", "kmeans", "list_images", "load_embeddings", "normalized_entropy", "retrieve",
    "similar_pairs",
]
