"""MRC reading and writing: headers in Å, unset voxel sizes, permuted axes, signed
bytes, non-standard and corrupt files, and exact round trips of sxtlab's volumes."""

from __future__ import annotations

import gzip
import warnings

import dask.array as da
import mrcfile
import numpy as np
import pytest

import sxtlab
from sxtlab import FormatError, OutputExistsError, VoxelSizeUnknownError
from sxtlab.io import _mrc, read_segmentation, read_volume, write_volume
from volumes import image

A = 1e-4  # µm per Å



# -- round trips ---------------------------------------------------------------------
def test_round_trip_is_exact(tmp_path, no_warnings):
    vol = image(voxel_size=(0.0123456789, 0.032, 0.0251), origin=(0.3, -0.2, 1.23456789))
    path = write_volume(vol, tmp_path / "cell.mrc")
    back = read_volume(path)
    np.testing.assert_array_equal(back.values, vol.values)
    assert back.dtype == np.float32
    assert back.attrs["voxel_size_um"] == [0.0123456789, 0.032, 0.0251]
    assert back.sxt.origin_um == vol.sxt.origin_um
    for d in "zyx":
        np.testing.assert_array_equal(back[d].values, vol[d].values)
    assert back.sxt.calibration == vol.sxt.calibration
    assert back.sxt.calibration.scale == 1.234567e-3 and back.sxt.calibration.offset == -0.0987654321
    assert back.attrs["units"] == "gray" and back.attrs["cell_id"] == "cell 7"
    assert back.name == "raw" and back.attrs["source"] == str(path)


def test_written_header_is_standard_mrc(tmp_path):
    vol = image(voxel_size=(0.035, 0.032, 0.030), origin=(0.3, 0.2, 0.1))
    path = write_volume(vol, tmp_path / "cell.mrc")
    with mrcfile.open(path) as m:  # strict mode: a valid MAP id, stamp, mode and size
        assert m.data.shape == (6, 7, 8) and m.header.mode == 2
        np.testing.assert_allclose(m.voxel_size.tolist(), (300.0, 320.0, 350.0), rtol=1e-6)
        np.testing.assert_allclose(m.header.origin.tolist(), (1000.0, 2000.0, 3000.0), rtol=1e-6)
        assert (int(m.header.mapc), int(m.header.mapr), int(m.header.maps)) == (1, 2, 3)
        assert bytes(m.header.exttyp) == b"JSON"
        assert float(m.header.dmin) == pytest.approx(float(vol.min()))
        assert float(m.header.rms) == pytest.approx(float(vol.std()), rel=1e-5)
        labels = b"".join(bytes(m.header.label[i]) for i in range(int(m.header.nlabl)))
    assert b"sxtlab" in labels


@pytest.mark.parametrize("dtype, values, stored_mode", [
    (np.uint8, [0, 1, 200, 255], 0),
    (np.int8, [-128, -1, 0, 127], 0),
    (np.int16, [-300, 0, 3000], 1),
    (np.uint16, [0, 1, 65535], 6),
    (np.int32, [0, 7, 255], 0),          # fits unsigned bytes
    (np.int64, [-5, 0, 30000], 1),       # needs int16
    (np.int32, [-1, 0, 100000], 2),      # exact in float32
    (np.float16, [0.5, -2.0, 1000.0], 2),
])
def test_round_trip_keeps_dtype_and_values(tmp_path, no_warnings, dtype, values, stored_mode):
    data = np.resize(np.array(values, dtype=dtype), (3, 4, 5))
    vol = sxtlab.volume(data, (0.04, 0.03, 0.03))
    path = write_volume(vol, tmp_path / "v.mrc")
    with mrcfile.open(path) as m:
        assert int(m.header.mode) == stored_mode
    back = read_volume(path)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.values, data)


def test_bool_is_stored_as_unsigned_bytes(tmp_path, no_warnings):
    mask = sxtlab.volume(np.eye(4, dtype=np.uint8).reshape(1, 4, 4), 0.03).astype(bool)
    back = read_volume(write_volume(mask, tmp_path / "mask.mrc"))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back.values, mask.values)


