"""Synthetic skull-stripped TOF-MRA-like volumes with exact vessel labels (the default data).

Real patient data cannot be downloaded, so every command can run on these phantoms instead.
Each volume holds a random, tortuous, branching artery tree: internal-carotid- and basilar-like
trunks entering from below, a Circle-of-Willis-like ring in an axial plane, and middle, anterior,
posterior and cerebellar-like sub-trees whose branches narrow and bifurcate (Murray's law) down
to sub-voxel radii. The label is the exact geometric vessel mask (voxel centre within r(s) of a
centre line); the image adds partial volume, point-spread blur, textured grey/white-matter-like
tissue, a smooth multiplicative bias field and Rician noise, so intensity alone is an imperfect
segmenter.

What makes real TOF-MRA hard for a global threshold is modelled too: inflow saturation (the
arterial signal fades along the path travelled through the slab, so distal small vessels are
dim); a strong, low-order bias field dominated by an inferior-superior ramp and an in-plane
centre-periphery term (coil coverage, TONE flip-angle ramp), about +-30-50% over the brain; and
bright non-vessel structures that skull stripping leaves at the brain surface and that are never
labelled: a transverse-sinus-like venous tube along the posterior surface and patchy fat/marrow
remnants in a thin surface shell. They are as bright as small arteries but differ in shape
and position (thicker than any artery, sheet- or blob-like, hugging the mask boundary).

Geometry: world coordinates are RAS+ millimetres (x left->right, y posterior->anterior,
z inferior->superior) with the origin at the centre of the voxel grid; axis 2 is axial. The brain
ellipsoid and the tree's anchor points scale with the field of view; vessel radii are absolute
(mm), so small grids look like a zoomed-in crop with relatively thicker vessels.

Command line::

    python -m tfdpgan.phantom --out_dir=DIR --num_patients=20 --num_test=4 --seed=0

writes ``DIR/{images,labels,masks}{Tr,Ts}/phantom_NNN.nii.gz`` and ``DIR/dataset.json``.
"""
import collections
import dataclasses
import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
from absl import app, flags, logging
from scipy import fft, interpolate, ndimage, special

from tfdpgan import atomic

CASE_PREFIX = "phantom_"
# Bump when the generator's output changes for the same seed and config (invalidates caches).
GENERATOR_VERSION = 2
SUBFOLDERS = ("imagesTr", "labelsTr", "masksTr", "imagesTs", "labelsTs", "masksTs")


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
    """Volume geometry and appearance. Intensities are in arbitrary scanner-like units."""
    shape: Tuple[int, int, int] = (192, 192, 48)         # voxels (x, y in-plane; z axial)
    spacing: Tuple[float, float, float] = (0.5, 0.5, 0.7)  # mm
    min_radius_mm: float = 0.2        # thinnest vessel; branching stops below it
    max_radius_mm: float = 2.5        # carotid-like inflow radius
    tissue_intensity: float = 200.0   # white-matter-like mean (grey matter ~25% darker)
    vessel_intensity: float = 900.0   # fully occupied voxel of a large proximal artery
    noise_sigma: float = 25.0         # std of each Gaussian channel of the Rician noise
    bias_strength: float = 0.25       # std over the brain of the log of the bias field
    saturation_per_mm: float = 0.006  # relative inflow-signal loss per mm of arterial path
    distractor_intensity: float = 300.0  # surface sinus / fat remnants (0: none)
    psf_sigma_voxels: float = 0.5     # Gaussian point-spread blur of the vessel signal
    tortuosity: float = 1.0           # scales centre-line wiggle (0 = smooth curves)
    max_branches: int = 700           # cap on free-growing branches per volume

    def __post_init__(self):
        if len(self.shape) != 3 or any(int(n) != n or n < 8 for n in self.shape):
            raise ValueError(f"shape must be three integers >= 8, got {self.shape}")
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing}")
        if not 0 < self.min_radius_mm < self.max_radius_mm:
            raise ValueError("need 0 < min_radius_mm < max_radius_mm")
        for name in ("tissue_intensity", "vessel_intensity", "noise_sigma", "bias_strength",
                     "saturation_per_mm", "distractor_intensity", "psf_sigma_voxels",
                     "tortuosity", "max_branches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        # Normalise so equal configs compare (and serialise) equal.
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))


