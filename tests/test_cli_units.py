"""Units on the command line: --lac, --calibration, --calibrate-from-medium on every
command that reads an image, and what `sxtlab info` says is missing."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import tifffile

import sxtlab
from sxtlab import Calibration, phantom
from sxtlab.cells import calibrate_from_medium
from sxtlab.cli import build_parser, main

#: The medium's LAC of the phantom below (µm⁻¹): vitreous ice.
MEDIUM = 0.105
#: Gray values per µm⁻¹ of the gray TIFF (a reconstruction rescaled for 16-bit storage).
GRAY_PER_LAC = 400.0


@pytest.fixture(scope="module")
def cell():
    """A 32³ phantom cell at the default model's voxel size, its medium ice."""
    return phantom.cell(seed=1, shape=(32, 32, 32), voxel_size=0.05, class_lac={"background": MEDIUM})


@pytest.fixture
def lac_mrc(cell, tmp_path):
    """The cell's LAC (µm⁻¹) in an MRC file as reconstruction software writes it: no units."""
    path = tmp_path / "cell.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(cell["lac"].values.astype(np.float32))
        mrc.voxel_size = 500.0  # Å
    return path


@pytest.fixture
def gray_tiff(cell, tmp_path):
    """The cell as 16-bit gray values proportional to LAC, in an ImageJ TIFF (µm spacing)."""
    path = tmp_path / "cell.tif"
    gray = np.round(cell["lac"].values * GRAY_PER_LAC).astype(np.uint16)
    tifffile.imwrite(path, gray, imagej=True, resolution=(20.0, 20.0),
                     metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"})
    return path


def _python_labels(path, calibration, tmp_path):
    """Labels of sxtlab's Python API given the calibration: the same (block-wise) route the CLI takes."""
    model = sxtlab.load_model("default")
    image = sxtlab.read_volume(path, calibration=calibration)
    tmp_path.mkdir(exist_ok=True)
    return model.predict(image, out=tmp_path / "python.zarr", progress=False)["labels"].values


def test_segment_lac_mrc_with_lac_option_equals_python(cell, lac_mrc, tmp_path, capsys):
    out = tmp_path / "seg.zarr"
    assert main(["segment", str(lac_mrc), "--lac", "-o", str(out), "--ngff-version", "0.4"]) == 0
    assert (out / ".zattrs").exists() and not (out / "zarr.json").exists()  # 0.4 as asked (Python's: 0.5)
    seg = sxtlab.read_segmentation(out)
    assert seg["lac"].attrs["lac_scale"] == 1.0 and seg["lac"].attrs["lac_offset"] == 0.0
    expected = _python_labels(lac_mrc, Calibration(1.0), tmp_path)
    np.testing.assert_array_equal(seg["labels"].values, expected)
    # The cell was found (not an empty answer on both sides): its voxels against the truth's.
    found, truth = expected > 0, cell["labels"].values > 0
    assert 2 * (found & truth).sum() / (found.sum() + truth.sum()) > 0.8


def test_segment_from_the_medium_on_lac_mrc_and_gray_tiff_equals_python(cell, lac_mrc, gray_tiff, tmp_path,
                                                                          capsys):
    lac_labels = None
    for path, true_scale in ((lac_mrc, 1.0), (gray_tiff, 1 / GRAY_PER_LAC)):
        out = tmp_path / f"{path.stem}-{path.suffix[1:]}.zarr"
        assert main(["segment", str(path), "--calibrate-from-medium", str(MEDIUM), "-o", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "calibrated from the medium: LAC = " in printed and "medium voxels" in printed
        seg = sxtlab.read_segmentation(out)
        cal = seg["lac"].sxt.calibration
        # The fit finds the medium: the scale within 1 % of the truth, the offset 0.
        assert cal.scale == pytest.approx(true_scale, rel=0.01) and cal.offset == 0.0
        assert f"LAC = {cal.scale:.6g}·gray" in printed
        python = calibrate_from_medium(sxtlab.read_volume(path), MEDIUM)
        assert python == cal
        np.testing.assert_array_equal(seg["labels"].values, _python_labels(path, python, tmp_path / path.suffix[1:]))
        if lac_labels is None:
            lac_labels = seg["labels"].values
        else:  # 16-bit rounding of the TIFF changes at most a few voxels
            assert (seg["labels"].values != lac_labels).mean() < 0.01


def test_medium_with_a_given_scale_fits_the_offset(cell, tmp_path, capsys):
    gray = cell["lac"].values * GRAY_PER_LAC - 40.0  # gray = 400·LAC − 40: not proportional
    path = tmp_path / "shifted.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(gray.astype(np.float32))
        mrc.voxel_size = 500.0
    assert main(["info", str(path), "--calibrate-from-medium", str(MEDIUM)]) == 2
    err = capsys.readouterr().err
    # One region cannot fix both numbers; the error names the option that gives the other.
    assert "not proportional to LAC" in err and "--calibration SCALE beside --calibrate-from-medium" in err
    assert main(["info", str(path), "--calibrate-from-medium", str(MEDIUM),
                 "--calibration", str(1 / GRAY_PER_LAC)]) == 0
    out = capsys.readouterr().out
    assert "medium and given scale" in out
    offset = float(out.split("·gray + ")[1].split(" ")[0])
    assert offset == pytest.approx(40.0 / GRAY_PER_LAC, abs=1e-4)  # LAC = gray/400 + 0.1


def test_info_says_what_is_missing_and_the_option(lac_mrc, tmp_path, capsys):
    bare = tmp_path / "bare.mrc"
    with mrcfile.new(bare) as mrc:
        mrc.set_data(np.full((4, 5, 6), 0.2, np.float32))  # voxel size 0: unset
    assert main(["info", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "voxel size: unknown (the file records none); give it with --voxel-size" in out
    assert "give --lac if they are LAC in µm⁻¹ already (their range, 0.2 … 0.2, is LAC's)" in out
    assert main(["info", str(lac_mrc), "--lac"]) == 0
    out = capsys.readouterr().out
    assert "calibration: LAC = 1·gray + 0 µm⁻¹" in out and "complete: voxel size and LAC units known" in out


def test_every_image_command_has_the_image_options():
    parser = build_parser()
    commands = {"segment": ["x.mrc", "-o", "o.zarr"], "info": ["x.mrc"], "measure": ["s.zarr", "-o", "t.csv"],
                "train": ["x.hx", "--task", "cell", "-o", "m"], "catalog add": ["c", "x.hx"],
                "catalog import": ["c", "folder"]}
    for command, rest in commands.items():
        args = parser.parse_args(command.split() + rest + ["--voxel-size", "0.05", "--calibrate-from-medium"])
        assert args.calibrate_from_medium == sxtlab.calibration.LAC_WATER_PER_UM, command
        assert parser.parse_args(command.split() + rest + ["--lac"]).lac, command
        assert parser.parse_args(command.split() + rest + ["--calibration", "2,0.1"]).calibration == Calibration(2, 0.1)


def test_conflicting_calibration_options_are_refused(lac_mrc, capsys):
    assert main(["info", str(lac_mrc), "--lac", "--calibration", "2"]) == 2
    assert "--lac says the values are LAC already" in capsys.readouterr().err
    assert main(["info", str(lac_mrc), "--calibrate-from-medium", "--calibration", "2,0.1"]) == 2
    assert "fits the offset when --calibration gives the scale alone" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", str(lac_mrc), "--calibrate-from-medium", "-1"])
    assert "expected the medium's LAC in µm⁻¹" in capsys.readouterr().err


def test_catalog_add_and_import_record_the_calibration(cell, lac_mrc, tmp_path, capsys):
    cat = tmp_path / "refs.catalog"
    assert main(["catalog", "create", str(cat)]) == 0
    labels = tmp_path / "cell.labels"
    sxtlab.write_volume(cell["labels"], labels)
    assert main(["catalog", "add", str(cat), str(lac_mrc), str(labels), "--lac"]) == 0
    row = sxtlab.Catalog.open(cat).to_frame().iloc[0]
    assert (row["units"], row["lac_scale"], row["lac_offset"]) == ("gray", 1.0, 0.0)

    # An Amira project of gray values, imported with a calibration from each project's medium.
    files = tmp_path / "archive" / "cell-files"
    files.mkdir(parents=True)
    gray = sxtlab.volume(cell["lac"].values * GRAY_PER_LAC, 0.05, units="gray")
    sxtlab.write_volume(gray, files / "image.am")
    sxtlab.write_volume(cell["labels"], files / "image.labels")
    (files.parent / "cell.hx").write_text(
        "# Amira Project 630\n# Amira\n[ load ${SCRIPTDIR}/cell-files/image.am ] setLabel image.am\n"
        "[ load ${SCRIPTDIR}/cell-files/image.labels ] setLabel image.labels\n"
        "image.labels ImageData connect image.am\n")
    assert main(["catalog", "import", str(cat), str(files.parent), "--calibrate-from-medium", str(MEDIUM)]) == 0
    assert "calibrated from the medium" in capsys.readouterr().out
    frame = sxtlab.Catalog.open(cat).to_frame()
    assert frame["lac_scale"].iloc[1] == pytest.approx(1 / GRAY_PER_LAC, rel=0.01)


def test_lac_on_an_image_in_lac_units_already_is_accepted_calibration_refused(cell, tmp_path, capsys):
    path = sxtlab.write_volume(cell["lac"], tmp_path / "lac.ome.zarr")  # units 1/um recorded
    assert main(["info", str(path), "--lac"]) == 0
    capsys.readouterr()
    assert main(["info", str(path), "--calibration", "2"]) == 2
    assert "holds LAC in µm⁻¹ already (units '1/um')" in capsys.readouterr().err


def test_train_from_a_catalog_refuses_image_options(tmp_path, capsys):
    # catalog entries carry their own voxel size and calibration: an option would be ignored
    assert main(["train", "--catalog", str(tmp_path / "refs.catalog"), "--task", "cell", "-o",
                 str(tmp_path / "m"), "--lac"]) == 2
    assert "apply to input files; catalog entries carry their own" in capsys.readouterr().err
