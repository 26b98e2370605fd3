"""Phantom cells: deterministic, physically consistent truth; a faithful simulated acquisition."""

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage
from skimage.transform import iradon, radon

import sxtlab
from sxtlab import phantom
from sxtlab.acquisition import Acquisition, simulate_acquisition
from sxtlab.classes import VOCABULARY

SHAPE = (64, 64, 64)
VS = 0.05
NOISELESS = Acquisition(photons=None, psf_sigma_um=0.0)


@pytest.fixture(scope="module")
def algae():
    """A cell with every class (starch included) and a high lipid fraction."""
    return phantom.cell(7, SHAPE, VS, starch=True, lipid_fraction=0.08)


@pytest.fixture(scope="module")
def gray_full_rotation():
    """Gray values of a cell reconstructed from a full rotation (a capillary)."""
    return phantom.cell(2, SHAPE, VS, gray=True, acquisition=Acquisition(tilt_range_deg=90, n_angles=120))


def voxel_volume(ds: xr.Dataset) -> float:
    return ds.lac.sxt.voxel_volume_um3


def interior(mask: np.ndarray, voxels: int = 1) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=voxels)


def test_same_seed_same_cell_other_seed_other_cell():
    a = phantom.cell(3, (48, 48, 48), 0.06)
    b = phantom.cell(3, (48, 48, 48), 0.06)
    c = phantom.cell(4, (48, 48, 48), 0.06)
    xr.testing.assert_identical(a, b)
    assert not np.array_equal(a.labels.values, c.labels.values)
    # LAC varies from cell to cell.
    for name, value in a.attrs["class_lac_per_um"].items():
        assert value != c.attrs["class_lac_per_um"][name], name
    assert a.attrs["cell_id"] == "phantom-3"


def test_all_classes_present_and_named(algae):
    present = set(np.unique(algae.labels.values).tolist())
    assert present == set(range(8))
    assert algae.labels.attrs["classes"] == {str(v): k for k, v in phantom.LABELS.items() if v}
    assert algae.labels.sxt.classes[5] == "lipid_body"
    no_starch = phantom.cell(7, (48, 48, 48), 0.06)
    assert "7" not in no_starch.labels.attrs["classes"]
    assert 7 not in np.unique(no_starch.labels.values)
    assert set(no_starch.attrs["class_volume_um3"]) == {"cell", "nucleus", "nucleolus", "mitochondria",
                                                       "lipid_body", "vacuole"}


def test_label_volumes_match_the_analytic_shapes(algae):
    vv = voxel_volume(algae)
    labels = algae.labels.values
    for name, analytic in algae.attrs["class_volume_um3"].items():
        counted = np.count_nonzero(labels == phantom.LABELS[name]) * vv
        # Voxel counts of small objects (a few voxels across) scatter more.
        assert counted == pytest.approx(analytic, rel=0.05 if analytic > 500 * vv else 0.15), name
    assert algae.attrs["cell_volume_um3"] == pytest.approx(np.count_nonzero(labels) * vv, rel=0.01)
    # Each lipid body: a sphere whose voxel count gives its volume.
    inst = algae.instance_labels.values
    lipid = [r for r in algae.attrs["instances"] if r["class"] == "lipid_body"]
    counted = sum(np.count_nonzero(inst == r["id"]) for r in lipid) * vv
    assert counted == pytest.approx(sum(r["volume_um3"] for r in lipid), rel=0.03)
    for r in lipid:
        assert 0.2 <= 2 * r["semi_axes_um"][0] <= 0.6 + 1e-9
        assert np.all(labels[inst == r["id"]] == phantom.LABELS["lipid_body"])


def test_partial_volume_conserves_the_lac_integral(algae):
    """Σ (LAC − medium) · voxel volume equals Σ_class (LAC_class − medium) · V_class."""
    lac = algae.attrs["class_lac_per_um"]
    medium = lac["background"]
    expected = sum((lac[c] - medium) * v for c, v in algae.attrs["class_volume_um3"].items())
    measured = float(np.sum(algae.lac.values.astype(np.float64) - medium)) * voxel_volume(algae)
    assert measured == pytest.approx(expected, rel=0.005)
    # Boundary voxels mix: there are values strictly between classes.
    assert np.unique(algae.lac.values).size > 100


def test_lac_per_class_within_literature_ranges(algae):
    lac = algae.attrs["class_lac_per_um"]
    labels, values = algae.labels.values, algae.lac.values
    for name, value in phantom.LABELS.items():
        lo, hi = VOCABULARY[name].lac_range_per_um
        assert lo <= lac[name] <= hi, name
        mask = labels == value
        # Voxels whose 26 neighbours share the class hold its pure LAC (thin tubes:
        # 6 neighbours).
        inner = ndimage.binary_erosion(mask, np.ones((3, 3, 3), bool))
        core = values[inner if inner.any() else interior(mask)]
        assert core.size, name
        assert np.all((core >= lo) & (core <= hi)), (name, core.min(), core.max())
        np.testing.assert_allclose(np.median(core), lac[name], rtol=1e-5, err_msg=name)
    assert abs(lac["nucleus"] - lac["cell"]) >= 0.015


