"""What an attribution explains: one scalar per subject, as a function of each modality's input.

A fine-tuning run's score is its fold ensemble's mean recurrence logit (every fold with its own
tabular preprocessor, as ``predict`` uses them); a pretraining run's is the cosine similarity of a
subject's image and clinical-record projections in the space CLIP aligned ("which features and
regions drive the alignment"). Both are a list of ``Member``s (a fold model, or the one pretraining
model) whose scores are averaged, so the tabular Integrated Gradients and the image saliency
(``attribution``, ``saliency``) are written once for both kinds of run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finetune.inference import FoldModels, weights_digest
from multimodal.cohort import Cohort
from multimodal.config import RunConfig
from multimodal.data import MultimodalDataset, VolumeCache, build_dataset, volume_cache
from multimodal.tabular import TabularPreprocessor

Embeddings = dict[str, torch.Tensor]  # modality -> (B, D_m)
ScoreHead = Callable[[Embeddings, "dict[str, torch.Tensor] | None"], torch.Tensor]  # -> (B,)


@dataclass
class Member:
    encoders: dict[str, nn.Module]  # modality -> encoder of its batch input: (B, ...) -> (B, D_m)
    head: ScoreHead  # embeddings (and modality presence) -> (B,) score
    preprocessor: TabularPreprocessor | None  # this member's tabular state (None: no table)


@dataclass
class Scorer:
    what: str  # the score in words, for reports: "recurrence logit" / "image–record similarity"
    members: list[Member]
    modalities: list[str]
    sequences: list[str]
    run_config: RunConfig
    device: torch.device  # where the members' models are
    others: dict[str, dict[str, Any]] = field(default_factory=dict)  # modalities beyond image / table
    pairs_only: bool = False  # the score needs every modality (a similarity): attribute only complete subjects
    _shared: dict[str, list[tuple[nn.Module, list[int]]]] = field(default_factory=dict, repr=False)

    def restricted(self, members: list[int]) -> Scorer:
        """The same score averaged over ``members`` only (e.g. the fold models that never trained on a
        subject: its out-of-fold score, as ``predictions.csv`` holds it)."""
        return replace(self, members=[self.members[i] for i in members], _shared={})

    def cache(self, cohort: Cohort) -> VolumeCache | None:
        """The run's MRI cache for ``cohort`` (None when the run reads no image)."""
        if "image" not in self.modalities:
            return None
        return volume_cache(self.run_config, cohort.config, self.sequences)

    def shared(self, modality: str) -> list[tuple[nn.Module, list[int]]]:
        """Members grouped by identical ``modality`` encoder weights: ``[(encoder, member indices)]``.
        Frozen fine-tuning gives every fold the same pretrained encoder, which then runs once per input
        instead of once per fold (as in ``ensemble_probabilities``)."""
        if modality not in self._shared:
            groups: dict[str, tuple[nn.Module, list[int]]] = {}
            for i, member in enumerate(self.members):
                encoder = member.encoders[modality]
                groups.setdefault(weights_digest(encoder), (encoder, []))[1].append(i)
            self._shared[modality] = list(groups.values())
        return self._shared[modality]

    def dataset(self, cohort: Cohort, member: Member, ids: list[str] | None = None,
                cache: VolumeCache | None = None) -> MultimodalDataset:
        """``cohort`` (or its ``ids``) as ``member`` reads it."""
        return build_dataset(cohort, ids, cache=cache, others=self.others, seed=self.run_config.seed,
                             preprocessor=member.preprocessor if "table" in self.modalities else None)


def fold_scorer(models: FoldModels) -> Scorer:
    """A fine-tuning run's fold ensemble: the mean recurrence logit (survival: log hazard) of its fold models."""
    members = [Member({m: fold.model.encoder(m) for m in fold.model.modalities}, fold.model.forward_from_embeddings,
                      fold.preprocessor) for fold in models.folds]
    device = next(models.folds[0].model.parameters()).device
    what = "log hazard of recurrence" if models.settings.task == "survival" else "recurrence logit"
    return Scorer(what, members, list(models.modalities), list(models.sequences), models.run_config,
                  device, dict(models.others))


def similarity_scorer(model: nn.Module, preprocessor: TabularPreprocessor, sequences: list[str],
                      run_config: RunConfig) -> Scorer:
    """A pretraining run's image–record cosine similarity in its shared projection space
    (``model``: the run's ``PretrainModel``, in eval mode)."""

    def similarity(embeddings: Embeddings, present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        image = F.normalize(model.image_projection(embeddings["image"]), dim=-1)
        table = F.normalize(model.table_projection(embeddings["table"]), dim=-1)
        return (image * table).sum(dim=-1)

    member = Member({"image": model.image_encoder, "table": model.table_encoder}, similarity, preprocessor)
    return Scorer("image–record similarity", [member], ["image", "table"], list(sequences), run_config,
                  next(model.parameters()).device, pairs_only=True)
