"""Synthetic SXT cells with known truth, deterministic from a seed.

:func:`cell` builds one cell: an irregular cell body in its medium, a nucleus with a
nucleolus, vacuoles, lipid bodies, mitochondria (curved tubes) and, optionally,
starch granules, a bud, unlabelled vesicles and neighbouring cells, each class
with a LAC drawn per cell from the literature ranges of
:data:`sxtlab.classes.VOCABULARY` (sxtlab's DESIGN notes, after Henke et al. 1993
and the SXT literature). The LAC image mixes classes by their partial volume at
boundaries; the labels are the truth at voxel centres. An optional simulated
acquisition (:mod:`sxtlab.acquisition`: tilt series, blur, photon noise,
filtered back-projection) makes the image look like a reconstruction, and
``gray=True`` hides the LAC behind a random gray-value calibration to be
estimated. :func:`population` makes cells under conditions (e.g. two lipid
contents) for tutorials and statistics.

Every shape is drawn in physical units (µm) around the cell's centre, so the same
seed gives the same physical cell on any voxel grid (anisotropic included) whose
smallest extent is the same (the default cell radius follows that extent).

Examples
--------
>>> from sxtlab import phantom
>>> ds = phantom.cell(seed=3, shape=(64, 64, 64), voxel_size=0.05)
>>> sorted(ds.data_vars)
['instance_labels', 'labels', 'lac']
>>> ds.labels.attrs["classes"]["5"]
'lipid_body'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from .acquisition import Acquisition, simulate_acquisition
from .calibration import Calibration
from .classes import VOCABULARY
from .volume import check_voxel_size, label_volume, segmentation, volume

__all__ = [
    "LABELS",
    "GENERATOR_VERSION",
    "Acquisition",
    "Capillary",
    "varied_cell",
    "simulate_acquisition",
    "cell",
    "population",
]

#: Label value of each class in phantom label volumes (0 is the medium).
LABELS: dict[str, int] = {
    "background": 0,
    "cell": 1,
    "nucleus": 2,
    "nucleolus": 3,
    "mitochondria": 4,
    "lipid_body": 5,
    "vacuole": 6,
    "starch_granule": 7,
}

#: Version of the generator; bumped whenever a seed would give a different cell.
GENERATOR_VERSION = "1.4"

# -- geometry constants (µm unless stated), with their sources ----------------------
#: Cell radius as a fraction of the smallest field-of-view extent, by default. With
#: the surface's largest excursion (1 + _MAX_RELIEF) the cell keeps ≥ 9.7 % of the
#: extent free on each side, room for the missing wedge's elongation along z.
_DEFAULT_RADIUS_FRACTION = 0.36
#: Largest relative relief of the cell surface (low-order harmonics) and the range of
#: its ellipsoidal axis ratios: yeast and algal cells are near-ellipsoidal bodies.
_MAX_RELIEF = 0.12
_AXIS_RATIO = (0.82, 1.0)
#: Smallest cell radius that leaves room for organelles of literature sizes.
_MIN_CELL_RADIUS = 0.5
#: Gaps kept between organelles and from the cell surface (membranes, cell wall).
_GAP = 0.03
_WALL = 0.08
#: Nucleus radius relative to the cell's equivalent radius: the yeast nucleus is
#: ~7–10 % of cell volume (Jorgensen et al. 2007, Mol Biol Cell 18:3523), i.e.
#: 0.41–0.46 of the radius; with the nucleus's own axis ratios (0.85–1) we span
#: 0.38–0.46 (4–9 % of the cell).
_NUCLEUS_RADIUS = (0.38, 0.46)
#: Nucleolus radius relative to the nucleus's smallest semi-axis.
_NUCLEOLUS_RADIUS = (0.45, 0.60)
#: Lipid-body diameters, 0.2–0.6 µm (sxtlab's specification; wild-type yeast lipid
#: droplets are a few tenths of a µm across, Fei et al. 2008, J Cell Biol 180:473).
_LIPID_DIAMETER = (0.2, 0.6)
#: Lipid fraction drawn when none is asked (typical unstressed yeast, 1–6 %).
_LIPID_FRACTION = (0.01, 0.06)
#: Vacuole radius relative to the cell's equivalent radius, divided by the cube root
#: of their number (one to three): 4–12 % of the cell as drawn, as in yeast; they
#: shrink where the nucleus leaves less room (typically 3–6 % placed).
_VACUOLE_RADIUS = (0.35, 0.50)
#: Mitochondrial tubules: radius 0.11–0.16 µm (yeast tubules are about 0.3 µm
#: across, Egner et al. 2002, PNAS 99:3370); segments 0.5–1.8 µm long, about 0.35
#: per µm³ of cell (our choice, giving 2–8 % of the cell's volume).
_MITO_RADIUS = (0.11, 0.16)
_MITO_LENGTH = (0.5, 1.8)
_MITO_DENSITY = 0.35
_MITO_MIN_LENGTH = 0.3
#: Mean radius of curvature of a mitochondrial tube's axis.
_MITO_CURVATURE = (0.4, 1.2)
#: Starch granules: lens-shaped ellipsoids, half-length 0.2–0.4 µm, middle and short
#: axes 0.6–0.9 and 0.3–0.5 of it (algal granules are flattened lenses of around a
#: micrometre; Buléon et al. 1998, Int J Biol Macromol 23:85), about 0.15 per µm³.
_STARCH_HALF_LENGTH = (0.2, 0.4)
_STARCH_DENSITY = 0.15
#: Gray-value calibration of ``gray=True`` (a 16-bit-like range): scale in µm⁻¹ per
#: gray unit and the gray value of LAC 0.
_GRAY_SCALE = (2.0e-5, 4.0e-5)
_GRAY_ZERO = (3000.0, 12000.0)
#: Fraction of each literature LAC range kept clear at both ends when drawing a
#: class's LAC, so that interior voxels lie inside the range with room to spare.
_LAC_MARGIN = 0.1
#: Contrast of the nucleus to the cytoplasm (µm⁻¹, either sign): low, as DESIGN notes.
_NUCLEUS_CONTRAST = (0.015, 0.04)
#: Nucleus radius relative to the cell's equivalent radius drawn by varied_cell: 3–24 %
#: of the cell's volume, from small-nucleus yeast and algae to cells whose nucleus
#: fills a quarter of them (our choice, wider than any one species).
_VARIED_NUCLEUS_RADIUS = (0.31, 0.62)
#: Filters of FBP drawn by varied_cell, and how often.
_FILTER_NAMES = ("ramp", "shepp-logan", "hann")
_FILTER_WEIGHTS = (0.2, 0.3, 0.5)


# -- small geometry helpers -----------------------------------------------------------

def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit_vectors(n: int) -> np.ndarray:
    """``n`` nearly evenly spread unit vectors (Fibonacci sphere), shape (n, 3)."""
    i = np.arange(n) + 0.5
    cos_t = 1 - 2 * i / n
    sin_t = np.sqrt(1 - cos_t ** 2)
    phi = np.pi * (1 + 5 ** 0.5) * i
    return np.stack([cos_t, sin_t * np.cos(phi), sin_t * np.sin(phi)], axis=1)


def _polar(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Norms and unit directions of points (..., 3); the origin gets direction +z."""
    norm = np.linalg.norm(p, axis=-1)
    u = p / np.where(norm > 0, norm, 1.0)[..., None]
    u[norm == 0] = (1.0, 0.0, 0.0)
    return norm, u


