"""The artery tree of one phantom patient: centre lines with radii and inflow brightness.

Anatomy, in millimetres relative to the centre of the Circle of Willis (x left->right,
y posterior->anterior, z inferior->superior; the patient's head position adds an offset):
internal carotid arteries with a petrous bend and a cavernous siphon, vertebral arteries
joining into the basilar artery, and the ring: A1 segments joined by the anterior
communicating artery, P1 segments from the basilar tip joined to the carotids by the posterior
communicating arteries. From the ring grow M1 -> superior/inferior M2 trunks, A2 (pericallosal
arch), P2 around the midbrain, the cerebellar arteries (SCA, AICA, PICA), lenticulostriate
perforators, and, outside the brain, ophthalmic and external-carotid (superficial temporal,
occipital) arteries. Cortical branches grow from those roots towards the cortex of their
territory, tortuous, tapering and bifurcating by Murray's law (r^3 = r1^3 + r2^3).

Normal variants drawn per patient (frequencies roughly as reported in anatomical series):
hypoplastic or absent PCoA, fetal PCA (large PCoA, hypoplastic P1), hypoplastic A1,
hypoplastic ACoA, vertebral dominance. Rare findings: a focal stenosis of a large artery, a
saccular aneurysm at a ring branching (``PhantomConfig.stenosis_prob``/``aneurysm_prob``).

Brightness (``Vessel.gain``, relative to a fresh, fully occupied large artery) models TOF
inflow: it falls with the path travelled inside the slab (saturation) and with the radius
(slower flow in small arteries saturates more).
"""
import dataclasses
import heapq
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from scipy import interpolate

from .presets import PhantomConfig

__all__ = ["Vessel", "build_tree", "build_veins", "variants"]


@dataclasses.dataclass
class Vessel:
    points: np.ndarray  # (n, 3) centre line, world mm
    radii: np.ndarray   # (n,) mm
    gain: np.ndarray    # (n,) relative inflow brightness
    name: str = ""


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    while True:
        e = rng.standard_normal(3)
        e -= e.dot(d) * d
        norm = np.linalg.norm(e)
        if norm > 1e-6:
            return e / norm


def variants(rng: np.random.Generator) -> Dict[str, float]:
    """Per-patient calibre factors of the ring segments (0 = absent)."""
    v = {}
    for s in ("L", "R"):
        fetal = rng.random() < 0.12
        pcoa = rng.choice([0.0, 0.45, 1.0], p=[0.2, 0.3, 0.5])
        v[f"pcoa_{s}"] = 1.8 if fetal else float(pcoa)
        v[f"p1_{s}"] = 0.4 if fetal else 1.0
        v[f"a1_{s}"] = 1.0
    if rng.random() < 0.1:
        v[f"a1_{rng.choice(['L', 'R'])}"] = 0.45
    v["acoa"] = 0.55 if rng.random() < 0.15 else 1.0
    dominant = rng.uniform(1.0, 1.25)
    left = rng.random() < 0.6
    v["va_L"], v["va_R"] = (dominant, 2.0 - dominant) if left else (2.0 - dominant, dominant)
    return v