def test_organelles_nest_inside_the_cell(algae):
    labels = algae.labels.values
    cell = labels > 0
    face = ndimage.generate_binary_structure(3, 1)
    nucleolus = labels == phantom.LABELS["nucleolus"]
    nuclear = (labels == phantom.LABELS["nucleus"]) | nucleolus
    assert np.all(nuclear[ndimage.binary_dilation(nucleolus, face)])
    organelles = labels >= 2
    # Organelles keep a wall of cytoplasm (≥ 0.08 µm > 1 voxel) to the medium.
    assert np.all(cell[ndimage.binary_dilation(organelles, face)])
    # The cell is one piece, clear of the field of view's faces.
    assert ndimage.label(cell)[1] == 1
    margin = int(0.05 * SHAPE[0])
    assert not cell[:margin].any() and not cell[-margin:].any()
    assert not cell[:, :margin].any() and not cell[:, :, -margin:].any()
    # Outside the cell there is only medium (partial volume only next to the surface).
    far = ~ndimage.binary_dilation(cell, iterations=2)
    assert np.all(algae.lac.values[far] == np.float32(algae.attrs["class_lac_per_um"]["background"]))


def test_lipid_fraction_is_as_asked():
    ds = phantom.cell(11, SHAPE, VS, lipid_fraction=0.1)
    assert ds.attrs["lipid_fraction"] == pytest.approx(0.1, rel=1e-9)
    voxels = np.count_nonzero(ds.labels.values == phantom.LABELS["lipid_body"])
    assert voxels / np.count_nonzero(ds.labels.values) == pytest.approx(0.1, rel=0.05)
    assert phantom.cell(11, SHAPE, VS, lipid_fraction=0.0).attrs["instance_counts"]["lipid_body"] == 0


def test_anisotropic_voxels_give_the_same_physical_cell():
    iso = phantom.cell(5, (64, 64, 64), 0.04)
    aniso = phantom.cell(5, (43, 64, 64), (0.06, 0.04, 0.04))
    assert aniso.lac.sxt.voxel_size == (0.06, 0.04, 0.04)
    assert iso.attrs["class_volume_um3"] == pytest.approx(aniso.attrs["class_volume_um3"], rel=1e-9)
    for name, value in phantom.LABELS.items():
        if name == "background" or name == "starch_granule":
            continue
        v_iso = np.count_nonzero(iso.labels.values == value) * voxel_volume(iso)
        v_aniso = np.count_nonzero(aniso.labels.values == value) * voxel_volume(aniso)
        assert v_aniso == pytest.approx(v_iso, rel=0.05), name


def test_cell_scales_with_the_field_of_view():
    small = phantom.cell(1, (48, 48, 48), 0.05)
    assert small.attrs["cell_radius_um"] == pytest.approx(0.36 * 48 * 0.05)
    large = phantom.cell(1, (48, 48, 48), 0.1, cell_radius_um=1.5)
    assert large.attrs["cell_radius_um"] == 1.5
    assert large.attrs["cell_volume_um3"] > 3 * small.attrs["cell_volume_um3"]


def test_gray_values_hide_a_calibration_that_can_be_recovered():
    ds = phantom.cell(9, SHAPE, VS, gray=True)
    assert ds.lac.attrs["units"] == "gray"
    assert "lac_scale" not in ds.lac.attrs and ds.lac.sxt.calibration is None
    assert ds.lac_true.attrs["units"] == "1/um"
    assert 0 < ds.lac.values.min() and ds.lac.values.max() < 65536
    labels, lac = ds.labels.values, ds.attrs["class_lac_per_um"]
    cal = sxtlab.estimate_calibration(
        ds.lac, interior(labels == 0, 2), lac["background"],
        reference=interior(labels == phantom.LABELS["lipid_body"]), reference_lac=lac["lipid_body"],
    )
    assert cal.scale == pytest.approx(ds.attrs["true_lac_scale"], rel=0.01)
    assert cal.offset == pytest.approx(ds.attrs["true_lac_offset"], rel=0.01)
    np.testing.assert_allclose(ds.lac.sxt.to_lac(cal).values, ds.lac_true.values, atol=2e-3)


def test_calibration_recovered_after_acquisition(gray_full_rotation):
    """The reconstructed medium is noisy, but its median (and the cytoplasm's) is right."""
    ds = gray_full_rotation
    labels, lac = ds.labels.values, ds.attrs["class_lac_per_um"]
    medium = interior(labels == 0, 3)
    truth_scale, truth_offset = ds.attrs["true_lac_scale"], ds.attrs["true_lac_offset"]
    offset_only = sxtlab.estimate_calibration(ds.lac, medium, lac["background"], scale=truth_scale)
    assert offset_only.offset == pytest.approx(truth_offset, rel=0.01)
    assert offset_only.fit["medium_gray_mad"] > 0  # it is noisy
    both = sxtlab.estimate_calibration(ds.lac, medium, lac["background"],
                                       reference=interior(labels == 1, 2), reference_lac=lac["cell"])
    assert both.scale == pytest.approx(truth_scale, rel=0.01)
    assert both.offset == pytest.approx(truth_offset, rel=0.01)


