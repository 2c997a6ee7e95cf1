"""The procedural head of the independent generator (``independent_generator.py``): skull, scalp,
folded cortex, deep grey nuclei, ventricles, small-vessel disease and territorial infarcts, each
point of head space labelled analytically (``label_points``), so any scanner grid can sample it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

# Periventricular band thickness (mm) = (ml of periventricular WMH / PV_ML_AT_1MM) ** PV_POWER: measured
# on 1.5 mm grids of 8 heads (median), so the rendered volume follows the latent one.
PV_ML_AT_1MM = 8.8
PV_POWER = 0.74


# =========================================================================== anatomy
class PlaneWaves:
    """A smooth random field: a normalised sum of cosines of random directions at one wavelength."""

    def __init__(self, rng: np.random.Generator, count: int, wavelength_mm: float, dims: int = 3) -> None:
        directions = rng.normal(size=(count, dims))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        self.k = (2.0 * np.pi / wavelength_mm * directions).astype(np.float32)
        self.phase = rng.uniform(0.0, 2.0 * np.pi, count).astype(np.float32)
        self.scale = np.float32(np.sqrt(2.0 / count))  # unit variance

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return np.cos(points @ self.k.T + self.phase) @ np.full(len(self.phase), self.scale, dtype=np.float32)


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from x, y, z angles in degrees (applied x, then y, then z)."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid_radius(points: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Normalised radius (1 on the surface) of an axis-aligned ellipsoid."""
    return np.sqrt((((points - np.float32(centre)) / np.float32(axes)) ** 2).sum(axis=1))


