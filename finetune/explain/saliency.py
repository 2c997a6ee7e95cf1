"""Where in the MRI a run looks: occlusion, Grad-CAM and slice attributions, on the subject's own grid.

Every map explains the ``Scorer``'s score (a fine-tuning run's mean fold logit, a pretraining run's
image–record similarity) for one subject, with the clinical record and other modalities held at
the subject's own, averaged over the members (fold models):

* ``occlusion`` (Captum ``Occlusion``): a cube (``window`` voxels, as its step) slides over the
  preprocessed volume; the tissue inside it (the cache's head mask) is set to the head's mean intensity (0 after the
  per-channel z-score) in every channel, the background left as it is; the map is how much the
  score drops. Signed: positive = the region raised the score; 0 in the air around the head.
* ``grad_cam`` (Captum ``LayerGradCam``, upsampled with ``LayerAttribution.interpolate``): for the
  3D ResNet, on the last stage whose feature map still has ``min_size`` voxels per axis: the last
  stage itself on clinical grids (≥ 128³), an earlier one on CPU-sized grids (at 32³ the last stage is
  1×1×1, where a class-activation map has nothing to localise); for the slice ResNet+LSTM, per
  slice on the 2D ResNet's stage chosen the same way. Non-negative, as Grad-CAM is.
* ``slice_attributions`` (slice ResNet+LSTM only; Captum ``LayerIntegratedGradients`` on the LSTM's
  input): what each axial slice's feature vector adds to the score relative to an empty (zero)
  volume, with the convergence delta.

``to_original_grid`` brings a map from the preprocessed grid (whose voxel-to-world affine the cache
keeps) back onto the grid of the subject's own NIfTI (nibabel ``resample_from_to``: crop, spacing
and orientation undone in one resampling), so it opens over the input in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam, LayerIntegratedGradients, Occlusion
from nibabel.processing import resample_from_to
from torch import nn

from finetune.explain.scorer import Scorer
from multimodal.checkpoint import atomic_path
from multimodal.cohort import Cohort
from multimodal.data import to_device
from multimodal.encoders.slices import SliceSequenceEncoder
from multimodal.errors import StrokeSSLError

VolumeScore = Callable[[torch.Tensor], torch.Tensor]  # (n, C, H, W, D) -> (n,)


@dataclass
class ImageScore:
    score: VolumeScore  # the mean score of a group of members sharing one image encoder
    encoder: nn.Module  # that encoder
    weight: float  # the group's share of the members


def subject_image(scorer: Scorer, cohort: Cohort, subject: str, randomised: bool = False
                  ) -> tuple[dict[str, np.ndarray], list[ImageScore]]:
    """The subject's preprocessed volume ``{"image": (C, H, W, D), "affine": (4, 4), "head_mask": (H, W, D)
    bool}`` and its score as a
    function of the volume alone (other modalities fixed at the subject's own), one per group of members
    sharing an image encoder; the scorer's score is the weighted sum of the groups'. ``randomised``: the
    same with each image encoder re-initialised (a copy; the model randomisation check)."""
    if "image" not in scorer.modalities:
        raise StrokeSSLError("this run reads no MRI: there is no image saliency to compute")
    if subject not in cohort.ids:
        raise StrokeSSLError(f"--subject {subject!r} is not in cohort {cohort.config.source}")
    cache = scorer.cache(cohort)
    record = cohort.records([subject])[0]
    if not cache.has_image(record):
        raise StrokeSSLError(f"subject {subject!r} has no image to explain")
    cached = cache.load(record)
    device = scorer.device
    fixed, present = [], []
    for member in scorer.members:
        item = scorer.dataset(cohort, member, [subject])[0]
        batch = to_device({m: _batched(item[m]) for m in member.encoders if m != "image"}, device)
        with torch.no_grad():
            fixed.append({m: member.encoders[m](batch[m]) for m in batch})
        # The subject's own modality presence, so a missing record is scored as predict scores it.
        present.append({m: flag.reshape(1).to(device) for m, flag in item["present"].items()})
    groups = []
    for encoder, indices in scorer.shared("image"):
        if randomised:
            encoder = randomised_copy(encoder)

        def score(volumes: torch.Tensor, encoder: nn.Module = encoder, indices: list[int] = indices) -> torch.Tensor:
            n = volumes.shape[0]
            embedded = encoder(volumes)
            scores = []
            for i in indices:
                embeddings = {m: e.expand(n, -1) for m, e in fixed[i].items()}
                flags = {m: f.expand(n) for m, f in present[i].items()}
                scores.append(scorer.members[i].head({**embeddings, "image": embedded}, flags))
            return torch.stack(scores).mean(dim=0)

        groups.append(ImageScore(score, encoder, len(indices) / len(scorer.members)))
    image = {"image": cached["image"].numpy(), "affine": cached["affine"].numpy().astype(np.float64)}
    image["head_mask"] = cached["head_mask"].numpy().astype(bool)
    return image, groups


def randomised_copy(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``encoder`` with every parameter re-initialised (``reset_parameters``), seeded."""
    copy = deepcopy(encoder)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for module in copy.modules():
        if module is not copy and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    torch.random.set_rng_state(generator_state)
    return copy.eval()


def _batched(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v[None] for k, v in value.items()}
    return value[None]


def occlusion(image: np.ndarray, groups: list[ImageScore], device: torch.device, head: np.ndarray,
              window: int | None = None) -> np.ndarray:
    """``(H, W, D)`` occlusion map of ``image`` ``(C, H, W, D)`` for the scorer's score: the drop when the
    cube of side ``window`` (default: an eighth of the shortest axis, at least 4 voxels, so a grid of any
    size costs about 512 forward passes) around a voxel is occluded in every sequence. ``head``
    ``(H, W, D)`` bool: the tissue that is occluded; the air around it is left as it is."""
    volume = torch.from_numpy(image)[None].to(device)
    channels = volume.shape[1]
    window = window or max(4, round(min(volume.shape[2:]) / 8))

    def score(volumes: torch.Tensor) -> torch.Tensor:
        return sum(group.weight * group.score(volumes) for group in groups)

    # Tissue is replaced by the head's mean (0 after the z-score); air stays air, so a cube over the
    # background changes nothing (replacing air by 0 would paint a bright block the model reacts to).
    tissue = torch.from_numpy(np.asarray(head, dtype=bool)).to(device)[None, None]
    baseline = torch.where(tissue, torch.zeros_like(volume), volume)
    with torch.no_grad():
        attribution = Occlusion(score).attribute(
            volume, sliding_window_shapes=(channels, window, window, window),
            strides=(channels, window, window, window), baselines=baseline, perturbations_per_eval=16)
    return attribution[0, 0].cpu().numpy()  # the window spans every channel: each holds the same drop


def cam_layer(encoder: nn.Module, shape: tuple[int, ...], min_size: int = 4) -> tuple[str, nn.Module]:
    """``(name, module)``: the last ResNet stage (``layer1..4``) of the image encoder whose feature map
    on an input of ``shape`` ``(C, H, W, D)`` has at least ``min_size`` voxels along every spatial axis
    (``layer1`` if none has)."""
    backbone = encoder.backbone
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [getattr(backbone, name).register_forward_hook(
        lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[2:])))
        for name in ("layer1", "layer2", "layer3", "layer4")]
    device = next(encoder.parameters()).device
    probe = torch.zeros(1, *shape, device=device)
    try:
        with torch.no_grad():
            if isinstance(encoder, SliceSequenceEncoder):
                backbone(probe[..., 0])  # one slice: (1, C, H, W)
            else:
                encoder(probe)
    finally:
        for hook in hooks:
            hook.remove()
    fitting = [name for name, size in sizes.items() if min(size) >= min_size]
    name = fitting[-1] if fitting else "layer1"
    return name, getattr(backbone, name)