def shift_scores(rec: np.ndarray, truth: np.ndarray, score) -> dict[tuple[int, int, int], float]:
    out = {}
    for axis in range(3):
        for s in (-2, -1, 0, 1, 2):
            shift = [0, 0, 0]
            shift[axis] = s
            out[tuple(shift)] = score(np.roll(rec, s, axis=axis), truth)
    return out


@pytest.mark.parametrize("tilt", [90, 65])
def test_reconstruction_is_aligned_with_its_truth(tilt):
    """DESIGN pitfall: a mis-cropped reconstruction is shifted; it must match best at shift 0."""
    ds = phantom.cell(4, (40, 46, 53), 0.05, acquisition=Acquisition(tilt_range_deg=tilt, photons=None))
    rec, truth = ds.lac.values, ds.lac_true.values
    corr = shift_scores(rec, truth, lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert max(corr, key=corr.get) == (0, 0, 0)
    lac = ds.attrs["class_lac_per_um"]
    threshold = (lac["background"] + lac["cell"]) / 2
    cell = ds.labels.values > 0
    dice = shift_scores(rec > threshold, cell,
                        lambda a, b: 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()))
    assert max(dice, key=dice.get) == (0, 0, 0)
    assert dice[(0, 0, 0)] > 0.8


def test_projector_agrees_with_skimage_radon_iradon():
    """Same slice through skimage's radon/iradon, cropped around the centre as DESIGN says."""
    nz, nx, d = 30, 44, 0.05
    z, x = np.mgrid[:nz, :nx]
    plane = np.full((nz, nx), 0.1, np.float32)
    plane[(z - 14) ** 2 / 64 + (x - 24) ** 2 / 150 < 1] = 0.3
    plane[(z - 12) ** 2 + (x - 17) ** 2 < 9] = 0.8
    vol = sxtlab.volume(np.repeat(plane[:, None, :], 3, axis=1), d)
    acq = Acquisition(tilt_range_deg=90, n_angles=180, photons=None, psf_sigma_um=0.0)
    ours = simulate_acquisition(vol, acq, medium_lac=0.1).values[:, 1, :]
    theta = acq.angles_deg()
    sino = radon(plane - 0.1, theta, circle=False) * d
    n = sino.shape[0]
    full = iradon(sino, theta, circle=False, output_size=n, filter_name="ramp") / d
    oz, ox = n // 2 - nz // 2, n // 2 - nx // 2
    theirs = full[oz:oz + nz, ox:ox + nx] + 0.1
    assert np.mean(np.abs(ours - theirs)) < 0.01
    assert np.mean(np.abs(ours - plane)) < 0.01


def test_missing_wedge_is_empty_in_fourier_space():
    """Beam along z at tilt 0, tilt axis y: ±60° leaves the ±30° wedge about k_z empty."""
    ds = phantom.cell(6, (48, 48, 48), 0.05, acquisition=Acquisition(tilt_range_deg=60, photons=None,
                                                                   psf_sigma_um=0.0))
    full = simulate_acquisition(ds.lac_true, Acquisition(tilt_range_deg=90, photons=None, psf_sigma_um=0.0),
                                medium_lac=ds.attrs["class_lac_per_um"]["background"])

    def wedge_energy(v: np.ndarray) -> float:
        spec = np.abs(np.fft.fftn(v - v.mean())) ** 2
        kz = np.fft.fftfreq(v.shape[0])[:, None, None]
        kx = np.fft.fftfreq(v.shape[2])[None, None, :]
        k = np.sqrt(kz ** 2 + kx ** 2)
        # Inside the wedge, away from the origin (where the grid cannot resolve angles).
        wedge = (np.abs(kx) < np.tan(np.deg2rad(20)) * np.abs(kz)) & (k > 0.06)
        return float(spec[np.broadcast_to(wedge, spec.shape)].sum())

    truth = wedge_energy(ds.lac_true.values)
    assert wedge_energy(ds.lac.values) < 0.05 * truth
    assert wedge_energy(full.values) > 0.5 * truth
    assert ds.attrs["acquisition"]["tilt_range_deg"] == [-60.0, 60.0]


def test_noise_grows_as_photons_fall():
    truth = phantom.cell(8, (48, 48, 48), 0.05).lac
    clean = simulate_acquisition(truth, Acquisition(photons=None)).values

    def noise(photons: float) -> float:
        return float((simulate_acquisition(truth, Acquisition(photons=photons, seed=1)).values - clean).std())

    low, high = noise(500), noise(5000)
    # Poisson: the noise of -log(I/I0) goes as 1/sqrt(photons).
    assert low / high == pytest.approx(np.sqrt(10), rel=0.15)
    assert high > 0.005


def test_acquisition_is_deterministic_with_a_seed():
    truth = sxtlab.volume(np.random.default_rng(0).uniform(0.1, 0.3, (20, 8, 24)).astype(np.float32), 0.05)
    a = simulate_acquisition(truth, Acquisition(seed=3))
    b = simulate_acquisition(truth, Acquisition(seed=3))
    xr.testing.assert_identical(a, b)
    assert a.attrs["acquisition"]["seed"] == 3
    assert a.sxt.voxel_size == truth.sxt.voxel_size