def _ellipsoid_distance(points: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Signed distance (mm, along the ray from the centre) to an ellipsoid's surface."""
    d = points - np.float32(centre)
    r = np.sqrt(((d / np.float32(axes)) ** 2).sum(axis=1))
    return np.linalg.norm(d, axis=1) * (1.0 - 1.0 / np.maximum(r, 1e-6))


# Tissue codes.
AIR, SCALP, SKULL, CSF, GM, WM, DEEP_GM, WMH, LACUNE, RIM, INFARCT = range(11)
# Deep grey nuclei (centre for the right side, semi-axes), mirrored left.
NUCLEI = [((11.0, -13.0, 5.0), (8.0, 13.0, 8.0)),    # thalamus
          ((23.0, 4.0, 1.0), (7.0, 14.0, 9.0)),      # lentiform nucleus
          ((13.0, 14.0, 11.0), (5.0, 8.0, 7.0))]     # caudate head
# Ventricles (centre for the right side, semi-axes); the last one is the midline third ventricle.
VENTRICLES = [((7.5, -4.0, 16.0), (3.8, 22.0, 5.0)),   # bodies
              ((10.0, 20.0, 10.0), (4.2, 9.0, 6.5)),   # frontal horns
              ((16.0, -29.0, 9.0), (4.5, 9.0, 7.0)),   # trigones / occipital horns
              ((28.0, -6.0, -12.0), (2.5, 11.0, 2.5)),  # temporal horns
              ((0.0, -6.0, 2.0), (1.3, 10.0, 6.0))]    # third ventricle
# Vascular-territory wedges, right side: apex, axis, cosine of the half-angle.
TERRITORIES = {"mca": ((14.0, 3.0, -3.0), (1.0, 0.05, 0.35), 0.5),
               "aca": ((5.0, 12.0, 2.0), (0.05, 0.6, 1.0), 0.72),
               "pca": ((10.0, -20.0, -6.0), (0.3, -1.0, 0.15), 0.72)}


@dataclass
class Anatomy:
    """One subject's head in head coordinates (mm; x right, y anterior, z superior)."""

    icv_axes: np.ndarray
    brain_fraction: float
    exponent: float
    skull_mm: float
    scalp_mm: float
    shape_field: PlaneWaves
    shape_amp: float
    folds: PlaneWaves
    fold_wavelength: float
    sulcal_depth: float
    sulcal_width: float
    ribbon: float
    fissure: float
    ventricle_scale: float
    pv_thickness: float
    texture: PlaneWaves
    irregular: PlaneWaves
    foci: np.ndarray         # (k, 4): centre xyz, radius — punctate WMH
    lacunes: np.ndarray      # (k, 4)
    infarcts: list[tuple[np.ndarray, np.ndarray, np.ndarray, str, int]]  # centre, axes, rotation, territory, side

    def ventricles(self) -> list[tuple[np.ndarray, np.ndarray]]:
        v = self.ventricle_scale
        out = []
        for centre, axes in VENTRICLES:
            scaled = np.array([axes[0] * v, axes[1] * np.sqrt(v), axes[2] * v])
            for sign in ((1.0, -1.0) if centre[0] else (1.0,)):
                c = np.array(centre) * np.array([sign * (1 + 0.15 * (v - 1)), 1.0, 1.0])
                out.append((c, scaled))
        return out

    def perturbation(self, points: np.ndarray) -> np.ndarray:
        """The surface wobble (a factor about 1) in the direction of each point."""
        norm = np.linalg.norm(points, axis=1, keepdims=True) + np.float32(1e-6)
        return np.float32(1.0) + np.float32(self.shape_amp) * self.shape_field(points * (np.float32(40.0) / norm))

    def radial(self, points: np.ndarray, axes: np.ndarray, wobble: np.ndarray | None = None) -> np.ndarray:
        """Signed distance (mm, radial) to the perturbed superquadric with ``axes``."""
        wobble = self.perturbation(points) if wobble is None else wobble
        norm = np.linalg.norm(points, axis=1) + np.float32(1e-6)
        axes = axes.astype(np.float32)
        z_axis = np.where(points[:, 2] < 0, axes[2] * np.float32(0.78), axes[2])  # flatter base
        e = np.float32(self.exponent)
        r = ((np.abs(points[:, 0]) / axes[0]) ** e + (np.abs(points[:, 1]) / axes[1]) ** e
             + (np.abs(points[:, 2]) / z_axis) ** e) ** (np.float32(1.0) / e)
        r = r / wobble
        return norm * (np.float32(1.0) - np.float32(1.0) / np.maximum(r, np.float32(1e-6)))


def _brain_points(anat: Anatomy, rng: np.random.Generator, count: int, depth: tuple[float, float],
                  min_ventricle_mm: float, region: np.ndarray | None = None) -> np.ndarray:
    """``count`` random points in the brain at ``depth`` mm below its surface, away from the ventricles
    (inside the ellipsoid ``region`` = centre xyz + semi-axes when given)."""
    out: list[np.ndarray] = []
    brain_axes = anat.icv_axes * anat.brain_fraction
    for _ in range(20):
        if region is None:
            cand = rng.uniform(-1.0, 1.0, (4 * count + 16, 3)) * brain_axes
        else:
            cand = region[:3] + rng.uniform(-1.0, 1.0, (4 * count + 16, 3)) * region[3:]
        d = -anat.radial(cand, brain_axes)
        vent = np.min([_ellipsoid_distance(cand, c, a) for c, a in anat.ventricles()], axis=0)
        keep = (d > depth[0]) & (d < depth[1]) & (vent > min_ventricle_mm)
        out.extend(cand[keep])
        if len(out) >= count:
            break
    return np.array(out[:count]).reshape(-1, 3)


def make_anatomy(subject: pd.Series, rng: np.random.Generator) -> Anatomy:
    """A subject's head from its latents (atrophy, WMH, lacunes, infarcts) and sex."""
    size = (1.03 if subject["sex"] == 1 else 0.97) * rng.normal(1.0, 0.03)
    icv_axes = np.array([77.0, 96.0, 72.0]) * size * rng.normal(1.0, 0.025, 3)
    atrophy = float(subject["atrophy_z"])
    fold_wavelength = float(rng.uniform(20.0, 26.0))  # gyral spacing (mm)
    anat = Anatomy(
        icv_axes=icv_axes,
        brain_fraction=float(np.clip(0.965 - 0.013 * atrophy, 0.88, 0.99)),
        exponent=float(rng.uniform(1.85, 2.15)),
        skull_mm=float(rng.uniform(3.5, 5.0)), scalp_mm=float(rng.uniform(2.5, 4.0)),
        shape_field=PlaneWaves(rng, 6, 55.0), shape_amp=float(rng.uniform(0.015, 0.03)),
        folds=PlaneWaves(rng, 10, fold_wavelength), fold_wavelength=fold_wavelength,
        sulcal_depth=float(rng.uniform(9.0, 13.0)),
        sulcal_width=float(np.clip(1.6 + 0.9 * atrophy + rng.normal(0, 0.3), 0.6, 6.0)),
        ribbon=float(rng.uniform(2.0, 3.5)),
        fissure=float(np.clip(1.5 + 0.8 * atrophy, 0.8, 5.0)),
        ventricle_scale=float(np.clip(1.15 + 0.22 * atrophy + rng.normal(0, 0.08), 0.75, 2.1)),
        pv_thickness=0.0,
        texture=PlaneWaves(rng, 8, 9.0), irregular=PlaneWaves(rng, 8, 14.0),
        foci=np.zeros((0, 4)), lacunes=np.zeros((0, 4)), infarcts=[],
    )
    # WMH: ~70 % periventricular (band thickness grows with the load), the rest punctate foci.
    wmh_ml = float(subject["wmh_ml"])
    anat.pv_thickness = float((0.7 * wmh_ml / PV_ML_AT_1MM) ** PV_POWER)
    deep_mm3 = 0.3 * wmh_ml * 1000.0
    radii: list[float] = []
    while sum(4.19 * r ** 3 for r in radii) < deep_mm3 and len(radii) < 120:
        radii.append(float(rng.uniform(1.0, 4.0)))
    if radii:
        centres = _brain_points(anat, rng, len(radii), (12.0, 45.0), 5.0)
        anat.foci = np.column_stack([centres, radii[: len(centres)]])
    count = int(subject["lacunes"])
    if count:
        # Deep grey nuclei and the deep white matter of either hemisphere.
        sides = rng.choice([-1.0, 1.0], size=count)
        centres = np.concatenate([
            _brain_points(anat, rng, int((sides == s).sum()), (15.0, 80.0), 2.0,
                          np.array([s * 17.0, 0.0, 8.0, 14.0, 24.0, 16.0]))
            for s in (-1.0, 1.0) if (sides == s).any()])
        anat.lacunes = np.column_stack([centres, rng.uniform(1.5, 7.5, len(centres))])
    anat.infarcts = _infarcts(subject, anat, rng)
    return anat


def _surface_depth(anat: Anatomy, apex: np.ndarray, axis: np.ndarray) -> float:
    """Distance from ``apex`` along ``axis`` to the brain surface."""
    t = np.linspace(0.0, 120.0, 241)[:, None]
    inside = anat.radial(apex + t * axis, anat.icv_axes * anat.brain_fraction) < 0
    return float(t[np.argmin(inside), 0]) if not inside.all() else 120.0


def _infarcts(subject: pd.Series, anat: Anatomy, rng: np.random.Generator) -> list[Any]:
    """The index infarct and any embolic extras: (centre, semi-axes, rotation, territory, side)."""
    side = int(subject["side"])
    volumes = [(str(subject["territory"]), side, float(subject["main_infarct_ml"]))]
    extra_ml = float(subject["infarct_ml"] - subject["main_infarct_ml"])
    n_extra = int(subject["n_territories"]) - 1
    if n_extra:
        pool = [(t, s) for t in ("mca", "aca", "pca") for s in (-1, 1) if (t, s) != volumes[0][:2]]
        shares = rng.dirichlet(np.ones(n_extra))
        for j, pick in enumerate(rng.choice(len(pool), n_extra, replace=False)):
            volumes.append((*pool[pick], extra_ml * shares[j]))
    out = []
    for territory, s, ml in volumes:
        r_eq = 0.94 * (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # the ragged border adds ~20 %
        aspect = np.exp(rng.normal(0.0, 0.2, 3))
        aspect /= np.prod(aspect) ** (1.0 / 3.0)
        rotation = rotation_matrix(rng.uniform(-180, 180, 3))
        if territory == "lacunar":
            centre = _brain_points(anat, rng, 1, (20.0, 80.0), 3.0, np.array([s * 18.0, -2.0, 6.0, 8.0, 14.0, 8.0]))
            centre = centre[0] if len(centre) else np.array([s * 18.0, -2.0, 6.0])
        else:
            apex, axis, _ = TERRITORIES[territory]
            apex = np.array(apex) * np.array([s, 1, 1])
            axis = np.array(axis) * np.array([s, 1, 1])
            axis = axis / np.linalg.norm(axis) + rng.normal(0.0, 0.12, 3)
            axis /= np.linalg.norm(axis)
            reach = _surface_depth(anat, apex, axis)
            centre = apex + axis * max(reach - 0.7 * r_eq, 0.35 * reach)
        out.append((centre, r_eq * aspect, rotation, territory, s))
    return out


def _in_territory(points: np.ndarray, territory: str, side: int, irregular: np.ndarray) -> np.ndarray:
    """Whether each point lies in the territory's wedge (its border ragged by ``irregular``)."""
    apex, axis, cos_half = TERRITORIES[territory]
    apex = np.array(apex) * np.array([side, 1, 1])
    axis = np.array(axis) * np.array([side, 1, 1])
    axis = axis / np.linalg.norm(axis)
    d = points - apex
    cos = d @ axis / (np.linalg.norm(d, axis=1) + 1e-6)
    return (cos > cos_half + 0.08 * irregular) & (points[:, 0] * side > -2.0)


def _nearest_spot(points: np.ndarray, spots: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest spot centre and that spot's radius (0 where none is within reach)."""
    dist, idx = cKDTree(spots[:, :3]).query(points, distance_upper_bound=spots[:, 3].max() + margin)
    hit = idx < len(spots)
    radius = np.zeros(len(points))
    radius[hit] = spots[idx[hit], 3]
    return dist, radius


def label_points(points: np.ndarray, anat: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Tissue code per point (head coordinates, mm, float32) and a texture value (about 0 ± 1)."""
    labels = np.full(len(points), AIR, dtype=np.int8)
    texture = np.zeros(len(points), dtype=np.float32)
    # The surface wobble matters near the surfaces only: evaluate it in a shell around them.
    wobble = np.ones(len(points), dtype=np.float32)
    plain = anat.radial(points, anat.icv_axes, wobble) / (np.linalg.norm(points, axis=1) + np.float32(1e-6))
    shell = np.flatnonzero((plain > -0.45) & (plain < 0.2))  # normalised radius 0.7-1.25
    wobble[shell] = anat.perturbation(points[shell])
    s_icv = anat.radial(points, anat.icv_axes, wobble)
    labels[s_icv < anat.skull_mm + anat.scalp_mm] = SCALP
    labels[s_icv < anat.skull_mm] = SKULL
    inner = np.flatnonzero(s_icv < 0)
    p = points[inner]
    s_brain = anat.radial(p, anat.icv_axes * anat.brain_fraction, wobble[inner])
    sub = np.full(len(p), CSF, dtype=np.int8)
    brain = np.flatnonzero(s_brain < 0)
    q = p[brain]
    depth = -s_brain[brain]
    texture[inner[brain]] = anat.texture(q)
    # Cortex: a ribbon under the surface, lining sulci (zero sets of the fold field) and the fissure.
    outer = np.flatnonzero(depth < anat.sulcal_depth + anat.ribbon)
    sulcus = np.full(len(q), np.inf, dtype=np.float32)
    sulcus[outer] = np.abs(anat.folds(q[outer])) * np.float32(anat.fold_wavelength / (2.0 * np.pi))
    half = anat.sulcal_width / 2.0
    fissure = np.abs(q[:, 0]) - anat.fissure / 2.0
    upper = q[:, 2] > -5.0 - 0.2 * np.abs(q[:, 1])
    tissue = np.full(len(q), WM, dtype=np.int8)
    grey = (depth < anat.ribbon) | ((depth < anat.sulcal_depth + anat.ribbon) & (sulcus < half + anat.ribbon))
    grey |= upper & (depth < 45.0) & (fissure < anat.ribbon)
    tissue[grey] = GM
    tissue[(depth < anat.sulcal_depth) & (sulcus < half)] = CSF
    tissue[upper & (depth < 40.0) & (fissure < 0)] = CSF
    # Deep structures live in a central box: evaluate them there only.
    reach = 8.0 * anat.pv_thickness + 2.0
    box = np.flatnonzero((np.abs(q[:, 0]) < 45.0 + reach) & (np.abs(q[:, 1]) < 48.0 + reach)
                         & (np.abs(q[:, 2] - 2.0) < 30.0 + reach))
    c = q[box]
    irregular_box = anat.irregular(c) if anat.pv_thickness > 0 else None
    nuclei = np.min([_ellipsoid_radius(c, np.array(ce) * np.array([s, 1, 1]), np.array(a))
                     for ce, a in NUCLEI for s in (-1, 1)], axis=0)
    central = tissue[box]
    central[nuclei < 1.0] = DEEP_GM
    vent = np.min([_ellipsoid_distance(c, ce, a) for ce, a in anat.ventricles()], axis=0)
    # Periventricular caps (frontal and occipital horns) and bands, ragged by the irregular field.
    if anat.pv_thickness > 0:
        caps = np.exp(-(((c[:, 1] - 26.0) / 11.0) ** 2)) + np.exp(-(((c[:, 1] + 36.0) / 11.0) ** 2))
        band = anat.pv_thickness * (0.3 + 2.5 * caps) * np.maximum(1.0 + 0.9 * irregular_box, 0.0)
        central[(central == WM) & (vent < band)] = WMH
    central[vent < 0] = CSF
    tissue[box] = central
    white = np.flatnonzero((tissue == WM) | (tissue == DEEP_GM))
    if len(anat.foci) and len(white):
        dist, radius = _nearest_spot(q[white], anat.foci, 0.0)
        tissue[white[dist < radius]] = WMH
    if len(anat.lacunes) and len(white):
        dist, radius = _nearest_spot(q[white], anat.lacunes, 1.2)
        tissue[white[dist < radius + 1.2]] = RIM
        tissue[white[dist < radius]] = LACUNE
    for centre, axes, rotation, territory, side in anat.infarcts:
        near = np.flatnonzero(((q - centre.astype(np.float32)) ** 2).sum(axis=1) < (1.6 * axes.max()) ** 2)
        if not len(near):
            continue
        irregular = anat.irregular(q[near])
        local = (q[near] - centre) @ rotation / axes
        r = np.linalg.norm(local, axis=1) * (1.0 + 0.28 * irregular)
        hit = (r < 1.0) & (tissue[near] != CSF) & (tissue[near] != LACUNE)
        if territory != "lacunar":
            hit &= _in_territory(q[near], territory, side, irregular)
        tissue[near[hit]] = INFARCT
    sub[brain] = tissue
    labels[inner] = sub
    return labels, texture
