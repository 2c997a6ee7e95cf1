"""Time-to-event outcomes: follow-up time and event columns, and the binary label they give at a horizon.

A cohort may name ``time`` (follow-up until the event or the last contact, in ``time_unit``) and
``event`` (1 = recurrence, 0 = none seen) instead of, or beside, a binary label. The run config's
``finetune.horizon`` (with ``finetune.horizon_unit``, months by default) turns them into the binary
label every stage reads: an event at or before the horizon is positive; follow-up that reaches the
horizon without an event (or an event after it) is negative; follow-up that ends before the horizon
without an event is censored, so that subject is **unlabeled** for the binary task (counting them as
negatives would bias every metric) and pretraining may still read it. ``horizon_labels`` says how many
subjects each rule moved; ``validate`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from multimodal.errors import ConfigError

DAYS_PER = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}
TIME_UNITS = tuple(DAYS_PER)


@dataclass(frozen=True)
class Horizon:
    """The binary task's horizon: ``value`` in ``unit`` (one of ``TIME_UNITS``)."""

    value: float
    unit: str = "months"

    def __post_init__(self) -> None:
        if self.unit not in DAYS_PER:
            raise ConfigError(f"finetune.horizon_unit must be one of {list(TIME_UNITS)}, got {self.unit!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not 0 < self.value < 1e6:
            raise ConfigError(f"finetune.horizon must be a positive number (e.g. 12 with horizon_unit: months), "
                              f"got {self.value!r}")

    def in_unit(self, unit: str) -> float:
        """The horizon expressed in ``unit``."""
        return float(self.value) * DAYS_PER[self.unit] / DAYS_PER[unit]

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit}"


def run_horizon(finetune_section: dict[str, Any]) -> Horizon | None:
    """The horizon of a run config's ``finetune`` section (None when ``horizon`` is unset). Every stage
    reads it: the label it defines decides which subjects are labeled, pretraining's rows included."""
    value = finetune_section.get("horizon")
    return None if value is None else Horizon(value, finetune_section.get("horizon_unit", "months"))


def horizon_labels(time: np.ndarray, event: np.ndarray, horizon: float) -> tuple[np.ndarray, dict[str, int]]:
    """The binary label at ``horizon`` (same unit as ``time``) of ``(N,)`` follow-up times and 0/1 events
    (NaN = missing), as ``(N,)`` float 1 / 0 / NaN, and how many subjects each rule gave:
    ``event_by_horizon`` (1), ``followed_past_horizon`` (0: no event by the horizon, event after it
    included), ``censored_before_horizon`` and ``missing_time_or_event`` (both unlabeled)."""
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float)
    missing = np.isnan(time) | np.isnan(event)
    positive = ~missing & (event == 1) & (time <= horizon)
    negative = ~missing & ~positive & (time >= horizon)
    censored = ~missing & ~positive & ~negative
    labels = np.full(len(time), np.nan)
    labels[positive], labels[negative] = 1.0, 0.0
    counts = {"event_by_horizon": int(positive.sum()), "followed_past_horizon": int(negative.sum()),
              "censored_before_horizon": int(censored.sum()), "missing_time_or_event": int(missing.sum())}
    return labels, counts
