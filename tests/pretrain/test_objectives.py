"""Pretraining objectives against independent references written with explicit loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from multimodal.errors import ConfigError, StrokeSSLError
from pretrain.config import PretrainConfig
from pretrain.objectives import (
    EmbeddingQueue,
    clip_loss,
    gumbel_noise,
    itm_loss,
    itm_noise,
    mask_features,
    masked_tabular_loss,
    near_duplicates,
    paired_clip_loss,
    sample_negatives,
    scarf_corrupt,
    scarf_loss,
    simclr_loss,
    table_signature,
)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def reference_clip(image, table, scale, weight, queue=None, ids=None) -> torch.Tensor:
    """InfoNCE by hand: row i's columns are all batch entries plus queue entries of other ids."""
    def direction(rows, columns, queued):
        total = 0.0
        for i in range(len(rows)):
            logits = [scale * torch.dot(rows[i], columns[j]) for j in range(len(columns))]
            if queue is not None:
                logits += [scale * torch.dot(rows[i], queued[k]) for k in range(len(queued))
                           if int(queue[2][k]) != int(ids[i])]
            logits = torch.stack(logits)
            total = total - (logits[i] - torch.logsumexp(logits, 0))
        return total / len(rows)

    q_image, q_table = (queue[0], queue[1]) if queue is not None else (None, None)
    return weight * direction(image, table, q_table) + (1 - weight) * direction(table, image, q_image)


@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("weight", [0.5, 0.2])
def test_clip_matches_loop_reference(batch: int, weight: float) -> None:
    image = unit(batch, 5, seed=1).requires_grad_()
    table = unit(batch, 5, seed=2).requires_grad_()
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    out = clip_loss(image, table, scale, image_weight=weight)
    want = reference_clip(image, table, scale, weight)
    torch.testing.assert_close(out["clip_loss"], want)
    grads = torch.autograd.grad(out["clip_loss"], (image, table, scale))
    want_grads = torch.autograd.grad(want, (image, table, scale))
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)
    assert out["similarity"].shape == (batch, batch) and not out["similarity"].requires_grad
    torch.testing.assert_close(out["similarity"], scale.detach() * image.detach() @ table.detach().T)
    torch.testing.assert_close(out["similarity_t2i"], out["similarity"].T)


def test_clip_known_value_and_symmetry() -> None:
    # orthonormal pairs, scale s: each row has logit s on the positive and 0 elsewhere
    eye = torch.eye(4, dtype=torch.float64)
    value = clip_loss(eye, eye, torch.tensor(10.0, dtype=torch.float64))["clip_loss"]
    assert value.item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 3)))
    image, table = unit(5, 4, seed=3), unit(5, 4, seed=4)
    scale = torch.tensor(3.0, dtype=torch.float64)
    torch.testing.assert_close(clip_loss(image, table, scale)["clip_loss"], clip_loss(table, image, scale)["clip_loss"])
    torch.testing.assert_close(clip_loss(image, table, scale, 0.2)["clip_loss"],
                               clip_loss(table, image, scale, 0.8)["clip_loss"])
    assert not torch.isclose(clip_loss(image, table, scale, 0.0)["clip_loss"],
                             clip_loss(image, table, scale, 1.0)["clip_loss"])


