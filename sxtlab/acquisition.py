"""Simulated SXT acquisition: tilt series, photon noise, blur, filtered back-projection.

Turns a true LAC volume (µm⁻¹) into what a reconstruction of it looks like: the
volume is projected over a range of tilt angles about the **y axis**, each
projection image is blurred by the zone plate's point-spread function and given
Poisson photon noise on its transmission ``I = I0 · exp(-∫ LAC dl)``, and the
noisy line integrals ``-log(I / I0)`` (dimensionless; LAC in µm⁻¹ times path in
µm) are reconstructed by filtered back-projection, slice by slice in the (z, x)
plane. At tilt 0 the beam runs along **z**, so a limited tilt range leaves a
missing wedge that elongates features along z.

All y slices share one geometry, so the projector and back-projector are sparse
matrices built once (and cached) and applied to every slice at once:

* forward: exact strip integrals of square (or rectangular, ``dz ≠ dx``) voxels,
  i.e. each voxel spreads over the detector bins it covers with its trapezoidal
  footprint (no moiré, which a one-point-per-voxel "splat" gives at 45°);
* backward: linear interpolation of the filtered projections, as in
  :func:`skimage.transform.iradon`.

Both are written in physical coordinates around the rotation centre, which is the
centre of each (z, x) slice. The reconstruction is therefore computed directly on
the volume's own grid, with nothing to crop; this is where a reconstruction made
with ``iradon(..., circle=False, output_size=N)`` must be cropped *around its
centre* (offset ``N//2 - s//2`` per axis), or it is shifted against its truth
(see sxtlab's DESIGN notes). The tests check the result against
:func:`skimage.transform.radon` / ``iradon`` cropped that way, and that a
reconstruction matches its truth best at shift 0.

The medium (LAC ``medium_lac``) is treated as a column of known thickness on every
ray: it adds to the absorption, hence to the noise, and its known level is restored
after reconstruction, so that the reconstruction's edges carry no truncation
artefacts (SXT reconstructs only the cell's neighbourhood of a larger capillary or
ice layer).

Filtered back-projection of a limited tilt range does not only elongate objects
along z: it removes the missing wedge's share of every object's Fourier content,
so the contrast of large regions to the medium drops by about the missing fraction
of directions (25/90 ≈ 28 % at ±65°), and the medium near a cell picks up its
streaks. Gray → LAC calibration from region medians is therefore only trustworthy
on full-rotation (capillary) data, which the tests check to 1 %.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.sparse as sp
import xarray as xr
from scipy import ndimage

from .volume import DIMS

__all__ = ["Acquisition", "simulate_acquisition", "tilt_angles"]

_FILTERS = ("ramp", "shepp-logan", "hann")
_RECONSTRUCTIONS = ("fbp", "sirt")


@dataclass(frozen=True)
class Acquisition:
    """Parameters of a simulated SXT tilt series and its reconstruction.

    Attributes
    ----------
    tilt_range_deg : float or (float, float)
        Tilt angles in degrees. A scalar ``t`` means ``-t … +t``; ``t >= 90`` means
        full coverage (angles ``-90 … 90`` without repeating the end, as for cells
        in a glass capillary, which rotate freely). Default ±65°, the usual limit of
        flat-grid cryo holders; the missing wedge is then ±25° about the z axis.
    n_angles : int
        Number of projections, evenly spaced over the tilt range (default 91, about
        1.4° apart, a typical SXT tilt step of 1–2°).
    photons : float or None
        Mean incident photons per detector pixel (one voxel's ``w × dy``) per
        projection; Poisson noise is drawn on the transmitted counts. ``None``: no
        noise. The default, 2000, gives a noise σ of about 0.04 µm⁻¹ in the medium
        at 40 nm voxels, a contrast-to-noise of about 4 between cytoplasm and
        medium per voxel (``benchmarks/results/phantom.md``).
    psf_sigma_um : float
        Gaussian σ (µm) of the zone plate's point-spread function, applied to each
        projection image. Zone plates with 25–50 nm outermost zones resolve
        ~30–60 nm (Rayleigh, ``1.22 Δr``; Attwood 1999, *Soft X-rays and Extreme
        Ultraviolet Radiation*, ch. 9); a FWHM of 45 nm is σ ≈ 0.02 µm (the
        default). ``0``: no blur.
    filter_name : {"ramp", "shepp-logan", "hann"}
        Filter of the back-projection (as in :func:`skimage.transform.iradon`).
    medium_thickness_um : float or None
        Thickness of medium (water, ice, capillary contents) every ray crosses;
        it adds absorption, hence noise. ``None``: the diagonal of a (z, x) slice.
    seed : int or None
        Seed of the photon noise. ``None``: fresh noise on every call (the phantom
        generator derives one from the cell's seed instead).
    ring_std : float
        Relative standard deviation of the detector pixels' gain, the same in every
        projection (a flat field that does not divide out): its stripes in the
        sinogram reconstruct as rings about the tilt axis, the commonest artefact of
        CCD tomography (Vo et al. 2018, Opt Express 26:28396). ``0``: none.
    reconstruction : {"fbp", "sirt"}
        Filtered back-projection, or the iterative SIRT (simultaneous iterative
        reconstruction technique; Gregor & Benson 2008, IEEE TMI 27:918), which
        smooths noise and fills the missing wedge differently, as reconstructions
        of other centres do.
    sirt_iterations : int
        Iterations of SIRT (from zero), ≥ 1.

    Examples
    --------
    >>> Acquisition(tilt_range_deg=90, photons=None).angles_deg()[:3]
    array([-90.        , -88.02197802, -86.04395604])
    """

    tilt_range_deg: float | tuple[float, float] = 65.0
    n_angles: int = 91
    photons: float | None = 2000.0
    psf_sigma_um: float = 0.02
    filter_name: str = "ramp"
    medium_thickness_um: float | None = None
    seed: int | None = None
    ring_std: float = 0.0
    reconstruction: str = "fbp"
    sirt_iterations: int = 30

    def __post_init__(self) -> None:
        lo, hi = self._range()
        if not (np.isfinite(lo) and np.isfinite(hi) and -90 <= lo < hi <= 90):
            raise ValueError(
                "tilt_range_deg must be t in (0, 90] (meaning -t … +t) or (lo, hi) with "
                f"-90 <= lo < hi <= 90 degrees, got {self.tilt_range_deg!r}"
            )
        if int(self.n_angles) != self.n_angles or self.n_angles < 2:
            raise ValueError(f"n_angles must be an integer >= 2, got {self.n_angles!r}")
        if self.photons is not None and not (np.isfinite(self.photons) and self.photons > 0):
            raise ValueError(f"photons must be positive (or None for no noise), got {self.photons!r}")
        if not (np.isfinite(self.psf_sigma_um) and self.psf_sigma_um >= 0):
            raise ValueError(f"psf_sigma_um must be >= 0 µm, got {self.psf_sigma_um!r}")
        if self.filter_name not in _FILTERS:
            raise ValueError(f"filter_name must be one of {_FILTERS}, got {self.filter_name!r}")
        if self.medium_thickness_um is not None and not (
            np.isfinite(self.medium_thickness_um) and self.medium_thickness_um >= 0
        ):
            raise ValueError(f"medium_thickness_um must be >= 0 µm, got {self.medium_thickness_um!r}")
        if not (np.isfinite(self.ring_std) and 0 <= self.ring_std < 0.5):
            raise ValueError(f"ring_std must be in [0, 0.5), got {self.ring_std!r}")
        if self.reconstruction not in _RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {_RECONSTRUCTIONS}, got {self.reconstruction!r}")
        if int(self.sirt_iterations) != self.sirt_iterations or self.sirt_iterations < 1:
            raise ValueError(f"sirt_iterations must be an integer >= 1, got {self.sirt_iterations!r}")

    def _range(self) -> tuple[float, float]:
        t = self.tilt_range_deg
        if np.ndim(t) == 0:
            t = float(t)
            return (-90.0, 90.0) if t >= 90 else (-t, t)
        lo, hi = (float(v) for v in t)
        return lo, hi

    @property
    def full_range(self) -> bool:
        """Whether the angles cover 180°, i.e. there is no missing wedge."""
        lo, hi = self._range()
        return hi - lo >= 180.0

    def angles_deg(self) -> np.ndarray:
        """The tilt angles in degrees, shape ``(n_angles,)``."""
        return tilt_angles(self)

    def to_attrs(self) -> dict:
        """JSON-friendly record of the parameters (for a volume's attrs)."""
        d = asdict(self)
        d["tilt_range_deg"] = list(self._range())
        d["angles_deg"] = [float(a) for a in self.angles_deg()[[0, -1]]]
        return d


def tilt_angles(acq: Acquisition) -> np.ndarray:
    """Tilt angles (degrees) of an acquisition, evenly spaced.

    A limited range includes both ends; full coverage is ``-90 … 90`` with the end
    left out, since 90° and -90° are the same projection.
    """
    lo, hi = acq._range()
    if acq.full_range:
        return np.linspace(lo, hi, int(acq.n_angles), endpoint=False)
    return np.linspace(lo, hi, int(acq.n_angles))


# -- the projector ---------------------------------------------------------------------

def _uniform_sum_cdf(s: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CDF of U(-a, a) + U(-b, b) at ``s``: the cumulative footprint of a voxel.

    A rectangle of half-widths ``a`` (along the detector) and ``b`` projects onto the
    detector as a trapezoid, the convolution of two boxes.
    """
    def ramp2(u):
        u = np.maximum(u, 0.0)
        return 0.5 * u * u

    return (ramp2(s + a + b) - ramp2(s + a - b) - ramp2(s - a + b) + ramp2(s - a - b)) / (4.0 * a * b)


@dataclass(frozen=True)
class _Geometry:
    forward: sp.csr_matrix  # (n_angles * n_det, nz * nx): line integrals, µm·(1/µm) per voxel value
    backward: sp.csr_matrix  # (nz * nx, n_angles * n_det): interpolation × angle weight (rad)
    n_det: int
    bin_um: float


@lru_cache(maxsize=2)
def _geometry(nz: int, nx: int, dz: float, dx: float, angles_deg: tuple[float, ...],
              full: bool) -> _Geometry:
    """Sparse forward and backward projectors for one (z, x) slice geometry."""
    theta = np.deg2rad(np.asarray(angles_deg))
    n_ang = theta.size
    w = min(dz, dx)  # detector bin = the finer voxel edge, so no detail is lost
    # Voxel centres relative to the rotation centre (the slice centre), in bins.
    zc = (np.arange(nz) - (nz - 1) / 2) * dz / w
    xc = (np.arange(nx) - (nx - 1) / 2) * dx / w
    Z, X = np.meshgrid(zc, xc, indexing="ij")
    Z, X = Z.ravel(), X.ravel()
    half_diag = 0.5 * math.hypot(nz * dz, nx * dx) / w
    n_det = 2 * int(math.ceil(half_diag)) + 3  # odd, with a spare bin each side
    mid = (n_det - 1) / 2
    n_pix = nz * nx

    cos, sin = np.cos(theta), np.sin(theta)
    # Detector coordinate of each voxel centre: t = x cos θ + z sin θ (beam along z at θ = 0).
    t = X[:, None] * cos[None, :] + Z[:, None] * sin[None, :]  # (n_pix, n_ang), in bins
    # Footprint half-widths (bins); kept off zero so the CDF formula stays finite.
    a = np.maximum(np.abs(cos) * dx / w / 2, 1e-6)
    b = np.maximum(np.abs(sin) * dz / w / 2, 1e-6)
    n_span = int(math.ceil(2 * float(np.max(a + b)))) + 1
    first = np.floor(t - (a + b) + mid + 0.5).astype(np.int64)  # bin holding the left end
    rows_f, cols_f, vals_f = [], [], []
    for m in range(n_span):
        j = first + m
        lo = j - mid - 0.5 - t
        weight = _uniform_sum_cdf(lo + 1.0, a, b) - _uniform_sum_cdf(lo, a, b)
        keep = (weight > 1e-9) & (j >= 0) & (j < n_det)
        k = np.nonzero(keep)
        rows_f.append(k[1] * n_det + j[k])
        cols_f.append(k[0])
        # Voxel area over bin width turns the footprint fraction into a path length (µm).
        vals_f.append(weight[k] * (dz * dx / w))
    forward = sp.csr_matrix(
        (np.concatenate(vals_f).astype(np.float32),
         (np.concatenate(rows_f), np.concatenate(cols_f))),
        shape=(n_ang * n_det, n_pix),
    )

    # Back-projection: linear interpolation at each voxel centre, weighted by the
    # angular step (the quadrature of ∫ dθ); with skimage's normalisation this is
    # exactly iradon's π / n for full coverage.
    if full:
        dtheta = np.full(n_ang, math.pi / n_ang)
    else:
        dtheta = np.full(n_ang, (theta[-1] - theta[0]) / (n_ang - 1))
    u = t + mid
    i0 = np.floor(u).astype(np.int64)
    frac = u - i0
    cols = np.stack([i0, i0 + 1], axis=-1) + (np.arange(n_ang) * n_det)[None, :, None]
    vals = np.stack([1 - frac, frac], axis=-1) * dtheta[None, :, None]
    backward = sp.csr_matrix(
        (vals.ravel().astype(np.float32), cols.ravel(), np.arange(0, n_pix * 2 * n_ang + 1, 2 * n_ang)),
        shape=(n_pix, n_ang * n_det),
    )
    return _Geometry(forward, backward, n_det, w)


def _ramp_filter(size: int, name: str) -> np.ndarray:
    """Fourier filter of FBP for ``size`` padded bins (unit spacing), as in skimage.

    The ramp comes from its spatial-domain definition (Kak & Slaney 1988, eq. 61),
    which keeps the zero frequency right, and is optionally windowed.
    """
    n = np.arange(size)
    n = np.minimum(n, size - n)
    h = np.zeros(size)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    filt = np.real(scipy.fft.fft(h))
    if name == "shepp-logan":
        omega = np.pi * scipy.fft.fftfreq(size)[1:]
        filt[1:] *= np.sin(omega) / omega
    elif name == "hann":
        filt *= scipy.fft.fftshift(np.hanning(size))
    return filt


def _matmul_threads(matrix: sp.csr_matrix, data: np.ndarray, n_jobs: int) -> np.ndarray:
    """``matrix @ data`` in column blocks on threads (scipy's sparse kernels release the GIL)."""
    n_cols = data.shape[1]
    block = max(8, -(-n_cols // (4 * n_jobs)))  # a few blocks per thread, each cache-friendly
    starts = range(0, n_cols, block)
    out = np.empty((matrix.shape[0], n_cols), dtype=np.float32)

    def work(s: int) -> None:
        out[:, s:s + block] = matrix @ data[:, s:s + block]

    if n_jobs == 1:
        for s in starts:
            work(s)
    else:
        with ThreadPoolExecutor(n_jobs) as pool:
            list(pool.map(work, starts))
    return out


def _sirt(geo: _Geometry, sino: np.ndarray, iterations: int, n_jobs: int) -> np.ndarray:
    """SIRT reconstruction ``x ← x + C Aᵀ R (b − A x)`` from ``x = 0``, with ``R`` and
    ``C`` the inverse row and column sums of the projector ``A`` (Gregor & Benson 2008,
    eq. 3). ``sino``: (n_angles · n_det, ny) line integrals; returns (nz · nx, ny) µm⁻¹."""
    a = geo.forward
    at = a.T.tocsr()
    inv_row = (1.0 / np.maximum(np.asarray(a.sum(axis=1)), 1e-6)).astype(np.float32)  # (rows, 1)
    inv_col = (1.0 / np.maximum(np.asarray(a.sum(axis=0)).T, 1e-6)).astype(np.float32)  # (columns, 1)
    x = np.zeros((a.shape[1], sino.shape[1]), np.float32)
    for _ in range(iterations):
        residual = (sino - _matmul_threads(a, x, n_jobs)) * inv_row
        x += _matmul_threads(at, residual, n_jobs) * inv_col
    return x


def _medium_from_faces(values: np.ndarray) -> float:
    faces = [values[0], values[-1], values[:, 0], values[:, -1], values[:, :, 0], values[:, :, -1]]
    return float(np.median(np.concatenate([f.ravel() for f in faces])))


def simulate_acquisition(
    lac: xr.DataArray,
    acq: Acquisition | None = None,
    *,
    medium_lac: float | None = None,
    n_jobs: int | None = None,
) -> xr.DataArray:
    """Simulate an SXT tilt series of a LAC volume and reconstruct it.

    Parameters
    ----------
    lac : xarray.DataArray, dims (z, y, x)
        True LAC in µm⁻¹ (``units == "1/um"``) with a known voxel size; y is the tilt
        axis and the beam runs along z at tilt 0.
    acq : Acquisition, optional
        Tilt range, number of angles, photons, blur, filter and noise seed
        (default ``Acquisition()``).
    medium_lac : float, optional
        LAC of the surrounding medium (µm⁻¹); default the median of the volume's six
        faces.
    n_jobs : int, optional
        Threads for the projections (default: the CPUs available, at most 8).

    Returns
    -------
    xarray.DataArray
        The reconstruction, float32 LAC in µm⁻¹ on the same grid (dims, coords and
        attrs of ``lac``), with ``attrs["acquisition"]`` recording ``acq``.

    Raises
    ------
    ValueError
        If ``lac`` is not a 3-D (z, y, x) LAC volume (units ``"1/um"``) at least 2
        voxels along each axis, holds non-finite values, or ``n_jobs`` is not a
        positive integer.
    sxtlab.VoxelSizeUnknownError
        If the voxel size of ``lac`` is unknown (a ``ValueError`` too).

    Notes
    -----
    Steps per y slice: strip-integral projection of ``lac - medium_lac`` (µm · µm⁻¹),
    plus the medium column; transmission ``exp(-p)``; Gaussian PSF on each
    projection image (detector axis and y); the detector's fixed gain pattern
    (``ring_std``); Poisson counts with mean ``photons · transmission``;
    ``-log(counts / photons)`` (a count of 0 is read as 1); removal of the medium
    column; ramp-filtered back-projection (or SIRT); ``+ medium_lac``.
    The cost grows as ``n_angles · nz · nx · ny``; a 128³ volume with 91 angles takes
    about 1.5 s of CPU the first time (building the projectors) and 0.6 s once they
    are cached (the last two geometries are, ≈ 100 MB for 128²-voxel slices, 16× that
    for 512²).

    Examples
    --------
    >>> from sxtlab import phantom
    >>> truth = phantom.cell(seed=1, shape=(48, 48, 48), voxel_size=0.06).lac
    >>> rec = simulate_acquisition(truth, Acquisition(seed=0))
    >>> rec.shape == truth.shape
    True
    """
    if acq is None:
        acq = Acquisition()
    if not isinstance(lac, xr.DataArray) or tuple(lac.dims) != DIMS:
        raise ValueError(
            f"lac must be an xarray.DataArray with dims {DIMS}, got "
            f"{getattr(lac, 'dims', type(lac).__name__)}"
        )
    if lac.attrs.get("units") != "1/um":
        raise ValueError(
            f"simulate_acquisition needs LAC in 1/um, got units {lac.attrs.get('units')!r}; "
            "convert gray values first (.sxt.to_lac())"
        )
    dz, dy, dx = lac.sxt.voxel_size
    values = np.asarray(lac.values, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError("lac holds NaN or inf values")
    if min(values.shape) < 2:
        raise ValueError(f"lac must have at least 2 voxels along each axis, got shape {values.shape}")
    nz, ny, nx = values.shape
    if n_jobs is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        n_jobs = max(1, min(8, cpus or 1))
    if int(n_jobs) != n_jobs or n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer, got {n_jobs!r}")
    n_jobs = int(n_jobs)
    if medium_lac is None:
        medium_lac = _medium_from_faces(values)

    angles = tilt_angles(acq)
    geo = _geometry(nz, nx, float(dz), float(dx), tuple(float(a) for a in angles), acq.full_range)
    n_ang, n_det = angles.size, geo.n_det

    # One column per y slice: rows are the voxels of the (z, x) plane.
    columns = np.ascontiguousarray((values - np.float32(medium_lac)).transpose(0, 2, 1).reshape(nz * nx, ny))
    sino = _matmul_threads(geo.forward, columns, n_jobs).reshape(n_ang, n_det, ny)

    if acq.photons is not None or acq.psf_sigma_um > 0 or acq.ring_std > 0:
        thickness = acq.medium_thickness_um
        if thickness is None:
            thickness = math.hypot(nz * dz, nx * dx)
        medium_column = float(medium_lac) * thickness  # dimensionless (µm⁻¹ · µm)
        # Detector intensity relative to the beam, with the medium's constant factor.
        intensity = np.exp(-(sino.astype(np.float64) + medium_column))
        if acq.psf_sigma_um > 0:
            # The PSF blurs the projection image (detector axis and y), not the line
            # integrals: blur acts on intensity.
            intensity = ndimage.gaussian_filter(
                intensity, sigma=(0.0, acq.psf_sigma_um / geo.bin_um, acq.psf_sigma_um / dy), mode="nearest"
            )
        rng = np.random.default_rng(acq.seed)
        if acq.ring_std > 0:
            gain = 1.0 + acq.ring_std * rng.standard_normal((1, n_det, ny))
            intensity = intensity * np.clip(gain, 0.05, None)
        if acq.photons is not None:
            counts = rng.poisson(acq.photons * intensity).astype(np.float64)
            intensity = np.maximum(counts, 1.0) / acq.photons
        sino = (-np.log(intensity) - medium_column).astype(np.float32)

    if acq.reconstruction == "sirt":
        rec = _sirt(geo, sino.reshape(n_ang * n_det, ny), int(acq.sirt_iterations), n_jobs)
    else:
        # Ramp filter along the detector axis, zero-padded against wrap-around.
        size = max(64, 1 << int(math.ceil(math.log2(2 * n_det))))
        filt = _ramp_filter(size, acq.filter_name)
        spectrum = scipy.fft.rfft(sino, n=size, axis=1, workers=n_jobs)
        filtered = scipy.fft.irfft(spectrum * filt[: size // 2 + 1, None], n=size, axis=1, workers=n_jobs)
        # The filter is for unit bins: dividing by the bin width gives µm⁻¹.
        filtered = (filtered[:, :n_det] / geo.bin_um).astype(np.float32).reshape(n_ang * n_det, ny)
        rec = _matmul_threads(geo.backward, filtered, n_jobs)
    rec = rec.reshape(nz, nx, ny).transpose(0, 2, 1)
    rec = rec + np.float32(medium_lac)
    out = xr.DataArray(np.ascontiguousarray(rec, dtype=np.float32), dims=DIMS, coords=lac.coords,
                       name=lac.name, attrs=dict(lac.attrs))
    out.attrs["acquisition"] = {**acq.to_attrs(), "medium_lac_per_um": float(medium_lac)}
    return out