@dataclasses.dataclass(frozen=True)
class Phantom:
    """One synthetic patient: arrays indexed [x, y, z], ``affine`` maps voxel index -> RAS mm."""
    image: np.ndarray   # float32, zero outside the brain mask
    label: np.ndarray   # uint8 {0, 1}, vessels, inside the mask
    mask: np.ndarray    # uint8 {0, 1}, brain
    affine: np.ndarray  # 4x4 float64


def affine_for(config: PhantomConfig) -> np.ndarray:
    """RAS+ affine with the given spacing whose world origin is the centre of the grid."""
    spacing = np.asarray(config.spacing, dtype=np.float64)
    affine = np.diag(np.append(spacing, 1.0))
    affine[:3, 3] = -(np.asarray(config.shape) - 1) / 2.0 * spacing
    return affine


# ---------------------------------------------------------------------------------------------
# Vessel tree (centre lines with radii), in world millimetres.

@dataclasses.dataclass
class _Vessel:
    points: np.ndarray  # (n, 3) centre line
    radii: np.ndarray   # (n,) mm
    gain: float         # relative inflow brightness (saturation drops distally)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """Random unit vector perpendicular to the unit vector ``d``."""
    while True:
        e = rng.standard_normal(3)
        e -= e.dot(d) * d
        norm = np.linalg.norm(e)
        if norm > 1e-6:
            return e / norm