@dataclass(frozen=True)
class _Grid:
    """The voxel grid in µm relative to the cell centre (the field of view's centre)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    @property
    def centre_um(self) -> np.ndarray:
        """Absolute position (µm, volume coords) of the cell centre."""
        return np.array([(n - 1) / 2 * d for n, d in zip(self.shape, self.spacing)])

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], list[np.ndarray]]:
        """Voxel slices covering ``[lo, hi]`` (µm, relative) plus 2 voxels, and their
        open-grid coordinates (broadcastable (z, 1, 1), (1, y, 1), (1, 1, x))."""
        slices, coords = [], []
        for axis, (n, d, c) in enumerate(zip(self.shape, self.spacing, self.centre_um)):
            i0 = max(0, int(math.floor((c + lo[axis]) / d)) - 2)
            i1 = min(n, int(math.ceil((c + hi[axis]) / d)) + 3)
            slices.append(slice(i0, max(i0, i1)))
            shape = [1, 1, 1]
            shape[axis] = max(0, i1 - i0)
            coords.append((np.arange(i0, max(i0, i1)) * d - c).reshape(shape))
        return tuple(slices), coords


class _StarShape:
    """A rotated ellipsoid with low-order harmonic relief, star-shaped about its centre.

    ``r(u) = R0 · e(u) · (1 + p(u))`` along a unit direction ``u``, with ``e`` the
    ellipsoid's radius for unit largest semi-axis and ``p`` a random sum of zonal
    Legendre harmonics of degree 2–4 about random axes, scaled to a largest relief
    drawn in ``relief``. Positions are relative to ``centre`` (µm, relative to the
    cell centre).
    """

    def __init__(self, radius: float, rng: np.random.Generator, axis_ratio: tuple[float, float],
                 relief: tuple[float, float], centre: np.ndarray | None = None) -> None:
        self.radius = radius
        self.centre = np.zeros(3) if centre is None else np.asarray(centre, float)
        rot = _random_rotation(rng)
        ratios = np.array([1.0, *rng.uniform(*axis_ratio, size=2)])
        self._metric = rot @ np.diag(1 / ratios ** 2) @ rot.T
        n_terms = 6
        self._degrees = rng.integers(2, 5, size=n_terms)
        self._axes = _unit_vectors(n_terms) @ _random_rotation(rng).T
        self._weights = rng.normal(size=n_terms) / self._degrees
        largest = rng.uniform(*relief)
        self._weights *= largest / np.max(np.abs(self._relief(_unit_vectors(20000))))
        self.max_radius = float(np.max(self.r(_unit_vectors(20000)))) * 1.01

    def _relief(self, u: np.ndarray) -> np.ndarray:
        out = np.zeros(u.shape[:-1])
        for degree, poly in ((2, lambda t, t2: 0.5 * (3 * t2 - 1)),
                             (3, lambda t, t2: 0.5 * t * (5 * t2 - 3)),
                             (4, lambda t, t2: (35 * t2 * t2 - 30 * t2 + 3) / 8)):
            terms = self._degrees == degree
            if terms.any():
                t = u @ self._axes[terms].T  # cosines to the harmonics' axes
                out += poly(t, t * t) @ self._weights[terms]  # Legendre P_degree
        return out

    def r(self, u: np.ndarray) -> np.ndarray:
        """Surface radius (µm) along unit directions ``u`` (..., 3)."""
        e = 1 / np.sqrt(((u @ self._metric) * u).sum(axis=-1))
        return self.radius * e * (1 + self._relief(u))

    def scale(self, factor: float) -> None:
        """Shrink or grow the shape about its centre."""
        self.radius *= factor
        self.max_radius *= factor

    def surface_points(self, n: int = 400) -> np.ndarray:
        """``n`` points (n, 3) of the surface, along nearly evenly spread directions."""
        u = _unit_vectors(n)
        return self.centre + u * self.r(u)[:, None]

    def volume(self) -> float:
        """Exact volume ``∮ r³/3 dΩ`` (µm³) by Gauss–Legendre × trapezoid quadrature."""
        mu, wmu = np.polynomial.legendre.leggauss(128)
        phi = np.linspace(0, 2 * np.pi, 256, endpoint=False)
        s = np.sqrt(1 - mu ** 2)[:, None]
        u = np.stack([np.broadcast_to(mu[:, None], (128, 256)), s * np.cos(phi), s * np.sin(phi)], axis=-1)
        return float(np.sum(wmu[:, None] * self.r(u) ** 3 / 3) * (2 * np.pi / 256))

    def implicit(self, coords: list[np.ndarray]) -> np.ndarray:
        """``|x − c| − r((x − c)/|x − c|)`` at (z, y, x) (µm, broadcastable): negative
        inside, ≈ signed distance. Computed in slabs along the first axis to bound memory."""
        shape = np.broadcast_shapes(*(c.shape for c in coords))
        out = np.empty(shape)
        rows = max(1, 2 ** 20 // max(1, int(np.prod(shape[1:]))))
        for s in range(0, shape[0], rows):
            part = [np.broadcast_to(c - o, shape)[s:s + rows] for c, o in zip(coords, self.centre)]
            norm, u = _polar(np.stack(part, axis=-1))
            out[s:s + rows] = norm - self.r(u)
        return out


class _Blob(_StarShape):
    """An organelle of irregular outline (a nucleus with relief): a :class:`_StarShape`
    with the organelle interface of :class:`_Ellipsoid`."""

    def __init__(self, label: str, radius: float, rng: np.random.Generator, axis_ratio: tuple[float, float],
                 relief: tuple[float, float]) -> None:
        super().__init__(radius, rng, axis_ratio, relief)
        self.label = label
        self._volume = super().volume()

    @property
    def volume(self) -> float:  # type: ignore[override]
        return self._volume

    def scale(self, factor: float) -> None:
        super().scale(factor)
        self._volume *= factor ** 3

    def inscribed(self) -> float:
        """A radius (µm) about the centre that the shape contains: the least surface
        radius over 20 000 directions, less 10 % (the nearest surface point may lie
        off the sampled directions and the surface may lean)."""
        return 0.9 * float(np.min(self.r(_unit_vectors(20000))))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - self.max_radius, self.centre + self.max_radius

    def cover(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre[None, :].copy(), np.array([self.max_radius])

    def record(self, origin: np.ndarray) -> dict[str, Any]:
        return {"class": self.label, "centre_um": (origin + self.centre).round(4).tolist(),
                "equivalent_radius_um": round((3 * self.volume / (4 * np.pi)) ** (1 / 3), 4),
                "volume_um3": self.volume}


class _CellBody(_StarShape):
    """The cell's surface: a :class:`_StarShape` about the origin with a relief of
    5 %–``_MAX_RELIEF``, and the distance queries that packing organelles needs."""

    def __init__(self, radius: float, rng: np.random.Generator,
                 axis_ratio: tuple[float, float] = _AXIS_RATIO) -> None:
        super().__init__(radius, rng, axis_ratio, (0.05, _MAX_RELIEF))
        # Distance to the surface. A Euclidean distance transform (EDT) on a grid of
        # step s = R/32 (physical, independent of the voxel grid) brackets it: at a
        # grid point the true distance D lies in [EDT − √3·s, EDT] (any ball of
        # radius √3/2·s holds a grid point, so one lies outside within √3·s of the
        # nearest surface point), and trilinear interpolation widens that by
        # √3/2·s. Most tests are decided by the bracket; the few inside it are
        # decided against surface samples 0.025 µm apart with a k-d tree (which
        # alone would be slow: an interior point is nearly equidistant from much of
        # a closed surface).
        self._step = self.max_radius / 32
        n = 34
        axis = np.arange(-n, n + 1) * self._step
        pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
        self._edt = ndimage.distance_transform_edt(self.inside(pts), sampling=self._step)
        self._edt_origin = -n * self._step
        # Grid points by decreasing distance: those allowing a clearance are a prefix.
        self._order = np.argsort(-self._edt, axis=None)
        self._sorted = -self._edt.ravel()[self._order]
        m = int(np.clip(4 * np.pi * self.max_radius ** 2 / 0.025 ** 2, 4000, 400000))
        self._surface = cKDTree(self.surface_points(m))

    def inside(self, p: np.ndarray) -> np.ndarray:
        """Whether points ``p`` (..., 3) lie inside the surface."""
        norm, u = _polar(p)
        return norm < self.r(u)

    def clear(self, p: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """Whether points ``p`` (n, 3) lie inside, at least ``distance`` (n,) µm from
        the surface (to within the 0.025 µm spacing of the surface samples)."""
        s = self._step
        est = ndimage.map_coordinates(self._edt, ((p - self._edt_origin) / s).T, order=1, cval=0.0)
        inside = self.inside(p)
        ok = inside & (est - 1.5 * math.sqrt(3) * s >= distance)
        unsure = np.flatnonzero(inside & ~ok & (est + math.sqrt(3) / 2 * s >= distance))
        if unsure.size:
            dist, _ = self._surface.query(p[unsure], distance_upper_bound=float(np.max(distance[unsure])))
            ok[unsure] = dist >= distance[unsure]
        return ok

    def random_points(self, n: int, rng: np.random.Generator, clearance: float) -> np.ndarray:
        """``n`` random points (n, 3) spread evenly over the grid cells whose distance
        bracket allows ``clearance`` µm (a superset of where it holds); (0, 3) if
        none does."""
        count = int(np.searchsorted(self._sorted, -(clearance - math.sqrt(3) / 2 * self._step), side="right"))
        if count == 0:
            return np.zeros((0, 3))
        flat = self._order[rng.integers(0, count, size=n)]
        pick = np.stack(np.unravel_index(flat, self._edt.shape), axis=1)
        return self._edt_origin + (pick + rng.uniform(-0.5, 0.5, size=(n, 3))) * self._step


@dataclass
class _Ellipsoid:
    """An ellipsoid (sphere when the semi-axes are equal), relative to the cell centre."""

    label: str
    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def volume(self) -> float:
        return float(4 / 3 * np.pi * np.prod(self.semi_axes))

    def scale(self, factor: float) -> None:
        """Shrink or grow the ellipsoid about its centre."""
        self.semi_axes = self.semi_axes * factor

    def inscribed(self) -> float:
        """Radius (µm) of the largest sphere about the centre inside the ellipsoid."""
        return float(self.semi_axes.min())

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.rotation * self.semi_axes[None, :]) ** 2).sum(axis=1))
        return self.centre - half, self.centre + half

    def cover(self) -> tuple[np.ndarray, np.ndarray]:
        """Spheres (centres (k, 3), radii (k,)) whose union contains the ellipsoid.

        Along the longest axis ``a``, segment ``m`` of width ``δ`` is covered by a
        sphere through the widest cross-section it holds (radius ``b·√(1 − t²/a²)``
        with ``b`` the middle semi-axis).
        """
        order = np.argsort(self.semi_axes)[::-1]
        a, b = self.semi_axes[order[0]], self.semi_axes[order[1]]
        axis = self.rotation[:, order[0]]
        if a < 1.5 * b:  # near-round: one sphere of the longest semi-axis is tighter
            return self.centre[None, :].copy(), np.array([a])
        k = int(math.ceil(a / b))
        delta = 2 * a / k
        t = -a + delta * (np.arange(k) + 0.5)
        inner = np.maximum(np.abs(t) - delta / 2, 0.0)
        radii = np.sqrt((delta / 2) ** 2 + b ** 2 * (1 - inner ** 2 / a ** 2))
        return self.centre + t[:, None] * axis[None, :], radii

    def surface_points(self, n: int = 400) -> np.ndarray:
        return self.centre + (_unit_vectors(n) * self.semi_axes) @ self.rotation.T

    def implicit(self, coords: list[np.ndarray]) -> np.ndarray:
        """``q − 1`` with ``q`` the ellipsoidal norm of (z, y, x) (µm, broadcastable):
        negative inside."""
        d = [c - o for c, o in zip(coords, self.centre)]
        local = [sum(self.rotation[j, i] * d[j] for j in range(3)) / self.semi_axes[i] for i in range(3)]
        return np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2) - 1

    def record(self, origin: np.ndarray) -> dict[str, Any]:
        return {"class": self.label, "centre_um": (origin + self.centre).round(4).tolist(),
                "semi_axes_um": np.round(self.semi_axes, 4).tolist(), "volume_um3": self.volume}


@dataclass
class _Tube:
    """A tube of radius ``radius`` swept along a polyline axis (n, 3), round ends."""

    label: str
    axis: np.ndarray
    radius: float

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.diff(self.axis, axis=0), axis=1).sum())

    @property
    def volume(self) -> float:
        # Pappus: πr²L for the swept disc (exact while the axis's radius of curvature
        # exceeds r, which the walk enforces) plus the two hemispherical ends.
        return float(np.pi * self.radius ** 2 * self.length + 4 / 3 * np.pi * self.radius ** 3)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.axis.min(axis=0) - self.radius, self.axis.max(axis=0) + self.radius

    def implicit(self, coords: list[np.ndarray]) -> np.ndarray:
        """Distance to the axis (a polyline) minus the radius at (z, y, x) (µm,
        broadcastable): negative inside; capped at 0.2 µm outside."""
        z, y, x = np.broadcast_arrays(*coords)
        p = np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1)
        n_seg = len(self.axis) - 1
        step = float(np.max(np.linalg.norm(np.diff(self.axis, axis=0), axis=1)))
        far = self.radius + 0.2
        # The nearest point of the axis lies on a segment next to one of the nearest
        # vertices: segments are short (r/2) and the walk never comes back within
        # 2r of its earlier course, so 4 vertices leave a wide margin.
        k = min(4, len(self.axis))
        dist, vert = cKDTree(self.axis).query(p, k=k, distance_upper_bound=far + step)
        near = np.flatnonzero(np.isfinite(dist[:, 0]))
        out = np.full(len(p), far)
        if near.size:
            v = np.where(np.isfinite(dist[near]), vert[near], vert[near, :1])
            segs = np.clip(np.concatenate([v - 1, v], axis=1), 0, n_seg - 1)  # (n, 2k)
            a, seg = self.axis[segs], self.axis[segs + 1] - self.axis[segs]
            rel = p[near, None, :] - a
            t = np.clip((rel * seg).sum(axis=-1) / np.maximum((seg * seg).sum(axis=-1), 1e-18), 0.0, 1.0)
            d = np.sqrt(((rel - t[..., None] * seg) ** 2).sum(axis=-1).min(axis=1))
            out[near] = np.minimum(d, far)
        return (out - self.radius).reshape(z.shape)

    def record(self, origin: np.ndarray) -> dict[str, Any]:
        return {"class": self.label, "centre_um": (origin + self.axis.mean(axis=0)).round(4).tolist(),
                "length_um": round(self.length, 4), "radius_um": round(self.radius, 4),
                "volume_um3": self.volume}


class _Packer:
    """Places organelles inside the cell body without overlaps.

    Each placed organelle is represented by covering spheres; a new one must keep
    ``_WALL`` from the cell surface and ``_GAP`` from every covering sphere.
    """

    def __init__(self, body: _CellBody) -> None:
        self.body = body
        self.centres = np.zeros((0, 3))
        self.radii = np.zeros(0)

    def add(self, centres: np.ndarray, radii: np.ndarray) -> None:
        self.centres = np.concatenate([self.centres, centres.reshape(-1, 3)])
        self.radii = np.concatenate([self.radii, np.ravel(radii)])

    def apart(self, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """Whether spheres (…, 3)/(…) keep ``_GAP`` from every placed sphere."""
        flat_c, flat_r = centres.reshape(-1, 3), radii.reshape(-1)
        ok = np.ones(flat_r.shape, bool)
        for s in range(0, flat_c.shape[0] if self.radii.size else 0, 2048):
            d = np.linalg.norm(flat_c[s:s + 2048, None, :] - self.centres[None, :, :], axis=-1)
            ok[s:s + 2048] = (d - flat_r[s:s + 2048, None] - self.radii[None, :]).min(axis=1) >= _GAP
        return ok.reshape(radii.shape)

    def free(self, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
        """Whether spheres (n, 3)/(n,) keep clear of the wall and of all placed ones."""
        ok = self.apart(centres, radii)
        ok[ok] = self.body.clear(centres[ok], radii[ok] + _WALL)
        return ok

    def place(self, offsets: np.ndarray, radii: np.ndarray, rng: np.random.Generator,
              tries: int = 12) -> np.ndarray | None:
        """A random free position for an object covered by spheres at ``offsets``
        (k, 3) from its centre with ``radii`` (k,); ``None`` if none is found."""
        batch = 32
        for _ in range(tries):
            centres = self.body.random_points(batch, rng, float(np.min(radii)) + _WALL)
            if not len(centres):
                return None
            spheres = centres[:, None, :] + offsets[None]
            rr = np.broadcast_to(radii, (len(centres), len(radii)))
            candidates = np.flatnonzero(self.apart(spheres, rr).all(axis=1))
            # The wall test may need the exact (slower) check: run it on a few
            # candidates at a time, in order, until one passes (at most 64 a batch).
            for s in range(0, min(candidates.size, 64), 16):
                idx = candidates[s:s + 16]
                ok = self.body.clear(spheres[idx].reshape(-1, 3), (rr[idx] + _WALL).ravel())
                ok = ok.reshape(len(idx), -1).all(axis=1)
                if ok.any():
                    return centres[idx[np.argmax(ok)]]
            batch = min(4 * batch, 2048)
        return None


def _partial_volume(implicit: Callable[[list[np.ndarray]], np.ndarray], coords: list[np.ndarray],
                    spacing: Sequence[float], sub: int | None = 3) -> tuple[np.ndarray, np.ndarray]:
    """A shape's implicit function on a box of voxels and each voxel's fraction inside.

    With ``sub``, the fraction is the share of ``sub³`` evenly spread points of the
    voxel where the implicit function is negative (a box-filtered indicator, so
    volumes are kept; 3³ points keep a sphere 2 voxels in radius within ~1 %).
    Only voxels the surface may cross are supersampled: those where ``|g|`` is below
    0.75 of its variation across the voxel, ``h = Σ|∂g/∂x_i|Δ_i`` (a plane crosses
    where ``|g| < h/2``; the rest is room for curvature). With ``sub=None`` the fraction is
    the linear ramp ``clip(0.5 − g/h, 0, 1)``, exact for a plane; on a sphere of
    radius R it adds ``(h/2R)²`` of the volume (0.03 % for a 2 µm cell at 40 nm,
    but 4 % for a lipid body 4 voxels in radius), so it serves large bodies only.

    Returns
    -------
    g : ndarray
        The implicit function at the voxel centres (negative inside).
    fraction : ndarray of float32
        Volume fraction inside, in [0, 1].
    """
    g = implicit(coords)
    grads = np.gradient(g, *spacing)
    reach = sum(np.abs(gr) * d for gr, d in zip(grads, spacing))
    if sub is None:
        return g, np.clip(0.5 - g / np.maximum(reach, 1e-12), 0, 1).astype(np.float32)
    frac = (g < 0).astype(np.float32)
    band = np.nonzero(np.abs(g) < 0.75 * reach)
    if band[0].size:
        centres = np.stack([np.broadcast_to(c, g.shape)[band] for c in coords], axis=1)
        steps = [((np.arange(sub) + 0.5) / sub - 0.5) * d for d in spacing]
        offsets = np.stack(np.meshgrid(*steps, indexing="ij"), axis=-1).reshape(-1, 3)
        inside = np.empty(len(centres), np.float32)
        chunk = max(1, 2 ** 18 // len(offsets))
        for s in range(0, len(centres), chunk):
            pts = centres[s:s + chunk, None, :] + offsets[None]
            inside[s:s + chunk] = (implicit([pts[..., 0], pts[..., 1], pts[..., 2]]) < 0).mean(axis=1)
        frac[band] = inside
    return g, frac


# -- organelles -------------------------------------------------------------------------

def _nucleus(body: _CellBody, r_eff: float, rng: np.random.Generator,
             size: tuple[float, float] = _NUCLEUS_RADIUS, relief: float = 0.0,
             nucleolus_size: tuple[float, float] = _NUCLEOLUS_RADIUS) -> tuple[_Ellipsoid | _Blob, _Ellipsoid]:
    """The nucleus and its nucleolus (a sphere inside it).

    The nucleus is a near-round ellipsoid of radius ``size`` × the cell's equivalent
    radius or, with ``relief`` > 0, a :class:`_Blob` whose surface strays up to that
    fraction of its radius (lobed, bean-shaped nuclei), with axis ratios 0.7–1.
    """
    radius = r_eff * rng.uniform(*size)
    semi = radius * np.array([1.0, *rng.uniform(0.85, 1.0, size=2)])
    rot = _random_rotation(rng)  # drawn for lobed nuclei too, keeping the draws after it
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    # Off-centre, leaving room for a vacuole beside it as in yeast, but no closer to
    # the wall than it allows (halving the offset up to 8 times, then centred). A
    # centred ellipsoid of the default size always fits (its radius is < 0.46 of the
    # cell's); a larger or lobed one shrinks until it does.
    offset = rng.uniform(0.15, 0.45) * r_eff
    nucleus: _Ellipsoid | _Blob
    if relief > 0:
        nucleus = _Blob("nucleus", radius, rng, (0.7, 1.0), (0.5 * relief, relief))
    else:
        nucleus = _Ellipsoid("nucleus", np.zeros(3), semi, rot)

    def fits() -> bool:
        points = nucleus.surface_points()
        return bool(body.clear(points, np.full(len(points), _WALL)).all())

    for _ in range(8):
        nucleus.centre = direction * offset
        if fits():
            break
        offset /= 2
    else:
        nucleus.centre = np.zeros(3)
        for _ in range(20):
            if fits():
                break
            nucleus.scale(0.9)
    # The nucleolus sits eccentrically inside the sphere inscribed in the nucleus.
    inner = nucleus.inscribed()
    r_nl = inner * rng.uniform(*nucleolus_size)
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    shift = rng.uniform(0.3, 1.0) * max(0.0, inner - r_nl - _GAP)
    nucleolus = _Ellipsoid("nucleolus", nucleus.centre + shift * d, np.full(3, r_nl))
    return nucleus, nucleolus


def _place_ellipsoids(packer: _Packer, label: str, semi_axes: list[np.ndarray],
                      rng: np.random.Generator) -> list[_Ellipsoid]:
    """Place ellipsoids largest first; one that finds no room is retried up to 4
    times at 0.85 × its size, then left out."""
    placed = []
    for semi in sorted(semi_axes, key=lambda s: -float(np.prod(s))):
        shape = _Ellipsoid(label, np.zeros(3), np.asarray(semi, float), _random_rotation(rng))
        for _ in range(5):
            offsets, radii = shape.cover()  # about the origin: the centre is still 0
            centre = packer.place(offsets, radii, rng)
            if centre is not None:
                shape.centre = centre
                packer.add(offsets + centre, radii)
                placed.append(shape)
                break
            shape.scale(0.85)
    return placed


def _place_lipids(packer: _Packer, radii: list[float], rng: np.random.Generator) -> list[_Ellipsoid]:
    """Place lipid bodies of the given radii, largest first; one that finds no room is
    split into two of half its volume (the total is kept) while they stay ≥ 0.2 µm
    across. Once a body finds no room, the rest of its size or larger are not tried
    (packing only gets harder), which keeps a hopeless request short.

    Raises
    ------
    ValueError
        If a body would have to split below 0.2 µm across.
    """
    placed: list[_Ellipsoid] = []
    todo = sorted(radii, reverse=True)
    while todo:
        failed: list[float] = []
        for r in todo:
            if failed and r >= 0.98 * min(failed):
                failed.append(r)
                continue
            shape = _Ellipsoid("lipid_body", np.zeros(3), np.full(3, r))
            offsets, cover = shape.cover()
            centre = packer.place(offsets, cover, rng)
            if centre is None:
                failed.append(r)
                continue
            shape.centre = centre
            packer.add(offsets + centre, cover)
            placed.append(shape)
        todo = sorted((r / 2 ** (1 / 3) for r in failed for _ in range(2)), reverse=True)
        if todo and todo[-1] < _LIPID_DIAMETER[0] / 2:
            lost = sum(4 / 3 * np.pi * r ** 3 for r in todo)
            raise ValueError(
                f"lipid bodies of {lost:.3g} µm³ find no room in this cell even as bodies 0.2 µm "
                "across; use a lower lipid_fraction (0.1 fits even a cell 0.85 µm in radius)"
            )
    return placed


def _lipid_radii(target_um3: float, rng: np.random.Generator) -> list[float]:
    """Radii (µm) of lipid bodies, diameters in ``_LIPID_DIAMETER``, summing exactly
    to ``target_um3`` (the last one takes the remainder when it is in range)."""
    r_min, r_max = _LIPID_DIAMETER[0] / 2, _LIPID_DIAMETER[1] / 2
    sphere = lambda r: 4 / 3 * np.pi * r ** 3  # noqa: E731
    radii: list[float] = []
    total = 0.0
    while total < target_um3:
        r = rng.uniform(r_min, r_max)
        if total + sphere(r) >= target_um3:
            rest = (3 * (target_um3 - total) / (4 * np.pi)) ** (1 / 3)
            if rest >= r_min or not radii:
                radii.append(float(rest))
            else:
                # Too little left for a body of its own: grow the others to absorb it.
                grow = (target_um3 / total) ** (1 / 3)
                radii = [min(r_max, q * grow) for q in radii]
            break
        radii.append(float(r))
        total += sphere(r)
    return radii


def _mitochondria(packer: _Packer, n: int, r_eff: float, rng: np.random.Generator) -> list[_Tube]:
    """Tubes along persistent random walks grown from a free start point in both
    directions, each step clear of the wall, other organelles and the tube's own
    earlier course; a walk ends where it meets an obstacle. A tube shorter than
    0.3 µm after 12 starts is left out."""
    tubes = []
    for _ in range(n):
        radius = rng.uniform(*_MITO_RADIUS)
        length = min(rng.uniform(*_MITO_LENGTH), 1.5 * r_eff)
        curvature = rng.uniform(*_MITO_CURVATURE)
        step = radius / 2
        cover = math.hypot(radius, step / 2)  # a sphere at each point covers its segment
        # Largest turn per step keeps the axis's radius of curvature ≥ 1.5 r, so the
        # swept tube never folds onto itself (and Pappus's volume holds).
        max_turn = step / (1.5 * radius)
        kappa = step / curvature / math.sqrt(2)
        skip = int(math.ceil((2 * cover + _GAP) / step)) + 1
        n_steps = int(length / step)

        def grow(points: list[np.ndarray], direction: np.ndarray) -> None:
            """Extend ``points`` (in place) from its last point, up to ``n_steps`` in all."""
            while len(points) <= n_steps:
                for retry in range(10):
                    new_dir = direction + kappa * (1 + retry) * rng.normal(size=3)
                    new_dir /= np.linalg.norm(new_dir)
                    if math.acos(float(np.clip(new_dir @ direction, -1, 1))) > max_turn:
                        # Turn only max_turn towards the drawn direction.
                        perp = new_dir - (new_dir @ direction) * direction
                        perp /= np.linalg.norm(perp)
                        new_dir = math.cos(max_turn) * direction + math.sin(max_turn) * perp
                    p = points[-1] + step * new_dir
                    if len(points) > skip and np.min(np.linalg.norm(np.asarray(points[:-skip]) - p, axis=1)) \
                            < 2 * cover + _GAP:
                        continue
                    if packer.free(p[None], np.array([cover]))[0]:
                        points.append(p)
                        direction = new_dir
                        break
                else:
                    return

        best: list[np.ndarray] = []
        for _attempt in range(12):
            start = packer.place(np.zeros((1, 3)), np.array([cover]), rng)
            if start is None:
                break
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            points = [start]
            grow(points, direction)
            if len(points) <= n_steps:  # blocked: grow on from the other end
                points.reverse()
                back = points[-1] - points[-2] if len(points) > 1 else -direction
                grow(points, back / np.linalg.norm(back))
            if len(points) > len(best):
                best = points
            if len(points) > 0.8 * n_steps:
                break
        if (len(best) - 1) * step >= _MITO_MIN_LENGTH:
            axis = np.asarray(best)
            packer.add(axis, np.full(len(axis), cover))
            tubes.append(_Tube("mitochondria", axis, float(radius)))
    return tubes


@dataclass(frozen=True)
class Capillary:
    """A glass capillary wall around the cell, its axis along y (the tilt axis, as
    when cells in a capillary rotate about it for full-range tomography).

    Attributes
    ----------
    clearance_um : float
        Gap between the cell's furthest point from the axis and the wall's inner
        surface (µm).
    thickness_um : float
        Wall thickness (µm); capillary tips are 0.1–0.5 µm thick.
    lac : float
        LAC of the glass (µm⁻¹). Silica (2.2 g/cm³) absorbs about 1.5 µm⁻¹ at
        517 eV (Henke et al. 1993); thin, porous or borosilicate walls less.
    offset_um : (float, float)
        Position of the axis relative to the cell centre in (z, x), µm.
    outside_lac : float, optional
        LAC (µm⁻¹) beyond the wall: 0 for air, as around the real ``sample_12``'s
        capillary; ``None``: the medium (a capillary in a bath). Labelled medium either way.
    """

    clearance_um: float = 0.3
    thickness_um: float = 0.2
    lac: float = 1.2
    offset_um: tuple[float, float] = (0.0, 0.0)
    outside_lac: float | None = None

    def __post_init__(self) -> None:
        values = (self.clearance_um, self.thickness_um, self.lac, *self.offset_um)
        outside_ok = self.outside_lac is None or (np.isfinite(self.outside_lac) and self.outside_lac >= 0)
        if not (len(self.offset_um) == 2 and all(np.isfinite(values)) and outside_ok
                and self.clearance_um >= 0 and self.thickness_um > 0 and self.lac > 0):
            raise ValueError(f"Capillary needs clearance_um >= 0, thickness_um > 0, lac > 0, a finite "
                             f"(z, x) offset_um and outside_lac None or >= 0, got {self!r}")

    def fractions(self, grid: _Grid, cell_radius_um: float) -> tuple[np.ndarray, np.ndarray]:
        """Share of each voxel inside the wall and beyond it (two float32 arrays, the
        grid's shape), by the linear ramp of the radial distance (the wall is much
        wider than it is curved)."""
        oz, ox = self.offset_um
        z = (np.arange(grid.shape[0]) * grid.spacing[0] - grid.centre_um[0] - oz)[:, None, None]
        x = (np.arange(grid.shape[2]) * grid.spacing[2] - grid.centre_um[2] - ox)[None, None, :]
        r = np.sqrt(z ** 2 + x ** 2)
        inner = math.hypot(oz, ox) + cell_radius_um + self.clearance_um
        outer = inner + self.thickness_um
        h = math.hypot(grid.spacing[0], grid.spacing[2]) / 2
        beyond = np.clip((r - outer) / h + 0.5, 0.0, 1.0)
        wall = np.clip((r - inner) / h + 0.5, 0.0, 1.0) - beyond
        return (np.broadcast_to(wall.astype(np.float32), grid.shape),
                np.broadcast_to(beyond.astype(np.float32), grid.shape))


@dataclass
class _Contents:
    """The organelles of one cell body (positions relative to the cell centre)."""

    nucleus: _Ellipsoid | _Blob | None = None
    nucleolus: _Ellipsoid | None = None
    vacuoles: list[_Ellipsoid] = field(default_factory=list)
    lipids: list[_Ellipsoid] = field(default_factory=list)
    granules: list[_Ellipsoid] = field(default_factory=list)
    mitos: list[_Tube] = field(default_factory=list)

    def organelles(self) -> list[_Ellipsoid | _Blob | _Tube]:
        """Everything but the nucleolus, in instance-id order."""
        head = [] if self.nucleus is None else [self.nucleus]
        return [*head, *self.vacuoles, *self.lipids, *self.granules, *self.mitos]

    def shift(self, offset: np.ndarray) -> None:
        """Move every organelle by ``offset`` (µm)."""
        for shape in [*self.organelles(), *([] if self.nucleolus is None else [self.nucleolus])]:
            if isinstance(shape, _Tube):
                shape.axis = shape.axis + offset
            else:
                shape.centre = shape.centre + offset


def _populate(packer: _Packer, r_eff: float, rngs: Mapping[str, np.random.Generator], *, lipid_target: float,
              mito_density: float, starch: bool, nucleus: bool = True,
              nucleus_size: tuple[float, float] = _NUCLEUS_RADIUS, nucleus_relief: float = 0.0,
              nucleolus_size: tuple[float, float] = _NUCLEOLUS_RADIUS, vacuoles: int | None = None) -> _Contents:
    """Place a cell body's organelles, in :func:`cell`'s order, each from its own stream.

    ``vacuoles``: their number (default one to three, drawn). Raises ``ValueError``
    when the lipid bodies do not fit (see :func:`_place_lipids`).
    """
    out = _Contents()
    if nucleus:
        out.nucleus, out.nucleolus = _nucleus(packer.body, r_eff, rngs["nucleus"], nucleus_size, nucleus_relief,
                                             nucleolus_size)
        packer.add(*out.nucleus.cover())

    rng = rngs["vacuole"]
    n_vac = int(rng.integers(1, 4)) if vacuoles is None else vacuoles
    vac_axes = [r_eff * rng.uniform(*_VACUOLE_RADIUS) / max(n_vac, 1) ** (1 / 3)
                * np.array([1.0, *rng.uniform(0.8, 1.0, size=2)]) for _ in range(n_vac)]
    out.vacuoles = _place_ellipsoids(packer, "vacuole", vac_axes, rng)

    rng = rngs["lipid"]
    v_body = packer.body.volume()
    out.lipids = _place_lipids(packer, _lipid_radii(lipid_target * v_body, rng), rng)

    rng = rngs["mito"]
    n_mito = max(1, int(rng.poisson(min(mito_density * v_body, 60.0))))
    out.mitos = _mitochondria(packer, n_mito, r_eff, rng)

    if starch:
        rng = rngs["starch"]
        n_starch = max(1, int(rng.poisson(_STARCH_DENSITY * v_body)))
        starch_axes = []
        for _ in range(n_starch):
            a = rng.uniform(*_STARCH_HALF_LENGTH)
            starch_axes.append(a * np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.3, 0.5)]))
        out.granules = _place_ellipsoids(packer, "starch_granule", starch_axes, rng)
    return out


def _vesicles(packer: _Packer, density: float, rng: np.random.Generator) -> list[tuple[_Ellipsoid, float]]:
    """Small vesicles and granules that no class names, labelled cytoplasm: real
    cytoplasm is full of them (endosomes, secretory and autophagic vesicles, dense
    granules), and a model must learn that a small dark or bright spot is not an
    organelle of its task. Half are dark lumens (radius 0.03–0.12 µm, LAC 0.10–0.18
    µm⁻¹, near the medium's), half dense granules (0.03–0.08 µm, 0.30–0.45 µm⁻¹,
    smaller than lipid bodies and darker); our choice of ranges. Poisson(density ×
    cell volume) of them, at most 400, placed clear of every organelle; one that
    finds no room is left out.

    Returns each vesicle (a sphere labelled ``cell``) with its LAC (µm⁻¹)."""
    out = []
    for _ in range(int(rng.poisson(min(density * packer.body.volume(), 400.0)))):
        dense = rng.random() < 0.5
        r = float(rng.uniform(0.03, 0.08 if dense else 0.12))
        value = float(rng.uniform(0.30, 0.45) if dense else rng.uniform(0.10, 0.18))
        centre = packer.place(np.zeros((1, 3)), np.array([r]), rng, tries=4)
        if centre is not None:
            packer.add(centre, np.array([r]))
            out.append((_Ellipsoid("cell", centre, np.full(3, r)), value))
    return out


def _vacuole_granules(vacuoles: Sequence[_Ellipsoid], mean: float,
                      rng: np.random.Generator) -> list[tuple[_Ellipsoid, float, _Ellipsoid]]:
    """Dense granules inside vacuoles, as the polyphosphate bodies of yeast vacuoles
    that SXT shows as bright spots (labelled vacuole, as annotators label them):
    Poisson(``mean``) per vacuole, radius 0.05–0.15 µm (at most 0.4 of the vacuole's
    smallest semi-axis), LAC 0.30–0.50 µm⁻¹ each (our choice: phosphate-rich
    material absorbs more than the cytoplasm), placed at random where they fit
    inside, overlaps allowed (granules cluster).

    Returns (granule, its LAC, its vacuole) triples."""
    out = []
    for vac in vacuoles:
        inner = float(vac.semi_axes.min())
        for _ in range(int(rng.poisson(mean))):
            r = min(float(rng.uniform(0.05, 0.15)), 0.4 * inner)
            # uniform in the ellipsoid shrunk so that the granule stays inside
            u = rng.normal(size=3)
            u *= rng.random() ** (1 / 3) / np.linalg.norm(u)
            local = u * np.maximum(vac.semi_axes - r - _GAP, 0.0)
            centre = vac.centre + vac.rotation @ local
            out.append((_Ellipsoid("vacuole", centre, np.full(3, r)), float(rng.uniform(0.30, 0.50)), vac))
    return out


def _cytoplasm_domains(body: _CellBody, nucleus: _Ellipsoid | _Blob | None, count: int,
                       rng: np.random.Generator) -> list[tuple[_Ellipsoid, float]]:
    """Regions of the cytoplasm denser or lighter than the rest: the cytoplasm of real
    cells is not uniform (ER sheets and ribosome-rich regions, glycogen deposits, the
    perinuclear ER continuous with the nuclear envelope). Each is an ellipsoid of
    0.5–1.1 times the nucleus's inner radius (0.3–0.8 µm without a nucleus), axis
    ratios 0.6–1, its edge blurred by a Gaussian of 0–0.4 of its radius (σ); half lie
    against the nucleus (their centre 0.2–0.7 radii beyond a random point of its
    surface), the rest anywhere in the cell. Our choice of ranges: nucleus-sized, so
    that darkness alone does not make a nucleus.

    Returns each domain with its edge σ (µm)."""
    out = []
    for _ in range(count):
        inner = 0.0 if nucleus is None else nucleus.inscribed()
        r = inner * float(rng.uniform(0.5, 1.1)) if inner > 0 else float(rng.uniform(0.3, 0.8))
        semi = r * rng.uniform(0.6, 1.0, size=3)
        rot = _random_rotation(rng)
        if nucleus is not None and rng.random() < 0.5:
            points = nucleus.surface_points()
            point = points[rng.integers(len(points))]
            outward = (point - nucleus.centre) / max(float(np.linalg.norm(point - nucleus.centre)), 1e-9)
            centre = point + outward * r * float(rng.uniform(0.2, 0.7))
        else:
            centre = None
            for _ in range(100):  # rejection sampling: the body fills about half its bounding cube
                p_ = rng.uniform(-body.max_radius, body.max_radius, size=3)
                if body.implicit([np.array([c]) for c in p_])[0] < 0:
                    centre = p_
                    break
            if centre is None:
                continue
        out.append((_Ellipsoid("cell", np.asarray(centre, float), semi, rot), float(rng.uniform(0.0, 0.4)) * r))
    return out


def _streams(seed_sequence: np.random.SeedSequence) -> tuple[dict[str, np.random.SeedSequence],
                                                             dict[str, np.random.Generator]]:
    """One stream per part of a cell. Spawned streams keep their index, so adding one
    never changes the others' draws."""
    names = ["body", "lac", "nucleus", "vacuole", "lipid", "starch", "mito", "acquisition", "gray", "texture",
             "bud", "neighbours", "vesicles", "granules", "domains"]
    streams = dict(zip(names, seed_sequence.spawn(len(names))))
    return streams, {k: np.random.default_rng(v) for k, v in streams.items()}


