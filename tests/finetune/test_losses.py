"""Imbalance-aware losses against independent references (Python ``math`` / NumPy formulas
written from the papers), plus the registry and the balanced sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune.losses import (
    LOSSES,
    ClassBalancedLoss,
    FocalLoss,
    LogitAdjustedLoss,
    WeightedBCELoss,
    balanced_sampler,
    create_loss,
    effective_number_weights,
    loss_arguments,
    positive_weight,
    register_loss,
)
from multimodal.errors import CohortError, ConfigError

BATCH_SIZES = [1, 2, 7]  # batch 1 and an odd size (lightly-style)


def _batch(size: int, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits (B,) and 0/1 targets (B,) with at least one positive when B > 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=size)
    targets = (rng.random(size) < 0.3).astype(np.float64)
    targets[0] = 1.0
    return torch.tensor(logits), torch.tensor(targets)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _bce_reference(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 1.0) -> float:
    """mean of −w·y·log σ(z) − (1 − y)·log(1 − σ(z)), one subject at a time."""
    terms = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        p = _sigmoid(z)
        terms.append(-pos_weight * y * math.log(p) - (1.0 - y) * math.log(1.0 - p))
    return sum(terms) / len(terms)


def _focal_reference(logits: np.ndarray, targets: np.ndarray, gamma: float,
                     alpha: float | None) -> np.ndarray:
    """Per-subject −α_t (1 − p_t)^γ log p_t (Lin et al. eq. 5) in NumPy."""
    p = 1.0 / (1.0 + np.exp(-logits))
    p_t = np.where(targets == 1, p, 1.0 - p)
    alpha_t = 1.0 if alpha is None else np.where(targets == 1, alpha, 1.0 - alpha)
    return -alpha_t * (1.0 - p_t) ** gamma * np.log(p_t)


# --------------------------------------------------------------------------- weighted BCE


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_weighted_bce_matches_hand_formula(size: int) -> None:
    logits, targets = _batch(size)
    loss = WeightedBCELoss(pos_weight=4.5)(logits, targets)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_bce_reference(logits, targets, 4.5), rel=1e-10)


def test_positive_weight_and_loss_arguments() -> None:
    labels = [0, 0, 0, 0, 0, 0, 1, 1]
    assert positive_weight(labels) == 3.0
    assert loss_arguments("weighted_bce", labels) == {"pos_weight": 3.0}
    assert loss_arguments("class_balanced", np.array(labels)) == {"samples_per_class": (6, 2)}
    assert loss_arguments("logit_adjusted", torch.tensor(labels)) == {"prior": 0.25}
    assert loss_arguments("focal", labels) == {}
    with pytest.raises(CohortError, match="single class"):
        positive_weight([0, 0, 0])
    with pytest.raises(CohortError, match="only 0 and 1"):
        positive_weight([0, 1, 2])


# --------------------------------------------------------------------------- focal


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_focal_gamma_zero_without_alpha_is_bce(size: int) -> None:
    logits, targets = _batch(size, seed=1)
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, targets), expected, rtol=1e-12)


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_focal_matches_numpy_reference(size: int) -> None:
    logits, targets = _batch(size, seed=2)
    expected = _focal_reference(logits.numpy(), targets.numpy(), gamma=2.0, alpha=0.25).mean()
    loss = FocalLoss(gamma=2.0, alpha=0.25)(logits, targets)
    assert loss.item() == pytest.approx(float(expected), rel=1e-10)


def test_focal_down_weights_easy_examples() -> None:
    # Positives from hard (z = −2) to easy (z = 6): focal / BCE = (1 − p_t)^γ shrinks with p_t.
    logits = torch.tensor([-2.0, 0.0, 2.0, 4.0, 6.0], dtype=torch.float64)
    focal = torch.stack([FocalLoss()(z[None], torch.ones(1, dtype=torch.float64)) for z in logits])
    bce = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    ratio = focal / bce
    assert torch.all(ratio[1:] < ratio[:-1])
    assert ratio[-1] < 1e-4 < 0.5 < ratio[0]  # easy nearly ignored, hard almost full weight


# --------------------------------------------------------------------------- class-balanced


def test_class_balanced_weights_match_paper_formula() -> None:
    counts, beta = (900, 100), 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [2 * w / sum(raw) for w in raw]
    weights = effective_number_weights(counts, beta)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.sum().item() == pytest.approx(2.0)
    assert weights[1] > weights[0]  # the rare class weighs more


def test_class_balanced_beta_zero_gives_equal_weights_and_bce() -> None:
    assert effective_number_weights((900, 100), 0.0).tolist() == [1.0, 1.0]
    logits, targets = _batch(5, seed=3)
    loss = ClassBalancedLoss((900, 100), beta=0.0)(logits, targets)
    assert loss.item() == pytest.approx(_bce_reference(logits, targets), rel=1e-6)


@pytest.mark.parametrize("base", ["bce", "focal"])
@pytest.mark.parametrize("size", BATCH_SIZES)
def test_class_balanced_loss_matches_reference(base: str, size: int) -> None:
    counts, beta, gamma = (80, 20), 0.999, 2.0
    raw = np.array([(1 - beta) / (1 - beta**n) for n in counts])
    w = 2 * raw / raw.sum()
    logits, targets = _batch(size, seed=4)
    z, y = logits.numpy(), targets.numpy()
    per_subject = _focal_reference(z, y, gamma if base == "focal" else 0.0, alpha=None)
    expected = (np.where(y == 1, w[1], w[0]) * per_subject).mean()
    loss = ClassBalancedLoss(counts, beta=beta, base=base, gamma=gamma)(logits, targets)
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)


# --------------------------------------------------------------------------- logit-adjusted


@pytest.mark.parametrize("size", BATCH_SIZES)
def test_logit_adjusted_is_bce_on_shifted_logits(size: int) -> None:
    prior, tau = 0.15, 1.5
    logits, targets = _batch(size, seed=5)
    shift = tau * (math.log(prior) - math.log(1 - prior))
    expected = _bce_reference(logits + shift, targets)
    loss = LogitAdjustedLoss(prior=prior, tau=tau)(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_logit_adjusted_tau_zero_is_bce() -> None:
    logits, targets = _batch(7, seed=6)
    loss = LogitAdjustedLoss(prior=0.1, tau=0.0)(logits, targets)
    assert loss.item() == pytest.approx(_bce_reference(logits, targets), rel=1e-10)


# --------------------------------------------------------------------------- all losses


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_loss_has_finite_gradients_for_extreme_logits(name: str, dtype: torch.dtype) -> None:
    labels = [0, 0, 0, 0, 1]
    loss_fn = create_loss(name, **loss_arguments(name, labels))
    logits = torch.tensor([50.0, -50.0, 50.0, -50.0, 0.0], dtype=dtype, requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])  # confidently right, then wrong
    loss = loss_fn(logits, targets)
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss)
    assert logits.grad is not None and torch.all(torch.isfinite(logits.grad))
    assert logits.grad[3] < 0 < logits.grad[2]  # wrong answers are pushed the right way


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_data_arguments_are_buffers(name: str) -> None:
    loss_fn = create_loss(name, **loss_arguments(name, [0, 0, 1]))
    assert not list(loss_fn.parameters())  # nothing for the optimiser to change
    assert set(loss_fn.state_dict()) == {name for name, _ in loss_fn.named_buffers()}
    loss_fn.to(torch.float64)  # buffers follow the module (dtype here; device alike)
    assert all(buffer.dtype == torch.float64 for buffer in loss_fn.buffers())


def test_registry_errors() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'focal'\?.*\['bce', 'class_balanced'"):
        create_loss("focall")
    with pytest.raises(ConfigError, match=r"'focal': unknown argument 'gama' \(did you mean 'gamma'"):
        create_loss("focal", gama=2.0)
    with pytest.raises(ConfigError, match=r"loss 'logit_adjusted'.*prior"):
        create_loss("logit_adjusted")  # the prior is required: no silent default
    with pytest.raises(ConfigError, match=r"loss 'focal': alpha=1\.5"):
        create_loss("focal", alpha=1.5)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("focal")(FocalLoss)
    assert create_loss("focal", alpha=None).alpha is None  # None kwargs fall back to defaults


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: WeightedBCELoss(pos_weight=0.0), "pos_weight=0.0"),
        (lambda: FocalLoss(gamma=-1.0), "gamma=-1.0"),
        (lambda: ClassBalancedLoss((10, 0)), "samples_per_class"),
        (lambda: ClassBalancedLoss((10, 5), beta=1.0), "beta=1.0"),
        (lambda: ClassBalancedLoss((10, 5), base="ce"), "base='ce'"),
        (lambda: LogitAdjustedLoss(prior=0.0), "prior=0.0"),
        (lambda: LogitAdjustedLoss(prior=0.2, tau=float("nan")), "tau=nan"),
    ],
)
def test_constructors_validate_arguments(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_forward_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"squeeze"):
        FocalLoss()(torch.zeros(4, 1), torch.zeros(4))


# --------------------------------------------------------------------------- sampler


def test_balanced_sampler_draws_half_positives() -> None:
    labels = np.array([1] * 10 + [0] * 90)
    sampler = balanced_sampler(labels, torch.Generator().manual_seed(0))
    assert sampler.replacement and sampler.num_samples == len(labels)
    draws = np.concatenate([list(sampler) for _ in range(30)])  # 3,000 indices
    assert abs(labels[draws].mean() - 0.5) < 0.04  # ≈ 3.5 standard errors
    with pytest.raises(CohortError, match="single class"):
        balanced_sampler([0, 0, 0])