class _TreeBuilder:
    """Grows one random artery tree inside the brain ellipsoid.

    Anchor points are given as fractions of the brain semi-axes (x, y) and of the slab height
    (z, 0 = bottom voxel centre, 1 = top); lengths scale with the brain size, radii do not.
    """
    # Centre lines are kept at normalised ellipsoid radius <= this (the mask boundary is ~1).
    MAX_RHO = 0.88
    STEER_RHO = 0.65

    def __init__(self, rng: np.random.Generator, config: PhantomConfig, semi_axes: np.ndarray):
        self.rng = rng
        self.config = config
        self.semi = semi_axes
        self.semi_tuple = tuple(semi_axes.tolist())
        half = (np.asarray(config.shape) - 1) / 2.0 * np.asarray(config.spacing)
        self.z_lo, self.z_hi = -half[2], half[2]
        self.z_margin = min(2.0, 0.12 * (self.z_hi - self.z_lo))
        self.scale = min(semi_axes[0], semi_axes[1]) / 42.0  # 1.0 at the default geometry
        self.vessels: List[_Vessel] = []
        self.queue: collections.deque = collections.deque()

    def at(self, ux: float, uy: float, zfrac: float, jitter: float = 0.02) -> np.ndarray:
        """World point of an anchor given in brain/slab fractions, randomly jittered."""
        ux, uy = ux + self.rng.normal(0, jitter), uy + self.rng.normal(0, jitter)
        z = self.z_lo + (zfrac + self.rng.normal(0, jitter)) * (self.z_hi - self.z_lo)
        return np.array([ux * self.semi[0], uy * self.semi[1], z])

    def _step(self, radius: float) -> float:
        """Centre-line sampling step (mm): finer for thin vessels and small grids."""
        return float(np.clip(0.8 + 0.6 * radius, 0.8, 2.0) * min(1.0, self.scale ** 0.5))

    def _add(self, points: np.ndarray, radii: np.ndarray, gain: float):
        self.vessels.append(_Vessel(points, np.clip(radii, self.config.min_radius_mm,
                                                    self.config.max_radius_mm), gain))

    def trunk(self, waypoints: Sequence[np.ndarray], r0: float, r1: float):
        """A vessel with fixed end points: smooth spline through waypoints plus sinusoidal
        wiggles that vanish at both ends (so ring segments meet exactly)."""
        pts = np.asarray(waypoints, dtype=np.float64)
        chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        length = chord[-1]
        n = max(4, int(math.ceil(length / self._step(min(r0, r1)))) + 1)
        s = np.linspace(0.0, 1.0, n)
        if len(pts) > 2:
            curve = interpolate.CubicSpline(chord / length, pts, bc_type="natural")(s)
        else:
            curve = pts[0] + s[:, None] * (pts[1] - pts[0])
        axis = _unit(pts[-1] - pts[0])
        for k in (1, 2, 3):
            amp = self.rng.normal(0.0, 0.035 * length / k) * self.config.tortuosity
            curve += amp * np.sin(k * math.pi * s)[:, None] * _perpendicular(self.rng, axis)
        self._add(curve, np.linspace(r0, r1, n), gain=1.0)

    def _steer(self, px: float, py: float, pz: float, dx: float, dy: float, dz: float):
        """Turn a direction away from the brain boundary and the slab faces; returns a unit
        vector. Scalar code: this runs once per centre-line step."""
        ax, ay, az = self.semi_tuple
        ux, uy, uz = px / ax, py / ay, pz / az
        rho = math.sqrt(ux * ux + uy * uy + uz * uz)
        norm = math.sqrt(dx * dx + dy * dy + dz * dz)
        dx, dy, dz = dx / norm, dy / norm, dz / norm
        if rho > self.STEER_RHO:
            nx, ny, nz = ux / ax, uy / ay, uz / az
            norm = math.sqrt(nx * nx + ny * ny + nz * nz)
            outward = (dx * nx + dy * ny + dz * nz) / norm
            if outward > 0:
                k = 1.5 * min(1.0, (rho - self.STEER_RHO) / 0.15) * outward / norm
                dx, dy, dz = dx - k * nx, dy - k * ny, dz - k * nz
        top = (pz - (self.z_hi - self.z_margin)) / self.z_margin
        bottom = ((self.z_lo + self.z_margin) - pz) / self.z_margin
        if top > 0 and dz > 0:  # weakly: some vessels leave through the top, as in TOF
            dz -= 0.5 * min(1.0, top) * dz
        if bottom > 0 and dz < 0:
            dz -= 1.5 * min(1.0, bottom) * dz
        norm = math.sqrt(dx * dx + dy * dy + dz * dz)
        return dx / norm, dy / norm, dz / norm

    def _walk(self, start: np.ndarray, direction: np.ndarray, length: float,
              radius: float) -> np.ndarray:
        """Tortuous centre line: persistent (AR(1)) random curvature plus boundary steering."""
        step = self._step(radius)
        n = max(3, int(math.ceil(length / step)))
        step = length / n
        bend = 0.15 * self.config.tortuosity * math.sqrt(step)
        ax, ay, az = self.semi_tuple
        px, py, pz = start.tolist()
        dx, dy, dz = direction.tolist()
        fx = fy = fz = 0.0
        points = [(px, py, pz)]
        for kx, ky, kz in self.rng.standard_normal((n, 3)).tolist():
            fx, fy, fz = 0.6 * fx + 0.8 * kx, 0.6 * fy + 0.8 * ky, 0.6 * fz + 0.8 * kz
            dx, dy, dz = self._steer(px, py, pz, dx + bend * fx, dy + bend * fy, dz + bend * fz)
            px, py, pz = px + step * dx, py + step * dy, pz + step * dz
            rho = math.sqrt((px / ax) ** 2 + (py / ay) ** 2 + (pz / az) ** 2)
            if rho > self.MAX_RHO:
                px, py, pz = (c * self.MAX_RHO / rho for c in (px, py, pz))
            points.append((px, py, pz))
        return np.array(points)

    def sprout(self, start: np.ndarray, direction: np.ndarray, radius: float, gain: float):
        """Queue the root of a free-growing sub-tree (grown by :meth:`grow_all`)."""
        self.queue.append((np.asarray(start, dtype=np.float64), _unit(direction), radius, gain))

    def grow_all(self):
        """Breadth-first growth of all queued sub-trees (so the branch cap is shared fairly):
        each branch tapers, sprouts thin side branches and ends in a Murray's-law bifurcation
        (r^3 = r1^3 + r2^3); growth stops below the minimum radius or at the branch cap.
        Inflow saturation: the gain drops by exp(-saturation_per_mm * path length)."""
        rng, r_min = self.rng, self.config.min_radius_mm
        decay = self.config.saturation_per_mm
        branches = 0
        while self.queue and branches < self.config.max_branches:
            p0, d0, r0, g = self.queue.popleft()
            if r0 < r_min:
                continue
            branches += 1
            length = max(3.0 * r0, self.scale * (8.0 + 12.0 * r0) * rng.uniform(0.7, 1.3))
            r1 = max(r_min, r0 * rng.uniform(0.75, 0.9))
            points = self._walk(p0, d0, length, r0)
            radii = np.linspace(r0, r1, len(points))
            self._add(points, radii, g * math.exp(-0.5 * decay * length))
            for _ in range(rng.poisson(length / (10.0 * self.scale))):
                k = int(rng.integers(1, len(points) - 1))
                tangent = _unit(points[k + 1] - points[k - 1])
                angle = math.radians(rng.uniform(45, 85))
                side = math.cos(angle) * tangent + math.sin(angle) * _perpendicular(rng, tangent)
                self.sprout(points[k], side, radii[k] * rng.uniform(0.3, 0.55),
                            g * math.exp(-decay * length * k / (len(points) - 1))
                            * rng.uniform(0.9, 1.0))
            g *= math.exp(-decay * length)
            end_dir = _unit(points[-1] - points[-2])
            ratio = rng.uniform(0.4, 1.0)  # asymmetry of the bifurcation
            big = r1 / (1.0 + ratio ** 3) ** (1.0 / 3.0)
            normal = _perpendicular(rng, end_dir)
            for r_child, sign, angle in ((big, 1.0, rng.uniform(15, 35)),
                                         (big * ratio, -1.0, rng.uniform(30, 60))):
                a = math.radians(angle)
                self.sprout(points[-1], math.cos(a) * end_dir + sign * math.sin(a) * normal,
                            r_child, g * rng.uniform(0.93, 1.0))

    def build(self) -> List[_Vessel]:
        """Circle-of-Willis-like anatomy with per-seed jitter and variant calibres."""
        u = self.rng.uniform
        r_max = self.config.max_radius_mm
        z_cow = u(0.3, 0.4)  # axial level of the ring, as a fraction of the slab height
        basilar_tip = self.at(0.0, -0.17, z_cow - 0.04)
        self.trunk([self.at(0.0, -0.24, -0.12), self.at(0.02, -0.2, 0.5 * z_cow), basilar_tip],
                   r_max * u(0.55, 0.7), r_max * u(0.5, 0.6))
        aca_roots = []
        for side in (-1.0, 1.0):
            # Internal carotid with a siphon-like S bend, entering from below the slab.
            ica_end = self.at(side * 0.24, 0.12, z_cow)
            self.trunk([self.at(side * 0.27, 0.1, -0.12), self.at(side * 0.3, 0.25, 0.45 * z_cow),
                        self.at(side * 0.26, 0.21, 0.8 * z_cow), ica_end],
                       r_max * u(0.9, 1.0), r_max * u(0.75, 0.85))
            aca_root = self.at(side * 0.04, 0.3, z_cow + 0.04)
            pca_root = self.at(side * 0.16, -0.15, z_cow)
            aca_roots.append(aca_root)
            self.trunk([ica_end, aca_root], u(0.6, 1.2), u(0.6, 1.0))             # A1
            self.trunk([pca_root, basilar_tip], u(0.8, 1.1), u(0.8, 1.1))         # P1
            self.trunk([ica_end, pca_root], u(0.25, 0.8), u(0.25, 0.6))           # PCoA
            self.sprout(ica_end, np.array([side, 0.1, 0.2]), u(1.2, 1.5), 1.0)      # MCA
            self.sprout(aca_root, np.array([0.05 * side, 0.8, 0.6]), u(0.8, 1.0), 0.95)  # ACA
            self.sprout(pca_root, np.array([0.6 * side, -1.0, 0.2]), u(0.8, 1.0), 0.95)  # PCA
            self.sprout(basilar_tip - [0.0, 0.0, 1.5 * self.scale],
                        np.array([side, -0.3, -0.1]), u(0.4, 0.6), 0.9)             # SCA
        self.trunk(aca_roots, u(0.3, 0.7), u(0.3, 0.7))                             # ACoA
        self.grow_all()
        return self.vessels