def test_population_conditions_differ_in_lipid_fraction():
    cells = phantom.population(2, shape=(48, 48, 48), voxel_size=0.06, progress=False)
    assert [c.attrs["condition"] for c in cells] == ["control"] * 2 + ["high_lipid"] * 2
    assert len({c.attrs["seed"] for c in cells}) == 4
    fraction = {k: np.mean([c.attrs["lipid_fraction"] for c in cells if c.attrs["condition"] == k])
                for k in ("control", "high_lipid")}
    assert fraction["high_lipid"] > 2 * fraction["control"]
    exact = phantom.population(1, conditions={"a": {"lipid_fraction": 0.03}, "b": {"lipid_fraction": 0.06}},
                               seed=5, lipid_cv=0.0, shape=(48, 48, 48), voxel_size=0.06, progress=False)
    assert [c.attrs["lipid_fraction"] for c in exact] == pytest.approx([0.03, 0.06])
    # Cell seeds derive from the population's seed, so a population is reproducible.
    children = np.random.SeedSequence(5).spawn(2)
    assert [c.attrs["seed"] for c in exact] == [int(ch.generate_state(1, np.uint64)[0]) for ch in children]


def test_attrs_are_json_friendly(algae):
    import json

    json.dumps(algae.attrs)
    json.dumps(algae.labels.attrs)
    assert algae.attrs["generator"] == "sxtlab.phantom.cell"
    assert algae.attrs["instance_counts"]["starch_granule"] >= 1
    assert algae.attrs["instance_counts"]["mitochondria"] >= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (64, 64)}, "shape"),
        ({"shape": (8, 64, 64)}, "shape"),
        ({"voxel_size": 0.0}, "voxel size"),
        ({"voxel_size": (0.05, -1, 0.05)}, "voxel size"),
        ({"lipid_fraction": -0.1}, "lipid_fraction"),
        ({"lipid_fraction": 0.6}, "lipid_fraction"),
        ({"cell_radius_um": 5.0}, "cell_radius_um"),
        ({"shape": (16, 16, 16), "voxel_size": 0.04}, "cell_radius_um"),
        ({"seed": -1}, "seed"),
        ({"axis_ratio": (0.0, 1.0)}, "axis_ratio"),
        ({"mito_density": -1.0}, "mito_density"),
        ({"texture": (0.01, 0.0)}, "texture"),
        ({"class_lac": {"golgi": 0.3}}, "golgi"),
        ({"texture": {"golgi": (0.01, 0.1)}}, "golgi"),
        ({"texture": {"nucleus": (-0.01, 0.1)}}, "for 'nucleus'"),
        ({"nucleus_size": (0.5, 0.4)}, "nucleus_size"),
        ({"nucleus_size": (0.5, 0.9)}, "nucleus_size"),
        ({"nucleus_relief": 0.5}, "nucleus_relief"),
        ({"bud": 0.1}, "bud"),
        ({"neighbours": 9}, "neighbours"),
        ({"neighbours": 1.5}, "neighbours"),
        ({"vesicle_density": -1.0}, "vesicle_density"),
        ({"vacuole_granules": -1.0}, "vacuole_granules"),
        ({"cytoplasm_domains": 13}, "cytoplasm_domains"),
        ({"cytoplasm_domains": 2.0}, "cytoplasm_domains"),
        ({"domain_contrast": -0.2}, "domain_contrast"),
        ({"nucleolus_size": (0.5, 0.9)}, "nucleolus_size"),
        ({"texture": {"cell": [(0.01, 0.1), (0.01, -0.2)]}}, "for 'cell'"),
    ],
)
def test_invalid_cell_parameters(kwargs, match):
    args = {"shape": (48, 48, 48), "voxel_size": 0.06, **kwargs}
    with pytest.raises(ValueError, match=match):
        phantom.cell(**args)


def test_unpackable_lipid_fraction_says_so():
    with pytest.raises(ValueError, match="does not fit"):
        phantom.cell(0, (48, 48, 48), 0.06, lipid_fraction=0.5)


@pytest.mark.parametrize(
    "kwargs",
    [{"tilt_range_deg": 0}, {"tilt_range_deg": (30, 10)}, {"n_angles": 1}, {"photons": 0},
     {"psf_sigma_um": -0.1}, {"filter_name": "sinc"}, {"ring_std": -0.1}, {"ring_std": 0.5},
     {"reconstruction": "art"}, {"sirt_iterations": 0}],
)
def test_invalid_acquisition(kwargs):
    with pytest.raises(ValueError):
        Acquisition(**kwargs)


def test_acquisition_needs_lac():
    gray = sxtlab.volume(np.full((8, 8, 8), 1000.0, np.float32), 0.05, units="gray")
    with pytest.raises(ValueError, match="1/um"):
        simulate_acquisition(gray)
    with pytest.raises(ValueError, match="n_jobs"):
        simulate_acquisition(gray.sxt.to_lac(sxtlab.Calibration(1e-4)), n_jobs=0)


