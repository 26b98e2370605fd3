"""AmiraMesh volumes, label fields and Amira projects (sxtlab.io._amira, ._amiramesh).

Real files come from ../shared/data (readers/amiramesh: ahds and TARDIS test files;
ncxt: the NCXT sample project and Amira 6.3/2019 templates); each test skips where
that folder is absent. Expectations for the reader files are those of
shared/data/readers/README.md.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import sxtlab
from sxtlab.classes import UNANNOTATED, UnknownClassError
from sxtlab.errors import FormatError
from sxtlab.io import _amiramesh as am
from sxtlab.io import read_segmentation, read_volume, write_volume
from sxtlab.io._amira import read_project

SIMPLE_LABELS = np.array([[[0, 0], [0, 4]], [[0, 0], [4, 4]]], np.uint8)
SIMPLE_PROB = np.array([[[255, 255], [130, 180]], [[255, 200], [190, 230]]], np.uint8)
SOMETHING = {"Something": "nucleus", "Interior": "vacuole"}


@pytest.fixture(scope="module")
def amdir(shared: Path) -> Path:
    return shared / "data" / "readers" / "amiramesh"


@pytest.fixture(scope="module")
def ncxt(shared: Path) -> Path:
    return shared / "data" / "ncxt"


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ----------------------------------------------------------------- readers/amiramesh
@pytest.mark.parametrize("name", ["ahds_test_simple_labels.am", "ahds_test_swapped_streams.am"])
def test_ascii_labels_map_by_id_and_sections_by_marker(amdir, name):
    with pytest.warns(UserWarning, match="voxel size unknown"):
        lab = read_volume(amdir / name, class_map=SOMETHING)
    np.testing.assert_array_equal(lab.values, SIMPLE_LABELS)
    assert lab.attrs["classes"] == {"4": "nucleus", "7": "vacuole"}  # by Id, not by position
    assert lab.attrs["amira_materials_by"] == "id"
    assert lab.attrs["amira_materials"]["0"] == ["Exterior"]
    prob = _quiet(read_volume, amdir / name, field="Probability")
    np.testing.assert_array_equal(prob.values, SIMPLE_PROB)
    assert prob.attrs["units"] == "gray" and "classes" not in prob.attrs


def test_unmapped_materials_are_listed_with_how_to_map_them(amdir):
    with pytest.raises(UnknownClassError, match=r"'Something'.*value 4.*3 voxels.*class_map=\{'Something'"):
        _quiet(read_volume, amdir / "ahds_test_simple_labels.am")
    with pytest.raises(UnknownClassError, match="'Interior'"):  # every unmapped name is listed
        _quiet(read_volume, amdir / "ahds_test_simple_labels.am")


def test_missing_stream(amdir):
    with pytest.raises(FormatError, match=r"ahds_test_missing_stream\.am.*Probability.*no data section @2"):
        read_volume(amdir / "ahds_test_missing_stream.am")


def test_materials_without_parameters_and_box(amdir):
    with pytest.warns(UserWarning, match="no BoundingBox.*voxel_size="):
        lab = read_volume(amdir / "ahds_test_simple_materials_noparams.am", class_map=SOMETHING)
    np.testing.assert_array_equal(lab.values, SIMPLE_LABELS)
    assert lab.attrs["voxel_size_um"] is None
    lab = read_volume(amdir / "ahds_test_simple_materials_noparams.am", class_map=SOMETHING, voxel_size=0.02)
    assert lab.sxt.voxel_size == (0.02, 0.02, 0.02)


def test_mixed_material_styles_merge_by_id(amdir):
    path = amdir / "ahds_test_simple_mixed_mat_spec.am"
    mats = am.read_header(path)
    assert [(k, v.get("Id")) for k, v in mats.parameters.get("Materials").blocks()] == [("Outerspace", (9,))]
    with pytest.warns(UserWarning, match="Outerspace.*label no voxel"):
        lab = read_volume(path, class_map=SOMETHING, voxel_size=1)
    np.testing.assert_array_equal(lab.values, SIMPLE_LABELS)
    assert lab.attrs["classes"] == {"4": "nucleus", "7": "vacuole"}
    # naming the parameter-style material too: both lists count
    lab = read_volume(path, class_map={**SOMETHING, "Outerspace": "background"}, voxel_size=1)
    assert lab.attrs["amira_materials"]["0"] == ["Exterior", "Outerspace"]


def test_scalar_binary_shape_order_and_spacing(amdir):
    path = amdir / "ahds_testscalar.am"
    with pytest.warns(UserWarning, match=r"\(dz, dy, dx\) = \(0\.142857, 0\.2, 0\.333333\) in file units"):
        v = read_volume(path)
    assert v.shape == (8, 6, 4) and v.dtype == np.float32 and v.attrs["units"] == "gray"
    raw = path.read_bytes()
    start = raw.index(b"\n@1\n", raw.index(b"# Data section")) + 4
    np.testing.assert_array_equal(v.values, np.frombuffer(raw[start:start + 768], "<f4").reshape(8, 6, 4))
    assert v.attrs["amira_box_spacing_zyx"] == pytest.approx([1 / 7, 1 / 5, 1 / 3], rel=1e-9)
    v = read_volume(path, box_units="um")
    assert v.sxt.voxel_size == pytest.approx((1 / 7, 1 / 5, 1 / 3), rel=1e-9)
    assert v.sxt.origin_um == pytest.approx((-0.5, 0.0, -1.0))
    assert float(v.x[-1]) == pytest.approx(0.0) and float(v.z[-1]) == pytest.approx(0.5)
    v = read_volume(path, box_units="nm")
    assert v.sxt.voxel_size == pytest.approx((1e-3 / 7, 1e-3 / 5, 1e-3 / 3), rel=1e-9)


def test_vector_field_is_not_a_scalar_volume(amdir):
    with pytest.raises(FormatError, match=r"ahds_testvector3c\.am.*float\[3\].*3 components.*not a scalar volume"):
        read_volume(amdir / "ahds_testvector3c.am")
    h = am.read_header(amdir / "ahds_testvector3c.am")
    assert am.read_field(h, h.field()).shape == (8, 6, 4, 3)  # components interleaved per voxel


def test_rle_284_cubed_decodes_fast(amdir):
    path = amdir / "ahds_test9.am"
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lab = read_volume(path)
    elapsed = time.perf_counter() - t0
    messages = " | ".join(str(w.message) for w in caught)
    assert re.search("'Inside', 'molecule'.*label no voxel", messages)
    assert re.search(r"voxel size unknown.*\(1\.36, 1\.36, 1\.36\) in file units", messages)
    assert all(w.filename == __file__ for w in caught)  # attributed to the caller, not to sxtlab
    assert lab.shape == (284, 284, 284) and lab.dtype == np.uint8
    assert not lab.values.any() and lab.attrs["classes"] == {}
    assert elapsed < 3.0, f"decoding 284^3 HxByteRLE took {elapsed:.2f} s"  # ~0.1 s measured


def test_rle_data_missing(amdir):
    with pytest.raises(FormatError, match=r"ahds_test12\.am.*HxByteRLE.*404,583.*found none"):
        read_volume(amdir / "ahds_test12.am")


def test_unknown_encoding(amdir):
    with pytest.raises(FormatError, match=r"ahds_testcorruptheader\.am.*unknown AmiraMesh encoding 'BINARY-ENDIAN'"):
        read_volume(amdir / "ahds_testcorruptheader.am")


def test_not_amiramesh(amdir):
    with pytest.raises(FormatError, match=r"ahds_testbadformat\.am: not an AmiraMesh file.*'Mesh'"):
        read_volume(amdir / "ahds_testbadformat.am")


def test_duplicated_section(amdir):
    with pytest.raises(FormatError, match=r"@1 is declared twice.*Data \}.*Data2 \}"):
        read_volume(amdir / "ahds_testdoubldatadescriptor.am")


def test_tardis_top_level_box_only(amdir):
    path = amdir / "tardis_am3D.am"
    with pytest.warns(UserWarning, match="voxel size unknown"):
        v = read_volume(path)
    assert v.shape == (8, 256, 256) and v.dtype == np.uint8
    assert (int(v.min()), int(v.max())) == (41, 234)
    assert v.attrs["amira_bounding_box"][:4] == [0, 23664, 0, 23664]
    assert v.attrs["amira_box_spacing_zyx"] == pytest.approx([92.8] * 3, rel=1e-6)
    v = read_volume(path, box_units="nm")
    assert v.sxt.voxel_size == pytest.approx((0.0928,) * 3, rel=1e-6)


# ----------------------------------------------------------------- ncxt
def test_sample_12_image(ncxt):
    path = ncxt / "sample_12-files" / "sample_12.rec"
    assert sxtlab.io.detect_format(path) == "amira"  # .rec with AmiraMesh content
    with pytest.warns(UserWarning, match=r"sample_12\.rec: voxel size unknown.*counts voxels"):
        v = read_volume(path)
    assert v.shape == (58, 61, 58) and v.dtype == np.float32  # Lattice 58 61 58 is (x, y, z)
    assert v.attrs["units"] == "gray" and v.attrs["voxel_size_um"] is None
    assert float(v.min()) == pytest.approx(-0.000528434, rel=1e-5)
    assert float(v.max()) == pytest.approx(0.0255518, rel=1e-5)
    assert float(v.mean()) == pytest.approx(0.0031630, rel=1e-4)
    v = read_volume(path, voxel_size=(0.05, 0.032, 0.032))
    assert v.sxt.voxel_size == (0.05, 0.032, 0.032)
    assert float(v.y[-1]) == pytest.approx(60 * 0.032)


def test_sample_12_labels(ncxt):
    path = ncxt / "sample_12-files" / "sample_12.labels"
    lab = _quiet(read_volume, path)
    assert lab.shape == (58, 61, 58) and lab.dtype == np.uint8
    assert lab.attrs["classes"] == {"1": "cell"}
    assert lab.attrs["amira_materials"] == {"0": ["void"], "1": ["cell"], "255": ["ignore"]}
    assert lab.attrs["amira_materials_by"] == "position"  # no Ids: Amira's order
    values, counts = np.unique(lab.values, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 51364, 1: 5120, UNANNOTATED: 148720}
    # sparse annotation: six whole planes per axis, everything else unannotated
    full = [np.flatnonzero((lab.values != UNANNOTATED).all(axis=tuple(a for a in range(3) if a != ax)))
            for ax in range(3)]
    assert [f.tolist() for f in full] == [[0, 11, 22, 34, 45, 57], [0, 12, 24, 36, 48, 60],
                                          [0, 11, 22, 34, 45, 57]]


def test_sample_12_project(ncxt):
    hx = ncxt / "sample_12.hx"
    with pytest.warns(UserWarning, match="voxel size unknown"):
        ds = read_project(hx)
    assert set(ds.data_vars) == {"lac", "labels"}
    assert ds.lac.shape == ds.labels.shape == (58, 61, 58)
    assert ds.labels.attrs["classes"] == {"1": "cell"}
    assert ds.attrs["labels_file"].endswith("sample_12.labels")
    ds = read_project(hx, voxel_size=0.032)
    assert ds.labels.attrs["voxel_size_um"] == [0.032] * 3
    np.testing.assert_allclose(ds.labels.x.values, np.arange(58) * 0.032)
    seg = read_segmentation(hx, voxel_size=0.032)
    xr.testing.assert_identical(seg, ds)
    img = read_volume(hx, voxel_size=0.032)  # a project read as one volume gives its image
    xr.testing.assert_identical(img, ds.lac.rename(img.name))
    # the labelled cell is brighter (absorbs more) than the void around it
    assert float(ds.lac.where(ds.labels == 1).mean()) > 3 * float(ds.lac.where(ds.labels == 0).mean())


def test_project_given_by_a_relative_path(ncxt, monkeypatch):
    # ${SCRIPTDIR} of a relative project path once got the folder joined twice
    monkeypatch.chdir(ncxt.parent)
    ds = read_project(Path("ncxt") / "sample_12.hx", voxel_size=0.032)
    assert ds.lac.shape == (58, 61, 58)
    assert Path(ds.attrs["labels_file"]).resolve() == (ncxt / "sample_12-files" / "sample_12.labels").resolve()


@pytest.mark.parametrize("version", ["template-ver63", "template-ver2019"])
def test_templates(ncxt, version):
    hx = ncxt / version / "template.hx"
    with pytest.raises(UnknownClassError, match=r"'Inside' \(block 'material'\).*3,388 voxels"):
        _quiet(read_project, hx)
    ds = _quiet(read_project, hx, class_map={"Inside": "cell"})
    # blob.tiff is AmiraMesh content under a TIFF name: Amira keeps names when it saves
    assert ds.lac.shape == (33, 32, 31) and ds.lac.dtype == np.float32
    assert float(ds.lac.min()) == pytest.approx(5.64156, rel=1e-5)
    assert float(ds.lac.max()) == pytest.approx(321.17386, rel=1e-5)
    values, counts = np.unique(ds.labels.values, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 29348, 1: 3388}
    assert ds.labels.attrs["classes"] == {"1": "cell"}
    assert ds.labels.attrs["amira_materials"] == {"0": ["Exterior"], "1": ["Inside", "material"]}


def test_templates_agree_across_amira_versions(ncxt):
    a = _quiet(read_project, ncxt / "template-ver63" / "template.hx", class_map={"Inside": "cell"})
    b = _quiet(read_project, ncxt / "template-ver2019" / "template.hx", class_map={"Inside": "cell"})
    xr.testing.assert_equal(a.lac, b.lac)
    xr.testing.assert_equal(a.labels, b.labels)
    h63 = am.read_header(ncxt / "template-ver63" / "template-files" / "blob.labels")
    h19 = am.read_header(ncxt / "template-ver2019" / "template-files" / "blob.labels")
    assert (h63.version, h19.version) == ("2.1", "3.0")
    # 2019 adds binary mirrors (&Color, &BoundingBox) and a history holding the old box
    assert "&BoundingBox" in h19.parameters and "&BoundingBox" not in h63.parameters
    assert h19.parameters.get("BoundingBox") == h63.parameters.get("BoundingBox") == (0, 30, 0, 31, 0, 32)
    assert [f.declaration for f in h63.fields] == [f.declaration for f in h19.fields] == [
        "Lattice { byte Labels } @1(HxByteRLE,1453)"]


def test_colormap_is_not_a_volume(ncxt):
    with pytest.raises(FormatError, match=r"labels\.am.*float\[4\]"):
        read_volume(ncxt / "template-ver63" / "template-files" / "labels.am")


# ----------------------------------------------------------------- field case 19
def test_field_case_19_rle_labels_with_named_materials(field_case):
    folder, expected = field_case("19")
    path = folder / expected["input"]
    with pytest.warns(UserWarning, match=r"Ids \[1, 2, 3\] do not name label values \[0\]"):
        lab = read_volume(path, box_units="um")  # the case writes its box in µm without a Units block
    truth = np.load(folder / "labels_truth.npy")
    assert list(lab.shape) == expected["shape_zyx"]
    np.testing.assert_array_equal(lab.values, truth)
    np.testing.assert_allclose(lab.sxt.voxel_size, expected["voxel_size_um_zyx"], rtol=expected["rtol"])
    counts = {str(k): int((lab.values == int(k)).sum()) for k in expected["voxel_counts"]}
    assert counts == expected["voxel_counts"]
    for value, names in expected["materials_by_value"].items():
        assert set(names) <= set(lab.attrs["amira_materials"][value])  # block name and alias both kept
    assert lab.attrs["classes"] == {"1": "mitochondria", "2": "vacuole"}
    h = am.read_header(path)
    assert h.field().encoded_size == expected["compressed_bytes"]
    # without a unit the voxel size is unknown, not guessed
    with pytest.warns(UserWarning, match="voxel size unknown"):
        assert _quiet_except_voxel(read_volume, path).attrs["voxel_size_um"] is None
    # a wrong compressed size is an error naming the file and HxByteRLE
    raw = path.read_bytes()
    n = expected["compressed_bytes"]
    for wrong in (n - 10, n + 10):
        bad = folder / f"bad_{wrong}.labels"
        bad.write_bytes(raw.replace(f"HxByteRLE,{n})".encode(), f"HxByteRLE,{wrong})".encode()))
        with pytest.raises(FormatError, match=rf"bad_{wrong}\.labels.*HxByteRLE"):
            _quiet(read_volume, bad)


def _quiet_except_voxel(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*do not name label values")
        return fn(*args, **kwargs)


# ----------------------------------------------------------------- round trips
def _image(shape=(5, 6, 7), voxel_size=(0.05, 0.03, 0.02), origin=(1.0, -2.0, 0.5), dtype=np.float32):
    rng = np.random.default_rng(0)
    return sxtlab.volume((rng.normal(size=shape) * 100).astype(dtype), voxel_size, units="gray",
                         origin_um=origin, source="test")


def _labels(shape=(6, 7, 8)):
    img = _image(shape)
    rng = np.random.default_rng(1)
    data = rng.choice(np.array([0, 1, 2, 5, UNANNOTATED], np.uint8), size=shape)
    data[0, 0, :4] = 5  # a run, so RLE has repeats as well as literals
    return sxtlab.label_volume(data, img, {1: "cell", 2: "nucleus", 5: "mitochondria"})


@pytest.mark.parametrize("compression", [None, "zip"])
def test_round_trip_float_image(tmp_path, compression):
    v = _image()
    path = write_volume(v, tmp_path / "img.am", compression=compression)
    back = read_volume(path)
    np.testing.assert_array_equal(back.values, v.values)
    assert back.dtype == np.float32 and back.attrs["units"] == "gray"
    assert back.sxt.voxel_size == v.sxt.voxel_size  # exact, anisotropic
    for d in "zyx":
        np.testing.assert_allclose(back[d].values, v[d].values, rtol=0, atol=1e-12)
    raw = path.read_bytes()
    head = raw[:raw.index(b"# Data section follows")].decode("utf-8")
    assert "# AmiraMesh BINARY-LITTLE-ENDIAN 2.1" in head and 'Coordinates "µm"' in head
    assert ("HxZip" in head) == (compression == "zip")


def test_round_trip_calibrated_lac_and_unknown_voxel_size(tmp_path):
    cal = sxtlab.Calibration(0.002, 0.1)
    v = _image().sxt.with_calibration(cal).sxt.to_lac()
    back = read_volume(write_volume(v, tmp_path / "lac.am"))
    assert back.attrs["units"] == "1/um" and back.sxt.calibration == cal
    np.testing.assert_array_equal(back.values, v.values)
    gray = sxtlab.volume(np.arange(60, dtype=np.uint8).reshape(3, 4, 5), None, units="gray")
    path = write_volume(gray, tmp_path / "gray.am")
    with pytest.warns(UserWarning, match="voxel size unknown.*counts voxels"):
        back = read_volume(path)
    assert back.attrs["voxel_size_um"] is None and back.dtype == np.uint8
    np.testing.assert_array_equal(back.values, gray.values)


@pytest.mark.parametrize("compression", [None, "rle", "zip"])
def test_round_trip_labels_with_materials(tmp_path, compression):
    lab = _labels()
    path = write_volume(lab, tmp_path / "cell.labels", compression=compression)
    back = read_volume(path)
    np.testing.assert_array_equal(back.values, lab.values)
    assert back.dtype == np.uint8
    assert back.attrs["classes"] == lab.attrs["classes"]
    assert back.sxt.voxel_size == lab.sxt.voxel_size
    h = am.read_header(path)
    mats = [(name, b.get("Id")) for name, b in h.parameters.get("Materials").blocks()]
    assert mats == [("Exterior", (0,)), ("cell", (1,)), ("nucleus", (2,)), ("mitochondria", (5,)),
                    ("ignore", (255,))]
    assert h.field().encoding == {None: "raw", "rle": "HxByteRLE", "zip": "HxZip"}[compression]
    lazy = read_volume(path, chunks={"z": 2})  # dask-backed, remapped block by block
    assert lazy.chunks[0] == (2, 2, 2)
    xr.testing.assert_identical(lazy.compute(), back)


def test_write_errors(tmp_path):
    lab = _labels()
    bad = lab.copy(data=np.where(lab.values == 2, 7, lab.values).astype(np.uint8))
    with pytest.raises(FormatError, match=r"label values \[7\] have no class"):
        write_volume(bad, tmp_path / "bad.labels")
    wide = sxtlab.label_volume(lab.values.astype(np.uint16) * 0 + 300, lab, {300: "cell"})
    with pytest.raises(FormatError, match="HxByteRLE compresses byte lattices.*uint16"):
        write_volume(wide, tmp_path / "wide.labels", compression="rle")
    back = read_volume(write_volume(wide, tmp_path / "wide.labels"))
    assert back.dtype == np.uint8 and back.attrs["classes"] == {"1": "cell"}  # 300 renumbered, fits a byte
    assert not (tmp_path / "bad.labels").exists()


def _write_am(path: Path, header: str, data: bytes) -> Path:
    path.write_bytes(header.encode("utf-8") + data)
    return path


def test_ascii_read_with_units(tmp_path):
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 8
    text = "\n".join(" ".join(repr(float(v)) for v in row) for row in values.reshape(-1, 4))
    path = _write_am(tmp_path / "a.am", (
        "# AmiraMesh 3D ASCII 2.0\n\ndefine Lattice 4 3 2\n\nParameters {\n"
        '    Units {\n        Coordinates "nm"\n    }\n    BoundingBox 0 90 0 60 10 60,\n'
        '    CoordType "uniform"\n}\n\nLattice { float Data } @1\n\n# Data section follows\n@1\n'),
        text.encode() + b"\n")
    v = read_volume(path)
    np.testing.assert_array_equal(v.values, values)
    assert v.sxt.voxel_size == (0.05, 0.03, 0.03) and v.sxt.origin_um == (0.01, 0.0, 0.0)
    path.write_text(path.read_text().replace("0.25 ", ""))  # one value short
    with pytest.raises(FormatError, match="holds 23 values, the lattice 4 x 3 x 2 with 1 component"):
        read_volume(path)


@pytest.mark.parametrize("type_,dtype", [(t, np.dtype(c)) for t, c in am.DTYPES.items()])
@pytest.mark.parametrize("encoding,order", [("BINARY-LITTLE-ENDIAN", "<"), ("BINARY", ">")])
def test_binary_types_and_byte_order(tmp_path, type_, dtype, encoding, order):
    values = (np.arange(24) % 7 - (3 if dtype.kind in "if" else 0)).astype(dtype).reshape(2, 3, 4)
    path = _write_am(tmp_path / "t.am", (
        f"# AmiraMesh {encoding} 2.1\ndefine Lattice 4 3 2\nParameters {{ BoundingBox 0 3 0 2 0 1 }}\n"
        f"Lattice {{ {type_} Data }} @1\n# Data section follows\n@1\n"),
        values.astype(dtype.newbyteorder(order)).tobytes())
    v = read_volume(path, voxel_size=1, as_labels=False)
    assert v.dtype == dtype and v.dtype.isnative
    np.testing.assert_array_equal(v.values, values)


def test_avizo_magic_and_lazy_read(tmp_path):
    values = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = _write_am(tmp_path / "avizo.am", (
        "# Avizo BINARY-LITTLE-ENDIAN 2.1\ndefine Lattice 6 5 4\nParameters {\n"
        "    BoundingBox 0 5 0 4 0 3\n}\nLattice { float Data } @1\n\n# Data section follows\n@1\n"),
        values.astype(">f4").astype("<f4").tobytes() + b"\n")
    v = read_volume(path, voxel_size=0.1, chunks={"z": 2})
    assert v.chunks == ((2, 2), (5,), (6,))
    np.testing.assert_array_equal(v.values, values)


def test_short_file_and_short_rle(tmp_path, ncxt):
    src = (ncxt / "sample_12-files" / "sample_12.rec").read_bytes()
    cut = _write_am(tmp_path / "cut.rec", "", src[:-1000])
    with pytest.raises(FormatError, match=r"cut\.rec.*declares 820,816 bytes, found only 819,816"):
        read_volume(cut)
    enc = am.encode_hx_byte_rle(np.zeros(20, np.uint8))
    path = _write_am(tmp_path / "short.labels", (
        "# AmiraMesh BINARY-LITTLE-ENDIAN 2.1\ndefine Lattice 3 3 3\nParameters {\n"
        "    Materials { Exterior { } Inside { } }\n    BoundingBox 0 2 0 2 0 2\n}\n"
        f"Lattice {{ byte Labels }} @1(HxByteRLE,{len(enc)})\n# Data section follows\n@1\n"), enc + b"\n")
    with pytest.raises(FormatError, match=r"short\.labels.*HxByteRLE data decode to 20 bytes, the lattice needs 27"):
        read_volume(path, voxel_size=1)


def _rle_reference(buf: bytes) -> bytes:
    """HxByteRLE the slow, obvious way (the format's definition)."""
    out, i = bytearray(), 0
    while i < len(buf):
        c = buf[i]
        if c > 127:
            out += buf[i + 1:i + 1 + (c & 127)]
            i += 1 + (c & 127)
        else:
            if i + 1 < len(buf):
                out += bytes([buf[i + 1]]) * c
            i += 2
    return bytes(out)


def test_rle_decoder_matches_the_definition_and_encoder_round_trips():
    rng = np.random.default_rng(3)
    for trial in range(150):
        tokens = bytearray()
        for _ in range(int(rng.integers(1, 40))):
            c = int(rng.integers(0, 256))  # includes zero-length repeats and literals
            tokens.append(c)
            tokens += rng.integers(0, 256, (c & 127) if c > 127 else 1).astype(np.uint8).tobytes()
        if trial % 3 == 0:
            tokens.append(0)  # Amira's closing zero control byte
        ref = _rle_reference(bytes(tokens))
        got = am.decode_hx_byte_rle(np.frombuffer(bytes(tokens), np.uint8), len(ref), where="t")
        assert got.tobytes() == ref
        data = np.repeat(rng.integers(0, 4, 30), rng.integers(1, 200, 30)).astype(np.uint8)
        enc = am.encode_hx_byte_rle(data, slice_size=int(rng.integers(1, 400)))
        assert _rle_reference(enc) == data.tobytes()


def test_hxzip_gzip_and_zlib(tmp_path):
    values = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    for name, payload in (("z", zlib.compress(values.tobytes())), ("g", __import__("gzip").compress(values.tobytes()))):
        path = _write_am(tmp_path / f"{name}.am", (
            "# AmiraMesh BINARY-LITTLE-ENDIAN 2.1\ndefine Lattice 3 3 3\nParameters { BoundingBox 0 2 0 2 0 2 }\n"
            f"Lattice {{ byte Data }} @1(HxZip,{len(payload)})\n# Data section follows\n@1\n"), payload + b"\n")
        np.testing.assert_array_equal(read_volume(path, voxel_size=1).values, values)


def test_unknown_box_unit_and_hypersurface(tmp_path, amdir):
    with pytest.raises(FormatError, match="unknown length unit 'parsec'"):
        read_volume(amdir / "ahds_testscalar.am", box_units="parsec")
    surf = _write_am(tmp_path / "s.am", "# HyperSurface 0.1 BINARY\n", b"")
    with pytest.raises(FormatError, match="HyperSurface.*not a volume"):
        read_volume(surf)


# ----------------------------------------------------------------- projects
def _project(tmp_path: Path, ncxt: Path, body: str) -> Path:
    files = tmp_path / "p-files"
    files.mkdir(exist_ok=True)
    for name in ("sample_12.rec", "sample_12.labels"):
        shutil.copy(ncxt / "sample_12-files" / name, files / name)
    hx = tmp_path / "p.hx"
    hx.write_text("# Amira Project 630\n# Amira\n" + body)
    return hx


def test_project_naming_a_missing_file(tmp_path, ncxt):
    hx = _project(tmp_path, ncxt, (
        '[ load ${SCRIPTDIR}/p-files/sample_12.rec ] setLabel "img"\n'
        '[ load ${SCRIPTDIR}/p-files/gone.labels ] setLabel "lab"\n'
        '"lab" ImageData connect "img"\n'))
    with pytest.raises(FileNotFoundError, match=r"p\.hx: the project loads .*p-files/gone\.labels.*does not exist"):
        read_project(hx)


def test_project_label_lattice_mismatch(tmp_path, ncxt):
    lab = _quiet(read_volume, ncxt / "sample_12-files" / "sample_12.labels")
    small = sxtlab.label_volume(lab.values[:-1], lab.isel(z=slice(0, -1)), lab.attrs["classes"])
    hx = _project(tmp_path, ncxt, (
        '[ load -amiramesh "${SCRIPTDIR}/p-files/sample_12.rec" ] setLabel {img}\n'
        "[ load ${SCRIPTDIR}/p-files/small.labels ] setLabel small.labels\n"
        "small.labels ImageData connect {img}\n"))
    write_volume(small, tmp_path / "p-files" / "small.labels")
    with pytest.raises(FormatError, match=r"small\.labels has lattice \(z, y, x\) = \(57, 61, 58\), its image "
                                          r".*sample_12\.rec has \(58, 61, 58\)"):
        _quiet(read_project, hx)


def test_project_without_label_field_and_inferred_pairing(tmp_path, ncxt):
    hx = _project(tmp_path, ncxt, "[ load ${SCRIPTDIR}/p-files/sample_12.rec ] setLabel sample_12.rec\n")
    with pytest.warns(UserWarning, match="no label field; returning its image sample_12.rec only"):
        ds = read_project(hx, voxel_size=0.03)
    assert list(ds.data_vars) == ["lac"]
    hx.write_text(hx.read_text() + "load ${SCRIPTDIR}/p-files/sample_12.labels\n")  # no connect line
    ds = read_project(hx, voxel_size=0.03)
    assert ds.labels.attrs["classes"] == {"1": "cell"}


def test_project_unresolvable_variable(tmp_path, ncxt):
    hx = _project(tmp_path, ncxt, "[ load ${AMIRA_ROOT}/data/x.am ] setLabel x.am\n")
    with pytest.raises(FileNotFoundError, match=r"AMIRA_ROOT.*only \$\{SCRIPTDIR\}"):
        read_project(hx)


def test_written_header_parses_back(tmp_path):
    """The writer's header is valid for our own parser in every detail we rely on."""
    lab = _labels((3, 4, 5))
    path = write_volume(lab, tmp_path / "x.labels", compression="rle")
    h = am.read_header(path)
    assert h.defines == {"Lattice": (5, 4, 3)}
    assert h.parameters.get("Units").get("Coordinates") == ("µm",)
    assert h.parameters.get("CoordType") == ("uniform",)
    assert re.fullmatch(r"Lattice \{ byte Labels \} @1\(HxByteRLE,\d+\)", h.field().declaration)


def test_header_longer_than_the_first_read(amdir, monkeypatch):
    """A header cut inside a block or a string by the first read is read again, longer."""
    monkeypatch.setattr(am, "_HEADER_READ_SIZES", (300, 2000, 1 << 20))
    h = am.read_header(amdir / "tardis_am3D.am")  # 10,943-byte header with a long quoted Tcl script
    assert h.data_offset == 10943 and h.parameters.get("BoundingBox")[:2] == (0, 23664)
