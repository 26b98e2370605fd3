"""A second, independently written SXT phantom generator, for evaluation only.

Never used for training. It shares nothing with :mod:`sxtlab.phantom` or
:mod:`sxtlab.acquisition` (neither is imported) except the label values, so that
both generators are scored the same way:
0 medium, 1 cytoplasm (``cell``), 2 nucleus (nucleolus included), 4 mitochondria,
5 lipid_body, 6 vacuole.

Geometry (all in µm, from signed distance functions):

* cell body: a smooth union of primitives, one of *round* (an ellipsoid),
  *budding* (mother and bud joined by a smooth-minimum neck) or *elongated* (a
  capsule), its surface displaced by a smooth random field; scaled until it keeps a
  margin of medium to every face of the field;
* neighbouring cell fragments (sometimes): caps of large spheres whose centres lie
  outside the field, labelled cytoplasm, kept apart from the cell;
* nucleus: an ellipsoidal blob with a displaced surface; nucleolus (usually) a
  smaller, denser blob inside it, labelled nucleus;
* vacuoles: 0-4 displaced spheres, with a coarse internal texture and sometimes
  dense granules (polyphosphate-like, labelled vacuole);
* lipid bodies: 0-14 spheres, some in clusters of touching spheres;
* mitochondria: a branched tubular network, fragmented rods or beads on a string.

Texture: every class gets its own mix of correlated Gaussian noise fields (fine,
middle and coarse correlation lengths); the cytoplasm also gets bright puncta
(ribosome clusters, small vesicles) and a few small dark vesicles, labelled
cytoplasm. Partial volume: each layer's occupancy is a linear ramp of its signed
distance across one voxel.

LAC (µm⁻¹ at ~517 eV) is drawn per cell over the literature ranges of sxtlab's
DESIGN notes: medium 0.095-0.115, cytoplasm 0.20-0.30, nucleus 0.20-0.30 with
0.02 <= |nucleus - cytoplasm| (either sign), nucleolus 0.30-0.40, mitochondria
0.30-0.45 (>= 0.03 over the cytoplasm), lipid bodies 0.50-1.00, vacuoles 0.10-0.20.

Acquisition (:class:`Scan`): for each section perpendicular to the tilt axis (y),
parallel-beam projections at the tilt angles (``skimage.transform.radon``, z is
the beam at 0°) of the field padded with a disk of medium, line integrals in µm,
a Gaussian zone-plate PSF on each projection image (y, detector), Poisson photon
counts from ``I = I0 · exp(-∫LAC)`` with ``I0`` photons per pixel, then
filtered back-projection (``iradon``) or SART (``iradon_sart``) and a crop of the
reconstruction around the rotation centre. The missing wedge follows from the
tilt range. Presets (:data:`PRESETS`): ``standard``, ``wedge``, ``coarse``
(standard scan; the benchmark uses 48 nm voxels), ``low_dose`` (the standard scan
with 0.12-0.20 of its photons). The presets of one seed differ only in what names
them. Seeds 5000/5001 at 128³ × 32 nm: medium noise σ 0.028-0.033 µm⁻¹ and
cytoplasm-medium contrast-to-noise 4.6-4.9 per voxel (standard), σ 0.056-0.060 and
2.3-2.7 (low dose).

Usage::

    python benchmarks/independent_phantom.py --check     # self-check + figure
    python benchmarks/independent_phantom.py --time      # time one 128³ cell

Python::

    from independent_phantom import cell
    ds = cell(seed=1, shape=(128, 128, 128), voxel_size_um=0.032, acquisition="standard")
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import ndimage
from skimage.transform import iradon, iradon_sart, radon

from sxtlab.volume import label_volume, segmentation, volume

GENERATOR = "independent_phantom"
VERSION = "2"

#: Label values (those of ``sxtlab.phantom.LABELS``; the nucleolus is part of the nucleus here).
LABELS = {"cell": 1, "nucleus": 2, "mitochondria": 4, "lipid_body": 5, "vacuole": 6}

#: LAC ranges, µm⁻¹ (DESIGN.md).
LAC_RANGE = {
    "medium": (0.095, 0.115),
    "cell": (0.20, 0.30),
    "nucleus": (0.20, 0.30),
    "nucleolus": (0.30, 0.40),
    "mitochondria": (0.30, 0.45),
    "lipid_body": (0.50, 1.00),
    "vacuole": (0.10, 0.20),
    "vacuole_granule": (0.30, 0.50),
}
MIN_NUCLEUS_CONTRAST = 0.02   # |nucleus - cytoplasm| µm⁻¹, below which a nucleus is not detectable
MIN_MITO_CONTRAST = 0.03


# ----------------------------------------------------------------------------- acquisition
@dataclass(frozen=True)
class Scan:
    """A simulated tilt series and its reconstruction.

    tilt_max_deg: angles -t..+t (a missing wedge of 90-t each side of the z axis).
    step_deg: angular step. photons_per_um2: incident photons per µm² and projection
    (``None``: no noise); a detector pixel of one voxel gets ``photons_per_um2 · v²``.
    psf_fwhm_nm: Gaussian PSF of the zone plate on each projection image.
    method: ``"fbp"`` (filter ``filter_name``) or ``"sart"`` (``sart_iterations``).
    """

    tilt_max_deg: float = 67.0
    step_deg: float = 1.5
    photons_per_um2: float | None = 2.5e6
    psf_fwhm_nm: float = 45.0
    method: str = "fbp"
    filter_name: str = "ramp"
    sart_iterations: int = 2

    def angles(self) -> np.ndarray:
        n = int(round(2 * self.tilt_max_deg / self.step_deg)) + 1
        return np.linspace(-self.tilt_max_deg, self.tilt_max_deg, n)


#: Suggested field per preset: (voxel size µm, voxels per side).
PRESETS = {
    "standard": (0.032, 128),
    "wedge": (0.032, 128),
    "coarse": (0.048, 96),
    "low_dose": (0.032, 128),
}


def draw_scan(name: str, rng: np.random.Generator) -> Scan:
    """A scan of preset ``name``, its free parameters drawn from ``rng``."""
    if name not in PRESETS:
        raise ValueError(f"unknown acquisition {name!r}; one of {sorted(PRESETS)}")
    # every parameter is drawn for every preset, in one order, so that the presets of one
    # seed differ only in what names them (tilt range, photons)
    tilt_standard, tilt_wedge = rng.uniform(65.0, 70.0), rng.uniform(55.0, 60.0)
    step, photons, psf = rng.uniform(1.0, 2.0), rng.uniform(1.8e6, 3.2e6), rng.uniform(35.0, 60.0)
    filter_name = str(rng.choice(["ramp", "shepp-logan", "hann"]))
    dose = rng.uniform(0.12, 0.2)
    tilt = tilt_wedge if name == "wedge" else tilt_standard
    if name == "low_dose":
        photons *= dose
    return Scan(tilt_max_deg=float(round(tilt, 2)), step_deg=float(round(step, 2)),
                photons_per_um2=float(round(photons, -3)), psf_fwhm_nm=float(round(psf, 1)),
                method="fbp", filter_name=filter_name)


def acquire(lac: np.ndarray, voxel_size_um: float, scan: Scan, medium: float,
            rng: np.random.Generator) -> np.ndarray:
    """Reconstruction of ``lac`` (z, y, x) after a tilt series about y (see module doc)."""
    nz, ny, nx = lac.shape
    v = float(voxel_size_um)
    d = int(math.ceil(math.hypot(nz, nx))) + 4
    d += d % 2
    oz, ox = d // 2 - nz // 2, d // 2 - nx // 2
    yy, xx = np.mgrid[:d, :d]
    disk = ((yy - d // 2) ** 2 + (xx - d // 2) ** 2) <= (d // 2 - 1) ** 2
    theta = scan.angles()
    sino = np.empty((ny, d, theta.size), np.float32)
    padded = np.zeros((d, d), np.float64)
    for j in range(ny):
        padded[:] = medium
        padded[oz:oz + nz, ox:ox + nx] = lac[:, j, :]
        padded *= disk
        sino[j] = radon(padded, theta, circle=True)
    line = sino * v                               # ∫LAC dl, dimensionless
    if scan.psf_fwhm_nm > 0:                      # blur each projection image (y, detector)
        s = scan.psf_fwhm_nm / 1000.0 / 2.3548 / v
        line = ndimage.gaussian_filter(line, sigma=(s, s, 0), mode="nearest")
    if scan.photons_per_um2 is not None:
        i0 = scan.photons_per_um2 * v * v
        counts = rng.poisson(i0 * np.exp(-line.astype(np.float64)))
        line = -np.log(np.maximum(counts, 0.5) / i0)
    out = np.empty(lac.shape, np.float32)
    for j in range(ny):
        s = (line[j] / v).astype(np.float64)
        if scan.method == "sart":
            r = iradon_sart(s, theta)
            for _ in range(scan.sart_iterations - 1):
                r = iradon_sart(s, theta, image=r)
        else:
            r = iradon(s, theta, output_size=d, filter_name=scan.filter_name, circle=True)
        out[:, j, :] = r[oz:oz + nz, ox:ox + nx]
    return out


# ----------------------------------------------------------------------------- geometry
def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union of two signed distances)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _unit(rng: np.random.Generator) -> np.ndarray:
    u = rng.normal(size=3)
    return u / np.linalg.norm(u)


def _noise(shape, sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-correlated noise, unit standard deviation, float32."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), max(sigma_vox, 0.3), mode="wrap")
    return f / max(float(f.std()), 1e-12)


class _Grid:
    def __init__(self, shape, v: float) -> None:
        self.shape, self.v = tuple(shape), float(v)
        self.axes = [(np.arange(n) - (n - 1) / 2.0) * v for n in shape]

    def box(self, centre, radius):
        """Slices of the voxels within ``radius`` (µm) of ``centre`` and their coords."""
        sl, co = [], []
        for c, ax in zip(centre, self.axes):
            lo = int(np.searchsorted(ax, c - radius))
            hi = int(np.searchsorted(ax, c + radius, side="right"))
            sl.append(slice(lo, max(hi, lo)))
            co.append(ax[lo:max(hi, lo)])
        z, y, x = np.meshgrid(*co, indexing="ij", sparse=True)
        return tuple(sl), (z, y, x)

    def full(self):
        return np.meshgrid(*self.axes, indexing="ij", sparse=True)

    def index(self, p):
        return tuple(int(np.clip(round(c / self.v + (n - 1) / 2.0), 0, n - 1)) for c, n in zip(p, self.shape))


def _sphere(p, c, r):
    return np.sqrt((p[0] - c[0]) ** 2 + (p[1] - c[1]) ** 2 + (p[2] - c[2]) ** 2) - r


def _ellipsoid(p, c, axes, rot):
    """Approximate signed distance of a rotated ellipsoid (exact on its axes)."""
    d = [p[i] - c[i] for i in range(3)]
    q = [rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3)]
    k = np.sqrt(sum((q[i] / axes[i]) ** 2 for i in range(3)))
    return (k - 1.0) * min(axes)


def _segment(p, a, b, r):
    """Signed distance of a capsule from ``a`` to ``b`` of radius ``r``."""
    ab = b - a
    t = ((p[0] - a[0]) * ab[0] + (p[1] - a[1]) * ab[1] + (p[2] - a[2]) * ab[2]) / max(float(ab @ ab), 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((p[0] - a[0] - t * ab[0]) ** 2 + (p[1] - a[1] - t * ab[1]) ** 2
                   + (p[2] - a[2] - t * ab[2]) ** 2) - r


class _Scene:
    """Layers of (slices, signed distance, label, LAC field name) painted in order."""

    def __init__(self, grid: _Grid) -> None:
        self.grid = grid
        self.layers: list[tuple[tuple[slice, ...], np.ndarray, int, str]] = []

    def add(self, sl, sdf, label: int, material: str) -> None:
        self.layers.append((sl, np.asarray(sdf, np.float32), label, material))


def _body(grid: _Grid, rng: np.random.Generator):
    """Signed distance (µm, full grid) of the cell body, its kind and the mother's centre/radius."""
    ext = min(n for n in grid.shape) * grid.v
    kind = str(rng.choice(["round", "budding", "elongated"], p=[0.45, 0.3, 0.25]))
    r0 = rng.uniform(1.1, 1.6)                              # µm, nominal radius
    rot = _rotation(rng)
    bump = _noise(tuple(max(8, n // 4) for n in grid.shape), 1.5, rng)
    bump = ndimage.zoom(bump, [n / b for n, b in zip(grid.shape, bump.shape)], order=1)
    relief = rng.uniform(0.02, 0.06)
    p = grid.full()
    margin = 0.09 * ext + 3 * grid.v
    for _ in range(12):
        if kind == "round":
            axes = r0 * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0)])
            sdf = _ellipsoid(p, np.zeros(3), axes, rot)
            mother = (np.zeros(3), r0 * 0.9)
        elif kind == "budding":
            u = _unit(rng)
            rb = r0 * rng.uniform(0.45, 0.7)
            c1 = -u * rb * 0.55
            c2 = c1 + u * (r0 + rb * 0.7)
            sdf = _smin(_sphere(p, c1, r0), _sphere(p, c2, rb), 0.25 * rb)
            mother = (c1, r0)
        else:
            u = _unit(rng)
            u[0] *= 0.5                                      # rods lie rather in the grid plane
            u /= np.linalg.norm(u)
            half = r0 * rng.uniform(0.5, 1.1)
            rad = r0 * rng.uniform(0.55, 0.75)
            sdf = _segment(p, -u * half, u * half, rad)
            mother = (np.zeros(3), rad)
        sdf = sdf + relief * r0 * bump
        inside = sdf < 0
        ok = True
        for ax in range(3):
            prof = np.any(inside, axis=tuple(a for a in range(3) if a != ax))
            idx = np.flatnonzero(prof)
            lo, hi = grid.axes[ax][0], grid.axes[ax][-1]
            if idx.size == 0 or grid.axes[ax][idx[0]] - lo < margin or hi - grid.axes[ax][idx[-1]] < margin:
                ok = False
        if ok:
            return sdf.astype(np.float32), kind, mother, r0
        r0 *= 0.9
    raise RuntimeError("cell body does not fit the field")