def grad_cam(image: np.ndarray, groups: list[ImageScore], device: torch.device, min_size: int = 4
             ) -> tuple[np.ndarray, str]:
    """``((H, W, D) Grad-CAM map, stage name)``: each group's Grad-CAM of its score, weighted by its share."""
    volume = torch.from_numpy(image)[None].to(device)
    spatial = volume.shape[2:]
    total = np.zeros(tuple(spatial), dtype=np.float32)
    for group in groups:
        name, layer = cam_layer(group.encoder, tuple(volume.shape[1:]), min_size)
        chunk = getattr(group.encoder, "slice_chunk", None)
        if chunk is not None:  # Captum keeps one activation per layer call: every slice in one pass
            group.encoder.slice_chunk = None
        try:
            cam = LayerGradCam(group.score, layer).attribute(volume, relu_attributions=True)
        finally:
            if chunk is not None:
                group.encoder.slice_chunk = chunk
        if isinstance(group.encoder, SliceSequenceEncoder):  # (S, 1, h, w): one map per slice
            cam = LayerAttribution.interpolate(cam, tuple(spatial[:2]), interpolate_mode="bilinear")
            total += group.weight * cam[:, 0].permute(1, 2, 0).detach().cpu().numpy()  # (H, W, S)
        else:  # (1, 1, h, w, d)
            cam = LayerAttribution.interpolate(cam, tuple(spatial), interpolate_mode="trilinear")
            total += group.weight * cam[0, 0].detach().cpu().numpy()
    return total, name