def test_float64_is_rounded_to_float32(tmp_path):
    vol = sxtlab.volume(np.full((2, 3, 4), 0.1, np.float64), 0.03)
    back = read_volume(write_volume(vol, tmp_path / "v.mrc"))
    assert back.dtype == np.float32 and np.all(back.values == np.float32(0.1))


def test_uint8_labels_keep_unannotated_value_and_classes(tmp_path, no_warnings):
    img = image()
    lab = np.zeros(img.shape, np.uint8)
    lab[2:4, 2:5, 2:6] = 2
    lab[0] = sxtlab.UNANNOTATED
    labels = sxtlab.label_volume(lab, img, {1: "nucleus", 2: "lipid droplet"})
    path = write_volume(labels, tmp_path / "labels.mrc")
    with mrcfile.open(path) as m:
        # unsigned bytes in mode 0 with IMOD's stamp, as IMOD writes them
        assert int(m.header.mode) == 0
        stamp, flags = np.frombuffer(m.header.tobytes()[152:160], "<i4")
        assert stamp == _mrc.IMOD_STAMP and flags == 0
        assert float(m.header.dmax) == 255.0
    back = read_volume(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back.values, lab)
    assert back.sxt.is_labels and back.sxt.classes == {1: "nucleus", 2: "lipid_body"}
    assert back.attrs["voxel_size_um"] == img.attrs["voxel_size_um"]
    assert back.sxt.origin_um == img.sxt.origin_um


def test_unknown_voxel_size_round_trips_as_unknown(tmp_path):
    vol = sxtlab.volume(np.ones((2, 3, 4), np.float32), None)
    path = write_volume(vol, tmp_path / "v.mrc")
    with mrcfile.open(path) as m:
        assert tuple(m.header.cella.tolist()) == (0.0, 0.0, 0.0)
    with pytest.warns(UserWarning, match=r"voxel size unset.*cella"):
        back = read_volume(path)
    assert back.attrs["voxel_size_um"] is None





def test_gzip_compressed_file(tmp_path, no_warnings):
    vol = image()
    plain = write_volume(vol, tmp_path / "v.mrc")
    packed = tmp_path / "v.mrc.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    np.testing.assert_array_equal(read_volume(packed).values, vol.values)
    assert isinstance(read_volume(packed, chunks=3).data, da.Array)


# -- voxel size: header values, unset values, overrides ------------------------------
def test_voxel_size_override_fills_and_warns_when_it_differs(tmp_path):
    path = write_volume(image(voxel_size=(0.05, 0.032, 0.032)), tmp_path / "v.mrc")
    with pytest.warns(UserWarning, match=r"overrides the file's.*along z"):
        vol = read_volume(path, voxel_size=(0.06, None, None))
    assert vol.attrs["voxel_size_um"] == [0.06, 0.032, 0.032]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_volume(path, voxel_size=(0.05, 0.032, 0.032)).attrs["voxel_size_um"] == [0.05, 0.032, 0.032]
    with pytest.raises(FormatError, match="voxel_size"):
        read_volume(path, voxel_size=(0.05, -1.0, 0.03))
    with pytest.raises(FormatError, match=r"expected one value or three"):
        read_volume(path, voxel_size=(0.05, 0.03))


def test_partial_override_of_unset_header_is_refused(tmp_path):
    path = tmp_path / "zero.mrc"
    mrcfile.new(path, np.zeros((2, 3, 4), np.float32)).close()
    with pytest.raises(FormatError, match=r"leaves y, x unknown"):
        read_volume(path, voxel_size=(0.05, None, None))


def test_one_angstrom_means_unset(tmp_path):
    path = tmp_path / "one.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((2, 3, 4), np.float32))
        m.voxel_size = 1.0
    with pytest.warns(UserWarning, match=rf"{path.name}.*voxel size unset.*\(1, 1, 1\) Å"):
        vol = read_volume(path)
    with pytest.raises(VoxelSizeUnknownError, match="voxel size"):
        vol.sxt.voxel_volume_um3