def _free_points(free_dist: np.ndarray, need: float, grid: _Grid, rng: np.random.Generator, n: int = 1):
    """Up to ``n`` random voxel centres (µm) where ``free_dist`` >= ``need``."""
    idx = np.flatnonzero(free_dist.ravel() >= need)
    if idx.size == 0:
        return []
    pick = rng.choice(idx, size=min(n, idx.size), replace=False)
    zz, yy, xx = np.unravel_index(pick, grid.shape)
    return [np.array([grid.axes[0][a], grid.axes[1][b], grid.axes[2][c]]) for a, b, c in zip(zz, yy, xx)]


def _draw_lac(rng: np.random.Generator) -> dict[str, float]:
    u = lambda k: float(rng.uniform(*LAC_RANGE[k]))  # noqa: E731
    lac = {k: u(k) for k in LAC_RANGE}
    while abs(lac["nucleus"] - lac["cell"]) < MIN_NUCLEUS_CONTRAST:
        lac["nucleus"], lac["cell"] = u("nucleus"), u("cell")
    lac["nucleolus"] = max(lac["nucleolus"], lac["nucleus"] + 0.03)
    lac["mitochondria"] = max(lac["mitochondria"], lac["cell"] + MIN_MITO_CONTRAST)
    lac["vacuole"] = min(lac["vacuole"], lac["cell"] - 0.03)
    lac["vacuole_granule"] = max(lac["vacuole_granule"], lac["vacuole"] + 0.1)
    return {k: round(v, 4) for k, v in lac.items()}


