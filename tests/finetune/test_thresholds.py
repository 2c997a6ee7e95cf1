"""Decision thresholds: Youden's J and target sensitivity, checked against brute force."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from finetune.thresholds import choose_threshold
from multimodal.errors import ConfigError, StrokeSSLError


def _rates(labels: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``probs >= threshold``, by counting."""
    predicted = probs >= threshold
    sens = np.sum(predicted & (labels == 1)) / np.sum(labels == 1)
    spec = np.sum(~predicted & (labels == 0)) / np.sum(labels == 0)
    return float(sens), float(spec)


def test_youden_hand_example() -> None:
    labels = [0, 0, 0, 0, 1, 0, 1, 1]
    probs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    # J by threshold: 0.8 → 1/3, 0.7 → 2/3, 0.6 → 2/3 − 1/5, 0.5 → 1 − 1/5 (best), 0.4 → 1 − 2/5
    assert choose_threshold(labels, probs) == 0.5


def test_youden_maximises_j_by_brute_force() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(41) < 0.2).astype(int)
    labels[:2] = [0, 1]
    probs = np.round(np.clip(rng.normal(0.3 + 0.3 * labels, 0.2), 0, 1), 2)  # ties included
    threshold = choose_threshold(labels, probs)
    best = max(sum(_rates(labels, probs, t)) - 1 for t in np.unique(probs))
    assert 0.0 <= threshold <= 1.0
    assert sum(_rates(labels, probs, threshold)) - 1 == pytest.approx(best)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_sensitivity_rule_is_highest_threshold_meeting_target(target: float) -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(53) < 0.25).astype(int)
    labels[:2] = [0, 1]
    probs = np.clip(rng.normal(0.3 + 0.2 * labels, 0.2), 0, 1)
    threshold = choose_threshold(labels, probs, "sensitivity", target_sensitivity=target)
    meeting = [t for t in np.unique(probs) if _rates(labels, probs, t)[0] >= target]
    assert _rates(labels, probs, threshold)[0] >= target
    assert threshold == max(meeting)


def test_sensitivity_rule_inside_a_vertical_roc_segment() -> None:
    # All positives score above all negatives: the ROC's first segment is vertical, whose
    # inner points roc_curve drops by default; the answer (0.8) is one of them.
    labels = [1, 1, 1, 1, 0, 0]
    probs = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1]
    assert choose_threshold(labels, probs, "sensitivity", target_sensitivity=0.5) == 0.8
    assert choose_threshold(labels, probs, "sensitivity", target_sensitivity=0.7) == 0.7


def test_single_class_and_bad_arguments_raise() -> None:
    with pytest.raises(StrokeSSLError, match="single class"):
        choose_threshold([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(StrokeSSLError, match="single class"):
        choose_threshold([0, 0], [0.2, 0.5], "sensitivity", target_sensitivity=0.8)
    with pytest.raises(ConfigError, match="needs target_sensitivity"):
        choose_threshold([0, 1], [0.2, 0.5], "sensitivity")
    with pytest.raises(ConfigError, match="outside"):
        choose_threshold([0, 1], [0.2, 0.5], "sensitivity", target_sensitivity=0.0)
    with pytest.raises(ConfigError, match="did you mean 'youden'"):
        choose_threshold([0, 1], [0.2, 0.5], "youdn")
    with pytest.raises(ValueError, match="sigmoid"):
        choose_threshold([0, 1], [-3.0, 2.0])  # logits, not probabilities


def test_a_threshold_that_separates_nothing_names_whose_it_is(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="finetune.thresholds"):
        threshold = choose_threshold([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], name="baseline gradient_boosting")
    assert threshold == 0.5
    assert "baseline gradient_boosting: validation probabilities do not separate the classes" in caplog.text