def test_permuted_axes_are_transposed_with_their_own_voxel_sizes(tmp_path, no_warnings):
    true = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (z, y, x)
    vx, vy, vz = 15.0, 25.0, 35.0  # Å
    path = tmp_path / "permuted.mrc"
    with mrcfile.new(path) as m:
        # columns along z, rows along x, sections along y: stored[s, r, c] = true[c, s, r]
        m.set_data(np.ascontiguousarray(true.transpose(1, 2, 0)))
        h = m.header
        h.mapc, h.mapr, h.maps = 3, 1, 2
        h.mx, h.my, h.mz = 6, 5, 4
        h.cella = (6 * vx, 5 * vy, 4 * vz)
        h.nxstart, h.nystart, h.nzstart = 2, -3, 1  # column (z), row (x), section (y) starts
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.values, true)
    np.testing.assert_allclose(vol.attrs["voxel_size_um"], (vz * A, vy * A, vx * A), rtol=1e-12)
    np.testing.assert_allclose(vol.sxt.origin_um, (2 * vz * A, 1 * vy * A, -3 * vx * A), rtol=1e-12)


def test_big_endian_file(tmp_path, no_warnings):
    data = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    path = tmp_path / "big_endian.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)  # mrcfile writes the header in the data's byte order
        m.voxel_size = 300.0
    for chunks in (None, 2):
        vol = read_volume(path, chunks=chunks)
        assert vol.dtype == np.dtype("float32") and vol.dtype.isnative
        np.testing.assert_array_equal(vol.values, data)
    assert vol.sxt.voxel_size == (0.03, 0.03, 0.03)


def test_unset_axis_mapping_is_assumed_standard(tmp_path):
    path = tmp_path / "map0.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
        m.voxel_size = 300.0
        m.header.mapc = m.header.mapr = m.header.maps = 0
    with pytest.warns(UserWarning, match=r"'mapc, mapr, maps' = 0, 0, 0 \(unset\); assuming 1, 2, 3") as record:
        vol = read_volume(path)
    assert record[0].filename == __file__  # attributed to the caller, not to sxtlab
    assert vol.shape == (2, 3, 4)


def test_bad_axis_mapping_is_refused(tmp_path):
    path = tmp_path / "map.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((2, 3, 4), np.float32))
        m.header.mapc, m.header.mapr, m.header.maps = 1, 1, 3
    with pytest.raises(FormatError, match=r"mapc, mapr, maps.*\(1, 1, 3\)"):
        read_volume(path)


# -- mode-0 bytes ----------------------------------------------------------------------
def test_signed_bytes_with_negative_statistics_stay_signed(tmp_path, no_warnings):
    path = tmp_path / "signed.mrc"
    data = np.array([-100, -1, 0, 5], np.int8).reshape(1, 2, 2).repeat(2, 0)
    mrcfile.new(path, data).close()  # mrcfile writes dmin = -100
    back = read_volume(path, voxel_size=0.03)
    assert back.dtype == np.int8
    np.testing.assert_array_equal(back.values, data)


def test_undecidable_bytes_are_read_signed_with_a_warning(tmp_path):
    path = tmp_path / "bytes.mrc"
    data = np.array([-100, -1, 0, 5], np.int8).reshape(1, 2, 2).repeat(2, 0)
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 300.0
        m.reset_header_stats()  # dmax < dmin: "not determined" in MRC2014
    with pytest.warns(UserWarning, match=r"bytes\.mrc: mode 0 bytes read as signed.*signed_bytes=False"):
        back = read_volume(path)
    assert back.dtype == np.int8
    unsigned = read_volume(path, signed_bytes=False)
    np.testing.assert_array_equal(unsigned.values, data.view(np.uint8))


# -- corrupt and unusual files ---------------------------------------------------------
def test_truncated_file_names_expected_and_found_bytes(tmp_path):
    path = write_volume(image(shape=(4, 5, 6)), tmp_path / "cut.mrc")
    full = path.read_bytes()
    header_bytes = len(full) - 4 * 5 * 6 * 4
    path.write_bytes(full[: header_bytes + 100])
    with pytest.raises(FormatError, match=r"cut\.mrc.*promises 480 data bytes.*holds 100"):
        read_volume(path)
    packed = tmp_path / "cut.mrc.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(FormatError, match=r"promises 480 data bytes.*holds 100"):
        read_volume(packed)


