"""Head geometry of one phantom patient: the intracranial cavity, brain tissues, CSF spaces,
skull, scalp fat, skull base and orbits, and the venous sinuses, as a relative-intensity map
(white matter = 1) in TOF contrast.

All shapes are ellipsoids in millimetres relative to the Circle-of-Willis centre (x left->right,
y posterior->anterior, z inferior->superior), scaled by ``head_scale`` and jittered per
patient. The intracranial cavity (ICV) is a union of a cerebrum ellipsoid cut at the skull base,
two middle-fossa (temporal) ellipsoids, the posterior fossa, the brain stem and the parasellar
region; its "depth" (distance to its surface along the ray from each ellipsoid's centre, max
over the union) drives the cortex, CSF rim, skull and scalp layers. The brain mask is the ICV,
as a skull stripper would give it (so it holds the CSF rim and parts of the dural sinuses).
"""
import dataclasses
import math
from typing import List, Tuple

import numpy as np

from .appearance import upsample
from .presets import PhantomConfig

__all__ = ["Head", "make_head", "icv_depth", "coarse_icv_depth", "point_depth", "cortex_point",
           "tissue_map", "sinus_centrelines"]

# (centre, semi-axes) of the ICV parts, mm from the CoW centre.
_ICV = (("cerebrum", (0, 4, 26), (66, 84, 56)), ("temporal_L", (-36, 2, -6), (26, 40, 22)),
        ("temporal_R", (36, 2, -6), (26, 40, 22)), ("cerebellum", (0, -52, -24), (50, 36, 25)),
        ("stem", (0, -20, -30), (14, 14, 34)), ("sella", (0, 10, -10), (22, 16, 11)))
_FLOOR = -3.0    # skull-base cut of the cerebrum ellipsoid (anterior fossa), mm


@dataclasses.dataclass(frozen=True)
class Head:
    origin: np.ndarray                 # world position of the CoW centre
    parts: Tuple[Tuple[str, np.ndarray, np.ndarray], ...]   # (name, world centre, semi-axes)
    floor: float                       # world z of the cerebrum cut
    csf_rim: float                     # mm of CSF under the inner table (atrophy)
    ventricles: float                  # ventricle size factor
    k: float


def make_head(rng: np.random.Generator, config: PhantomConfig) -> Head:
    """Per-patient head: position in the field of view and jittered sizes."""
    shape, spacing = np.asarray(config.shape), np.asarray(config.spacing)
    half = (shape - 1) / 2.0 * spacing
    k = config.head_scale * rng.uniform(0.93, 1.07)
    z_cow = -half[2] + config.cow_level * 2 * half[2] + rng.normal(0, 2.0)
    origin = np.array([rng.normal(0, 2.0), rng.normal(-4.0, 3.0), z_cow])
    parts = []
    for name, c, a in _ICV:
        jitter = rng.uniform(0.95, 1.05, 3)
        parts.append((name, origin + k * np.asarray(c, float), k * np.asarray(a, float) * jitter))
    return Head(origin, tuple(parts), origin[2] + k * _FLOOR, rng.uniform(1.0, 2.5),
                rng.uniform(0.8, 1.5), k)