@pytest.mark.parametrize("batch", [1, 3])
def test_clip_with_queue_matches_reference_over_batch_and_queue(batch: int) -> None:
    image, table = unit(batch, 4, seed=5).requires_grad_(), unit(batch, 4, seed=6)
    ids = torch.arange(batch) + 10
    queue = EmbeddingQueue(size=6, dim=4).double()
    # queue holds other subjects and the batch's own subjects (10, 11) from earlier steps
    queue.push(unit(4, 4, seed=7), unit(4, 4, seed=8), torch.tensor([10, 50, 11, 51]))
    scale = torch.tensor(5.0, dtype=torch.float64)
    out = clip_loss(image, table, scale, image_weight=0.3, queue=queue.get(), row_ids=ids)
    want = reference_clip(image, table, scale, 0.3, queue=queue.get(), ids=ids)
    torch.testing.assert_close(out["clip_loss"], want)
    torch.testing.assert_close(torch.autograd.grad(out["clip_loss"], image)[0], torch.autograd.grad(want, image)[0])
    # the queue changes the loss, the similarity stays batch-only
    assert not torch.isclose(out["clip_loss"], clip_loss(image, table, scale, 0.3)["clip_loss"])
    assert out["similarity"].shape == (batch, batch)
    # an empty queue is no queue; a non-empty one needs ids
    empty = EmbeddingQueue(size=6, dim=4).double()
    torch.testing.assert_close(clip_loss(image, table, scale, queue=empty.get())["clip_loss"],
                               clip_loss(image, table, scale)["clip_loss"])
    with pytest.raises(ValueError, match="row_ids"):
        clip_loss(image, table, scale, queue=queue.get())


def test_clip_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="image_weight"):
        clip_loss(unit(2, 3), unit(2, 3), torch.tensor(1.0), image_weight=1.5)
    with pytest.raises(ValueError, match=r"\(B, P\)"):
        clip_loss(unit(2, 3), unit(3, 3), torch.tensor(1.0))


def test_queue_starts_empty_is_fifo_and_restores() -> None:
    queue = EmbeddingQueue(size=5, dim=2)
    image, table, ids = queue.get()
    assert len(queue) == 0 and image.shape == (0, 2) and table.shape == (0, 2) and ids.shape == (0,)
    for step in range(3):  # pushes of 2 rows: values and ids encode the order
        rows = torch.arange(2 * step, 2 * step + 2, dtype=torch.float32)
        queue.push(rows[:, None].expand(2, 2), -rows[:, None].expand(2, 2), rows.long() + 100)
    image, table, ids = queue.get()
    assert len(queue) == 5
    assert ids.tolist() == [101, 102, 103, 104, 105]  # the oldest (100) left first
    assert image[:, 0].tolist() == [1, 2, 3, 4, 5] and table[:, 1].tolist() == [-1, -2, -3, -4, -5]
    restored = EmbeddingQueue(size=5, dim=2)
    restored.load_state_dict(queue.state_dict())
    assert len(restored) == 5 and torch.equal(restored.get()[2], ids)
    big = torch.arange(7, dtype=torch.float32)[:, None].expand(7, 2)
    restored.push(big, big, torch.arange(7))  # a push larger than the queue keeps its newest rows
    assert restored.get()[2].tolist() == [2, 3, 4, 5, 6]
    # push before backward (as a training step may): the loss keeps its own copy of the queue
    features = unit(2, 2, seed=9).float().requires_grad_()
    loss = clip_loss(features, features.detach(), torch.tensor(2.0), queue=queue.get(),
                     row_ids=torch.tensor([0, 1]))["clip_loss"]
    queue.push(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([7, 8]))
    loss.backward()
    with pytest.raises(ValueError, match="ids"):
        queue.push(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="queue_size"):
        EmbeddingQueue(size=0, dim=2)


def test_table_signature_and_near_duplicates() -> None:
    continuous = torch.tensor([[0.5, 2.0], [9.0, -1.0], [0.5, 2.0]])
    categorical = torch.tensor([[1, 0], [2, 3], [1, 0]])
    missing = torch.tensor([[False, False, False, True], [True, False, False, False], [False, False, False, True]])
    signature = table_signature(continuous, categorical, missing, category_sizes=[3, 4])
    assert signature.shape == (3, 2 + 3 + 4 + 4)
    assert signature[1, :2].tolist() == [0.0, -1.0]  # missing continuous → 0
    assert signature[0, 2:5].tolist() == [0, 1, 0] and signature[0, 5:9].tolist() == [1, 0, 0, 0]
    assert signature[1, 5:9].tolist() == [0, 0, 0, 1]
    assert signature[1, 9:].tolist() == [1, 0, 0, 0]
    duplicates = near_duplicates(signature, threshold=0.98)
    assert duplicates.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert near_duplicates(torch.zeros(2, 3), 0.5).diagonal().all()  # an all-zero row is its own duplicate
    with pytest.raises(ValueError, match="category_sizes"):
        table_signature(continuous, categorical, missing, category_sizes=[3])
    with pytest.raises(ValueError, match="outside"):
        table_signature(continuous, categorical, missing, category_sizes=[3, 3])