def test_file_shorter_than_a_header(tmp_path):
    path = tmp_path / "tiny.mrc"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(FormatError, match=r"tiny\.mrc: not a readable MRC file.*header"):
        read_volume(path)


def test_extra_bytes_after_the_data_warn(tmp_path):
    path = write_volume(image(), tmp_path / "long.mrc")
    with open(path, "ab") as fh:
        fh.write(b"\0" * 16)
    with pytest.warns(UserWarning, match=r"long\.mrc: 16 bytes follow the data block.*ignored"):
        read_volume(path)


@pytest.mark.parametrize("shape, match", [
    ((5, 6), r"single 2-D image"),
    ((2, 3, 4, 5), r"stack of 2 volumes"),
])
def test_2d_and_4d_data_are_refused(tmp_path, shape, match):
    path = tmp_path / "nd.mrc"
    mrcfile.new(path, np.zeros(shape, np.float32)).close()
    with pytest.raises(FormatError, match=rf"nd\.mrc: expected one 3-D volume.*{match}"):
        read_volume(path)


def test_complex_mode_is_refused(tmp_path):
    path = tmp_path / "fft.mrc"
    mrcfile.new(path, np.zeros((2, 3, 4), np.complex64)).close()
    with pytest.raises(FormatError, match=r"'mode' = 4 stores complex"):
        read_volume(path)