def _union_volume(a: _CellBody, b: _CellBody, offset: np.ndarray) -> float:
    """Volume (µm³) of ``a`` ∪ (``b`` moved by ``offset``): the two exact volumes less
    their overlap, counted on a grid of step b.max_radius / 40 over ``b``'s box
    (the overlap is a small lens at the neck; the count errs by well under 1 % of ``b``)."""
    step = b.max_radius / 40
    axis = (np.arange(-40, 40) + 0.5) * step
    pts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)
    both = b.inside(pts) & a.inside(pts + offset)
    return a.volume() + b.volume() - float(both.sum()) * step ** 3


def _populate_or_lean(packer: _Packer, rngs: Mapping[str, np.random.Generator], **kwargs: Any) -> _Contents:
    """:func:`_populate` for a bud or a neighbour: without lipid bodies where those drawn
    find no room (the cell's own lipid fraction is the one that must be met)."""
    body = packer.body
    r_eff = (3 * body.volume() / (4 * np.pi)) ** (1 / 3)
    centres, radii = packer.centres.copy(), packer.radii.copy()
    try:
        return _populate(packer, r_eff, rngs, **kwargs)
    except ValueError:
        packer.centres, packer.radii = centres, radii
        return _populate(packer, r_eff, rngs, **{**kwargs, "lipid_target": 0.0})