class _Builder:
    """Grows the tree; ``inside(p)`` gives the depth (mm) of a point inside the intracranial
    cavity (negative outside) and ``surface(p, territory)`` the cortex point nearest ``p``."""

    def __init__(self, rng, config: PhantomConfig, origin: np.ndarray, z_entry: float,
                 depth: Callable, surface: Callable):
        self.rng, self.config = rng, config
        self.origin, self.z_entry = origin, z_entry
        self.k = config.head_scale
        self.depth, self.surface = depth, surface
        self.vessels: List[Vessel] = []
        self.queue: list = []
        self.count = 0
        self.r_min = config.min_radius_mm

    def P(self, x, y, z, jitter=1.5):
        """World point of an anatomical position (mm from the CoW centre), jittered."""
        return self.origin + self.k * (np.array([x, y, z], dtype=np.float64)
                                       + self.rng.normal(0.0, jitter, 3))

    def _step(self, r):
        return float(np.clip(0.7 + 0.6 * r, 0.7, 1.6))

    def _path(self, points, start_path):
        inside = points[:, 2] > self.z_entry
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1) * inside[1:]
        return start_path + np.concatenate([[0.0], np.cumsum(seg)])

    def _gain(self, path, radii):
        flow = 0.6 + 0.4 * np.minimum(1.0, radii / 1.0)
        return flow * np.exp(-self.config.saturation_per_mm * path)

    def add(self, points, radii, start_path=0.0, name=""):
        radii = np.maximum(np.asarray(radii, dtype=np.float64), 0.05)
        path = self._path(points, start_path)
        self.vessels.append(Vessel(points, radii, self._gain(path, radii), name))
        return path

    def trunk(self, waypoints, r0, r1, start_path=0.0, name="", wiggle=1.0):
        """A named artery through fixed waypoints (cubic spline) plus wiggles that vanish at
        both ends. Returns (points, radii, path)."""
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
        for j in (2, 3, 5):
            amp = self.rng.normal(0.0, 0.012 * length) * self.config.tortuosity * wiggle
            curve += amp * np.sin(j * math.pi * s)[:, None] * _perpendicular(self.rng, axis)
        radii = np.linspace(r0, r1, n)
        path = self.add(curve, radii, start_path, name)
        return curve, radii, path

    def sprout(self, start, direction, radius, path, target, territory):
        """Queue the root of a free-growing cortical sub-tree heading for ``target``."""
        self.count += 1
        heapq.heappush(self.queue, (-float(radius), self.count, np.asarray(start, float),
                                    _unit(direction), float(path), np.asarray(target, float),
                                    territory))

    def _walk(self, start, direction, length, radius, target):
        """Tortuous centre line: AR(1) curvature, attraction to the target, kept inside the
        cavity (pushed inwards within 2.5 mm of its surface). Scalar code: one call per step."""
        step = self._step(radius)
        n = max(3, int(math.ceil(length / step)))
        step = length / n
        bend = 0.22 * self.config.tortuosity * math.sqrt(step)
        px, py, pz = (float(c) for c in start)
        dx, dy, dz = (float(c) for c in direction)
        tx, ty, tz = (float(c) for c in target)
        fx = fy = fz = 0.0
        points = [(px, py, pz)]
        depth_at = self.depth
        for kx, ky, kz in self.rng.standard_normal((n, 3)).tolist():
            fx, fy, fz = 0.6 * fx + 0.8 * kx, 0.6 * fy + 0.8 * ky, 0.6 * fz + 0.8 * kz
            ax, ay, az = tx - px, ty - py, tz - pz
            dist = math.sqrt(ax * ax + ay * ay + az * az)
            pull = 0.2 / dist if dist > 1e-6 else 0.0
            dx += bend * fx + pull * ax
            dy += bend * fy + pull * ay
            dz += bend * fz + pull * az
            depth = depth_at((px, py, pz))
            if depth < 2.5:
                push = 0.6 * (2.5 - depth) / 0.5
                gx = depth_at((px + 0.5, py, pz)) - depth
                gy = depth_at((px, py + 0.5, pz)) - depth
                gz = depth_at((px, py, pz + 0.5)) - depth
                dx, dy, dz = dx + push * gx, dy + push * gy, dz + push * gz
            norm = math.sqrt(dx * dx + dy * dy + dz * dz)
            dx, dy, dz = dx / norm, dy / norm, dz / norm
            px, py, pz = px + step * dx, py + step * dy, pz + step * dz
            points.append((px, py, pz))
        return np.array(points)

    def grow_all(self):
        """Growth of the queued sub-trees, thickest branch first (so the branch cap cuts off
        the thinnest, least visible vessels, fairly over all territories)."""
        rng, branches = self.rng, 0
        while self.queue and branches < self.config.max_branches:
            neg_r, _, p0, d0, path0, target, territory = heapq.heappop(self.queue)
            r0 = -neg_r
            if r0 < self.r_min:
                continue
            branches += 1
            length = self.k * (10.0 + 30.0 * r0) * rng.uniform(0.7, 1.3)
            r1 = max(0.8 * self.r_min, r0 * rng.uniform(0.9, 0.98))
            points = self._walk(p0, d0, length, r0, target)
            radii = np.linspace(r0, r1, len(points))
            path = self.add(points, radii, path0)
            for _ in range(rng.poisson(length / (9.0 * self.k))):   # thin side branches
                i = int(rng.integers(1, len(points) - 1))
                tangent = _unit(points[i + 1] - points[i - 1])
                a = math.radians(rng.uniform(50, 85))
                side = math.cos(a) * tangent + math.sin(a) * _perpendicular(rng, tangent)
                tgt = self.surface(points[i] + 25.0 * self.k * side, territory)
                self.sprout(points[i], side, radii[i] * rng.uniform(0.5, 0.75), path[i], tgt,
                            territory)
            end_dir = _unit(points[-1] - points[-2])
            ratio = rng.uniform(0.5, 1.0)
            big = r1 / (1.0 + ratio ** 3) ** (1.0 / 3.0)
            normal = _perpendicular(rng, end_dir)
            spread = 20.0 * self.k * (0.5 + r0)
            for r_child, sign, angle in ((big, 1.0, rng.uniform(15, 35)),
                                         (big * ratio, -1.0, rng.uniform(30, 60))):
                a = math.radians(angle)
                direction = math.cos(a) * end_dir + sign * math.sin(a) * normal
                tgt = self.surface(target + spread * sign * normal
                                   + rng.normal(0, 0.3 * spread, 3), territory)
                self.sprout(points[-1], direction, r_child, path[-1], tgt, territory)