def _geometry(grid: _Grid, rng: np.random.Generator):
    """The scene's layers and a record of what was placed."""
    v = grid.v
    scene = _Scene(grid)
    full = tuple(slice(0, n) for n in grid.shape)
    body, kind, (mc, mr), r0 = _body(grid, rng)
    rec: dict = {"cell_kind": kind, "cell_radius_um": round(float(r0), 3)}
    scene.add(full, body, LABELS["cell"], "cell")
    occupied = np.zeros(grid.shape, bool)

    # neighbouring cell fragments at the field's edge
    n_frag = int(rng.choice([0, 0, 1, 2]))
    p = grid.full()
    frags = 0
    for _ in range(n_frag):
        face = rng.integers(0, 3)
        side = rng.choice([-1, 1])
        rad = rng.uniform(1.5, 2.5)
        c = rng.uniform(-0.5, 0.5, 3) * np.array([grid.axes[i][-1] for i in range(3)])
        c[face] = side * (grid.axes[face][-1] + rad - rng.uniform(0.1, 0.35))
        sdf = _sphere(p, c, rad)
        if np.any((sdf < 0.15) & (body < 0.15)):
            continue
        scene.add(full, sdf, LABELS["cell"], "cell")
        frags += 1
    rec["neighbour_fragments"] = frags

    inner = -body                                         # µm into the cell
    # nucleus
    r_eq = (3.0 * float((body < 0).sum()) * v ** 3 / (4 * math.pi)) ** (1 / 3)
    rn = min(r_eq * rng.uniform(0.36, 0.5), mr * 0.72)
    axes = rn * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.75, 1.0)])
    near_mother = inner.copy()
    near_mother[_sphere(p, mc, mr * 0.75) > 0] = -1       # the nucleus sits in the mother
    cand = _free_points(near_mother, rn * 1.08 + 0.12, grid, rng)
    if not cand:
        rn *= 0.75
        axes *= 0.75
        cand = _free_points(inner, rn * 1.08 + 0.1, grid, rng)
    nc = cand[0]
    rotn = _rotation(rng)
    sl, q = grid.box(nc, rn * 1.3)
    dn = _noise(tuple(s.stop - s.start for s in sl), 2.0, rng)
    nuc = _ellipsoid(q, nc, axes, rotn) + 0.05 * rn * dn
    scene.add(sl, nuc, LABELS["nucleus"], "nucleus")
    occupied[sl] |= nuc < 0.06
    rec["nucleus_radius_um"] = round(float(rn), 3)
    if rng.random() < 0.85:                               # nucleolus, part of the nucleus label
        rl = rn * rng.uniform(0.22, 0.38)
        room = max(0.0, min(axes) - 1.3 * rl - 0.03)       # keeps the nucleolus inside the nucleus
        c = nc + _unit(rng) * room * rng.uniform(0.0, 1.0)
        sl2, q2 = grid.box(c, rl * 1.3)
        d2 = _noise(tuple(s.stop - s.start for s in sl2), 1.5, rng)
        nl = _sphere(q2, c, rl) + 0.1 * rl * d2
        scene.add(sl2, nl, LABELS["nucleus"], "nucleolus")

    # vacuoles
    n_vac = int(rng.choice([0, 1, 2, 3, 4], p=[0.08, 0.37, 0.25, 0.2, 0.1]))
    free = np.minimum(inner, ndimage.distance_transform_edt(~occupied) * v)
    vacs = 0
    placed: list[tuple[np.ndarray, float]] = []
    for i in range(n_vac):
        rv = r0 * (rng.uniform(0.25, 0.42) if i == 0 else rng.uniform(0.12, 0.25))
        cand = [c for c in _free_points(free, rv + 0.08, grid, rng, n=20)
                if all(np.linalg.norm(c - c2) > rv + r2 + 0.1 for c2, r2 in placed)]
        if not cand:
            rv *= 0.7
            cand = [c for c in _free_points(free, rv + 0.08, grid, rng, n=20)
                    if all(np.linalg.norm(c - c2) > rv + r2 + 0.1 for c2, r2 in placed)]
            if not cand:
                continue
        c = cand[0]
        placed.append((c, rv))
        sl, q = grid.box(c, rv * 1.25)
        dv = _noise(tuple(s.stop - s.start for s in sl), 2.5, rng)
        vac = _sphere(q, c, rv) + 0.06 * rv * dv
        scene.add(sl, vac, LABELS["vacuole"], "vacuole")
        for _ in range(int(rng.choice([0, 0, 1, 2, 3]))):   # dense granules inside
            rg = rng.uniform(0.04, 0.09)
            if rv < 2 * rg + 0.05:
                break
            cg = c + _unit(rng) * rng.uniform(0, rv - rg - 0.04)
            slg, qg = grid.box(cg, rg * 1.5)
            scene.add(slg, _sphere(qg, cg, rg), LABELS["vacuole"], "vacuole_granule")
        occupied[sl] |= vac < 0.05
        vacs += 1
    rec["vacuoles"] = vacs

    # lipid bodies
    free = np.minimum(inner, ndimage.distance_transform_edt(~occupied) * v)
    n_lip = int(rng.choice([0, 1, 2, 3, 5, 8, 11, 14], p=[0.08, 0.1, 0.14, 0.18, 0.18, 0.14, 0.1, 0.08]))
    lips: list[tuple[np.ndarray, float]] = []

    def lip_ok(c, r):
        if free[grid.index(c)] < r + 0.04:
            return False
        return all(np.linalg.norm(c - c2) >= r + r2 - 1e-6 for c2, r2 in lips)

    tries = 0
    while len(lips) < n_lip and tries < 20 * n_lip + 20:
        tries += 1
        r = rng.uniform(0.08, 0.25)
        cand = _free_points(free, r + 0.04, grid, rng)
        if not cand or not lip_ok(cand[0], r):
            continue
        lips.append((cand[0], r))
        if rng.random() < 0.4:                              # a cluster of touching bodies
            for _ in range(int(rng.integers(1, 4))):
                c0, r0_ = lips[-1]
                r2 = rng.uniform(0.08, 0.2)
                c2 = c0 + _unit(rng) * (r0_ + r2)
                if len(lips) < n_lip + 3 and lip_ok(c2, r2):
                    lips.append((c2, r2))
    for c, r in lips:
        sl, q = grid.box(c, r + 2 * v)
        s = _sphere(q, c, r)
        scene.add(sl, s, LABELS["lipid_body"], "lipid_body")
        occupied[sl] |= s < 0.05
    rec["lipid_bodies"] = len(lips)

    # mitochondria
    free = np.minimum(inner, ndimage.distance_transform_edt(~occupied) * v)
    mode = str(rng.choice(["network", "rods", "beads"], p=[0.45, 0.35, 0.2]))
    rm = rng.uniform(0.07, 0.13)
    segs: list[tuple[np.ndarray, np.ndarray, float]] = []
    need = rm + 0.05

    def walk(start, direction, length, branch_p):
        pts, d, total = [start], direction, 0.0
        while total < length:
            d = d + rng.normal(scale=0.45, size=3)
            d /= np.linalg.norm(d)
            step = rng.uniform(0.12, 0.25)
            nxt = pts[-1] + d * step
            if free[grid.index(nxt)] < need:
                for _ in range(4):                       # try to turn away
                    d = _unit(rng)
                    nxt = pts[-1] + d * step
                    if free[grid.index(nxt)] >= need:
                        break
                else:
                    break
            segs.append((pts[-1], nxt, rm))
            pts.append(nxt)
            total += step
            if branch_p and rng.random() < branch_p and len(segs) < 120:
                bd = np.cross(d, _unit(rng))
                bd /= max(np.linalg.norm(bd), 1e-9)
                walk(nxt, bd, length * rng.uniform(0.2, 0.5), branch_p * 0.5)

    if mode == "network":
        for start in _free_points(free, need + 0.05, grid, rng, n=int(rng.integers(2, 5))):
            walk(start, _unit(rng), rng.uniform(1.5, 4.0), 0.25)
    elif mode == "rods":
        for start in _free_points(free, need + 0.05, grid, rng, n=int(rng.integers(3, 10))):
            walk(start, _unit(rng), rng.uniform(0.3, 1.2), 0.0)
    else:
        for start in _free_points(free, need + 0.05, grid, rng, n=int(rng.integers(2, 5))):
            before = len(segs)
            walk(start, _unit(rng), rng.uniform(0.8, 2.0), 0.0)
            chain = segs[before:]
            del segs[before:]
            for a, b, _ in chain:                         # thin string with beads at the joints
                segs.append((a, b, rm * 0.45))
                segs.append((b, b, rm * rng.uniform(1.0, 1.4)))
    for a, b, r in segs:
        c = (a + b) / 2
        sl, q = grid.box(c, np.linalg.norm(b - a) / 2 + r + 2 * v)
        scene.add(sl, _segment(q, a, b, r), LABELS["mitochondria"], "mitochondria")
    rec["mitochondria_mode"] = mode
    rec["mitochondria_segments"] = len(segs)

    # small dark vesicles, labelled cytoplasm (distractors)
    free = np.minimum(inner, ndimage.distance_transform_edt(~occupied) * v)
    for c in _free_points(free, 0.1, grid, rng, n=int(rng.integers(0, 15))):
        r = rng.uniform(0.03, 0.06)
        sl, q = grid.box(c, r + 2 * v)
        scene.add(sl, _sphere(q, c, r), LABELS["cell"], "vesicle")
    return scene, body, rec