def slice_attributions(image: np.ndarray, groups: list[ImageScore], device: torch.device, n_steps: int = 32
                       ) -> tuple[np.ndarray, float]:
    """``((S,) attribution of each axial slice, max |convergence delta|)`` for the slice ResNet+LSTM:
    Integrated Gradients on the LSTM's input (the per-slice features) from those of a zero volume."""
    volume = torch.from_numpy(image)[None].to(device)
    total, deltas = np.zeros(volume.shape[-1]), []
    for group in groups:
        if not isinstance(group.encoder, SliceSequenceEncoder):
            raise StrokeSSLError("slice attributions need the slice ResNet+LSTM image encoder (slice_lstm_*)")
        attribution, delta = LayerIntegratedGradients(group.score, group.encoder.lstm).attribute(
            volume, baselines=torch.zeros_like(volume), n_steps=n_steps, attribute_to_layer_input=True,
            return_convergence_delta=True, internal_batch_size=4)  # 4 path steps × S slices at a time
        attribution = attribution[0] if isinstance(attribution, (list, tuple)) else attribution
        total += group.weight * attribution[0].sum(dim=-1).detach().cpu().numpy()  # (S,)
        deltas.append(float(delta.abs().max()))
    return total, max(deltas)


def to_original_grid(saliency: np.ndarray, affine: np.ndarray, reference: str | Path) -> nib.Nifti1Image:
    """The ``(H, W, D)`` map (voxel-to-world ``affine`` of the preprocessed grid) resampled onto the grid
    and affine of the NIfTI at ``reference`` (trilinear; zero outside the preprocessed field of view)."""
    target = nib.load(str(reference))
    shape = target.shape[:3]
    source = nib.Nifti1Image(saliency.astype(np.float32), affine)
    out = resample_from_to(source, (shape, target.affine), order=1, mode="constant", cval=0.0)
    image = nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), target.affine)
    image.set_sform(target.affine, code=int(target.header["sform_code"]) or 1)  # the input's codes, so
    image.set_qform(target.affine, code=int(target.header["qform_code"]) or 1)  # viewers align them alike
    return image


def save_nifti(image: nib.Nifti1Image, path: str | Path) -> Path:
    """Write a NIfTI (gzipped for ``.nii.gz``) atomically."""
    path = Path(path)
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path
