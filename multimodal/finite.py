"""The one check that a computed score, embedding or volume is finite, naming the subject.

A NaN compared with a threshold is False, so a non-finite probability would silently become
the "low" risk group; every stage that makes per-subject numbers (preprocessed volumes,
embeddings, probabilities) calls ``require_finite`` where they are made.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from multimodal.errors import NonFiniteError

# What to check when a model's output is not finite (the inputs are checked where they are made).
NON_FINITE_ADVICE = ("check that subject's clinical values for extreme numbers, and rerun the training if its "
                     "weights diverged; nothing was written")


def require_finite(values: np.ndarray | torch.Tensor, ids: Sequence[str], what: str, advice: str) -> None:
    """Raise ``NonFiniteError`` naming the first subject of ``ids`` whose row of ``values``
    ((N, ...), row i = ``ids[i]``) holds a NaN or infinity; ``what`` names the numbers (e.g. "the
    probability of fold model r0f1"), ``advice`` says what to do."""
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.size == 0:
        return
    bad = ~np.isfinite(array.reshape(len(array), -1).astype(np.float64)).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        more = f" (and {int(bad.sum()) - 1} more subject(s))" if bad.sum() > 1 else ""
        raise NonFiniteError(f"subject {ids[first]!r}: {what} is NaN or infinite{more}; {advice}")