def _bud(mother: _CellBody, radius: float, stream: np.random.SeedSequence, packer: _Packer, lipid_target: float,
         mito_density: float, along_y: bool) -> tuple[_CellBody, np.ndarray, _Contents]:
    """A daughter cell budding from ``mother``: a near-round body whose centre lies
    0.6–0.8 of its radius beyond the mother's surface (a neck about 0.6–0.8 of the
    bud's width), holding mitochondria, lipid bodies and, in half the buds, a small
    vacuole, but no nucleus (as before nuclear migration). Its organelles keep clear
    of the mother's (``packer``). ``along_y``: bud along the capillary's axis.

    Returns the bud's body (about its own origin), its centre (µm, relative to the
    mother's) and its organelles (moved there)."""
    _, rngs = _streams(stream)
    rng = rngs["body"]
    bud = _CellBody(radius, rng, (0.8, 1.0))
    if along_y:
        u = np.array([0.0, rng.choice([-1.0, 1.0]), 0.0])
    else:
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
    centre = u * float(mother.r(u) + bud.r(-u) * rng.uniform(0.6, 0.8))
    own = _Packer(bud)
    own.add(packer.centres - centre, packer.radii)
    contents = _populate_or_lean(own, rngs, lipid_target=lipid_target, mito_density=mito_density, starch=False,
                                 nucleus=False, vacuoles=int(rng.random() < 0.5))
    contents.shift(centre)
    return bud, centre, contents