# ---------------------------------------------------------------------------------------------
# Rasterisation and appearance.

def _rasterize(vessels: Sequence[_Vessel], config: PhantomConfig):
    """Label, partial-volume occupancy and vessel signal of the tree on the voxel grid.

    Each centre-line segment is a capsule whose radius is interpolated along it; only voxels in
    its bounding box are visited. Label: voxel centre within r of the segment. Occupancy: an
    analytic box-voxel coverage of a tube of radius r at distance d (1 inside thick vessels,
    ~0.5 at their border, ~(r/h)^2 at the centre of sub-voxel vessels, h = half voxel size).
    Signal: occupancy times the vessel's inflow brightness: larger, more proximal and more
    through-slab (z) flow is brighter (TOF saturation of slow and in-plane flow).
    """
    shape, spacing = config.shape, np.asarray(config.spacing)
    half_voxel = 0.5 * float(np.prod(spacing)) ** (1.0 / 3.0)
    origin = -(np.asarray(shape) - 1) / 2.0 * spacing
    axes = [origin[a] + spacing[a] * np.arange(shape[a]) for a in range(3)]
    label = np.zeros(shape, dtype=bool)
    occupancy = np.zeros(shape, dtype=np.float32)
    signal = np.zeros(shape, dtype=np.float32)
    for vessel in vessels:
        starts, ends = vessel.points[:-1], vessel.points[1:]
        reach = np.maximum(vessel.radii[:-1], vessel.radii[1:])[:, None] + half_voxel
        los = np.maximum(np.ceil((np.minimum(starts, ends) - reach - origin) / spacing), 0)
        his = np.minimum(np.floor((np.maximum(starts, ends) + reach - origin) / spacing) + 1,
                         shape)
        for i in np.flatnonzero(np.all(his > los, axis=1)):
            px, py, pz = starts[i].tolist()
            vx, vy, vz = (ends[i] - starts[i]).tolist()
            r0, r1 = float(vessel.radii[i]), float(vessel.radii[i + 1])
            box = tuple(slice(int(a), int(b)) for a, b in zip(los[i], his[i]))
            x = (axes[0][box[0]] - px)[:, None, None]
            y = (axes[1][box[1]] - py)[None, :, None]
            z = (axes[2][box[2]] - pz)[None, None, :]
            t = (x * vx + y * vy + z * vz) / (vx * vx + vy * vy + vz * vz)
            np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
            dist = np.sqrt((x - t * vx) ** 2 + (y - t * vy) ** 2 + (z - t * vz) ** 2)
            radius = r0 + t * (r1 - r0)
            label[box] |= dist <= radius
            overlap = np.minimum(dist + radius, half_voxel) - np.maximum(dist - radius, -half_voxel)
            cover = np.maximum(overlap, 0.0, out=overlap)
            cover *= np.minimum(radius, half_voxel) / (2.0 * half_voxel ** 2)
            brightness = config.vessel_intensity * vessel.gain * (
                (0.6 + 0.4 * min(1.0, (r0 + r1) / 3.0))
                * (0.7 + 0.3 * abs(vz) / math.sqrt(vx * vx + vy * vy + vz * vz)))
            np.maximum(occupancy[box], cover, out=occupancy[box])
            np.maximum(signal[box], cover * brightness, out=signal[box])
    return label, occupancy, signal