def _finding(rng, config: PhantomConfig, vessels: List[Vessel], k: float):
    """Rare findings on the named large arteries: a focal stenosis, a saccular aneurysm."""
    large = [v for v in vessels if v.name in ("ICA", "M1", "BA", "VA")]
    if large and rng.random() < config.stenosis_prob:
        v = large[int(rng.integers(len(large)))]
        seg = np.linalg.norm(np.diff(v.points, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        s0, width = rng.uniform(0.3, 0.8) * s[-1], rng.uniform(2.0, 4.0) * k
        v.radii = v.radii * (1.0 - rng.uniform(0.45, 0.7) * np.exp(-((s - s0) / width) ** 2))
    if rng.random() < config.aneurysm_prob:
        hubs = [v for v in vessels if v.name in ("ACoA", "M1", "BA", "ICA")]
        v = hubs[int(rng.integers(len(hubs)))]
        i = len(v.points) - 1 if v.name in ("M1", "BA", "ICA") else len(v.points) // 2
        r = rng.uniform(1.5, 3.5) * k
        centre = v.points[i] + 0.7 * r * _perpendicular(rng, _unit(v.points[i] - v.points[i - 1]))
        pts = np.array([centre, centre + 0.1 * _perpendicular(rng, np.array([0.0, 0, 1]))])
        vessels.append(Vessel(pts, np.full(2, r), np.full(2, 0.7 * float(v.gain[i])), "aneurysm"))


def build_tree(rng: np.random.Generator, config: PhantomConfig, origin: np.ndarray,
               z_entry: float, depth: Callable, surface: Callable,
               variant: Optional[Dict[str, float]] = None) -> List[Vessel]:
    """All vessels of one patient (see module docstring). ``origin``: world position of the
    CoW centre; ``z_entry``: bottom face of the slab (inflow saturation starts there).
    Function of more than 60 lines: it is the anatomy table, one artery per statement."""
    b = _Builder(rng, config, origin, z_entry, depth, surface)
    v = variant or variants(rng)
    u, P, k = rng.uniform, b.P, b.k
    size = u(0.9, 1.1) * k       # this patient's calibre
    tip = P(0, -13, -2, 1.0)
    vb = P(0, -20, -32)
    ba = b.trunk([vb, P(u(-3, 3), -17, -17), tip], 1.6 * size, 1.4 * size, name="BA")
    aca_ends, ba_path = [], ba[2][-1]
    for s, side in ((-1.0, "L"), (1.0, "R")):
        ica = b.trunk([P(s * 21, 0, -75), P(s * 22, 4, -42), P(s * 17, 15, -29),
                       P(s * 14, 12, -19), P(s * 14, 20, -10), P(s * 15, 21, -3),
                       P(s * 14, 13, 0, 1.0), P(s * 13, 6, 3, 0.8)],
                      2.3 * size, 2.0 * size, name="ICA", wiggle=0.5)
        t, t_path = ica[0][-1], ica[2][-1]
        b.trunk([P(s * 14, -27, -85), P(s * 12, -30, -55), P(s * 6, -24, -38), vb],
                1.5 * size * v[f"va_{side}"], 1.4 * size * v[f"va_{side}"], name="VA")
        pj = P(s * 9, -13, 0, 1.0)                                            # P1/PCoA junction
        if v[f"p1_{side}"] > 0:
            b.trunk([tip, pj], 1.0 * size * v[f"p1_{side}"], 0.95 * size * v[f"p1_{side}"],
                    ba_path, "P1")
        if v[f"pcoa_{side}"] > 0:
            b.trunk([t, P(s * 12, -3, 1), pj], 0.6 * size * v[f"pcoa_{side}"],
                    0.55 * size * v[f"pcoa_{side}"], t_path, "PCoA")
        p2 = b.trunk([pj, P(s * 18, -22, 2), P(s * 24, -38, 6)], 1.0 * size, 0.9 * size,
                     ba_path, "P2")
        b.sprout(p2[0][-1], p2[0][-1] - p2[0][-2], 0.85 * size, p2[2][-1],
                 surface(P(s * 25, -80, 15, 5), "cerebrum"), "cerebrum")
        b.sprout(p2[0][-1], [s * 0.3, -1, -0.3], 0.5 * size, p2[2][-1],
                 surface(P(s * 35, -60, -5, 5), "cerebrum"), "cerebrum")      # temporal PCA
        m = P(s * 32, 7, 5)
        m1 = b.trunk([t, P(s * 22, 9, 4), m], 1.5 * size, 1.3 * size, t_path, "M1")
        m2s = b.trunk([m, P(s * 38, 6, 14), P(s * 44, 2, 28), P(s * 47, -4, 42)],
                      1.1 * size, 0.8 * size, m1[2][-1], "M2", wiggle=0.6)       # superior
        m2i = b.trunk([m, P(s * 40, 2, 4), P(s * 46, -12, 6), P(s * 48, -28, 10)],
                      1.0 * size, 0.75 * size, m1[2][-1], "M2", wiggle=0.6)      # inferior
        for trunk_, heights in ((m2s, (20, 40, 55, 60, 35)), (m2i, (0, 15, 30, 45))):
            pts, _, path = trunk_
            for j, h in enumerate(heights):
                i = int((j + 1) * (len(pts) - 1) / (len(heights) + 1))
                tgt = surface(P(s * 60, pts[i][1] - origin[1] + u(-30, 30), h, 4), "cerebrum")
                b.sprout(pts[i], tgt - pts[i], u(0.6, 0.85) * size, path[i], tgt, "cerebrum")
        b.sprout(m2s[0][-1], m2s[0][-1] - m2s[0][-2], 0.75 * size, m2s[2][-1],
                 surface(P(s * 40, -10, 65, 5), "cerebrum"), "cerebrum")
        b.sprout(m2i[0][-1], m2i[0][-1] - m2i[0][-2], 0.7 * size, m2i[2][-1],
                 surface(P(s * 45, -55, 20, 5), "cerebrum"), "cerebrum")
        for _ in range(3):                                                    # perforators
            i = int(rng.integers(2, len(m1[0]) - 2))
            b.sprout(m1[0][i], [0, 0, 1], u(0.2, 0.3), m1[2][i],
                     P(s * 18, 4, 25, 4), "deep")
        a_end = P(s * 2.2, 20, 6, 0.7)
        if v[f"a1_{side}"] > 0:
            b.trunk([t, P(s * 7, 15, 4), a_end], 1.0 * size * v[f"a1_{side}"],
                    0.9 * size * v[f"a1_{side}"], t_path, "A1")
        aca_ends.append(a_end)
        a2 = b.trunk([a_end, P(s * 2.5, 28, 14), P(s * 3, 34, 26), P(s * 3, 28, 40),
                      P(s * 3, 12, 50), P(s * 3, -12, 52)], 1.0 * size, 0.7 * size,
                     t_path + 20.0, "A2", wiggle=0.4)
        for i in np.linspace(len(a2[0]) // 4, len(a2[0]) - 2, 4).astype(int):
            b.sprout(a2[0][i], [s * 0.4, u(-0.5, 0.5), 1.0], u(0.4, 0.6) * size, a2[2][i],
                     surface(a2[0][i] + k * np.array([s * 12, u(-15, 15), 30]), "cerebrum"),
                     "cerebrum")
        sca = b.trunk([tip - [0, 0, 3 * k], P(s * 8, -18, -7), P(s * 16, -28, -9)],
                      0.65 * size, 0.55 * size, ba_path, "SCA")
        b.sprout(sca[0][-1], [s * 0.3, -1, -0.2], 0.55 * size, sca[2][-1],
                 surface(P(s * 25, -55, -15, 5), "cerebellum"), "cerebellum")
        b.sprout(P(0, -18, -20), [s, -0.3, -0.2], 0.45 * size, ba_path * 0.5,
                 surface(P(s * 32, -40, -30, 5), "cerebellum"), "cerebellum")  # AICA
        b.sprout(P(s * 7, -25, -36), [s * 0.3, -1, 0.1], 0.5 * size, 0.0,
                 surface(P(s * 18, -60, -35, 5), "cerebellum"), "cerebellum")  # PICA
        b.trunk([P(s * 15, 21, -3), P(s * 24, 40, 0), P(s * 30, 62, 2)], 0.55 * size,
                0.4 * size, t_path, "OphA")
        b.trunk([P(s * 28, 8, -85), P(s * 42, 14, -50), P(s * 64, 10, -25), P(s * 72, 8, 5),
                 P(s * 73, 0, 35)], 1.0 * size, 0.7 * size, 0.0, "STA")
        b.trunk([P(s * 28, 5, -85), P(s * 38, -45, -50), P(s * 42, -82, -20),
                 P(s * 30, -97, 15)], 0.8 * size, 0.6 * size, 0.0, "OccA")
    b.trunk([aca_ends[0], P(0, 20.5, 6.4, 0.3), aca_ends[1]], 0.6 * size * v["acoa"],
            0.6 * size * v["acoa"], 40.0, "ACoA", wiggle=0.2)
    b.grow_all()
    _finding(rng, config, b.vessels, k)
    return b.vessels


def build_veins(rng: np.random.Generator, config: PhantomConfig, roots: Sequence[np.ndarray],
                depth: Callable, surface: Callable, max_branches: int = 160) -> List[Vessel]:
    """Unlabelled cortical veins: trees grown from points of the dural sinuses (``roots``)
    over the cortex surface, radius 0.7-1.4 mm at the sinus, uniform slow-flow gain 0.6-1.0 per
    vein (the caller scales it by ``vein_contrast``). An annotator of arteries leaves them out;
    a global threshold cannot."""
    cfg = dataclasses.replace(config, max_branches=max_branches,
                              min_radius_mm=max(0.3, config.min_radius_mm))
    b = _Builder(rng, cfg, np.zeros(3), -np.inf, depth, surface)
    for root in roots:
        inward = surface(root + rng.normal(0.0, 25.0, 3), "cerebrum") - root
        b.sprout(root, inward, rng.uniform(0.7, 1.4) * config.head_scale, 0.0,
                 surface(root + 1.5 * inward, "cerebrum"), "cerebrum")
    b.grow_all()
    for v in b.vessels:
        v.gain = np.full(len(v.points), rng.uniform(0.6, 1.0))
    return b.vessels