def test_anisotropic_voxels_reconstruct_in_place():
    """dz ≠ dx within the tilt plane: the projector works in µm, no resampling."""
    ds = phantom.cell(3, (30, 40, 44), (0.06, 0.04, 0.04),
                      acquisition=Acquisition(tilt_range_deg=90, n_angles=90, photons=None, psf_sigma_um=0.0))
    rec, truth, labels = ds.lac.values, ds.lac_true.values, ds.labels.values
    cytoplasm = np.median(rec[interior(labels == 1, 2)])
    assert cytoplasm == pytest.approx(ds.attrs["class_lac_per_um"]["cell"], rel=0.01)
    corr = shift_scores(rec, truth, lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert max(corr, key=corr.get) == (0, 0, 0)


def _radial_share(diff: np.ndarray) -> float:
    """Share of the variance of a (z, y, x) volume explained by its mean over half
    rings about the y axis (the rotation axis) at each y and radius. Over tilts of
    -90…90° a detector pixel at +r draws the half ring on the x ≥ 0 side, the pixel
    at -r the other half."""
    nz, ny, nx = diff.shape
    z, x = np.meshgrid(np.arange(nz) - (nz - 1) / 2, np.arange(nx) - (nx - 1) / 2, indexing="ij")
    ring = (2 * np.round(np.hypot(z, x)).astype(int) + (x >= 0)).ravel()
    explained = 0.0
    for j in range(ny):
        plane = diff[:, j, :].ravel()
        means = np.bincount(ring, plane) / np.maximum(np.bincount(ring), 1)
        explained += np.sum(means[ring] ** 2)
    return explained / np.sum(diff ** 2)


def test_detector_gain_errors_reconstruct_as_rings():
    truth = phantom.cell(seed=2, shape=(48, 48, 48), voxel_size=0.06).lac
    clean = dict(photons=None, psf_sigma_um=0.0, tilt_range_deg=90, n_angles=120, seed=1)
    plain = simulate_acquisition(truth, Acquisition(**clean)).values
    rings = simulate_acquisition(truth, Acquisition(**clean, ring_std=0.01)).values
    diff = rings - plain
    assert np.abs(diff).max() > 0.01
    # rings are (nearly) constant along circles about the rotation axis
    assert _radial_share(diff) > 0.5  # 0.62 here
    assert _radial_share(np.random.default_rng(0).normal(size=diff.shape)) < 0.1  # 0.03


def test_sirt_reconstructs_the_truth_like_fbp():
    ds = phantom.cell(seed=2, shape=(48, 48, 48), voxel_size=0.06)
    clean = dict(photons=None, psf_sigma_um=0.0, tilt_range_deg=90, n_angles=120)
    sirt = simulate_acquisition(ds.lac, Acquisition(**clean, reconstruction="sirt", sirt_iterations=50)).values
    rmse = float(np.sqrt(np.mean((sirt - ds.lac.values) ** 2)))
    assert rmse < 0.012  # µm⁻¹; the cytoplasm-medium contrast is ~0.15
    cyto = ds.labels.values == phantom.LABELS["cell"]
    assert abs(sirt[cyto].mean() - ds.lac.values[cyto].mean()) < 0.005


def test_class_lac_texture_and_capillary():
    lac = {"cell": 0.25, "nucleus": 0.18, "background": 0.1}
    plain = phantom.cell(4, (64, 64, 64), 0.05, class_lac=lac)
    labels = plain.labels.values
    inner = ndimage.binary_erosion(labels == phantom.LABELS["nucleus"], iterations=2)
    assert np.allclose(plain.lac.values[inner], 0.18, atol=1e-6)  # the nucleus darker than the cytoplasm
    assert plain.attrs["class_lac_per_um"]["nucleus"] == 0.18

    textured = phantom.cell(4, (64, 64, 64), 0.05, class_lac=lac, texture=(0.02, 0.1))
    cyto = ndimage.binary_erosion(labels == phantom.LABELS["cell"], iterations=2)
    extra = textured.lac.values - plain.lac.values
    assert 0.012 < extra[cyto].std() < 0.03
    medium = ~ndimage.binary_dilation(labels > 0, iterations=2)  # beyond the partial-volume edge
    assert np.all(extra[medium] == 0)  # the medium stays flat
    np.testing.assert_array_equal(textured.labels.values, labels)

    # a texture of the nucleus alone leaves the cytoplasm as it was
    smooth_cytoplasm = phantom.cell(4, (64, 64, 64), 0.05, class_lac=lac, texture={"nucleus": (0.02, 0.1)})
    extra = smooth_cytoplasm.lac.values - plain.lac.values
    assert np.all(extra[labels != phantom.LABELS["nucleus"]] == 0)
    assert 0.01 < extra[inner].std() < 0.03
    assert smooth_cytoplasm.attrs["texture"] == {"nucleus": [0.02, 0.1]}

    wall = phantom.Capillary(clearance_um=0.1, thickness_um=0.2, lac=1.2)
    walled = phantom.cell(4, (64, 64, 64), 0.05, class_lac=lac, capillary=wall)
    glass = walled.lac.values > 0.9
    assert glass.any() and np.all(walled.labels.values[glass] == 0)  # the wall is medium, not cell
    r = walled.attrs["cell_radius_um"]
    z, x = np.meshgrid(*(np.arange(64) * 0.05 - 31.5 * 0.05,) * 2, indexing="ij")
    radius = np.broadcast_to(np.hypot(z, x)[:, None, :], glass.shape)[glass]
    assert radius.min() >= r * 1.12 + 0.1 - 0.05  # beyond the cell's furthest point and the clearance
    with pytest.raises(ValueError, match="Capillary"):
        phantom.Capillary(thickness_um=0)


def test_varied_cells_span_the_literature_ranges():
    rng = np.random.default_rng(0)
    draws = [phantom._varied_lac(rng) for _ in range(400)]
    contrast = np.array([d["nucleus"] - d["cell"] for d in draws])
    assert (contrast < -0.05).any() and (contrast > 0.05).any()  # darker and brighter nuclei
    assert np.abs(contrast).min() < 0.015 and np.abs(contrast).max() > 0.08
    # the literature's order: a vacuole is darker than its cell's cytoplasm and nucleus
    assert all(d["vacuole"] <= min(d["nucleus"], d["cell"]) - 0.02 + 1e-12 for d in draws)
    for name in ["cell", "mitochondria", "lipid_body", "vacuole", "background"]:
        lo, hi = VOCABULARY[name].lac_range_per_um
        values = np.array([d[name] for d in draws])
        assert values.min() >= lo - 1e-9 and values.max() <= max(hi, 0.4 + 0.1)
        if name != "mitochondria":  # raised above the cytoplasm where they overlap
            assert values.min() < lo + 0.1 * (hi - lo) and values.max() > hi - 0.1 * (hi - lo)


def test_varied_cell_is_deterministic_and_records_its_draws():
    a = phantom.varied_cell(7, (64, 64, 64), 0.05)
    b = phantom.varied_cell(7, (64, 64, 64), 0.05)
    np.testing.assert_array_equal(a.lac.values, b.lac.values)
    assert a.attrs["generator"] == "sxtlab.phantom.varied_cell"
    v = a.attrs["variation"]
    assert a.attrs["class_lac_per_um"]["nucleus"] == v["class_lac"]["nucleus"]
    assert a.attrs["acquisition"] is not None
    other = phantom.varied_cell(8, (64, 64, 64), 0.05)
    assert other.attrs["variation"] != v


def test_varied_cell_takes_a_fixed_acquisition_and_keeps_its_cell():
    fixed = phantom.Acquisition(tilt_range_deg=57.0, n_angles=40, photons=1000.0)
    drawn = phantom.varied_cell(3, (48, 48, 48), 0.08)
    held = phantom.varied_cell(3, (48, 48, 48), 0.08, acquisition=fixed)
    np.testing.assert_array_equal(held.labels.values, drawn.labels.values)
    assert held.attrs["variation"] == drawn.attrs["variation"]
    assert held.attrs["acquisition"]["tilt_range_deg"] == [-57.0, 57.0]
    assert drawn.attrs["acquisition"] != held.attrs["acquisition"]
    truth = phantom.varied_cell(3, (48, 48, 48), 0.08, acquisition=None)
    assert truth.attrs["acquisition"] is None
    np.testing.assert_array_equal(truth.lac.values, phantom.varied_cell(3, (48, 48, 48), 0.08,
                                                                        acquisition=np.False_).lac.values)
    for bad in ("standard", 1):
        with pytest.raises(TypeError, match="Acquisition, True, False or None"):
            phantom.varied_cell(3, (48, 48, 48), 0.08, acquisition=bad)


def test_lobed_nucleus_keeps_its_volume_and_nucleolus():
    ds = phantom.cell(5, SHAPE, VS, nucleus_size=(0.55, 0.55), nucleus_relief=0.25)
    labels, vv = ds.labels.values, voxel_volume(ds)
    (record,) = [r for r in ds.attrs["instances"] if r["class"] == "nucleus"]
    nuclear = (labels == phantom.LABELS["nucleus"]) | (labels == phantom.LABELS["nucleolus"])
    assert np.count_nonzero(nuclear) * vv == pytest.approx(record["volume_um3"], rel=0.02)
    # larger than the default nucleus (radius 0.38-0.46 of the cell's), and not an ellipsoid:
    # the moments' ellipsoid of the same volume leaves out a share of it
    r_cell = (3 * ds.attrs["cell_volume_um3"] / (4 * np.pi)) ** (1 / 3)
    assert record["equivalent_radius_um"] > 0.47 * r_cell
    nucleolus = labels == phantom.LABELS["nucleolus"]
    assert nucleolus.any() and np.all(nuclear[ndimage.binary_dilation(nucleolus)])
    plain = phantom.cell(5, SHAPE, VS, nucleus_size=(0.55, 0.55))
    (plain_record,) = [r for r in plain.attrs["instances"] if r["class"] == "nucleus"]
    assert "semi_axes_um" in plain_record and "semi_axes_um" not in record


def test_bud_is_part_of_the_cell():
    plain = phantom.cell(6, (80, 80, 80), VS, cell_radius_um=1.1)
    budded = phantom.cell(6, (80, 80, 80), VS, cell_radius_um=1.1, bud=0.6)
    labels, vv = budded.labels.values, voxel_volume(budded)
    cell = labels > 0
    assert ndimage.label(cell)[1] == 1  # one piece: the bud is joined by its neck
    assert budded.attrs["cell_volume_um3"] == pytest.approx(np.count_nonzero(cell) * vv, rel=0.01)
    bud_volume = 4 / 3 * np.pi * (0.6 * 1.1) ** 3
    grown = budded.attrs["cell_volume_um3"] - plain.attrs["cell_volume_um3"]
    assert 0.5 * bud_volume < grown < 1.1 * bud_volume
    # one nucleus, the mother's; the bud's organelles counted with the cell's
    assert budded.attrs["instance_counts"]["nucleus"] == 1
    assert budded.attrs["instance_counts"]["mitochondria"] > plain.attrs["instance_counts"]["mitochondria"]
    centre = np.array(budded.attrs["bud"]["centre_um"]) / VS
    z, y, x = np.round(centre).astype(int)
    assert labels[z, y, x] in (phantom.LABELS["cell"], phantom.LABELS["mitochondria"], phantom.LABELS["vacuole"],
                               phantom.LABELS["lipid_body"])
    for name, analytic in budded.attrs["class_volume_um3"].items():
        counted = np.count_nonzero(labels == phantom.LABELS[name]) * vv
        assert counted == pytest.approx(analytic, rel=0.05 if analytic > 500 * vv else 0.15), name


def test_neighbours_are_cells_beside_the_cell():
    alone = phantom.cell(8, SHAPE, VS, cell_radius_um=0.9)
    crowded = phantom.cell(8, SHAPE, VS, cell_radius_um=0.9, neighbours=3)
    assert crowded.attrs["neighbours"] >= 1
    pieces, n = ndimage.label(crowded.labels.values > 0)
    assert n == 1 + crowded.attrs["neighbours"]
    # the cell and its truth record are those of the cell alone
    main = pieces == pieces[tuple(s // 2 for s in SHAPE)]
    np.testing.assert_array_equal(crowded.labels.values[main], alone.labels.values[main])
    assert crowded.attrs["class_volume_um3"] == alone.attrs["class_volume_um3"]
    # neighbours' organelles are labelled and recorded as theirs, with ids of their own
    records = crowded.attrs["instances"]
    assert [r["id"] for r in records] == list(range(1, len(records) + 1))
    theirs = [r for r in records if "neighbour" in r]
    assert theirs and all(1 <= r["neighbour"] <= crowded.attrs["neighbours"] for r in theirs)
    inst = crowded.instance_labels.values
    assert any(np.any(inst[~main] == r["id"]) for r in theirs)
    assert not np.any(np.isin(inst[main], [r["id"] for r in theirs]))
    # at least 0.02 µm of medium between the cells (one voxel here)
    gap = ndimage.binary_dilation(main, iterations=1) & ~main
    assert not np.any((pieces > 0)[gap])


def test_capillary_in_air():
    wall = phantom.Capillary(clearance_um=0.1, thickness_um=0.2, lac=1.2, outside_lac=0.0)
    ds = phantom.cell(4, SHAPE, VS, capillary=wall)
    r = ds.attrs["cell_radius_um"] * 1.12 + 0.1 + 0.2  # the wall's outer surface, at most
    z, x = np.meshgrid(*(np.arange(64) * VS - 31.5 * VS,) * 2, indexing="ij")
    beyond = np.broadcast_to((np.hypot(z, x) > r + VS)[:, None, :], SHAPE)
    assert beyond.any() and np.all(ds.lac.values[beyond] == 0)
    assert np.all(ds.labels.values[beyond] == 0)
    with pytest.raises(ValueError, match="outside_lac"):
        phantom.Capillary(outside_lac=-0.1)


def test_varied_cells_draw_nuclei_buds_and_neighbours():
    draws = [phantom.varied_cell(seed, (48, 48, 48), 0.1, acquisition=False).attrs["variation"]
             for seed in range(24)]
    sizes = [v["nucleus_size"][0] for v in draws]
    assert min(sizes) < 0.4 and max(sizes) > 0.5
    assert any(v["nucleus_relief"] > 0 for v in draws) and any(v["nucleus_relief"] == 0 for v in draws)
    assert any(v["bud"] for v in draws) and any(v["neighbours"] for v in draws)
    granules = [v["vacuole_granules"] for v in draws]
    assert min(granules) == 0 and 0.5 <= max(granules) <= 4


def test_varied_cells_keep_generator_1_2_draws():
    # 1.3 added vacuole granules, 1.4 cytoplasm domains, each from a stream of its own:
    # every earlier draw stands.
    ds = phantom.varied_cell(5, (48, 48, 48), 0.1, acquisition=False)
    variation = ds.attrs["variation"]
    assert variation["class_lac"]["nucleus"] == pytest.approx(0.1843043, abs=1e-6)
    assert variation["neighbours"] == 2


def test_vesicles_are_unlabelled_spots_in_the_cytoplasm():
    lac = {"cell": 0.25, "background": 0.1}
    plain = phantom.cell(4, SHAPE, VS, class_lac=lac)
    spotted = phantom.cell(4, SHAPE, VS, class_lac=lac, vesicle_density=4.0)
    assert spotted.attrs["vesicles"] > 10 and plain.attrs["vesicles"] == 0
    # labels, organelles and their volumes untouched; only the cytoplasm's LAC changes
    np.testing.assert_array_equal(spotted.labels.values, plain.labels.values)
    assert spotted.attrs["class_volume_um3"] == plain.attrs["class_volume_um3"]
    changed = spotted.lac.values != plain.lac.values
    assert np.all(plain.labels.values[changed] == phantom.LABELS["cell"])
    moved = (spotted.lac.values - plain.lac.values)[changed]
    assert moved.min() < -0.05 and moved.max() > 0.03  # dark lumens and dense granules
    assert moved.min() >= 0.10 - 0.25 - 1e-6 and moved.max() <= 0.45 - 0.25 + 1e-6


def test_texture_of_several_scales_adds_up():
    lac = {"cell": 0.25, "nucleus": 0.2, "background": 0.1}
    plain = phantom.cell(4, SHAPE, VS, class_lac=lac)
    two = phantom.cell(4, SHAPE, VS, class_lac=lac, texture={"cell": [(0.01, 0.05), (0.02, 0.5)]})
    cyto = ndimage.binary_erosion(plain.labels.values == phantom.LABELS["cell"], iterations=2)
    extra = (two.lac.values - plain.lac.values)[cyto]
    assert 0.015 < extra.std() < 0.03  # sqrt(0.01² + 0.02²) = 0.022 over the field, less in one cell
    assert two.attrs["texture"] == {"cell": [[0.01, 0.05], [0.02, 0.5]]}


def test_nucleolus_size_is_relative_to_the_nucleus():
    small = phantom.cell(4, SHAPE, VS, nucleolus_size=(0.25, 0.25))
    large = phantom.cell(4, SHAPE, VS, nucleolus_size=(0.7, 0.7))
    v = [ds.attrs["class_volume_um3"]["nucleolus"] for ds in (small, large)]
    assert v[1] / v[0] == pytest.approx((0.7 / 0.25) ** 3, rel=1e-6)


def test_vacuole_granules_are_bright_spots_labelled_vacuole():
    lac = {"cell": 0.25, "vacuole": 0.15, "background": 0.1}
    plain = phantom.cell(4, SHAPE, VS, class_lac=lac)
    grainy = phantom.cell(4, SHAPE, VS, class_lac=lac, vacuole_granules=3.0)
    assert grainy.attrs["vacuole_granules"] > 0
    np.testing.assert_array_equal(grainy.labels.values, plain.labels.values)
    excess = grainy.lac.values - plain.lac.values
    changed = excess != 0
    assert changed.any() and np.all(plain.labels.values[changed] == phantom.LABELS["vacuole"])
    # at a granule's centre: 0.30-0.50 µm⁻¹, brighter than the vacuole and the cytoplasm
    assert 0.30 - 0.15 - 0.05 < excess.max() <= 0.50 - 0.15 + 1e-6


def test_cytoplasm_domains_change_only_the_cytoplasm_by_their_contrast():
    lac = {"cell": 0.25, "nucleus": 0.22, "background": 0.1}
    plain = phantom.cell(4, SHAPE, VS, class_lac=lac)
    dark = phantom.cell(4, SHAPE, VS, class_lac=lac, cytoplasm_domains=4, domain_contrast=-0.03)
    assert dark.attrs["cytoplasm_domains"] == 4 and plain.attrs["cytoplasm_domains"] == 0
    # a separate stream: the cell, its organelles and their volumes are those of the plain cell
    np.testing.assert_array_equal(dark.labels.values, plain.labels.values)
    assert dark.attrs["class_volume_um3"] == plain.attrs["class_volume_um3"]
    moved = dark.lac.values - plain.lac.values
    changed = moved != 0
    assert np.all(plain.labels.values[changed] == phantom.LABELS["cell"])
    # darker by at most the contrast, and by all of it somewhere (a domain's core)
    assert moved.max() <= 0 and moved.min() == pytest.approx(-0.03, abs=1e-6)
    # nucleus-sized: together they cover a share of the cytoplasm of the order of the nucleus's
    core = (moved < -0.015).sum() * VS ** 3
    nucleus = dark.attrs["class_volume_um3"]["nucleus"]
    assert 0.3 * nucleus < core < 8 * nucleus
    # the same seed draws the same domains; no contrast, no domains
    again = phantom.cell(4, SHAPE, VS, class_lac=lac, cytoplasm_domains=4, domain_contrast=-0.03)
    np.testing.assert_array_equal(again.lac.values, dark.lac.values)
    none = phantom.cell(4, SHAPE, VS, class_lac=lac, cytoplasm_domains=4, domain_contrast=0.0)
    np.testing.assert_array_equal(none.lac.values, plain.lac.values)


def test_varied_cells_draw_cytoplasm_domains_on_the_nucleus_side():
    drawn = [phantom.varied_cell(s, (48, 48, 48), 0.1, acquisition=False).attrs for s in range(12)]
    with_domains = [a for a in drawn if a["variation"]["cytoplasm_domains"]]
    assert 3 <= len(with_domains) <= 9  # half the cells
    for a in with_domains:
        v = a["variation"]
        assert 1 <= v["cytoplasm_domains"] <= 4 and 0 < abs(v["domain_contrast"]) <= 0.05
        assert a["generator_version"] == phantom.GENERATOR_VERSION == "1.4"
    same_side = [np.sign(a["variation"]["domain_contrast"])
                 == np.sign(a["variation"]["class_lac"]["nucleus"] - a["variation"]["class_lac"]["cell"])
                 for a in with_domains]
    assert sum(same_side) >= len(same_side) / 2