def _random_field(rng: np.random.Generator, config: PhantomConfig,
                  correlation_mm: float) -> np.ndarray:
    """Stationary Gaussian random field (zero mean, unit std, float32) with a Gaussian
    correlation of the given length, by FFT filtering of white noise (periodic at the edges)."""
    shape, spacing = config.shape, config.spacing
    spectrum = fft.rfftn(rng.standard_normal(shape, dtype=np.float32))
    freqs = [fft.fftfreq(shape[0], spacing[0]), fft.fftfreq(shape[1], spacing[1]),
             fft.rfftfreq(shape[2], spacing[2])]
    for axis, f in enumerate(freqs):
        gain = np.exp(-2.0 * (math.pi * correlation_mm * f) ** 2).astype(np.float32)
        spectrum *= gain.reshape([-1 if a == axis else 1 for a in range(3)])
    field = fft.irfftn(spectrum, s=shape)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field


def _normalised_coords(config: PhantomConfig, semi_axes: np.ndarray):
    """Broadcastable x/a, y/b, z/c voxel-centre coordinates (float32)."""
    spacing = np.asarray(config.spacing)
    coords = []
    for a, n in enumerate(config.shape):
        c = (np.arange(n) - (n - 1) / 2.0) * spacing[a] / semi_axes[a]
        coords.append(c.astype(np.float32).reshape([-1 if b == a else 1 for b in range(3)]))
    return coords