def _neighbour(bodies: list[tuple[_CellBody, np.ndarray]], radius: float, stream: np.random.SeedSequence,
               grid: _Grid, axis_ratio: tuple[float, float], lipid_target: float, mito_density: float,
               starch: bool, nucleus_size: tuple[float, float], nucleus_relief: float,
               nucleolus_size: tuple[float, float], along_y: bool) -> tuple[_CellBody, np.ndarray, _Contents] | None:
    """A neighbouring cell, 0.7–1.1 × ``radius``, beside the cell 0.02–0.4 µm from
    every body already placed, within the field in part. Cells on a grid lie side by
    side in the y–x plane (z is the beam); in a capillary they queue along y, and are
    no wider than the cell so that the wall clears them (``along_y``).

    Returns its body (about its own origin), centre (µm, relative to the cell's) and
    organelles (moved there), or ``None`` when 20 directions give no room in the field."""
    _, rngs = _streams(stream)
    rng = rngs["body"]
    other = _CellBody(radius * rng.uniform(0.7, 1.0 if along_y else 1.1), rng, axis_ratio)
    own_surface = other.surface_points(2000)
    placed = [(body_, c, body_.surface_points(2000) + c) for body_, c in bodies]
    half = np.array([n * d / 2 for n, d in zip(grid.shape, grid.spacing)])
    for _ in range(20):
        if along_y:
            u = np.array([0.0, rng.choice([-1.0, 1.0]), 0.0])
        else:
            phi = rng.uniform(0, 2 * np.pi)
            u = np.array([0.0, np.sin(phi), np.cos(phi)])
        gap = rng.uniform(0.02, 0.4)

        def clear_of_all(centre: np.ndarray) -> bool:
            for body_, c, theirs in placed:
                if (body_.implicit(list((own_surface + centre - c).T)).min() < gap
                        or other.implicit(list((theirs - centre).T)).min() < gap):
                    return False
            return True

        # From well clear, step in until the next step would come nearer than the gap.
        far = max(np.linalg.norm(c) + b.max_radius for b, c in bodies) + other.max_radius + gap
        steps = np.linspace(far, 0.0, 60)
        best = None
        for d in steps:
            if not clear_of_all(u * d):
                break
            best = u * d
        if best is None or np.any(np.abs(best) - other.max_radius > half * 0.95):
            continue
        contents = _populate_or_lean(_Packer(other), rngs, lipid_target=lipid_target, mito_density=mito_density,
                                     starch=starch, nucleus_size=nucleus_size, nucleus_relief=nucleus_relief,
                                     nucleolus_size=nucleolus_size)
        contents.shift(best)
        return other, best, contents
    return None


# -- LAC values -------------------------------------------------------------------------

def _draw_lac(rng: np.random.Generator) -> dict[str, float]:
    """One LAC (µm⁻¹) per class from the inner part of its literature range."""
    out = {}
    for name in LABELS:
        lo, hi = VOCABULARY[name].lac_range_per_um
        pad = _LAC_MARGIN * (hi - lo)
        out[name] = float(rng.uniform(lo + pad, hi - pad))
    # The nucleus differs little from the cytoplasm (DESIGN notes), but must differ:
    # a contrast of 0.015–0.04 µm⁻¹ of random sign, flipped if it leaves the range.
    lo, hi = VOCABULARY["nucleus"].lac_range_per_um
    contrast = rng.uniform(*_NUCLEUS_CONTRAST) * rng.choice([-1.0, 1.0])
    value = out["cell"] + contrast
    out["nucleus"] = float(value if lo <= value <= hi else out["cell"] - contrast)
    return out


# -- the public API ---------------------------------------------------------------------