def test_nan_values_are_counted_and_located(tmp_path):
    data = np.zeros((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[2, 0, 0] = np.inf
    path = tmp_path / "nan.mrc"
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile's own, while computing header stats
        mrcfile.new(path, data).close()
    with pytest.raises(FormatError, match=r"2 non-finite values \(1 NaN, 1 inf\).*\(z, y, x\) = \(1, 2, 3\)"):
        read_volume(path, voxel_size=0.03)
    lazy = read_volume(path, voxel_size=0.03, chunks=(2, 4, 5))
    with pytest.raises(FormatError, match=r"nan\.mrc: 1 non-finite values .* the first at \(2, 0, 0\)"):
        lazy.isel(z=[2]).values


def test_writing_refuses_bad_volumes(tmp_path):
    vol = image()
    with pytest.raises(FormatError, match="non-finite"):
        write_volume(vol.where(vol > 300), tmp_path / "nan.mrc")
    with pytest.raises(FormatError, match=r"dims \(z, y, x\)"):
        write_volume(vol.isel(z=0), tmp_path / "2d.mrc")
    with pytest.raises(FormatError, match=r"coords along 'z' are spaced"):
        write_volume(vol.isel(z=slice(None, None, 2)), tmp_path / "strided.mrc")
    with pytest.raises(FormatError, match=r"int64 values 0\.\.33554432"):
        write_volume(sxtlab.volume(np.array([0, 2**25], np.int64).reshape(1, 1, 2), 0.03), tmp_path / "big.mrc")
    with pytest.raises(FormatError, match=r"attr 'when'"):
        write_volume(vol.assign_attrs(when=object()), tmp_path / "attr.mrc")
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_written_from_transposed_dims(tmp_path):
    vol = image()
    back = read_volume(write_volume(vol.transpose("x", "z", "y"), tmp_path / "t.mrc"))
    np.testing.assert_array_equal(back.values, vol.values)


def test_dispatcher_errors(tmp_path):
    vol = image()
    path = write_volume(vol, tmp_path / "v.mrc")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_volume(vol, path)
    write_volume(vol * 2, path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).values, (vol * 2).values)
    with pytest.raises(FormatError, match=r"unknown extension '\.xyz'"):
        read_volume(path.rename(tmp_path / "v.xyz"))
    with pytest.raises(FormatError, match="holds one volume"):
        read_segmentation(write_volume(vol, tmp_path / "w.mrc"))


def test_classes_argument_gives_a_label_volume(tmp_path):
    lab = np.zeros((2, 3, 4), np.int16)
    lab[1] = 1
    path = write_volume(sxtlab.volume(lab, 0.03), tmp_path / "mask.mrc")
    vol = read_volume(path, classes={1: "nucleus"})
    assert vol.sxt.classes == {1: "nucleus"} and vol.attrs["units"] == "label"
    with pytest.raises(FormatError, match="cannot read as labels"):
        read_volume(write_volume(image(), tmp_path / "float.mrc"), classes={1: "nucleus"})


# -- real files written by other tools (../shared/data/readers/mrc) --------------------
def test_emd_3001_permuted_axes(shared):
    vol = read_volume(shared / "data/readers/mrc/EMD-3001.map")
    with mrcfile.open(shared / "data/readers/mrc/EMD-3001.map") as m:
        stored = np.array(m.data)  # (sections = y, rows = x, columns = z)
    assert vol.shape == (73, 25, 43)
    np.testing.assert_array_equal(vol.values, stored.transpose(2, 0, 1))
    np.testing.assert_allclose(vol.attrs["voxel_size_um"], (0.45875 * A, 0.3925 * A, 0.44825 * A), rtol=1e-6)
    # nxstart, nystart, nzstart = 0, -21, -12 start the columns (z), rows (x), sections (y)
    np.testing.assert_allclose(vol.sxt.origin_um, (0.0, -12 * 0.3925 * A, -21 * 0.44825 * A), rtol=1e-6)


def test_emd_3197_gzip(shared, no_warnings):
    vol = read_volume(shared / "data/readers/mrc/emd_3197.map.gz")
    assert vol.shape == (20, 20, 20) and vol.dtype == np.float32
    np.testing.assert_allclose(vol.attrs["voxel_size_um"], [11.4 * A] * 3, rtol=1e-6)


def test_sfftk_anisotropic_labels(shared, no_warnings):
    vol = read_volume(shared / "data/readers/mrc/sfftk_multi0.map")
    assert vol.shape == (36, 30, 32)
    assert set(np.unique(vol.values)) == {0, 1}
    np.testing.assert_allclose(vol.attrs["voxel_size_um"], (622 / 36 * A, 550 / 30 * A, 464 / 32 * A), rtol=1e-6)
    np.testing.assert_allclose(vol.attrs["voxel_size_um"], (17.28 * A, 18.33 * A, 14.5 * A), rtol=1e-3)


def test_tardis_serialem_bytes_without_map_id(shared):
    path = shared / "data/readers/mrc/tardis_mrc3D.mrc"
    with pytest.warns(UserWarning) as record:
        vol = read_volume(path)
    text = "\n".join(str(w.message) for w in record)
    assert "tardis_mrc3D.mrc" in text and "'map'" in text and "'machst'" in text
    assert "read as unsigned" in text and "mode 0" in text
    assert vol.shape == (78, 64, 32) and vol.dtype == np.uint8
    assert (int(vol.min()), int(vol.max())) == (141, 163)
    np.testing.assert_allclose(vol.attrs["voxel_size_um"], [23.2 * A] * 3, rtol=1e-5)


def test_sfftk_corrupt_header(shared):
    with pytest.raises(FormatError, match=r"sfftk_corrupt_header\.map.*promises 34,279,084 data bytes.*holds 84$"):
        read_volume(shared / "data/readers/mrc/sfftk_corrupt_header.map")


@pytest.mark.parametrize("name", ["blob.mrc", "blob.labels.mrc"])
def test_ncxt_blobs_have_unknown_voxel_size(shared, name):
    path = shared / "data/ncxt" / name
    with pytest.warns(UserWarning) as record:
        vol = read_volume(path)
    messages = [str(w.message) for w in record]
    assert any(m.startswith(f"{path}: voxel size unset") and "cella" in m for m in messages)
    assert any("'MAP ' id" in m for m in messages)  # written without the MRC2014 id
    assert vol.shape == (33, 32, 31) and vol.attrs["voxel_size_um"] is None
    with pytest.raises(VoxelSizeUnknownError, match="voxel size"):
        vol.sxt.voxel_size
    with pytest.warns(UserWarning, match="'MAP ' id"):
        assert read_volume(path, voxel_size=0.03).sxt.voxel_size == (0.03, 0.03, 0.03)
    if name == "blob.labels.mrc":
        assert set(np.unique(vol.values)) == {0, 1}


# -- field cases (../shared/cases) -----------------------------------------------------
def test_case_01_zero_cell(field_case):
    folder, exp = field_case("01")
    path = folder / exp["input"]
    with pytest.warns(UserWarning, match=rf"{path.name}.*voxel size.*cella"):
        vol = read_volume(path)
    assert list(vol.shape) == exp["shape_zyx"]
    assert vol.attrs["voxel_size_um"] is None
    with pytest.raises(VoxelSizeUnknownError, match="voxel size"):
        vol.sxt.voxel_volume_um3
    fixed = read_volume(path, voxel_size=exp["override_voxel_size_um_zyx"])
    np.testing.assert_allclose(fixed.sxt.voxel_size, exp["with_override_expect_voxel_size_um_zyx"])


def test_case_02_angstrom_units(field_case, no_warnings):
    folder, exp = field_case("02")
    vol = read_volume(folder / exp["input"])
    assert list(vol.shape) == exp["shape_zyx"]
    np.testing.assert_allclose(vol.sxt.voxel_size, exp["voxel_size_um_zyx"], rtol=exp["rtol"])
    extent = [n * v for n, v in zip(vol.shape, vol.sxt.voxel_size)]
    np.testing.assert_allclose(extent, exp["extent_um_zyx"], rtol=exp["rtol"])


def test_case_03_imod_signed_mask(field_case):
    folder, exp = field_case("03")
    with pytest.warns(UserWarning, match=r"imodFlags"):
        vol = read_volume(folder / exp["input"])
    assert sorted(np.unique(vol.values).tolist()) == exp["expected_unique_values"]
    assert int((vol > 0).sum()) == exp["foreground_voxels"]
    volume_um3 = float((vol > 0).sum()) * vol.sxt.voxel_volume_um3
    assert volume_um3 == pytest.approx(exp["foreground_volume_um3"], rel=exp["rtol"])


def test_case_04_mode0_unsigned(field_case):
    folder, exp = field_case("04")
    for name in exp["inputs"].values():
        with pytest.warns(UserWarning, match=rf"{name}: mode 0 bytes read as unsigned.*assumed unsigned"):
            vol = read_volume(folder / name)
        assert list(vol.shape) == exp["shape_zyx"]
        assert int(vol.values[2, 3, 4]) == exp["value_at_zyx_2_3_4"]
        assert (int(vol.min()), int(vol.max())) == (exp["min"], exp["max"])
        assert float(vol.mean()) == pytest.approx(exp["mean"], rel=exp["rtol"])


def test_case_06_missing_map_id(field_case):
    folder, exp = field_case("06")
    with pytest.warns(UserWarning, match=rf"{exp['input']}.*'MAP ' id.*field 'map'"):
        vol = read_volume(folder / exp["input"])
    assert list(vol.shape) == exp["shape_zyx"]
    assert int(vol.sum()) == exp["foreground_voxels"]
    np.testing.assert_allclose(vol.sxt.voxel_size, exp["voxel_size_um_zyx"], rtol=exp["rtol"])


def test_case_07_written_mrc_keeps_voxel_size_and_origin(field_case, tmp_path, no_warnings):
    folder, exp = field_case("07")
    vol = read_volume(folder / exp["input"])
    np.testing.assert_allclose(vol.sxt.voxel_size, exp["expected_attrs_voxel_size_um_zyx"], rtol=exp["rtol"])
    labels = sxtlab.label_volume((vol > 0).astype(np.uint8), vol, {1: "cell"})
    out = write_volume(labels, tmp_path / "derived_labels.mrc")
    with mrcfile.open(out) as m:
        np.testing.assert_allclose(m.voxel_size.tolist(), exp["expected_output_voxel_size_A_xyz"], rtol=exp["rtol"])
        np.testing.assert_allclose(m.header.origin.tolist(), exp["expected_output_origin_A_xyz"], rtol=exp["rtol"])
    back = read_volume(out)
    assert back.sxt.origin_um == vol.sxt.origin_um
    np.testing.assert_allclose(back.sxt.voxel_size, exp["expected_attrs_voxel_size_um_zyx"], rtol=exp["rtol"])