def _brain_semi_axes(config: PhantomConfig) -> np.ndarray:
    """The brain ellipsoid fills most of the slice and extends beyond the top and bottom of
    the slab (a TOF slab is thinner than the brain)."""
    extent = np.asarray(config.shape) * np.asarray(config.spacing)
    return extent * np.array([0.42, 0.44, 0.75])


def _bias_field(rng: np.random.Generator, coords, inside: np.ndarray,
                strength: float) -> np.ndarray:
    """Smooth multiplicative field of a TOF slab: a dominant inferior-superior ramp (receive
    coverage falls off towards the neck; TONE pulses raise the flip angle towards the top), a
    centre-periphery term of a receive array and random low-order terms, scaled so that its
    log has std ``strength`` over ``inside``; times a per-patient receiver gain (log std 0.1)."""
    x, y, z = coords
    s = z / float(np.abs(z).max())  # -1 at the bottom slice, +1 at the top
    k = (rng.normal(0, 1, 6) * 0.3).tolist()
    ramp = float(rng.choice((-1.0, 1.0))) * rng.uniform(0.6, 1.0)
    field = (ramp * s + k[0] * s * s) + (k[1] * x + k[2] * y)
    field = field + rng.normal(0.3, 0.2) * (x * x + y * y)
    field = field + (k[3] * x * y + k[4] * x * s + k[5] * y * s)
    values = field[inside]
    field -= values.mean()
    field *= strength / max(float(values.std()), 1e-12)
    return np.exp(field + np.float32(rng.normal(0.0, 0.1)))


def _surface_distractors(rng: np.random.Generator, config: PhantomConfig, coords,
                         depth: np.ndarray) -> np.ndarray:
    """Unlabelled bright structures at the brain surface, in units of distractor_intensity:
    a transverse-sinus-like venous tube (radius 2-3.5 mm, thicker than any artery) running
    along the posterior surface at a random height, and patchy fat/marrow-like remnants in the
    outer 1-2.5 mm. ``depth``: approximate distance (mm) below the mask surface."""
    x, y, z = coords
    z_mm = z * float(_brain_semi_axes(config)[2])
    radius = rng.uniform(2.0, 3.5)
    centre_z = rng.uniform(-0.6, 0.6) * float(z_mm.max()) + rng.uniform(-8.0, 8.0) * x
    dist = np.sqrt((depth - 0.8 * radius) ** 2 + (z_mm - centre_z) ** 2)
    sinus = special.expit((radius - dist) / 0.4) * special.expit(-10.0 * (y + 0.6))
    blobs = _random_field(rng, config, 6.0)
    shell = special.expit((rng.uniform(1.0, 2.5) - depth) / 0.4)
    fat = shell * special.expit(6.0 * (blobs - rng.uniform(1.4, 2.0)))
    return np.maximum(rng.uniform(0.4, 0.8) * sinus, rng.uniform(0.4, 0.8) * fat)