def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(n) for n in shape)
        exact = all(int(n) == n for n in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be 3 integers (z, y, x), got {shape!r}") from None
    if len(values) != 3 or not exact or min(values) < 16:
        raise ValueError(f"shape must be 3 integers (z, y, x), each >= 16, got {tuple(shape)!r}")
    return values  # type: ignore[return-value]


def _largest_radius(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Largest nominal cell radius (µm) that keeps the cell's furthest point ≥ 5 % of
    the smallest extent (and 2 voxels) from each face of the field."""
    extent = min(n * d for n, d in zip(shape, spacing))
    margin = max(0.05 * extent, 2 * max(spacing))
    return (0.5 * extent - margin) / (1 + _MAX_RELIEF)


def _check_acquisition(acquisition: Acquisition | bool | None) -> Acquisition | bool | None:
    """``acquisition`` as given (NumPy bools as Python ones), or a :class:`TypeError`."""
    if isinstance(acquisition, (bool, np.bool_)):
        return bool(acquisition)
    if acquisition is None or isinstance(acquisition, Acquisition):
        return acquisition
    raise TypeError(f"acquisition must be an Acquisition, True, False or None, got {acquisition!r} "
                    f"({type(acquisition).__name__})")


def _check_seed(seed: int) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def cell(
    seed: int = 0,
    shape: Sequence[int] = (128, 128, 128),
    voxel_size: float | Sequence[float] = 0.04,
    *,
    lipid_fraction: float | None = None,
    starch: bool = False,
    acquisition: Acquisition | bool | None = None,
    gray: bool = False,
    cell_radius_um: float | None = None,
    class_lac: Mapping[str, float] | None = None,
    texture: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
    axis_ratio: tuple[float, float] = _AXIS_RATIO,
    mito_density: float = _MITO_DENSITY,
    capillary: Capillary | None = None,
    nucleus_size: tuple[float, float] = _NUCLEUS_RADIUS,
    nucleus_relief: float = 0.0,
    bud: float | None = None,
    neighbours: int = 0,
    vesicle_density: float = 0.0,
    nucleolus_size: tuple[float, float] = _NUCLEOLUS_RADIUS,
    vacuole_granules: float = 0.0,
    cytoplasm_domains: int = 0,
    domain_contrast: float = 0.0,
) -> xr.Dataset:
    """A synthetic SXT cell with its true labels, deterministic from ``seed``.

    Parameters
    ----------
    seed : int
        Non-negative seed; the same seed and arguments give identical arrays.
    shape : (nz, ny, nx)
        Voxels per axis, each ≥ 16.
    voxel_size : float or (dz, dy, dx)
        Voxel size in µm (SXT: 0.025–0.06); anisotropic allowed.
    lipid_fraction : float in [0, 0.5], optional
        Volume fraction of the cell occupied by lipid bodies (0.2–0.6 µm across),
        met exactly. ``None``: drawn in [0.01, 0.06]. A body that finds no room is
        split in two of the same total volume, down to 0.2 µm across; beyond that
        ``ValueError`` is raised. About 0.1 fits a cell 0.85 µm in radius, 0.25 one
        of 1.8 µm (the default at 128³ × 40 nm).
    starch : bool
        Add starch granules (lens-shaped ellipsoids), as in algae.
    acquisition : Acquisition or bool, optional
        Simulate a tilt series and its reconstruction (:mod:`sxtlab.acquisition`);
        ``True`` uses ``Acquisition()``. The noise seed, unless the Acquisition
        sets one, derives from ``seed``.
    gray : bool
        Return gray values ``(LAC − offset) / scale`` of a random 16-bit-like
        calibration instead of LAC; the truth is in ``ds.attrs["true_lac_scale"]``
        and ``["true_lac_offset"]``, not on the image (it is to be estimated).
    cell_radius_um : float, optional
        Nominal (largest) radius of the cell, µm; default 0.36 × the smallest
        extent of the field of view. The surface lies within 0.7–1.12 of it.
    class_lac : mapping of class name to float, optional
        LAC (µm⁻¹) of some classes (``"background"`` is the medium), replacing the
        values drawn from the literature ranges; :func:`varied_cell` draws them
        over the whole ranges.
    texture : (std, length) or mapping of class name to (std, length) or to a list of them, optional
        Correlated LAC fluctuation inside the cell: a Gaussian random field of
        standard deviation ``std`` µm⁻¹ and correlation length ``length`` µm (the
        σ of the Gaussian smoothing of white noise), as the granular cytoplasm and
        the uneven organelle interiors of real reconstructions. A pair gives one
        field over the whole cell; a mapping gives each named class a field of its
        own within its voxels (``"cell"`` is the cytoplasm), so that, e.g., a
        smooth nucleus sits in a granular cytoplasm; a list of pairs adds fields
        of several scales (fine grain over broad blotches). ``None``: none.
    axis_ratio : (lo, hi)
        Range of the cell body's two shorter axes relative to its longest, in
        (0, 1]; (0.82, 1.0) by default, lower for elongated cells.
    mito_density : float
        Mitochondrial tubules per µm³ of cell (Poisson mean, at most 60 tubules).
    capillary : Capillary, optional
        A glass capillary wall around the cell (labelled medium).
    nucleus_size : (lo, hi)
        Range of the nucleus's radius relative to the cell's equivalent radius,
        in (0, 0.7]; (0.38, 0.46) by default, the yeast nucleus's 4–9 % of the cell
        (Jorgensen et al. 2007). A nucleus that does not fit shrinks until it does.
    nucleolus_size : (lo, hi)
        Range of the nucleolus's radius relative to the radius inscribed in the
        nucleus, in (0, 0.8]; (0.45, 0.6) by default.
    nucleus_relief : float
        Largest departure of the nucleus's surface from an ellipsoid, as a fraction
        of its radius in [0, 0.3] (low-order harmonics: lobed and bean-shaped
        nuclei); 0, the default, gives a near-round ellipsoid.
    bud : float, optional
        Add a bud of this radius relative to ``cell_radius_um`` (in [0.2, 1]), joined
        to the cell by a neck: part of the cell (its labels, volume and organelles),
        without a nucleus. It may reach beyond the field of view.
    neighbours : int
        Neighbouring cells (0–8) beside the cell, in the field in part (labelled as
        cells, with organelles of their own; not in the truth record's volumes and
        counts). Side by side in the y–x plane on a grid, along y in a capillary.
        One that finds no room in the field is left out (``attrs["neighbours"]``
        says how many were placed).
    vesicle_density : float
        Small unlabelled vesicles and dense granules per µm³ of cell (Poisson mean,
        at most 400; see ``_vesicles``): labelled cytoplasm, each with a LAC of its
        own, dark or dense. ``attrs["vesicles"]`` counts those placed.
    vacuole_granules : float
        Mean number of dense (polyphosphate) granules per vacuole (Poisson; see
        ``_vacuole_granules``), labelled vacuole; ``attrs["vacuole_granules"]``
        counts them.
    cytoplasm_domains : int
        Regions of the cell's cytoplasm (0–12) whose LAC differs from the rest by
        ``domain_contrast`` (see ``_cytoplasm_domains``): nucleus-sized, half of them
        against the nucleus, with blurred edges; labelled cytoplasm.
        ``attrs["cytoplasm_domains"]`` counts those placed.
    domain_contrast : float
        LAC difference of the domains from the cytoplasm (µm⁻¹, either sign, at most
        0.15 in size).

    Returns
    -------
    xarray.Dataset
        ``lac`` (z, y, x) float32: LAC in µm⁻¹ (units ``"1/um"``), or gray values
        (units ``"gray"``) with ``gray=True``; partial-volume mixing at boundaries
        and, with an acquisition, the reconstruction's blur, noise and missing wedge.
        ``labels`` (z, y, x) uint8: :data:`LABELS` values at voxel centres, with a
        ``classes`` attr naming 1–6 (and 7 with ``starch``). ``instance_labels``
        (z, y, x) uint16: each organelle's id (``attrs["instances"][id − 1]``
        describes it), 0 in cytoplasm and medium; touching instances stay apart
        here even where their labels merge. ``lac_true``: the
        noise-free partial-volume LAC (µm⁻¹), present when ``lac`` differs from it
        (acquisition or gray). attrs: ``generator``, ``generator_version``, ``seed``,
        ``cell_id``, ``cell_radius_um``, ``cell_volume_um3``,
        ``class_lac_per_um`` (the drawn LAC of each class), ``class_volume_um3``
        (exact volumes of the analytic shapes, exclusive as the labels are: the
        nucleus without its nucleolus, ``cell`` the cytoplasm), ``instance_counts``,
        ``instances`` (class, centre and size of each organelle),
        ``lipid_fraction`` (achieved, analytic) and ``lipid_fraction_target``,
        ``texture``, ``capillary`` (parameters or ``None``),
        ``acquisition`` (parameters or ``None``) and, with ``gray``,
        ``true_lac_scale`` / ``true_lac_offset``.

    Raises
    ------
    ValueError
        If ``shape`` is not three integers ≥ 16, the voxel size is not positive
        (:class:`sxtlab.FormatError`), ``lipid_fraction`` is outside [0, 0.5] or
        cannot be packed, or the cell radius does not fit the field of view with
        its margin or is below 0.5 µm.

    Notes
    -----
    Classes and their LAC ranges come from :data:`sxtlab.classes.VOCABULARY` (the
    DESIGN notes' literature ranges); each cell draws one value per class from the
    inner 80 % of its range, the nucleus 0.015–0.04 µm⁻¹ off the cytoplasm.

    Organelles are placed in this order, each clear of the others by 0.03 µm and of
    the cell surface by 0.08 µm: nucleus (off-centre, with its nucleolus inside),
    vacuoles, lipid bodies, mitochondria (persistent random walks that stop at
    obstacles), starch granules, unlabelled vesicles. Vacuoles and starch granules
    that find no room shrink, then are left out, as are mitochondria shorter than
    0.3 µm and vesicles without room; ``instance_counts`` says what was placed. A
    bud is placed next, its organelles clear of the cell's; then each neighbour,
    stepped in from afar along a random direction until the next step would bring
    it nearer than its gap to a body already placed, and filled as a cell is.

    The partial volume of an organelle's voxel is supersampled (3³ points where its
    surface may cross), which keeps each object's LAC integral to < 1 % of its
    analytic volume; the cell body, much larger than a voxel, uses the linear ramp
    of its implicit function (see ``_partial_volume``). Each class mixes only into
    its container (organelle into cytoplasm, nucleolus into nucleus).

    Examples
    --------
    >>> ds = cell(seed=0, shape=(64, 64, 64), voxel_size=0.05, lipid_fraction=0.05)
    >>> round(ds.attrs["lipid_fraction"], 3)
    0.05
    >>> int((ds.labels == LABELS["nucleolus"]).sum()) > 0
    True
    """
    seed = _check_seed(seed)
    grid_shape = _check_shape(shape)
    spacing = check_voxel_size(voxel_size, where="voxel_size")
    if not (0 < axis_ratio[0] <= axis_ratio[1] <= 1):
        raise ValueError(f"axis_ratio must be (lo, hi) with 0 < lo <= hi <= 1, got {axis_ratio!r}")
    if not (np.isfinite(mito_density) and mito_density >= 0):
        raise ValueError(f"mito_density must be >= 0 per µm³, got {mito_density!r}")
    if not (len(nucleus_size) == 2 and 0 < nucleus_size[0] <= nucleus_size[1] <= 0.7):
        raise ValueError(f"nucleus_size must be (lo, hi) with 0 < lo <= hi <= 0.7, got {nucleus_size!r}")
    if not (len(nucleolus_size) == 2 and 0 < nucleolus_size[0] <= nucleolus_size[1] <= 0.8):
        raise ValueError(f"nucleolus_size must be (lo, hi) with 0 < lo <= hi <= 0.8, got {nucleolus_size!r}")
    if not (np.isfinite(nucleus_relief) and 0 <= nucleus_relief <= 0.3):
        raise ValueError(f"nucleus_relief must be in [0, 0.3], got {nucleus_relief!r}")
    if bud is not None and not (np.isfinite(bud) and 0.2 <= bud <= 1.0):
        raise ValueError(f"bud must be None or a relative radius in [0.2, 1], got {bud!r}")
    if isinstance(neighbours, (bool, np.bool_)) or not isinstance(neighbours, (int, np.integer)) \
            or not 0 <= neighbours <= 8:
        raise ValueError(f"neighbours must be an integer in [0, 8], got {neighbours!r}")
    textures = {} if texture is None else (dict(texture) if isinstance(texture, Mapping) else {None: texture})
    scales: dict[str | None, list[tuple[float, float]]] = {}
    for name, spec in textures.items():
        if name is not None and name not in LABELS:
            raise ValueError(f"texture names unknown class {name!r}; known: {list(LABELS)}")
        pairs = [spec] if len(spec) and np.ndim(spec[0]) == 0 else list(spec)
        for pair in pairs:
            if not (len(pair) == 2 and np.isfinite(pair).all() and pair[0] >= 0 and pair[1] > 0):
                raise ValueError(f"texture must be (std >= 0 µm⁻¹, length > 0 µm) or a list of them, got {spec!r}"
                                 + ("" if name is None else f" for {name!r}"))
        scales[name] = [(float(a), float(b)) for a, b in pairs]
    if not (np.isfinite(vacuole_granules) and 0 <= vacuole_granules <= 20):
        raise ValueError(f"vacuole_granules must be a mean count in [0, 20] per vacuole, got {vacuole_granules!r}")
    if not (np.isfinite(vesicle_density) and vesicle_density >= 0):
        raise ValueError(f"vesicle_density must be >= 0 per µm³, got {vesicle_density!r}")
    if isinstance(cytoplasm_domains, (bool, np.bool_)) or not isinstance(cytoplasm_domains, (int, np.integer)) \
            or not 0 <= cytoplasm_domains <= 12:
        raise ValueError(f"cytoplasm_domains must be an integer in [0, 12], got {cytoplasm_domains!r}")
    if not (np.isfinite(domain_contrast) and abs(domain_contrast) <= 0.15):
        raise ValueError(f"domain_contrast must be in [-0.15, 0.15] µm⁻¹, got {domain_contrast!r}")
    unknown = set(class_lac or {}) - set(LABELS)
    if unknown:
        raise ValueError(f"class_lac names unknown classes {sorted(unknown)}; known: {list(LABELS)}")
    if lipid_fraction is not None and not (np.isfinite(lipid_fraction) and 0 <= lipid_fraction <= 0.5):
        raise ValueError(f"lipid_fraction must be in [0, 0.5], got {lipid_fraction!r}")
    acquisition = _check_acquisition(acquisition)
    if acquisition is True:
        acquisition = Acquisition()
    elif acquisition is False:
        acquisition = None
    extent = min(n * d for n, d in zip(grid_shape, spacing))
    if cell_radius_um is None:
        cell_radius_um = _DEFAULT_RADIUS_FRACTION * extent
    largest = _largest_radius(grid_shape, spacing)
    if not (np.isfinite(cell_radius_um) and _MIN_CELL_RADIUS <= cell_radius_um <= largest):
        raise ValueError(
            f"cell_radius_um must be in [{_MIN_CELL_RADIUS}, {largest:.3g}] µm for shape {grid_shape} "
            f"at voxel size {spacing} µm (the cell with its relief must fit the smallest extent, "
            f"{extent:.3g} µm, with a margin), got {cell_radius_um!r}; change shape or voxel_size"
        )

    streams, rngs = _streams(np.random.SeedSequence(seed))
    grid = _Grid(grid_shape, spacing)
    body = _CellBody(float(cell_radius_um), rngs["body"], axis_ratio)
    v_cell = body.volume()
    r_eff = (3 * v_cell / (4 * np.pi)) ** (1 / 3)
    lac_of = {**_draw_lac(rngs["lac"]), **{k: float(v) for k, v in (class_lac or {}).items()}}
    target = float(rngs["lipid"].uniform(*_LIPID_FRACTION)) if lipid_fraction is None else float(lipid_fraction)
    packer = _Packer(body)
    try:
        contents = _populate(packer, r_eff, rngs, lipid_target=target, mito_density=mito_density,
                             starch=starch, nucleus_size=nucleus_size, nucleus_relief=nucleus_relief,
                             nucleolus_size=nucleolus_size)
    except ValueError as err:
        raise ValueError(f"lipid_fraction={target:g} does not fit: {err}") from None
    vesicles = _vesicles(packer, vesicle_density, rngs["vesicles"]) if vesicle_density > 0 else []
    granules = (_vacuole_granules(contents.vacuoles, vacuole_granules, rngs["granules"])
                if vacuole_granules > 0 else [])
    domains = (_cytoplasm_domains(body, contents.nucleus, cytoplasm_domains, rngs["domains"])
               if cytoplasm_domains and domain_contrast else [])

    # Bodies in the field: (body, centre relative to the cell centre), the cell's first.
    bodies: list[tuple[_CellBody, np.ndarray]] = [(body, np.zeros(3))]
    if bud is not None:
        bud_body, bud_centre, bud_contents = _bud(body, bud * float(cell_radius_um), streams["bud"],
                                                   packer, target, mito_density, along_y=capillary is not None)
        bodies.append((bud_body, bud_centre))
        v_cell = _union_volume(body, bud_body, bud_centre)
    neighbour_contents = []
    for k, stream in enumerate(streams["neighbours"].spawn(neighbours)):
        placed = _neighbour(bodies, float(cell_radius_um), stream, grid, axis_ratio, target, mito_density,
                            starch, nucleus_size, nucleus_relief, nucleolus_size, along_y=capillary is not None)
        if placed is not None:
            bodies.append(placed[:2])
            neighbour_contents.append((k + 1, placed[2]))

    # -- rasterise: labels at voxel centres, LAC by partial volume ----------------------
    labels = np.zeros(grid_shape, np.uint8)
    instance_labels = np.zeros(grid_shape, np.uint16)
    lac = np.full(grid_shape, lac_of["background"], np.float32)
    f_cell = np.zeros(grid_shape, np.float32)
    for body_, centre in bodies:
        bb, coords = grid.box(centre - body_.max_radius, centre + body_.max_radius)
        if any(sl.stop - sl.start < 3 for sl in bb):  # wholly beyond the field (the box pads 2 voxels)
            continue
        g, f = _partial_volume(lambda cs, b_=body_, c_=centre: b_.implicit([x - o for x, o in zip(cs, c_)]),
                               coords, spacing, sub=None)  # R ≫ voxel: a ramp will do
        f_cell[bb] = np.maximum(f_cell[bb], f)
        labels[bb][g < 0] = LABELS["cell"]
    lac += f_cell * np.float32(lac_of["cell"] - lac_of["background"])

    def paint(shape: _Ellipsoid | _Blob | _Tube, instance: int, base: str,
              within: _Ellipsoid | _Blob | None = None) -> None:
        sl, cs = grid.box(*shape.bounds())
        if any(s_.stop - s_.start < 3 for s_ in sl):  # wholly beyond the field (the box pads 2 voxels)
            return
        g_s, frac = _partial_volume(shape.implicit, cs, spacing)
        # A class mixes into what contains it, never beyond it.
        frac = np.minimum(frac, f_cell[sl])
        if within is not None:
            frac = np.minimum(frac, _partial_volume(within.implicit, cs, spacing)[1])
        labels[sl][g_s < 0] = LABELS[shape.label]
        instance_labels[sl][g_s < 0] = instance
        lac[sl] += frac * np.float32(lac_of[shape.label] - lac_of[base])

    # Instance ids 1, 2, … in this order: the cell's organelles (its bud's with them),
    # its nucleolus, then each neighbour's organelles and nucleolus.
    organelles = contents.organelles() + ([] if bud is None else bud_contents.organelles())
    nucleolus = contents.nucleolus
    painted: list[tuple[int | None, _Ellipsoid | _Blob | _Tube]] = [(None, s_) for s_ in [*organelles, nucleolus]]
    for i, shape_ in enumerate(organelles, start=1):
        paint(shape_, i, "cell")
    paint(nucleolus, len(organelles) + 1, "nucleus", within=contents.nucleus)
    for k, other in neighbour_contents:
        for shape_ in other.organelles():
            painted.append((k, shape_))
            paint(shape_, len(painted), "cell")
        if other.nucleolus is not None:
            painted.append((k, other.nucleolus))
            paint(other.nucleolus, len(painted), "nucleus", within=other.nucleus)
    for sphere, value in vesicles:
        sl, cs = grid.box(*sphere.bounds())
        frac = np.minimum(_partial_volume(sphere.implicit, cs, spacing)[1], f_cell[sl])
        lac[sl] += frac * np.float32(value - lac_of["cell"])
    # a granule's partial volume never reaches beyond its vacuole; where granules
    # overlap, the densest wins rather than their excesses adding up
    if granules:
        dense = np.full(grid_shape, np.nan, np.float32)
        for sphere, value, vac in granules:
            sl, cs = grid.box(*sphere.bounds())
            frac = np.minimum(_partial_volume(sphere.implicit, cs, spacing)[1],
                              _partial_volume(vac.implicit, cs, spacing)[1])
            excess = frac * np.float32(value - lac_of["vacuole"])
            dense[sl] = np.fmax(dense[sl], np.where(frac > 0, excess, np.nan))
        lac += np.nan_to_num(dense, nan=0.0)
    if domains:
        # where domains overlap the strongest wins: one region, not twice the contrast
        share = np.zeros(grid_shape, np.float32)
        for domain, sigma in domains:
            lo, hi = domain.bounds()
            sl, cs = grid.box(lo - 3 * sigma, hi + 3 * sigma)
            frac = _partial_volume(domain.implicit, cs, spacing, sub=None)[1]
            if sigma > 0:
                frac = ndimage.gaussian_filter(frac, [sigma / d for d in spacing], mode="constant")
            share[sl] = np.maximum(share[sl], frac)
        # a domain changes no organelle and not the medium
        lac += np.float32(domain_contrast) * share * (labels == LABELS["cell"]) * f_cell
    for name, pairs in scales.items():
        for std, length in pairs:
            if std > 0:
                field_ = ndimage.gaussian_filter(rngs["texture"].standard_normal(grid_shape, np.float32),
                                                 [length / d for d in spacing], mode="wrap")
                field_ *= np.float32(std / max(float(field_.std()), 1e-12))
                lac += field_ * (f_cell if name is None else (labels == LABELS[name]))
    if capillary is not None:
        wall, beyond = capillary.fractions(grid, body.max_radius)
        lac += wall * np.float32(capillary.lac - lac_of["background"])
        if capillary.outside_lac is not None:
            lac += beyond * np.float32(capillary.outside_lac - lac_of["background"])

    # -- truth record (the cell's, its bud's included; not its neighbours') -------------
    classes = [c for c in LABELS if c != "background" and (starch or c != "starch_granule")]
    members: dict[str, list] = {c: [] for c in classes}
    for shape_ in [*organelles, nucleolus]:
        members[shape_.label].append(shape_)
    volumes = {c: float(sum(s.volume for s in members[c])) for c in classes}
    volumes["nucleus"] -= volumes["nucleolus"]
    volumes["cell"] = v_cell - sum(v for c, v in volumes.items() if c != "cell")
    origin = grid.centre_um
    cell_id = f"phantom-{seed}"
    lipid_volume = float(sum(s.volume for s in members["lipid_body"]))
    attrs: dict[str, Any] = {
        "generator": "sxtlab.phantom.cell",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "cell_id": cell_id,
        "cell_radius_um": float(cell_radius_um),
        "cell_volume_um3": v_cell,
        "class_lac_per_um": {c: lac_of[c] for c in ["background", *classes]},
        "class_volume_um3": volumes,
        "instance_counts": {c: len(members[c]) for c in classes if c != "cell"},
        "instances": [{"id": i, **({} if k is None else {"neighbour": k}), **s_.record(origin)}
                      for i, (k, s_) in enumerate(painted, start=1)],
        "lipid_fraction": lipid_volume / v_cell,
        "lipid_fraction_target": target,
        "starch": bool(starch),
        "texture": {("cell body" if k is None else k): (list(pairs[0]) if len(pairs) == 1 else [list(q) for q in pairs])
                    for k, pairs in scales.items()} or None,
        "vesicles": len(vesicles),
        "vacuole_granules": len(granules),
        "cytoplasm_domains": len(domains),
        "capillary": None if capillary is None else asdict(capillary),
        "bud": None if bud is None else {"radius_um": bud_body.radius,
                                          "centre_um": (origin + bud_centre).round(4).tolist()},
        "neighbours": len(neighbour_contents),
        "acquisition": None,
    }

    truth = lac
    image = lac
    if acquisition is not None:
        if acquisition.seed is None:
            noise_seed = int(streams["acquisition"].generate_state(1)[0])
            acquisition = replace(acquisition, seed=noise_seed)
        truth_da = volume(truth, spacing)
        image = simulate_acquisition(truth_da, acquisition, medium_lac=lac_of["background"]).values
        attrs["acquisition"] = acquisition.to_attrs()
    units = "1/um"
    if gray:
        rng = rngs["gray"]
        scale = float(rng.uniform(*_GRAY_SCALE))
        cal = Calibration(scale, -scale * float(rng.uniform(*_GRAY_ZERO)))
        image = cal.invert(image).astype(np.float32)
        units = "gray"
        attrs.update(true_lac_scale=cal.scale, true_lac_offset=cal.offset)

    img = volume(image, spacing, units=units, source="sxtlab.phantom", cell_id=cell_id)
    lab = label_volume(labels, img, {LABELS[c]: c for c in classes})
    ds = segmentation(img, lab, **attrs)
    ds["instance_labels"] = xr.DataArray(
        instance_labels, dims=img.dims, coords=img.coords, name="instance_labels",
        attrs={"long_name": "organelle instance", "units": "label",
               "description": "id of each organelle (ds.attrs['instances'][id - 1]); 0 elsewhere"},
    )
    if image is not truth:
        ds["lac_true"] = volume(truth, spacing, name="lac_true", source="sxtlab.phantom", cell_id=cell_id)
    return ds


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _varied_lac(rng: np.random.Generator) -> dict[str, float]:
    """Class LACs (µm⁻¹) over the whole literature ranges of DESIGN.md, the
    differences included: the nucleus lies 0.01–0.1 µm⁻¹ (log-uniform) above or
    below the cytoplasm, the nucleolus 0–0.15 above the nucleus, mitochondria above the
    cytoplasm, vacuoles below both the cytoplasm and the nucleus.

    The last keeps the literature's order (vacuoles 0.1–0.2, nucleus 0.2–0.3): drawn
    apart, a dark nucleus fell among the vacuoles in a third of the cells, and
    models trained on them called the dark nuclei of another generator's cells
    vacuole or cytoplasm (``benchmarks/results/generalisation.md``)."""
    lac = {name: float(rng.uniform(*VOCABULARY[name].lac_range_per_um)) for name in LABELS}
    nucleus = lac["cell"] + rng.choice([-1.0, 1.0]) * _log_uniform(rng, 0.01, 0.1)
    lac["nucleus"] = float(np.clip(nucleus, 0.18, 0.42))
    lac["nucleolus"] = lac["nucleus"] + float(rng.uniform(0.0, 0.15))
    lac["mitochondria"] = max(lac["mitochondria"], lac["cell"] + float(rng.uniform(0.02, 0.1)))
    vacuole_lo, vacuole_hi = VOCABULARY["vacuole"].lac_range_per_um
    ceiling = min(vacuole_hi, lac["nucleus"] - 0.02, lac["cell"] - 0.02)
    lac["vacuole"] = float(rng.uniform(vacuole_lo, max(vacuole_lo, ceiling)))
    return lac


def _varied_acquisition(rng: np.random.Generator, full_range: bool) -> Acquisition:
    """A tilt series as SXT microscopes record them: ±55–70° on flat grids or full
    rotation in a capillary, 1–3° steps, 500–40 000 photons per pixel (log-uniform),
    a PSF of 10–40 nm σ, sometimes rings, reconstructed by SIRT (40 %) or FBP (mostly
    with a smoothing window). The photon range and the smooth reconstructions follow
    ``benchmarks/results/realism.md``: the real ``sample_12`` is less noisy than
    cells drawn from 500–8000 photons even when those are averaged to its scale, and
    its noise is correlated over several voxels, not white as ramp-filtered FBP's."""
    tilt = 90.0 if full_range else float(rng.uniform(55, 70))
    step = float(rng.uniform(1.0, 3.0))
    n_angles = max(20, int(round((180.0 if tilt >= 90 else 2 * tilt) / step)) + (tilt < 90))
    sirt = rng.random() < 0.4
    return Acquisition(
        tilt_range_deg=tilt, n_angles=n_angles, photons=_log_uniform(rng, 500, 40000),
        psf_sigma_um=float(rng.uniform(0.01, 0.04)),
        filter_name=str(rng.choice(_FILTER_NAMES, p=_FILTER_WEIGHTS)),
        ring_std=float(rng.uniform(0.002, 0.02)) if rng.random() < 0.3 else 0.0,
        reconstruction="sirt" if sirt else "fbp", sirt_iterations=int(rng.integers(15, 41)),
    )


def varied_cell(
    seed: int = 0,
    shape: Sequence[int] = (128, 128, 128),
    voxel_size: float | Sequence[float] = 0.04,
    *,
    acquisition: bool | Acquisition | None = True,
) -> xr.Dataset:
    """A cell whose look varies as it does between cells, strains, species and microscopes.

    Draws, from ``seed``, everything :func:`cell` lets vary and calls it: every
    class's LAC over its whole literature range with the nucleus darker or brighter
    than the cytoplasm by 0.01–0.1 µm⁻¹ (DESIGN.md: from almost nothing to about
    0.1, either sign); correlated textures drawn for each class apart, in the
    cytoplasm and nucleus of two scales (grain of 0–0.02 µm⁻¹ over 0.03–0.1 µm and
    blotches of 0–0.02 µm⁻¹ over 0.2–0.6 µm, as large as the nucleus's own contrast
    at times), in mitochondria and vacuoles one (0–0.03 over 0.04–0.25 µm); round or
    elongated cells (axis ratios down to 0.5) filling 45–100 % of the largest
    radius the field allows, a bud of 0.3–0.75 of the cell's radius on 40 % of
    them; a nucleus of 3–24 % of the cell's volume, lobed (relief 5–25 % of its
    radius) in 70 % of cells; 0.15–1 mitochondrial tubules per µm³; no lipid
    bodies (15 %) or up to 10 % of the cell; starch granules in 15 % of cells;
    a nucleolus of 0.25–0.6 of the nucleus's inner radius, 0–0.15 µm⁻¹ above it
    (invisible at times); 0.3–6 unlabelled vesicles and granules per µm³ in 80 %
    of cells; bright (polyphosphate) granules in the vacuoles of half the cells,
    0.5–4 per vacuole on average, so that a dark body with bright spots inside is not
    always a nucleus with its nucleolus; 1–4 nucleus-sized regions of denser or
    lighter cytoplasm in half the cells, half of them against the nucleus, 0.5–1
    times the nucleus's contrast (at most 0.05 µm⁻¹), of the same sign in 3 of 4, so
    that a dark or bright region beside the nucleus is not always nucleus; 0–4
    neighbouring cells, partly in the field (as the real ``sample_12``'s capillary
    is packed with them); a glass capillary wall in 30 %, in air in most (as
    ``sample_12``'s); and a simulated acquisition (:func:`_varied_acquisition`; full
    rotation for most capillaries). These are
    training and evaluation cells for models meant for unseen data; :func:`cell`
    with its defaults stays the narrow, reproducible cell of tutorials and tests.

    Parameters
    ----------
    seed : int
        Non-negative seed; the same seed and arguments give identical arrays.
    shape, voxel_size
        As for :func:`cell` (the cell's size follows the field's extent).
    acquisition : bool, Acquisition or None
        ``True``: simulate a drawn tilt series and reconstruction; ``False`` or
        ``None``: the true LAC; an :class:`Acquisition`: simulate that one instead
        of a drawn one (the cell is the same: the acquisition is drawn last), as
        benchmarks do to hold the acquisition fixed while the cells vary.

    Returns
    -------
    xarray.Dataset
        As :func:`cell`, with ``attrs["variation"]`` recording what was drawn.

    Examples
    --------
    >>> ds = varied_cell(seed=2, shape=(64, 64, 64), voxel_size=0.05, acquisition=False)
    >>> sorted(ds.attrs["variation"])[:4]
    ['axis_ratio', 'bud', 'capillary', 'cell_radius_um']
    """
    seed = _check_seed(seed)
    grid_shape = _check_shape(shape)
    spacing = check_voxel_size(voxel_size, where="voxel_size")
    # A stream of its own, so that the cell's geometry streams stay those of cell(seed).
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A17]))
    largest = _largest_radius(grid_shape, spacing)
    if largest < _MIN_CELL_RADIUS:
        raise ValueError(f"shape {grid_shape} at voxel size {spacing} µm leaves no room for a cell "
                         f"of radius >= {_MIN_CELL_RADIUS} µm")
    capillary = None
    if rng.random() < 0.3:
        capillary = Capillary(clearance_um=float(rng.uniform(0.05, 0.8)), thickness_um=float(rng.uniform(0.1, 0.3)),
                              lac=float(rng.uniform(0.8, 1.6)), offset_um=tuple(rng.uniform(-0.4, 0.4, size=2)),
                              outside_lac=0.0 if rng.random() < 0.6 else None)
    variation: dict[str, Any] = {
        "class_lac": _varied_lac(rng),
        # each class its own, so that texture as well as mean LAC tells classes apart,
        # or does not: a nucleus smoother or rougher than its cytoplasm
        # fine grain over broad blotches in the cytoplasm and nucleus, as large as the
        # nucleus's own contrast at times, so that a dark or bright patch alone is no nucleus
        "texture": {**{name: [(float(rng.uniform(0.0, 0.02)), float(rng.uniform(0.03, 0.1))),
                              (float(rng.uniform(0.0, 0.02)), float(rng.uniform(0.2, 0.6)))]
                       for name in ("cell", "nucleus")},
                    **{name: (float(rng.uniform(0.0, 0.03)), float(rng.uniform(0.04, 0.25)))
                       for name in ("mitochondria", "vacuole")}},
        "axis_ratio": (0.82, 1.0) if rng.random() < 0.6 else (0.5, 0.8),
        "mito_density": _log_uniform(rng, 0.15, 1.0),
        "lipid_fraction": 0.0 if rng.random() < 0.15 else float(rng.uniform(0.005, 0.1)),
        "starch": bool(rng.random() < 0.15),
        "cell_radius_um": float(max(_MIN_CELL_RADIUS, rng.uniform(0.45, 1.0) * largest)),
        "nucleus_size": (float(rng.uniform(*_VARIED_NUCLEUS_RADIUS)),) * 2,
        "nucleus_relief": 0.0 if rng.random() < 0.3 else float(rng.uniform(0.05, 0.25)),
        "bud": None if rng.random() < 0.6 else float(rng.uniform(0.3, 0.75)),
        "neighbours": int(rng.choice(5, p=[0.35, 0.25, 0.2, 0.12, 0.08])),
        "nucleolus_size": (float(rng.uniform(0.25, 0.6)),) * 2,
        "vesicle_density": 0.0 if rng.random() < 0.2 else _log_uniform(rng, 0.3, 6.0),
    }
    # Generator 1.3's draws come from a stream of their own, so that 1.2's stay as they were.
    rng13 = np.random.default_rng(np.random.SeedSequence([seed, 0x5A17, 13]))
    variation["vacuole_granules"] = 0.0 if rng13.random() < 0.5 else float(rng13.uniform(0.5, 4.0))
    # 1.4's likewise: cytoplasm domains in half the cells, as dark or bright as the
    # nucleus (up to 0.05 µm⁻¹) on the nucleus's side of the cytoplasm in 3 of 4
    rng14 = np.random.default_rng(np.random.SeedSequence([seed, 0x5A17, 14]))
    variation["cytoplasm_domains"], variation["domain_contrast"] = 0, 0.0
    if rng14.random() < 0.5:
        delta = variation["class_lac"]["nucleus"] - variation["class_lac"]["cell"]
        sign = float(np.sign(delta)) * (1.0 if rng14.random() < 0.75 else -1.0)
        variation["cytoplasm_domains"] = int(rng14.integers(1, 5))
        variation["domain_contrast"] = sign * min(0.05, abs(delta) * float(rng14.uniform(0.5, 1.0)))
    if variation["bud"] is not None:
        # the bud's far side, ~1.7 bud radii beyond the cell's surface, stays in the field
        fit = largest * (1 + _MAX_RELIEF) / (1 + _MAX_RELIEF + 1.7 * variation["bud"])
        variation["cell_radius_um"] = float(max(_MIN_CELL_RADIUS, min(variation["cell_radius_um"], fit)))
    acq = _check_acquisition(acquisition)
    if acq is True:
        acq = _varied_acquisition(rng, full_range=capillary is not None and rng.random() < 0.7)
    elif acq is False:
        acq = None
    while True:
        try:
            ds = cell(seed, grid_shape, spacing, acquisition=acq, capillary=capillary, **variation)
            break
        except ValueError as err:
            # a small cell cannot hold every lipid fraction drawn: halve it until it fits
            if "does not fit" not in str(err) or variation["lipid_fraction"] < 1e-3:
                raise
            variation["lipid_fraction"] /= 2
    variation["capillary"] = None if capillary is None else asdict(capillary)
    ds.attrs["variation"] = variation
    ds.attrs["generator"] = "sxtlab.phantom.varied_cell"
    return ds