def _texture(grid: _Grid, lac: dict, rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    """A LAC field (or constant) per material."""
    v = grid.v
    fine = _noise(grid.shape, 0.7, rng)
    mid = _noise(grid.shape, 0.08 / v, rng)
    coarse = _noise(grid.shape, 0.35 / v, rng)
    puncta = (rng.random(grid.shape, dtype=np.float32) < rng.uniform(0.001, 0.006)).astype(np.float32)
    puncta = ndimage.gaussian_filter(puncta, 0.9)
    puncta /= max(float(puncta.max()), 1e-9)
    a = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    sgn = lambda: float(rng.choice([-1.0, 1.0]))  # noqa: E731
    fields = {
        "medium": lac["medium"] + a(0.0, 0.004) * fine,
        "cell": lac["cell"] + a(0.004, 0.015) * fine + a(0.0, 0.012) * mid + a(0.0, 0.01) * coarse
        + a(0.02, 0.08) * puncta,
        "nucleus": lac["nucleus"] + a(0.005, 0.02) * sgn() * mid + a(0.002, 0.01) * sgn() * fine[::-1],
        "nucleolus": lac["nucleolus"] + a(0.0, 0.015) * fine[:, ::-1],
        "vacuole": lac["vacuole"] + a(0.005, 0.02) * sgn() * coarse[::-1] + a(0.0, 0.01) * mid[:, ::-1],
        "vacuole_granule": lac["vacuole_granule"],
        "lipid_body": lac["lipid_body"] + a(0.0, 0.02) * mid[::-1, ::-1],
        "mitochondria": lac["mitochondria"] + a(0.005, 0.02) * fine[::-1, :, ::-1],
        "vesicle": lac["medium"] + a(0.0, 0.04),
    }
    return fields


def _paint(scene: _Scene, fields: dict, medium, grid: _Grid):
    lac = np.array(medium, np.float32) * np.ones(grid.shape, np.float32)
    labels = np.zeros(grid.shape, np.uint8)
    v = grid.v
    for sl, sdf, label, material in scene.layers:
        occ = np.clip(0.5 - sdf / v, 0.0, 1.0)
        f = fields[material]
        val = f[sl] if isinstance(f, np.ndarray) else f
        lac[sl] += occ * (val - lac[sl])
        labels[sl][sdf < 0] = label
    return lac, labels


def cell(seed: int, shape=(128, 128, 128), voxel_size_um: float = 0.032,
         acquisition: str | Scan | None = "standard") -> xr.Dataset:
    """One cell of the independent generator, deterministic from ``seed``.

    Parameters
    ----------
    seed : int (>= 0)
    shape : (nz, ny, nx) voxels
    voxel_size_um : float, isotropic voxel size (µm)
    acquisition : preset name (:data:`PRESETS`), a :class:`Scan`, or None (the
        noise-free partial-volume LAC)

    Returns
    -------
    xarray.Dataset with ``lac`` (float32, µm⁻¹), ``labels`` (uint8, values of
    :data:`LABELS`), ``lac_true`` (the LAC before acquisition); attrs record the
    generator, seed, drawn LACs, geometry and scan.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError("seed must be >= 0")
    grid = _Grid(shape, voxel_size_um)
    streams = [np.random.default_rng([seed, k, 0x19C]) for k in range(4)]
    lacs = _draw_lac(streams[0])
    scene, _, rec = _geometry(grid, streams[0])
    fields = _texture(grid, lacs, streams[1])
    true, labels = _paint(scene, fields, fields["medium"], grid)
    if acquisition is None:
        scan = None
        img = true
    else:
        scan = draw_scan(acquisition, streams[2]) if isinstance(acquisition, str) else acquisition
        img = acquire(true, voxel_size_um, scan, lacs["medium"], streams[3])
    attrs = {"generator": GENERATOR, "generator_version": VERSION, "seed": seed,
             "acquisition_name": acquisition if isinstance(acquisition, str) else None,
             "scan": asdict(scan) if scan is not None else None,
             "class_lac_per_um": lacs, **rec}
    lac_da = volume(img.astype(np.float32), voxel_size_um, source=GENERATOR, cell_id=f"indep-{seed}")
    lab_da = label_volume(labels, lac_da, {v: k for k, v in LABELS.items()})
    ds = segmentation(lac_da, lab_da, **attrs)
    ds["lac_true"] = lac_da.copy(data=true.astype(np.float32)).rename("lac_true")
    return ds


# ----------------------------------------------------------------------------- self-check
def _check(out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    n = 64
    for seed in range(6):                                  # geometry alone, quick
        ds = cell(seed, (n, n, n), 0.05, None)
        lab = ds.labels.values
        present = sorted(int(v) for v in np.unique(lab))
        assert set(present) <= {0, 1, 2, 4, 5, 6}, present
        assert {0, 1, 2}.issubset(present), f"seed {seed}: cell or nucleus missing: {present}"
        faces = np.concatenate([lab[[0, -1]].ravel(), lab[:, [0, -1]].ravel(), lab[..., [0, -1]].ravel()])
        assert (faces == 0).mean() > 0.8, "the field's faces should be mostly medium"
        t = ds.lac.values
        assert t.dtype == np.float32 and 0.08 < t.min() and t.max() < 1.1, (t.min(), t.max())
        lacs = ds.attrs["class_lac_per_um"]
        assert abs(lacs["nucleus"] - lacs["cell"]) >= MIN_NUCLEUS_CONTRAST
        print(f"seed {seed}: {ds.attrs['cell_kind']:9s} labels {present} nucleus-cytoplasm "
              f"{lacs['nucleus'] - lacs['cell']:+.3f} lipids {ds.attrs['lipid_bodies']} "
              f"mito {ds.attrs['mitochondria_mode']} fragments {ds.attrs['neighbour_fragments']}")
    a = cell(3, (n, n, n), 0.05, "standard")
    b = cell(3, (n, n, n), 0.05, "standard")
    assert np.array_equal(a.lac.values, b.lac.values) and np.array_equal(a.labels.values, b.labels.values)
    assert not np.array_equal(a.lac.values, cell(4, (n, n, n), 0.05, "standard").lac.values)
    # the reconstruction is not shifted against its truth: thresholded cell matches best at shift 0
    clean = cell(3, (n, n, n), 0.05, Scan(tilt_max_deg=89.0, photons_per_um2=None, psf_fwhm_nm=0.0))
    truth = clean.labels.values > 0
    thr = (clean.lac.values > (clean.attrs["class_lac_per_um"]["medium"] + clean.attrs["class_lac_per_um"]["cell"]) / 2)
    best = max(((dz, dx) for dz in (-1, 0, 1) for dx in (-1, 0, 1)),
                key=lambda s: (np.roll(thr, s, axis=(0, 2)) == truth).mean())
    assert best == (0, 0), f"reconstruction shifted by {best}"
    med = float(np.median(clean.lac.values[truth == 0]))
    print(f"noise-free full-range reconstruction: medium {med:.4f} vs true "
          f"{clean.attrs['class_lac_per_um']['medium']:.4f}; alignment ok")
    print(f"checks passed in {time.perf_counter() - t0:.1f} s")

    # figure: one cell under the four acquisitions beside an sxtlab.phantom cell
    from sxtlab import phantom as sxt_phantom

    seed = 7
    cols = []
    for name in PRESETS:
        vs, size = PRESETS[name]
        ds = cell(seed, (size,) * 3, vs, name)
        cols.append((f"independent, {name}\n{size}³ × {vs * 1000:.0f} nm", ds))
    ref = sxt_phantom.cell(seed=5001, shape=(128, 128, 128), voxel_size=0.032,
                           acquisition=sxt_phantom.Acquisition(tilt_range_deg=67))
    cols.append(("sxtlab.phantom seed 5001\n128³ × 32 nm, ±67°", ref))
    fig, axs = plt.subplots(3, len(cols), figsize=(3.1 * len(cols), 9.3))
    for j, (title, ds) in enumerate(cols):
        lac = ds.lac.values
        lab = ds.labels.values
        nz, ny, nx = lac.shape
        views = [(lac[nz // 2], lab[nz // 2], "z (xy plane)"), (lac[:, ny // 2], lab[:, ny // 2], "y (zx plane)"),
                 (lac[:, :, nx // 2], lab[:, :, nx // 2], "x (zy plane)")]
        for i, (im, lb, vname) in enumerate(views):
            ax = axs[i, j]
            ax.imshow(im, cmap="gray", vmin=0.0, vmax=0.5)
            ax.contour(lb, levels=[0.5, 1.5, 3, 4.5, 5.5], colors=["y", "c", "m", "r", "b"], linewidths=0.4)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"mid slice normal to {vname}", fontsize=8)
    fig.suptitle("Independent phantom (seed 7) under four acquisitions, and an sxtlab.phantom cell; "
                 "LAC 0-0.5 µm⁻¹, label outlines", fontsize=9)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    print(f"wrote {out_png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="self-check and write the figure")
    parser.add_argument("--time", action="store_true", help="time one 128³ cell with the standard scan")
    parser.add_argument("--figure", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "independent_phantom.png")
    args = parser.parse_args()
    if args.check:
        _check(args.figure)
    if args.time:
        for name in PRESETS:
            vs, size = PRESETS[name]
            t0, c0 = time.perf_counter(), time.process_time()
            cell(11, (size,) * 3, vs, name)
            print(f"{name}: {size}³ × {vs * 1000:.0f} nm: {time.perf_counter() - t0:.1f} s wall, "
                  f"{time.process_time() - c0:.1f} s CPU")


if __name__ == "__main__":
    main()