def test_sampler_respects_eligibility_and_drops_empty_rows() -> None:
    n = 6
    similarity = torch.randn(n, n, generator=torch.Generator().manual_seed(0)) * 3
    similarity.fill_diagonal_(50.0)  # the positive would always win if it were eligible
    eligible = ~torch.eye(n, dtype=torch.bool)
    eligible[1, 2] = eligible[1, 3] = False  # near-duplicates of row 1's positive
    eligible[4] = False  # row 4: nothing eligible
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        choice = sample_negatives(similarity, eligible, gumbel_noise((n, n), generator))
        assert choice[4] == -1
        rows = torch.tensor([i for i in range(n) if i != 4])
        assert eligible[rows, choice[rows]].all()
        assert (choice[rows] != rows).all()


def test_sampler_frequencies_follow_the_softmax() -> None:
    draws = 20_000
    similarity = torch.tensor([[5.0, 1.0, 0.0, -1.0, 2.0, 0.5]]).expand(draws, 6)
    eligible = torch.tensor([[False, True, True, True, True, False]]).expand(draws, 6)
    noise = gumbel_noise((draws, 6), torch.Generator().manual_seed(2))
    counts = torch.bincount(sample_negatives(similarity, eligible, noise), minlength=6).double() / draws
    expected = torch.zeros(6, dtype=torch.float64)
    expected[1:5] = torch.softmax(torch.tensor([1.0, 0.0, -1.0, 2.0], dtype=torch.float64), 0)
    assert counts[0] == 0 and counts[5] == 0
    torch.testing.assert_close(counts, expected, atol=0.015, rtol=0)  # std of a share ≤ 0.0036
    assert counts[4] > counts[1] > counts[2] > counts[3]  # harder negatives drawn more often


