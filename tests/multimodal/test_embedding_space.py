import math

import pytest
import torch

from multimodal.embedding_space import alignment, embedding_metrics, retrieval_recall, uniformity


def reference_recall(query, keys, k):
    hits = 0
    for i in range(len(query)):
        sims = [float(torch.nn.functional.cosine_similarity(query[i], keys[j], dim=0)) for j in range(len(keys))]
        better = sum(1 for j, s in enumerate(sims) if s > sims[i])
        hits += better < k
    return hits / len(query)


@pytest.mark.parametrize("n", [1, 7, 30])
def test_recall_matches_a_loop_reference(n):
    torch.manual_seed(n)
    query, keys = torch.randn(n, 5), torch.randn(n, 5)
    got = retrieval_recall(query, keys, ks=(1, 5))
    for k in (1, 5):
        assert got[k] == pytest.approx(reference_recall(query, keys, k))


def test_recall_is_one_for_identical_and_near_chance_for_random():
    x = torch.randn(200, 16)
    assert retrieval_recall(x, x * 3.0, ks=(1,))[1] == 1.0
    torch.manual_seed(0)
    chance = [retrieval_recall(torch.randn(200, 16), torch.randn(200, 16), ks=(5,))[5] for _ in range(20)]
    assert sum(chance) / 20 == pytest.approx(5 / 200, abs=0.01)


def test_alignment_and_uniformity_reference_values():
    x = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    assert alignment(x, x) == pytest.approx(0.0, abs=1e-6)
    assert alignment(x, -x) == pytest.approx(4.0, abs=1e-5)
    pairs = [(i, j) for i in range(10) for j in range(i + 1, 10)]
    expected = math.log(sum(math.exp(-2 * float((x[i] - x[j]).pow(2).sum())) for i, j in pairs) / len(pairs))
    assert uniformity(x) == pytest.approx(expected, rel=1e-5)
    collapsed = torch.ones(10, 4)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-6)


def test_embedding_metrics_keys_per_modality():
    x = torch.randn(12, 3)
    both = embedding_metrics(x, x + 0.01)
    assert both["recall@1_image_to_table"] == 1.0 and both["chance_recall@5"] == 5 / 12
    assert set(embedding_metrics(x, None)) == {"uniformity_image"}


def test_median_rank_and_modality_gap_against_references():
    from multimodal.embedding_space import median_rank, modality_gap

    torch.manual_seed(0)
    x, y = torch.randn(9, 4), torch.randn(9, 4)
    ranks = []
    for i in range(9):
        sims = torch.nn.functional.cosine_similarity(x[i : i + 1], y)
        ranks.append(1 + int((sims > sims[i]).sum()))
    assert median_rank(x, y) == float(sorted(ranks)[4])
    assert median_rank(x, x * 2.0) == 1.0
    shifted = torch.nn.functional.normalize(torch.randn(50, 4), dim=1)
    assert modality_gap(shifted, shifted) == pytest.approx(0.0, abs=1e-6)
    one, minus = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]])
    assert modality_gap(one, minus) == pytest.approx(2.0)