def population(
    n_cells: int,
    *,
    conditions: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    lipid_cv: float = 0.25,
    progress: bool = True,
    **cell_kwargs: Any,
) -> list[xr.Dataset]:
    """``n_cells`` phantom cells per condition, e.g. two lipid contents.

    Parameters
    ----------
    n_cells : int
        Cells per condition (the list holds ``n_cells × len(conditions)`` cells,
        condition by condition).
    conditions : mapping of str to mapping, optional
        Condition name → :func:`cell` keyword arguments that define it; default
        ``{"control": {"lipid_fraction": 0.02}, "high_lipid": {"lipid_fraction": 0.08}}``.
    seed : int
        Seed of the population; each cell's seed derives from it through
        :class:`numpy.random.SeedSequence`, so all cells differ and the population
        is reproducible.
    lipid_cv : float
        Cell-to-cell coefficient of variation of a condition's ``lipid_fraction``
        (lognormal, mean kept), as cells of one culture differ; 0 gives every cell
        the condition's value exactly. Values are clipped to [0, 0.5].
    progress : bool
        Show a progress bar (:mod:`tqdm.auto`: a widget in notebooks).
    **cell_kwargs
        Passed to :func:`cell` (e.g. ``shape``, ``voxel_size``, ``acquisition``);
        a condition's own keywords take precedence.

    Returns
    -------
    list of xarray.Dataset
        As :func:`cell`, each with ``attrs["condition"]``.

    Raises
    ------
    ValueError
        If ``n_cells`` < 1, ``lipid_cv`` < 0 or a condition is not a mapping; and as
        :func:`cell`.

    Examples
    --------
    >>> cells = population(2, shape=(48, 48, 48), voxel_size=0.06, progress=False)
    >>> [ds.attrs["condition"] for ds in cells]
    ['control', 'control', 'high_lipid', 'high_lipid']
    """
    return list(_iter_population(n_cells, conditions, seed, lipid_cv, progress, cell_kwargs))