def test_itm_hard_fraction_mixes_mined_and_uniform_negatives() -> None:
    batch, dim = 8, 4
    image_tokens, table_tokens = torch.randn(batch, 2, dim), torch.randn(batch, 3, dim)
    similarity = torch.full((batch, batch), -30.0)
    similarity[torch.arange(batch), (torch.arange(batch) + 1) % batch] = 30.0  # one obvious hard column per row
    picked: list[torch.Tensor] = []

    def match(tables: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        picked.append(tables[batch:2 * batch, 0, 0])  # the negative tables drawn for the images
        return torch.zeros(tables.shape[0], 2)

    signature = torch.eye(batch)
    hard_share = {}
    for fraction in (1.0, 0.0, 0.5):
        hits = 0
        for step in range(100):
            picked.clear()
            itm_loss(image_tokens, table_tokens, match, similarity, similarity, signature,
                     *itm_noise(batch, seed=0, step=step), gather=False, hard_fraction=fraction)
            hits += int((picked[0] == table_tokens[(torch.arange(batch) + 1) % batch, 0, 0]).sum())
        hard_share[fraction] = hits / (100 * batch)
    assert hard_share[1.0] == 1.0  # every row mined: always the similar column
    assert hard_share[0.0] < 0.3  # uniform over 7 eligible columns: ~1/7
    assert 0.45 < hard_share[0.5] < 0.65  # half mined (1/2) + half uniform (1/14)


def test_itm_noise_rank_rows_are_slices_of_the_global_noise() -> None:
    whole_i2t, whole_t2i = itm_noise(6, seed=3, step=11)
    for rank in range(2):
        part_i2t, part_t2i = itm_noise(3, seed=3, step=11, rank=rank, world_size=2)
        assert torch.equal(part_i2t, whole_i2t[3 * rank:3 * rank + 3])
        assert torch.equal(part_t2i, whole_t2i[3 * rank:3 * rank + 3])
    assert not torch.equal(itm_noise(6, seed=3, step=12)[0], whole_i2t)


def itm_inputs(batch: int):
    """Tokens whose first entry is the subject index, so the pairs fed to the head are readable."""
    image = torch.randn(batch, 2, 4, generator=torch.Generator().manual_seed(4), requires_grad=True)
    table = torch.randn(batch, 3, 4, generator=torch.Generator().manual_seed(5), requires_grad=True)
    index = torch.arange(batch, dtype=torch.float32)[:, None].expand(batch, 2)
    image_tokens = torch.cat([index[:, :, None], image], dim=2)
    table_tokens = torch.cat([index[:, :1, None].expand(batch, 3, 1), table], dim=2)
    head = torch.nn.Linear(8, 2)
    seen = []

    def match(tables: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        seen.append(torch.stack([tables[:, 0, 0], images[:, 0, 0]], dim=1).long())
        return head(torch.cat([tables[:, :, 1:].mean(1), images[:, :, 1:].mean(1)], dim=1))

    return image_tokens, table_tokens, match, seen, (image, table, head)


def test_itm_loss_pairs_never_false_negatives_and_drop_empty_rows() -> None:
    batch = 5
    # rows 0 and 1 share a clinical record; row 4 duplicates everything (threshold 0.5)
    signature = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0.1, 1.0], [1.0, 1.0]])
    duplicates = near_duplicates(signature, 0.5)
    image_tokens, table_tokens, match, seen, leaves = itm_inputs(batch)
    for step in range(30):
        similarity = torch.randn(batch, batch, generator=torch.Generator().manual_seed(step))
        out = itm_loss(image_tokens, table_tokens, match, similarity, similarity.T.contiguous(), signature,
                       *itm_noise(batch, seed=0, step=step), duplicate_threshold=0.5, gather=False)
        pairs = seen[-1]
        assert pairs.shape[0] == 3 * batch - 2  # row 4 has no negative in either direction
        assert torch.equal(pairs[:batch], torch.arange(batch)[:, None].expand(batch, 2))
        negatives = pairs[batch:]
        assert (negatives[:, 0] != negatives[:, 1]).all()
        assert not duplicates[negatives[:, 0], negatives[:, 1]].any()  # no near-duplicate record
        assert torch.isfinite(out["itm_loss"]) and 0.0 <= out["itm_accuracy"] <= 1.0
    # gradients reach both token sets and the head
    out["itm_loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (leaves[0], leaves[1], leaves[2].weight))


def test_itm_loss_is_the_mean_over_kept_pairs() -> None:
    batch = 3
    signature = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0]])  # row 2: no eligible negative
    image_tokens = torch.randn(batch, 2, 4)
    table_tokens = torch.randn(batch, 3, 4)
    logits_seen = []

    def match(tables: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([tables.sum((1, 2)), images.sum((1, 2))], dim=1)
        logits_seen.append(logits)
        return logits

    similarity = torch.zeros(batch, batch)
    out = itm_loss(image_tokens, table_tokens, match, similarity, similarity, signature,
                   *itm_noise(batch, seed=1, step=0), duplicate_threshold=0.5, gather=False)
    logits = logits_seen[0]
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    assert logits.shape[0] == 7
    torch.testing.assert_close(out["itm_loss"], F.cross_entropy(logits, labels))
    torch.testing.assert_close(out["itm_accuracy"], (logits.argmax(1) == labels).float().mean())
    with pytest.raises(ValueError, match="similarities"):
        itm_loss(image_tokens, table_tokens, match, similarity[:, :2], similarity, signature,
                 *itm_noise(batch, seed=1, step=0), gather=False)


def test_simclr_matches_lightly() -> None:
    view1, view2 = torch.randn(5, 8), torch.randn(5, 8)
    want = NTXentLoss(temperature=0.2)(view1, view2)
    torch.testing.assert_close(simclr_loss(view1, view2, temperature=0.2)["simclr_loss"], want)
    torch.testing.assert_close(scarf_loss(view1, view2, temperature=0.2)["scarf_loss"], want)
    with pytest.raises(ValueError, match="temperature"):
        simclr_loss(view1, view2, temperature=0.0)


def test_scarf_replaces_a_share_of_features_from_the_pool() -> None:
    rows, n_cont, n_cat, pool_rows, rate = 64, 6, 4, 20, 0.3
    generator = torch.Generator().manual_seed(0)
    continuous = torch.randn(rows, n_cont, generator=generator)  # batch values ∈ (−∞, ∞), pool values ≥ 100
    categorical = torch.zeros(rows, n_cat, dtype=torch.long)
    missing = torch.zeros(rows, n_cont + n_cat, dtype=torch.bool)
    pool = {
        "continuous": 100 + torch.arange(pool_rows * n_cont, dtype=torch.float32).view(pool_rows, n_cont),
        "categorical": 1 + torch.arange(pool_rows)[:, None].expand(pool_rows, n_cat) % 3,
        "missing": torch.rand(pool_rows, n_cont + n_cat, generator=generator) < 0.3,
    }
    out = scarf_corrupt(continuous, categorical, missing, pool, rate, torch.Generator().manual_seed(1))
    changed = torch.cat([out["continuous"] != continuous, out["categorical"] != categorical], dim=1)
    assert (changed.sum(1) == round(rate * (n_cont + n_cat))).all()
    assert changed.float().mean().item() == pytest.approx(rate, abs=0.05)
    for j in range(n_cont):  # a replaced value is the same feature's value in some pool row
        donors = out["continuous"][changed[:, j], j]
        assert torch.isin(donors, pool["continuous"][:, j]).all()
        # the missing flag comes from the same donor row
        donor_rows = ((donors - 100 - j) / n_cont).long()
        assert torch.equal(out["missing"][changed[:, j], j], pool["missing"][donor_rows, j])
    assert torch.equal(out["continuous"][~changed[:, :n_cont]], continuous[~changed[:, :n_cont]])
    assert not out["missing"][~changed].any()
    assert out["categorical"][changed[:, n_cont:]].ge(1).all()
    with pytest.raises(ValueError, match="scarf_corruption"):
        scarf_corrupt(continuous, categorical, missing, pool, 1.5, generator)


def test_mask_features_chooses_present_features_only() -> None:
    missing = torch.rand(50, 10, generator=torch.Generator().manual_seed(0)) < 0.4
    missing[0] = True  # an all-missing row gets no mask
    mask = mask_features(missing, 0.3, torch.Generator().manual_seed(1))
    assert not (mask & missing).any()
    present = (~missing).sum(1)
    expected = torch.where(present > 0, (present * 0.3).round().long().clamp(min=1), 0)
    assert torch.equal(mask.sum(1), expected)


def test_masked_tabular_loss_targets_masked_present_values_only() -> None:
    continuous = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    categorical = torch.tensor([[1], [2]])
    missing = torch.tensor([[False, True, False], [False, False, True]])
    mask = torch.tensor([[True, True, True], [False, True, True]])  # (0,1) and (1,2) are missing
    pred = torch.zeros(2, 2, requires_grad=True)
    logits = [torch.zeros(2, 3, requires_grad=True)]
    loss = masked_tabular_loss(pred, logits, continuous, categorical, missing, mask)["masked_tabular_loss"]
    # targets: continuous (0,0) = 1 and (1,1) = 4, categorical row 0 = class 1 of 3 uniform logits
    assert loss.item() == pytest.approx((1.0 + 16.0 + math.log(3)) / 3)
    loss.backward()
    assert pred.grad[0, 1] == 0 and pred.grad[1, 0] == 0  # missing / unmasked: no target
    assert logits[0].grad[1].abs().sum() == 0
    nothing = masked_tabular_loss(pred, logits, continuous, categorical, missing, torch.zeros_like(mask))
    assert nothing["masked_tabular_loss"].item() == 0.0 and nothing["masked_tabular_loss"].requires_grad


def test_the_config_check_suggests_the_nearest_objective_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'scarf'"):
        PretrainConfig(objectives={"scraf": 1.0})
    with pytest.raises(ConfigError, match="did you mean 'clip'"):
        PretrainConfig(objectives={"clp": 1.0})


def test_paired_clip_is_symmetric_clip_over_the_rows_having_both():
    torch.manual_seed(0)
    a, b = (torch.nn.functional.normalize(torch.randn(6, 4), dim=1) for _ in range(2))
    scale = torch.tensor(5.0)
    valid = torch.tensor([True, False, True, True, False, True])
    full = paired_clip_loss(a, b, scale, torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(full, clip_loss(a, b, scale, image_weight=0.5, gather=False)["clip_loss"])
    subset = clip_loss(a[valid], b[valid], scale, image_weight=0.5, gather=False)["clip_loss"]
    torch.testing.assert_close(paired_clip_loss(a, b, scale, valid), subset)
    lonely = a.clone().requires_grad_()
    zero = paired_clip_loss(lonely, b, scale, torch.tensor([True, False, False, False, False, False]))
    zero.backward()
    assert zero.item() == 0.0 and lonely.grad is not None and lonely.grad.abs().sum() == 0


def _epoch(losses, log_every=10, accumulate=1, slopes=None):
    """train_one_epoch over a fake step whose loss at forward call k is ``losses[k]`` (and a second
    term) plus ``slopes[k] * w`` (zero at w's start value 0)."""
    import contextlib

    from pretrain.loop import train_one_epoch

    slopes = slopes or [0.0] * len(losses)

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, batch, step):
            loss = self.w * slopes[step] + losses[step]
            return {"loss": loss, "clip_loss": loss * 2}

    fake = Fake()
    optimizer = torch.optim.SGD(fake.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    settings = PretrainConfig(epochs=1, log_every=log_every, grad_clip=0.0, accumulate_steps=accumulate)
    batches = [{"index": torch.arange(2)}] * len(losses)
    step, means = train_one_epoch(fake, fake, batches, optimizer, scheduler, torch.amp.GradScaler(enabled=False),
                                  contextlib.nullcontext, settings, 0, 0, None, torch.device("cpu"))
    return step, means, float(fake.w.detach())


def test_an_epoch_reports_the_mean_of_its_steps_and_stops_on_a_non_finite_loss():
    step, means, _ = _epoch([1.0, 2.0, 4.0, 5.0])
    assert step == 4 and means["loss"] == pytest.approx(3.0) and means["clip_loss"] == pytest.approx(6.0)
    assert means["subjects_per_s"] > 0 and 0 <= means["data_wait_share"] <= 1
    # a NaN at step 2 between two reads is still caught before the epoch returns (before any checkpoint)
    with pytest.raises(StrokeSSLError, match="non-finite by epoch 1, step 4"):
        _epoch([1.0, 2.0, float("nan"), 5.0])


def test_accumulation_steps_once_per_group_on_the_mean_gradient_and_drops_the_tail():
    # 5 micro-batches, 2 per step: two SGD steps (lr 1) on the mean gradient of each pair; the 5th is not trained
    step, means, w = _epoch([0.0] * 5, accumulate=2, slopes=[1.0, 3.0, 10.0, 20.0, 1000.0])
    assert step == 2
    assert w == pytest.approx(-(1.0 + 3.0) / 2 - (10.0 + 20.0) / 2)
    # the mean over the 4 trained micro-batches: w = 0, 0, then -2 after the first step: 0, 0, -20, -40
    assert means["loss"] == pytest.approx(-15.0)
