"""Embedding-space quality measures logged during pretraining.

* cross-modal retrieval recall@K: for each image, is its own clinical record among the K most
  similar records (and the reverse)? Chance level is K / N.
* alignment and uniformity (Wang & Isola 2020, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere"): alignment = E ||x - y||² over
  positive pairs (lower is better), uniformity = log E exp(-2 ||x - x'||²) over all pairs of one
  modality (lower is more uniform).

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


def embedding_metrics(image: torch.Tensor | None, table: torch.Tensor | None) -> dict[str, float]:
    """All of the above for whichever modalities are present: (N, D) each."""
    metrics: dict[str, float] = {}
    if image is not None:
        metrics["uniformity_image"] = uniformity(image)
    if table is not None:
        metrics["uniformity_table"] = uniformity(table)
    if image is not None and table is not None:
        n = len(image)
        for direction, (q, k) in {"image_to_table": (image, table), "table_to_image": (table, image)}.items():
            for top, value in retrieval_recall(q, k, ks=(1, 5)).items():
                metrics[f"recall@{top}_{direction}"] = value
        metrics["alignment"] = alignment(image, table)
        metrics["chance_recall@1"] = 1.0 / n
        metrics["chance_recall@5"] = min(5.0 / n, 1.0)
        metrics["n"] = float(n)
    return metrics