def make_volume(seed: int, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """One synthetic patient, fully determined by ``seed`` (a non-negative int) and config."""
    tree_seed, tissue_seed, noise_seed, distractor_seed = np.random.SeedSequence(seed).spawn(4)
    tissue_rng = np.random.default_rng(tissue_seed)
    semi_axes = _brain_semi_axes(config)
    coords = _normalised_coords(config, semi_axes)
    x, y, z = coords
    rho = np.sqrt(x * x + y * y + z * z)

    # Brain mask: ellipsoid with a wobbly boundary.
    wobble = _random_field(tissue_rng, config, 0.2 * semi_axes[0])
    mask = rho < 1.0 + 0.03 * wobble

    vessels = _TreeBuilder(np.random.default_rng(tree_seed), config, semi_axes).build()
    label, occupancy, signal = _rasterize(vessels, config)
    label &= mask
    if config.psf_sigma_voxels > 0:
        occupancy = ndimage.gaussian_filter(occupancy, config.psf_sigma_voxels, truncate=3.0)
        signal = ndimage.gaussian_filter(signal, config.psf_sigma_voxels, truncate=3.0)

    # Tissue: white-matter-like core, darker grey-matter-like islands and cortical rim, dark
    # CSF-like sulci near the surface, fine texture; bright unlabelled sinus/fat remnants on the
    # surface (own random stream, so switching them off leaves the rest of the volume as is).
    wm = config.tissue_intensity
    structure = _random_field(tissue_rng, config, 4.0)
    grey = 1.0 / (1.0 + np.exp(-(2.0 * structure - 1.5 + 12.0 * (rho - 0.82))))
    sulci = 1.0 / (1.0 + np.exp(-(3.0 * structure - 6.0 + 30.0 * (rho - 0.9))))
    texture = _random_field(tissue_rng, config, 0.7)
    tissue = wm * (1.0 - 0.25 * grey - 0.5 * sulci) * (1.0 + 0.06 * texture)
    if config.distractor_intensity > 0:
        depth = (1.0 + 0.03 * wobble - rho) * float(np.mean(semi_axes[:2]))
        bright = _surface_distractors(np.random.default_rng(distractor_seed), config, coords,
                                      depth)
        tissue += config.distractor_intensity * bright * (1.0 + 0.1 * texture)

    clean = tissue * (1.0 - occupancy) + signal
    clean *= _bias_field(tissue_rng, coords, mask, config.bias_strength)
    noise_rng = np.random.default_rng(noise_seed)
    sigma = np.float32(config.noise_sigma)
    real = clean + sigma * noise_rng.standard_normal(config.shape, dtype=np.float32)
    imag = sigma * noise_rng.standard_normal(config.shape, dtype=np.float32)
    image = np.sqrt(real * real + imag * imag) * mask
    return Phantom(image=image.astype(np.float32, copy=False), label=label.astype(np.uint8),
                   mask=mask.astype(np.uint8), affine=affine_for(config))


# ---------------------------------------------------------------------------------------------
# Dataset folder.

def case_ids(num_patients: int, num_test: int) -> Dict[str, List[str]]:
    """Training ids phantom_000..phantom_{N-1}; test ids continue the numbering."""
    total = num_patients + num_test
    width = max(3, len(str(total - 1)))
    ids = [f"{CASE_PREFIX}{i:0{width}d}" for i in range(total)]
    return {"train": ids[:num_patients], "test": ids[num_patients:]}


def patient_seed(seed: int, index: int) -> int:
    """Volume seed of patient ``index`` (the number in its case id) of a dataset seeded ``seed``:
    the ``index``-th child of ``SeedSequence(seed)``, so patients get independent streams and a
    case keeps its volume whatever the numbers of patients are."""
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0])