def _iter_population(n_cells: int, conditions: Mapping[str, Mapping[str, Any]] | None, seed: int,
                     lipid_cv: float, progress: bool, cell_kwargs: dict[str, Any]) -> Iterator[xr.Dataset]:
    if isinstance(n_cells, (bool, np.bool_)) or not isinstance(n_cells, (int, np.integer)) or n_cells < 1:
        raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
    if not (np.isfinite(lipid_cv) and lipid_cv >= 0):
        raise ValueError(f"lipid_cv must be >= 0, got {lipid_cv!r}")
    if conditions is None:
        conditions = {"control": {"lipid_fraction": 0.02}, "high_lipid": {"lipid_fraction": 0.08}}
    for name, kw in conditions.items():
        if not isinstance(kw, Mapping):
            raise ValueError(f"condition {name!r} must map cell() keywords to values, got {kw!r}")
    children = iter(np.random.SeedSequence(_check_seed(seed)).spawn(n_cells * len(conditions)))
    sigma = math.sqrt(math.log1p(lipid_cv ** 2))
    with tqdm(total=n_cells * len(conditions), desc="phantom cells", disable=not progress) as bar:
        for name, kw in conditions.items():
            for _ in range(n_cells):
                child = next(children)
                kwargs = {**cell_kwargs, **kw}
                if kwargs.get("lipid_fraction") is not None and sigma > 0:
                    factor = np.random.default_rng(child).lognormal(-sigma ** 2 / 2, sigma)
                    kwargs["lipid_fraction"] = float(np.clip(kwargs["lipid_fraction"] * factor, 0, 0.5))
                ds = cell(int(child.generate_state(1, np.uint64)[0]), **kwargs)
                ds.attrs["condition"] = str(name)
                bar.update()
                yield ds
