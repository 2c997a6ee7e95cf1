"""Embedding-space measures, shared by pretraining (validation metrics) and ``strokessl explain``.

* cross-modal retrieval recall@K: for each image, is its own clinical record among the K most
  similar records (and the reverse)? Chance level is K / N.
* alignment and uniformity (Wang & Isola 2020, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere"): alignment = E ||x - y||² over
  positive pairs (lower is better), uniformity = log E exp(-2 ||x - x'||²) over all pairs of one
  modality (lower is more uniform).

* median rank of the true partner (1 = always first);
* modality gap (Liang et al. 2022, "Mind the Gap"): the distance between the two modalities'
  centroids on the unit sphere, ||mean(x) - mean(y)||; 0 = the clouds overlap.

Hand-written: these are a few lines each and none of our libraries exposes them for two modalities.
"""

from __future__ import annotations

import torch


def retrieval_recall(query: torch.Tensor, keys: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Share of queries whose own key (same row) ranks within the top K by cosine similarity.

    ``query`` and ``keys``: (N, D), row i of each belongs to subject i. Ties count against the
    query (a key must be strictly more similar to outrank the true one).
    """
    query = torch.nn.functional.normalize(query.float(), dim=1)
    keys = torch.nn.functional.normalize(keys.float(), dim=1)
    similarity = query @ keys.T  # (N, N)
    own = similarity.diagonal().unsqueeze(1)  # (N, 1)
    rank = (similarity > own).sum(dim=1)  # how many keys beat the true one
    return {k: float((rank < k).float().mean()) for k in ks}


def median_rank(query: torch.Tensor, keys: torch.Tensor) -> float:
    """Median over queries of the rank (1 = first) of the query's own key among all keys, by cosine
    similarity; ties count against the query, as in ``retrieval_recall``."""
    query = torch.nn.functional.normalize(query.float(), dim=1)
    keys = torch.nn.functional.normalize(keys.float(), dim=1)
    similarity = query @ keys.T
    rank = (similarity > similarity.diagonal().unsqueeze(1)).sum(dim=1) + 1
    return float(rank.float().median())


def modality_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """||mean(x̂) - mean(ŷ)|| of the L2-normalised (N, D) and (M, D) rows: how far apart the modalities sit."""
    x = torch.nn.functional.normalize(x.float(), dim=1)
    y = torch.nn.functional.normalize(y.float(), dim=1)
    return float((x.mean(dim=0) - y.mean(dim=0)).norm())


def alignment(x: torch.Tensor, y: torch.Tensor) -> float:
    """E ||x_i - y_i||² for L2-normalised (N, D) pairs; 0 = perfectly aligned, 4 = opposite."""
    x = torch.nn.functional.normalize(x.float(), dim=1)
    y = torch.nn.functional.normalize(y.float(), dim=1)
    return float((x - y).pow(2).sum(dim=1).mean())


def uniformity(x: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||x_i - x_j||²) over pairs i < j of L2-normalised (N, D) rows."""
    x = torch.nn.functional.normalize(x.float(), dim=1)
    if len(x) < 2:
        return float("nan")
    return float(torch.pdist(x).pow(2).mul(-t).exp().mean().log())


def embedding_metrics(image: torch.Tensor | None, table: torch.Tensor | None,
                      ks: tuple[int, ...] = (1, 5), full: bool = False) -> dict[str, float]:
    """All of the above for whichever modalities are present: (N, D) each, row i the same subject.
    ``full`` adds the median ranks and the modality gap (``strokessl explain``)."""
    metrics: dict[str, float] = {}
    if image is not None:
        metrics["uniformity_image"] = uniformity(image)
    if table is not None:
        metrics["uniformity_table"] = uniformity(table)
    if image is not None and table is not None:
        n = len(image)
        for direction, (q, k) in {"image_to_table": (image, table), "table_to_image": (table, image)}.items():
            for top, value in retrieval_recall(q, k, ks=ks).items():
                metrics[f"recall@{top}_{direction}"] = value
            if full:
                metrics[f"median_rank_{direction}"] = median_rank(q, k)
        metrics["alignment"] = alignment(image, table)
        if full:
            metrics["modality_gap"] = modality_gap(image, table)
        for top in ks:
            metrics[f"chance_recall@{top}"] = min(top / n, 1.0)
        metrics["n"] = float(n)
    return metrics