def save_nifti(path: str, data: np.ndarray, affine: np.ndarray):
    """Write one volume with scanner-coordinate qform/sform (code 1) and mm units."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_data_dtype(data.dtype)
    nib.save(img, path)


def _integer(name: str, value, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming the argument."""
    try:
        valid = int(value) == value and value >= minimum
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def write_dataset(out_dir: str, num_patients: int, num_test: int = 4, seed: int = 0,
                  config: PhantomConfig = PhantomConfig(),
                  progress: Optional[Callable[[int, int], None]] = None,
                  overwrite: bool = False) -> Dict[str, List[str]]:
    """Write an nnU-Net style phantom folder atomically; returns {"train": ids, "test": ids}.

    Layout: ``{images,labels,masks}{Tr,Ts}/<case>.nii.gz`` plus a Decathlon-like
    ``dataset.json`` (file lists, seed, config). Everything is written to a temporary sibling
    directory that is renamed to ``out_dir`` at the end, so ``out_dir`` either does not exist or
    is complete. An existing ``out_dir`` raises FileExistsError unless ``overwrite``.
    ``progress(done, total)`` is called after each patient (absl logging logs it too).
    """
    num_patients = _integer("num_patients", num_patients, 1)
    num_test = _integer("num_test", num_test, 0)
    seed = _integer("seed", seed, 0)
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True "
                              f"(--overwrite) to replace it")
    ids = case_ids(num_patients, num_test)
    with atomic.staged_dir(out_dir, overwrite) as tmp:
        for sub in SUBFOLDERS:
            os.mkdir(os.path.join(tmp, sub))
        entries = {"train": [], "test": []}
        cases = ids["train"] + ids["test"]
        roles = ("image", "label", "mask")
        for index, case in enumerate(cases):
            split, suffix = ("train", "Tr") if index < num_patients else ("test", "Ts")
            volume = make_volume(patient_seed(seed, index), config)
            entry = {role: f"./{role}s{suffix}/{case}.nii.gz" for role in roles}
            for role in roles:
                save_nifti(os.path.join(tmp, entry[role]), getattr(volume, role), volume.affine)
            entries[split].append(dict(entry, patient_id=case))
            logging.info("phantom %d/%d: %s (%s)", index + 1, len(cases), case, split)
            if progress is not None:
                progress(index + 1, len(cases))
        description = {
            "name": "tfdpgan-phantom",
            "description": "Synthetic TOF-MRA-like volumes with exact vessel labels",
            "tensorImageSize": "3D",
            "modality": {"0": "TOF-MRA"},
            "labels": {"0": "background", "1": "vessel"},
            "numTraining": num_patients,
            "numTest": num_test,
            "training": entries["train"],
            "test": entries["test"],
            "phantom": {"seed": seed, "config": dataclasses.asdict(config),
                        "case_seeds": {case: patient_seed(seed, index)
                                       for index, case in enumerate(cases)}},
        }
        with open(os.path.join(tmp, "dataset.json"), "w") as f:
            json.dump(description, f, indent=1)
    return ids


# ---------------------------------------------------------------------------------------------
# Command line (flags are defined only when run as a program, so importing this module never
# adds flags to another absl app).

def _triple(values: List[str], kind: type) -> tuple:
    parsed = tuple(kind(v) for v in values)
    if len(parsed) != 3:
        raise ValueError(f"expected three values, got {len(parsed)}")
    return parsed


def _check_triple(name: str, kind: type, values: List[str]) -> bool:
    try:
        triple = _triple(values, kind)
        PhantomConfig(**{name: triple})
    except (TypeError, ValueError) as e:
        raise flags.ValidationError(
            f"--{name} must be three comma-separated {kind.__name__}s x,y,z: {e}") from e
    return True


def _define_flags():
    flags.DEFINE_string("out_dir", None, "Dataset folder to create (must not exist unless "
                        "--overwrite).", required=True)
    flags.DEFINE_integer("num_patients", 20, "Number of training patients (imagesTr).",
                         lower_bound=1)
    flags.DEFINE_integer("num_test", 4, "Number of held-out test patients (imagesTs).",
                         lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Dataset seed; each patient's volume seed derives from it.",
                         lower_bound=0)
    flags.DEFINE_list("shape", ",".join(map(str, PhantomConfig.shape)),
                      "Volume shape in voxels x,y,z (z = axial slices), each >= 8.")
    flags.DEFINE_list("spacing", ",".join(map(str, PhantomConfig.spacing)),
                      "Voxel spacing in mm x,y,z.")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --out_dir.")
    flags.register_validator("shape", lambda v: _check_triple("shape", int, v))
    flags.register_validator("spacing", lambda v: _check_triple("spacing", float, v))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    config = PhantomConfig(shape=_triple(FLAGS.shape, int),
                           spacing=_triple(FLAGS.spacing, float))
    try:
        ids = write_dataset(FLAGS.out_dir, FLAGS.num_patients, FLAGS.num_test, FLAGS.seed,
                            config, overwrite=FLAGS.overwrite)
    except FileExistsError as e:
        raise SystemExit(f"error: {e}") from e
    print(f"wrote {len(ids['train'])} training and {len(ids['test'])} test phantoms "
          f"to {os.path.abspath(FLAGS.out_dir)}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
