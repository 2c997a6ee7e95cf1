"""Tests for multimodal.imaging on tiny hand-made NIfTI phantoms (≤ 24³ voxels)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import ndimage
from torch.utils.data import DataLoader

from multimodal import imaging
from multimodal.config import AugmentConfig, ImagingConfig
from multimodal.errors import ImageError
from multimodal.imaging import ImageDataset, build_augmentation, preprocess_subject
from multimodal.volume_cache import CACHE_KEYS, VolumeCache

# A phantom in world (RAS mm) coordinates: an off-centre ellipsoid "head" whose intensity
# ramps along z, and a small bright sphere at a known position (+x, +y, -z of the head centre).
HEAD_CENTRE = np.array([4.0, -3.0, 2.0])
HEAD_RADII = np.array([22.0, 26.0, 20.0])
SPHERE_CENTRE = np.array([12.0, 8.0, -5.0])
SPHERE_RADIUS = 6.0

IMAGING = ImagingConfig(spacing=(3.0, 3.0, 3.0), spatial_size=(24, 24, 24), head_margin_mm=6.0)


def ras_affine(spacing: float, shape: tuple[int, int, int], centre: np.ndarray) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2
    return affine


def permuted_lps_affine(shape: tuple[int, int, int], centre: np.ndarray) -> np.ndarray:
    """Voxel axis i → world -y (3 mm), j → -x (2.5 mm), k → +z (4 mm slices)."""
    affine = np.zeros((4, 4))
    affine[:3, :3] = [[0.0, -2.5, 0.0], [-3.0, 0.0, 0.0], [0.0, 0.0, 4.0]]
    affine[3, 3] = 1.0
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return affine


def phantom(
    affine: np.ndarray, shape: tuple[int, ...], head: float, sphere: float, seed: int
) -> np.ndarray:
    """Sample the phantom at each voxel centre; noisy (Rician-like) background."""
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:]).T
    inside = (((world - HEAD_CENTRE) / HEAD_RADII) ** 2).sum(1) <= 1
    in_sphere = np.linalg.norm(world - SPHERE_CENTRE, axis=1) <= SPHERE_RADIUS
    rng = np.random.default_rng(seed)
    values = np.abs(rng.normal(0.0, 8.0, len(world)))
    ramp = 1 + 0.02 * (world[inside, 2] - HEAD_CENTRE[2])  # structure for the correlation test
    values[inside] = head * ramp + rng.normal(0, 1, inside.sum())
    values[in_sphere] = sphere
    return values.reshape(shape)


def write(path: Path, data: np.ndarray, affine: np.ndarray, dtype: str = "<f4") -> str:
    endian = np.dtype(dtype).byteorder if np.dtype(dtype).byteorder in "<>" else "<"
    header = nib.Nifti1Header(endianness=endian)
    image = nib.Nifti1Image(data.astype(np.dtype(dtype).newbyteorder("=")), affine, header=header)
    image.set_data_dtype(np.dtype(dtype))
    nib.save(image, str(path))
    return str(path)


def two_sequence_subject(tmp_path: Path, subject: str = "s1") -> dict:
    """Sequence a: RAS 2.5 mm, 24³ on the head. Sequence b: permuted LPS, 3/2.5/4 mm, shifted FOV."""
    shape_a, shape_b = (24, 24, 24), (24, 24, 16)
    affine_a = ras_affine(2.5, shape_a, HEAD_CENTRE)
    affine_b = permuted_lps_affine(shape_b, HEAD_CENTRE + np.array([5.0, -4.0, 3.0]))
    a = write(tmp_path / f"{subject}_a.nii.gz", phantom(affine_a, shape_a, 100, 300, 1), affine_a)
    b = write(tmp_path / f"{subject}_b.nii.gz", phantom(affine_b, shape_b, 60, 200, 2), affine_b)
    return {"subject_id": subject, "image": {"a": a, "b": b}, "label": 1.0, "table": None}


def sphere_centre_voxel(channel: np.ndarray) -> np.ndarray:
    """Centre of mass of the brightest blob (above halfway between the median and the max)."""
    threshold = (np.median(channel[channel > channel.min() + 1e-3]) + channel.max()) / 2
    weights = np.clip(channel - threshold, 0, None)
    return np.array(np.nonzero(weights)).T.astype(float).T @ weights[weights > 0] / weights.sum()


# --------------------------------------------------------------------------- preprocessing
def test_sequences_with_different_orientation_spacing_and_fov_are_aligned(tmp_path):
    out = preprocess_subject(two_sequence_subject(tmp_path), IMAGING, ["a", "b"])
    image, mask, affine = out["image"].numpy(), out["head_mask"].numpy() > 0, out["affine"].numpy()
    assert image.shape == (2, 24, 24, 24) and image.dtype == np.float32

    expected = (np.linalg.inv(affine) @ np.append(SPHERE_CENTRE, 1))[:3]
    found_a, found_b = sphere_centre_voxel(image[0]), sphere_centre_voxel(image[1])
    assert np.abs(found_a - found_b).max() < 1.0
    assert np.abs(found_a - expected).max() < 1.0
    # Same anatomy in both channels: strongly correlated in the head (its interior avoids the
    # 4 mm slices' partial-volume rim).
    interior = ndimage.binary_erosion(mask)
    assert np.corrcoef(image[0][mask], image[1][mask])[0, 1] > 0.85
    assert np.corrcoef(image[0][interior], image[1][interior])[0, 1] > 0.93

    # RAS: positive diagonal, and the sphere (+x, +y, -z of the head) sits accordingly.
    assert np.allclose(np.diag(affine)[:3], IMAGING.spacing)
    head_centre = np.array(np.nonzero(mask)).mean(axis=1)
    assert found_a[0] > head_centre[0] + 1 and found_a[1] > head_centre[1] + 1
    assert found_a[2] < head_centre[2] - 1


def test_big_endian_integer_and_float_inputs_give_the_same_output(tmp_path):
    affine = ras_affine(2.5, (20, 20, 20), HEAD_CENTRE)
    data = phantom(affine, (20, 20, 20), 100, 300, 3)
    files = {
        "le_float": write(tmp_path / "le.nii", data, affine, "<f4"),
        "be_float": write(tmp_path / "be.nii", data, affine, ">f4"),
        "be_int16": write(tmp_path / "be16.nii.gz", np.round(data * 20), affine, ">i2"),
    }
    assert nib.load(files["be_int16"]).get_data_dtype() == np.dtype(">i2")
    outputs = {
        name: preprocess_subject({"subject_id": name, "image": {"t1": path}}, IMAGING, ["t1"])
        for name, path in files.items()
    }
    outputs = {name: out["image"] for name, out in outputs.items()}
    assert torch.equal(outputs["le_float"], outputs["be_float"])
    assert torch.allclose(outputs["le_float"], outputs["be_int16"], atol=0.02)


def test_normalised_inside_head_mask_with_noisy_background(tmp_path):
    imaging_cfg = dataclasses.replace(IMAGING, spatial_size=(20, 22, 18))
    out = preprocess_subject(two_sequence_subject(tmp_path), imaging_cfg, ["a", "b"])
    image, mask = out["image"], out["head_mask"].bool()
    assert tuple(image.shape) == (2, 20, 22, 18) and tuple(mask.shape) == (20, 22, 18)
    for channel in image:
        assert abs(channel[mask].mean().item()) < 1e-4
        assert abs(channel[mask].std().item() - 1) < 1e-3
    # The mask is the head, not the noisy background: roughly the ellipsoid's volume.
    head_voxels = 4 / 3 * np.pi * HEAD_RADII.prod() / 27
    assert 0.7 * head_voxels < mask.sum().item() < 1.4 * head_voxels


def test_4d_file_is_an_error_unless_a_volume_is_named(tmp_path):
    affine = ras_affine(2.5, (16, 16, 16), HEAD_CENTRE)
    volumes = [phantom(affine, (16, 16, 16), 100 + 50 * i, 300, i) for i in range(3)]
    path = write(tmp_path / "dwi.nii.gz", np.stack(volumes, axis=-1), affine)
    record = {"subject_id": "sub-4d", "image": {"dwi": path}}
    with pytest.raises(ImageError, match=r"sub-4d.*'dwi'.*dwi\.nii\.gz.*4D.*volume_index"):
        preprocess_subject(record, IMAGING, ["dwi"])
    chosen = preprocess_subject(record, IMAGING, ["dwi"], volume_index={"dwi": 1})["image"]
    single = write(tmp_path / "vol1.nii.gz", volumes[1], affine)
    reference = preprocess_subject({"subject_id": "x", "image": {"dwi": single}}, IMAGING, ["dwi"])
    assert torch.allclose(chosen, reference["image"], atol=1e-5)
    with pytest.raises(ImageError, match="out of range"):
        preprocess_subject(record, IMAGING, ["dwi"], volume_index={"dwi": 5})


def test_missing_sequence_zero_channel_or_error(tmp_path):
    record = two_sequence_subject(tmp_path)
    record["image"]["a"] = None  # the first sequence is missing: b serves as the grid
    out = preprocess_subject(record, IMAGING, ["a", "b"], missing_images="zero")
    assert out["modality_mask"].tolist() == [0.0, 1.0]
    assert torch.count_nonzero(out["image"][0]) == 0 and out["image"][1].std() > 0.5
    with pytest.raises(ImageError, match=r"s1.*'a'"):
        preprocess_subject(record, IMAGING, ["a", "b"], missing_images="error")


def test_corrupt_file_is_an_image_error_naming_the_path(tmp_path):
    record = two_sequence_subject(tmp_path)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(Path(record["image"]["b"]).read_bytes()[:200])  # truncated gzip
    record["image"]["b"] = str(bad)
    with pytest.raises(ImageError, match=r"s1.*'b'.*broken\.nii\.gz"):
        preprocess_subject(record, IMAGING, ["a", "b"])


# --------------------------------------------------------------------------- cache
def counting_loader(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = imaging.load_sequence

    def spy(subject, sequence, path, volume, series=None):
        calls.append(path)
        return original(subject, sequence, path, volume, series)

    monkeypatch.setattr(imaging, "load_sequence", spy)
    return calls


def test_cache_hit_does_not_reread_nifti(tmp_path, monkeypatch):
    record = two_sequence_subject(tmp_path)
    calls = counting_loader(monkeypatch)
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])
    first = cache.load(record)
    assert len(calls) == 2 and cache.built == 1
    second = cache.load(record)
    assert len(calls) == 2 and cache.hits == 1
    for key in CACHE_KEYS:
        assert torch.equal(first[key], second[key])
    assert list((tmp_path / "cache").iterdir()) == [cache.path(record)]


def test_cache_key_changes_with_settings_and_touched_files(tmp_path, monkeypatch):
    record = two_sequence_subject(tmp_path)
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])
    key = cache.key(record)
    respaced = VolumeCache(
        tmp_path / "cache", dataclasses.replace(IMAGING, spacing=(2.0, 3.0, 3.0)), ["a", "b"]
    )
    augment_only = dataclasses.replace(IMAGING, augment=AugmentConfig(noise_prob=1.0))
    assert respaced.key(record) != key
    assert VolumeCache(tmp_path / "cache", augment_only, ["a", "b"]).key(record) == key
    assert VolumeCache(tmp_path / "cache", IMAGING, ["b", "a"]).key(record) != key
    assert (
        VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"], missing_images="zero").key(record)
        != key
    )

    cache.load(record)
    stat = os.stat(record["image"]["a"])
    os.utime(record["image"]["a"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.key(record) == key  # the sources are checked once per run (one cache object) ...
    next_run = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])
    assert next_run.key(record) != key  # ... so the next run sees the touched file
    calls = counting_loader(monkeypatch)
    next_run.load(record)
    assert next_run.built == 1 and len(calls) == 2


def test_a_warm_epoch_stats_and_opens_no_source_file(tmp_path, monkeypatch):
    from multimodal import file_digest

    records = [two_sequence_subject(tmp_path, f"s{i}") for i in range(3)]
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])
    cache.warm(records)
    sources = {os.path.abspath(r["image"][s]) for r in records for s in ("a", "b")}
    touched = []
    real_stat, real_open = os.stat, open

    def stat(path, *args, **kwargs):
        touched.append(os.path.abspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(file_digest.os, "stat", stat)
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: (touched.append(os.path.abspath(path)),
                                                                 real_open(path, *a, **k))[1])
    for _ in range(2):  # two epochs
        for record in records:
            cache.load(record)
    assert not set(touched) & sources and cache.hits == 6


def test_truncated_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog):
    record = two_sequence_subject(tmp_path)
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])
    reference = cache.load(record)
    entry = cache.path(record)
    entry.write_bytes(entry.read_bytes()[:100])
    rebuilt = cache.load(record)
    assert cache.built == 2 and "rebuilding" in caplog.text
    assert torch.equal(rebuilt["image"], reference["image"])
    assert load_file(str(entry))["image"].shape == (2, 24, 24, 24)  # the rewritten entry is whole


def test_float16_cache_stores_half_and_returns_float32(tmp_path):
    record = two_sequence_subject(tmp_path)
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"], dtype="float16")
    built = cache.load(record)
    assert load_file(str(cache.path(record)))["image"].dtype == torch.float16
    loaded = cache.load(record)
    assert loaded["image"].dtype == torch.float32 and cache.hits == 1
    assert torch.allclose(loaded["image"], built["image"], atol=1e-2)


def test_warm_counts_and_collects_errors(tmp_path):
    records = [two_sequence_subject(tmp_path, f"s{i}") for i in range(2)]
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])
    assert cache.warm(records) == {"built": 2, "hit": 0}
    assert cache.warm(records) == {"built": 0, "hit": 2}
    broken = [dict(r, image={"a": r["image"]["a"], "b": None}) for r in records]
    with pytest.raises(ImageError, match=r"2 subject\(s\).*s0.*s1"):
        cache.warm(broken)


def test_warming_a_warm_cache_reads_headers_not_volumes_and_load_still_checks_voxels(tmp_path, monkeypatch, caplog):
    from multimodal import volume_cache

    records = [two_sequence_subject(tmp_path, f"s{i}") for i in range(2)]
    VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"]).warm(records)
    entry = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"]).path(records[0])
    tensors = load_file(str(entry))
    reference = tensors["image"].clone()
    tensors["image"][0, 0, 0, 0] = float("nan")  # damaged voxels, a whole header
    save_file(tensors, str(entry))
    reads = []
    real_load = volume_cache.load_file
    monkeypatch.setattr(volume_cache, "load_file", lambda path: (reads.append(path), real_load(path))[1])
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])  # the next run
    assert cache.warm(records) == {"built": 0, "hit": 2} and reads == []
    loaded = cache.load(records[0])  # the voxels are checked where training reads them
    assert "NaN" in caplog.text and cache.built == 1 and torch.equal(loaded["image"], reference)


# --------------------------------------------------------------------------- augmentation
AUGMENT = AugmentConfig(
    affine_prob=1.0, flip_prob=0.5, noise_prob=1.0, bias_field_prob=1.0, gamma_prob=1.0
)


@pytest.fixture
def dataset_records(tmp_path):
    record = two_sequence_subject(tmp_path)
    records = [dict(record, subject_id=f"s{i}", label=float(i % 2)) for i in range(4)]
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"])
    cache.warm(records[:1])
    return records, cache


def test_augmentation_is_random_per_call_but_reproducible(dataset_records):
    records, cache = dataset_records
    dataset = ImageDataset(records, cache, AUGMENT, seed=7)
    first = dataset[0]
    assert first["image"].shape == (2, 24, 24, 24) and type(first["image"]) is torch.Tensor
    assert not torch.equal(first["image"], dataset[1]["image"])  # same volume, another index
    assert torch.equal(first["image"], dataset[0]["image"])  # same seed, epoch and index
    assert torch.equal(first["image"], ImageDataset(records, cache, AUGMENT, seed=7)[0]["image"])
    dataset.set_epoch(1)
    assert not torch.equal(first["image"], dataset[0]["image"])
    assert not torch.equal(first["image"], cache.load(records[0])["image"])


def test_two_views_are_independent_draws(dataset_records):
    records, cache = dataset_records
    item = ImageDataset(records, cache, AUGMENT, seed=7, views=2)[0]
    assert item["image"].shape == (2, 2, 24, 24, 24)
    assert not torch.equal(item["image"][0], item["image"][1])
    assert torch.equal(item["image"][0], ImageDataset(records, cache, AUGMENT, seed=7)[0]["image"])


def test_augmentation_does_not_depend_on_worker_count(dataset_records):
    records, cache = dataset_records
    batches = []
    for workers in (0, 2):
        dataset = ImageDataset(records, cache, AUGMENT, seed=3)
        dataset.set_epoch(2)
        loader = DataLoader(dataset, batch_size=2, num_workers=workers)
        batches.append(torch.cat([batch["image"] for batch in loader]))
    assert batches[0].shape == (4, 2, 24, 24, 24)
    assert torch.equal(batches[0], batches[1])


def test_persistent_workers_draw_the_epoch_the_sampler_carries(dataset_records):
    from multimodal.data import MultimodalDataset
    from pretrain.data import make_loader

    records, cache = dataset_records
    images = ImageDataset(records, cache, AUGMENT, seed=3)
    dataset = MultimodalDataset([r["subject_id"] for r in records], list(range(4)), images, None)
    loader = make_loader(dataset, 2, workers=1, seed=0, train=True)
    assert loader.persistent_workers
    seen = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # never dataset.set_epoch: the workers' copy could not see it
        for batch in loader:
            seen += [(epoch, int(i), image) for i, image in zip(batch["index"], batch["image"], strict=True)]
    for epoch, index, image in seen:
        assert torch.equal(image, images.item(index, epoch)["image"])
    assert not torch.equal(images.item(0, 0)["image"], images.item(0, 1)["image"])


@pytest.mark.parametrize("views", [1, 2])
def test_augmenting_on_the_device_draws_what_the_loader_draws(tmp_path, views):
    """pretrain.augment_on: device — the loader hands over the cached volume and the seeds; the
    batch augmented afterwards (here on the CPU) equals the loader-augmented one, missing channel
    zero included."""
    from multimodal.imaging import DeviceAugmentation

    record = two_sequence_subject(tmp_path)
    records = [dict(record, subject_id=f"s{i}") for i in range(3)] + [dict(record, subject_id="gap")]
    records[-1]["image"] = dict(record["image"], b=None)
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"], missing_images="zero")
    augmented = ImageDataset(records, cache, AUGMENT, seed=5, views=views)
    deferred = ImageDataset(records, cache, AUGMENT, seed=5, views=views, deferred=True)
    for dataset in (augmented, deferred):
        dataset.set_epoch(3)
    expected = torch.stack([augmented[i]["image"] for i in range(4)])
    items = [deferred[i] for i in range(4)]
    assert torch.equal(items[0]["image"], cache.load(records[0])["image"])  # not augmented by the loader
    batch = DeviceAugmentation(AUGMENT, seed=0, device=torch.device("cpu"))(
        torch.stack([i["image"] for i in items]), torch.stack([i["augment_seeds"] for i in items]),
        torch.stack([i["modality_mask"] for i in items]))
    assert batch.shape == expected.shape == ((4, 2, 24, 24, 24) if views == 1 else (4, 2, 2, 24, 24, 24))
    torch.testing.assert_close(batch, expected, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(batch[3, ..., 1, :, :, :]) == 0 and not torch.equal(batch[0], batch[1])


def test_augmentation_keeps_missing_channel_zero(tmp_path):
    record = two_sequence_subject(tmp_path)
    record["image"]["b"] = None
    cache = VolumeCache(tmp_path / "cache", IMAGING, ["a", "b"], missing_images="zero")
    item = ImageDataset([record], cache, AUGMENT)[0]
    assert item["modality_mask"].tolist() == [1.0, 0.0]
    assert torch.count_nonzero(item["image"][1]) == 0 and item["image"][0].std() > 0.1


@pytest.mark.parametrize("augment", [None, AugmentConfig(enabled=False)])
def test_disabled_augmentation_returns_the_cached_volume(dataset_records, augment):
    records, cache = dataset_records
    item = ImageDataset(records, cache, augment)[0]
    assert torch.equal(item["image"], cache.load(records[0])["image"])
    assert item["label"].dtype == torch.float32 and item["label"].item() == 0.0
    assert item["subject_id"] == "s0"


def test_build_augmentation_preserves_shape_and_seeds():
    image = torch.randn(2, 12, 14, 10)
    outputs = [build_augmentation(AUGMENT, seed=s)({"image": image})["image"] for s in (0, 0, 1)]
    assert all(o.shape == image.shape for o in outputs)
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def warm_cache(cohort_yaml: str, folder: str) -> None:
    """What each process of the race below runs (and this process, for the reference)."""
    from multimodal.cohort import load_cohort
    from multimodal.config import load_cohort_config

    records = load_cohort(load_cohort_config(cohort_yaml)).records()
    VolumeCache(folder, ImagingConfig(spacing=(14.0, 14.0, 14.0), spatial_size=(16, 16, 16)), ["flair", "dwi"]).warm(records)


def test_two_processes_warming_one_cache_folder_corrupt_nothing(tmp_path):
    """Two runs sharing a cache folder build the same entries at once: every entry ends readable and
    equal to what one process alone builds (entries are written to a temp file and renamed)."""
    import subprocess
    import sys

    from multimodal.synthetic import write_synthetic_cohort

    cohort = write_synthetic_cohort(tmp_path / "c", n=12, grid=16, labeled_fraction=0.5, seed=2)
    script = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from test_imaging import warm_cache; " \
             "warm_cache(sys.argv[1], sys.argv[2])"
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cohort), str(shared)]) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    warm_cache(str(cohort), str(alone))  # the reference in this process (a third interpreter costs more)
    entries = sorted(p.name for p in shared.glob("*.safetensors"))
    assert entries == sorted(p.name for p in alone.glob("*.safetensors")) and len(entries) == 12
    assert not list(shared.glob(".*.tmp"))  # no temp file left behind
    for name in entries:
        ours, theirs = load_file(str(shared / name)), load_file(str(alone / name))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