def _ellipsoid_depth(p: Tuple, centre, semi):
    """Distance (mm) from points ``p`` (broadcastable x, y, z) to an ellipsoid surface along
    the ray from its centre; positive inside."""
    dx, dy, dz = p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]
    rho2 = (dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2
    r = np.sqrt(dx * dx + dy * dy + dz * dz)
    rho = np.sqrt(rho2)
    return np.where(rho > 1e-3, r * (1.0 / np.maximum(rho, 1e-3) - 1.0), float(min(semi)))


def icv_depth(head: Head, p) -> np.ndarray:
    """Depth inside the intracranial cavity (mm, negative outside) at points ``p``."""
    depth = None
    for name, centre, semi in head.parts:
        d = _ellipsoid_depth(p, centre, semi)
        if name == "cerebrum":
            d = np.minimum(d, p[2] - head.floor)
        depth = d if depth is None else np.maximum(depth, d)
    return depth


def point_depth(head: Head, point) -> float:
    """``icv_depth`` of one point (scalar code: the vessel walk calls it every step)."""
    px, py, pz = (float(c) for c in point)
    best = -math.inf
    for name, centre, semi in head.parts:
        dx, dy, dz = px - centre[0], py - centre[1], pz - centre[2]
        rho = math.sqrt((dx / semi[0]) ** 2 + (dy / semi[1]) ** 2 + (dz / semi[2]) ** 2)
        d = math.sqrt(dx * dx + dy * dy + dz * dz) * (1.0 / rho - 1.0) if rho > 1e-3 \
            else float(min(semi))
        if name == "cerebrum":
            d = min(d, pz - head.floor)
        best = max(best, d)
    return best


def coarse_icv_depth(head: Head, axes) -> np.ndarray:
    """``icv_depth`` on the voxel grid (float32), computed on every second voxel and
    interpolated (the depth is smooth; a quarter of the cost... an eighth)."""
    sub = [a[::2].astype(np.float32) for a in axes]
    p = (sub[0][:, None, None], sub[1][None, :, None], sub[2][None, None, :])
    return upsample(icv_depth(head, p).astype(np.float32), (2, 2, 2),
                    tuple(a.size for a in axes))


def cortex_point(head: Head, point: np.ndarray, territory: str, depth_mm: float = 4.0):
    """The point at ``depth_mm`` under the surface of the territory's ellipsoid along the ray
    from its centre through ``point`` (cerebrum: kept above the skull base)."""
    if territory == "deep":
        return np.asarray(point, float)
    name = "cerebellum" if territory == "cerebellum" else "cerebrum"
    _, centre, semi = next(part for part in head.parts if part[0] == name)
    d = np.asarray(point, float) - centre
    rho = math.sqrt(float(((d / semi) ** 2).sum())) or 1.0
    r = float(np.linalg.norm(d)) / rho    # centre-to-surface along the ray
    out = centre + d / rho * max(0.2, 1.0 - depth_mm / r)
    if name == "cerebrum":
        out[2] = max(out[2], head.floor + 4.0)
    return out


def _paint(img: np.ndarray, axes, centre, semi, value: float, soft: float = 0.0):
    """Set ``img`` to ``value`` inside an ellipsoid (bounding box only)."""
    box = []
    for a in range(3):
        lo = np.searchsorted(axes[a], centre[a] - semi[a])
        hi = np.searchsorted(axes[a], centre[a] + semi[a])
        if hi <= lo:
            return
        box.append(slice(lo, hi))
    x = ((axes[0][box[0]] - centre[0]) / semi[0])[:, None, None]
    y = ((axes[1][box[1]] - centre[1]) / semi[1])[None, :, None]
    z = ((axes[2][box[2]] - centre[2]) / semi[2])[None, None, :]
    inside = x * x + y * y + z * z < 1.0
    region = img[tuple(box)]
    region[inside] = value


def sinus_centrelines(rng: np.random.Generator,
                      head: Head) -> List[Tuple[np.ndarray, float, float]]:
    """Dural venous sinuses as (points, radius, relative brightness): transverse-sigmoid to
    the jugular bulb on both sides (one side usually dominant), superior sagittal and straight
    sinus (dimmer: the superior saturation band of a TOF protocol suppresses them), cavernous
    sinuses around the carotid siphons (dim)."""
    o, k = head.origin, head.k
    out = []
    dominant = rng.uniform(0.6, 1.0)
    for s, bright in ((-1.0, dominant), (1.0, 1.6 - dominant)):
        pts = [(0, -86, -8), (s * 40, -74, -12), (s * 54, -46, -18), (s * 46, -32, -34),
               (s * 38, -28, -56)]
        out.append((o + k * np.asarray(pts, float), k * rng.uniform(3.0, 4.2), bright))
    out.append((o + k * np.asarray([(0, -86, -8), (0, -92, 20), (0, -82, 52)], float),
                k * rng.uniform(3.0, 3.8), 0.35))
    out.append((o + k * np.asarray([(0, -86, -8), (0, -60, 6), (0, -40, 18)], float),
                k * 2.2, 0.45))
    for s in (-1.0, 1.0):                                        # cavernous sinus (slow flow)
        out.append((o + k * np.asarray([(s * 13, 22, -8), (s * 15, 8, -11), (s * 16, -4, -14)],
                                       float), k * rng.uniform(2.5, 3.5), 0.3))
    return out


def tissue_map(head: Head, config: PhantomConfig, axes, fine: np.ndarray,
               coarse: np.ndarray):
    """(relative intensity map, ICV depth) before vessels and sinuses. ``fine``/``coarse``:
    unit random fields (correlation ~1 mm and ~3 mm) for texture, sulci and fat patches.
    Function of more than 60 lines: one statement per tissue of the table above."""
    gm, csf, fat = config.gm_contrast, config.csf_contrast, config.fat_contrast
    p = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    depth = coarse_icv_depth(head, axes)
    o, k = head.origin, head.k
    img = np.ones(depth.shape, np.float32)
    # Cortex and sulci: GM rim under the CSF rim, CSF-filled sulci lined by GM.
    rim = head.csf_rim
    img[depth < rim + 3.0] = gm
    band = np.abs(coarse)
    sulcus = (band < 0.10 + 0.02 * fine) & (depth < 16.0)
    img[(band < 0.35) & (depth < 18.0)] = gm
    img[sulcus] = csf
    img[depth < rim] = csf
    for s in (-1.0, 1.0):
        _paint(img, axes, o + k * np.array([s * 16, 2, 16]), k * np.array([10, 16, 10]), gm)
        _paint(img, axes, o + k * np.array([s * 9, -16, 12]), k * np.array([8, 10, 8]), gm)
        v = head.ventricles
        _paint(img, axes, o + k * np.array([s * 12, -4, 28]), k * np.array([6 * v, 26, 8 * v]),
               csf)
        _paint(img, axes, o + k * np.array([s * 30, -10, -3]), k * np.array([3, 12, 3]) * v,
               csf)
        _paint(img, axes, o + k * np.array([s * 36, 6, 6]), k * np.array([18, 4, 9]), csf)
    _paint(img, axes, o + k * np.array([0, -6, 12]), k * np.array([2.5, 12, 8]) * head.ventricles,
           csf)
    _paint(img, axes, o + k * np.array([0, -40, -26]), k * np.array([6, 5, 6]), csf)
    _paint(img, axes, o + k * np.array([0, 0, 1]), k * np.array([18, 14, 6]), csf)   # cisterns
    _paint(img, axes, o + k * np.array([0, -15, -18]), k * np.array([9, 6, 16]), csf)
    fissure = (np.abs(p[0] - o[0] - 1.5 * coarse) < 0.7 * k) & (p[2] > o[2] + 12 * k) & \
        (depth > rim)
    img[fissure & (depth < 45)] = csf
    # Cerebellum: GM/WM folia (fine texture), slightly darker than cerebral WM.
    folia = (depth > rim) & (p[2] < o[2] - 8 * k) & (p[1] < o[1] - 32 * k)
    img[folia] = np.where(fine[folia] > 0.3, gm, 0.97).astype(np.float32)
    # Outside the cavity: skull (diploe marrow inside), scalp fat, skin, then the head surface.
    brain = depth > 0
    inner = img[brain]
    outside = ~brain
    out_depth = -depth
    sub = [a[::2].astype(np.float32) for a in axes]
    head_rest = upsample(_ellipsoid_depth(
        (sub[0][:, None, None], sub[1][None, :, None], sub[2][None, None, :]), o,
        k * np.array([78, 100, 110])).astype(np.float32), (2, 2, 2), depth.shape)
    img[outside] = 0.62                                  # face, skull base, neck soft tissue
    img[outside & (out_depth < 6.5)] = 0.06                      # skull
    img[outside & (out_depth > 2.0) & (out_depth < 4.5)] = 0.55 * fat   # diploe
    img[outside & (head_rest < 7.0)] = fat * (0.95 + 0.05 * np.clip(coarse, -2, 2))[
        outside & (head_rest < 7.0)]                              # subcutaneous fat
    img[outside & (head_rest < 1.2)] = 0.7                       # skin
    img[head_rest <= 0] = 0.0                                    # air
    # Skull base: sphenoid sinus and pharynx (air), clivus marrow, orbits (fat, dark globes).
    _paint(img, axes, o + k * np.array([0, 16, -20]), k * np.array([13, 12, 9]), 0.0)
    _paint(img, axes, o + k * np.array([0, 22, -55]), k * np.array([12, 10, 20]), 0.0)
    _paint(img, axes, o + k * np.array([0, -8, -30]), k * np.array([6, 6, 12]), 0.8 * fat)
    for s in (-1.0, 1.0):
        _paint(img, axes, o + k * np.array([s * 30, 62, -15]), k * np.array([16, 20, 11]), fat)
        _paint(img, axes, o + k * np.array([s * 32, 74, -15]), k * np.array([11, 11, 11]), 0.3)
        _paint(img, axes, o + k * np.array([s * 48, -30, -28]), k * np.array([9, 10, 9]),
               0.08)                                             # mastoid / petrous bone
    img[brain] = inner
    img[brain] *= (1.0 + 0.05 * fine[brain])
    return img, depth
