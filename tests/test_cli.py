"""The command line: outputs, exit codes and one-line reasons."""

import numpy as np
import pandas as pd
import pytest

import sxtlab
from sxtlab.cli import main



def test_measure_writes_csv_with_units(seg_file, tmp_path, capsys):
    out = tmp_path / "table.csv"
    assert main(["measure", str(seg_file), "-o", str(out)]) == 0
    table = pd.read_csv(out)
    nucleus = table[table["class"] == "nucleus"].iloc[0]
    assert nucleus["volume_um3"] == pytest.approx(4 * 4 * 6 * 0.05 * 0.03 * 0.03)
    assert "rows (instances)" in capsys.readouterr().out


def test_existing_output_is_refused_with_code_3(seg_file, tmp_path, capsys):
    out = tmp_path / "table.csv"
    out.write_text("keep me")
    assert main(["measure", str(seg_file), "-o", str(out)]) == 3
    assert out.read_text() == "keep me"
    assert "--overwrite" in capsys.readouterr().err
    assert main(["measure", str(seg_file), "-o", str(out), "--overwrite"]) == 0


def test_bad_input_is_one_line_with_code_2(tmp_path, capsys):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc file")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sxtlab: ") and "broken.mrc" in err[-1]
    assert main(["info", str(tmp_path / "missing.rec")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_info_summarises_with_voxel_size(seg_file, capsys):
    assert main(["info", str(seg_file)]) == 0
    out = capsys.readouterr().out
    assert "voxel size 0.05 × 0.03 × 0.03 µm" in out and "nucleus" in out


def test_catalog_create_add_list(seg_file, tmp_path, capsys):
    cat = tmp_path / "refs.catalog"
    assert main(["catalog", "create", str(cat)]) == 0
    assert main(["catalog", "add", str(cat), str(seg_file), "--meta", "species=yeast"]) == 0
    assert main(["catalog", "list", str(cat)]) == 0
    assert "yeast" in capsys.readouterr().out
    assert main(["catalog", "add", str(cat), str(seg_file), "--meta", "oops"]) == 2


def test_train_from_a_catalog_then_segment_with_the_model(tmp_path, capsys):
    from sxtlab import phantom
    from sxtlab.task import Task

    cat = tmp_path / "refs.catalog"
    assert main(["catalog", "create", str(cat)]) == 0
    lipids_only = Task(["cell", "lipid droplets"])  # a study that annotated nothing else
    for seed in (1, 2):
        cell = phantom.cell(seed=seed, shape=(32, 32, 32), voxel_size=0.1)
        path = sxtlab.write_volume(sxtlab.segmentation(cell["lac"], lipids_only.remap(cell["labels"])),
                                   tmp_path / f"cell{seed}.ome.zarr")
        assert main(["catalog", "add", str(cat), str(path), "--meta", f"annotator=study {seed}"]) == 0
    model = tmp_path / "model"
    assert main(["train", "--catalog", str(cat), "--task", "LD", "-o", str(model), "--fast",
                 "--iterations", "2", "2"]) == 0
    assert "model for lipid_body" in capsys.readouterr().out
    trained = sxtlab.models.load_model(model)
    assert trained.classes == ["lipid_body"] and trained.info["task"]["classes"] == ["lipid_body"]
    assert len(trained.info["training_data"]) == 2  # both entries annotate lipid bodies
    assert main(["train", "--catalog", str(cat), "--task", "nucleus", "-o", str(tmp_path / "m2")]) == 2
    assert "nucleus" in capsys.readouterr().err  # no entry annotates it: said, not trained
    held_out = phantom.cell(seed=9, shape=(32, 32, 32), voxel_size=0.1)
    src = sxtlab.write_volume(held_out["lac"], tmp_path / "new.mrc")
    assert main(["segment", str(src), "--model", str(model), "-o", str(tmp_path / "seg.zarr")]) == 0
    assert sxtlab.read_segmentation(tmp_path / "seg.zarr")["labels"].attrs["classes"] == {"1": "lipid_body"}
    # the stage-1 gates can be set or turned off; without gates every window runs
    assert main(["segment", str(src), "--model", str(model), "-o", str(tmp_path / "all.zarr"),
                 "--skip-background", "none", "--trust-background", "none"]) == 0
    ungated = sxtlab.read_segmentation(tmp_path / "all.zarr")
    direct = trained.predict(sxtlab.read_volume(src), skip_background=None, trust_background=None, progress=False)
    np.testing.assert_allclose(ungated["probabilities"].values, direct["probabilities"].values, atol=1e-6)
    with pytest.raises(SystemExit):
        main(["segment", str(src), "-o", str(tmp_path / "x.zarr"), "--trust-background", "1.5"])
    assert "expected a probability between 0 and 1 or 'none', got '1.5'" in capsys.readouterr().err


def test_catalog_import_reports_and_exits_2_on_unmapped_materials(shared, tmp_path, capsys):
    import shutil

    shutil.copytree(shared / "data" / "ncxt" / "template-ver63", tmp_path / "archive")
    cat = str(tmp_path / "cat")
    assert main(["catalog", "create", cat]) == 0
    assert main(["catalog", "import", cat, str(tmp_path / "archive")]) == 2
    out = capsys.readouterr().out
    assert "unmapped" in out and "'Inside'" in out and "0 entries" in out
    assert main(["catalog", "import", cat, str(tmp_path / "archive"), "--class-map", "Inside=cell",
                 "--meta", "species=yeast"]) == 0
    assert "1 added; 1 entries" in capsys.readouterr().out
    assert main(["catalog", "import", cat, str(tmp_path / "archive"), "--class-map", "Inside"]) == 2
    assert "--class-map takes KEY=VALUE" in capsys.readouterr().err


def test_train_and_segment_a_sparsely_annotated_project(shared, tmp_path, capsys):
    hx = str(shared / "data" / "ncxt" / "sample_12.hx")
    model = tmp_path / "model"
    assert main(["train", hx, "--task", "cell", "-o", str(model), "--iterations", "2", "2"]) == 0
    out = capsys.readouterr()
    assert "annotated voxels" in out.out and "input gray" in out.out
    assert "voxel size unknown" in out.err  # said, not invented
    seg_path = tmp_path / "seg.zarr"
    assert main(["segment", hx, "--model", str(model), "-o", str(seg_path), "--beta", "1000"]) == 0
    assert "used the annotation" in capsys.readouterr().out
    seg = sxtlab.read_segmentation(seg_path)
    assert seg["labels"].attrs["classes"] == {"1": "cell"}
    with pytest.warns(sxtlab.SxtlabWarning, match="voxel size unknown"):
        annotation = sxtlab.read_project(hx)["labels"].values
    labels = seg["labels"].values
    # the annotated planes are kept as drawn; the rest is filled in
    assert (labels[annotation == 1] == 1).all() and (labels[annotation == 0] == 0).all()
    assert 0 < (labels[annotation == 255] == 1).sum() < (annotation == 255).sum()


def test_demo_then_real_demo_in_the_same_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--size", "48"]) == 0
    assert "Dice against the phantom's truth" in capsys.readouterr().out
    table = pd.read_csv(out / "phantom" / "organelles.csv")
    assert {"class", "volume_um3", "surface_area_um2"} <= set(table.columns) and len(table)
    # predictions are cleaned: no speck is measured as an object
    assert table["volume_um3"].min() >= 0.001 and (table["class"] == "cell").sum() == 1
    assert (out / "phantom" / "overview.png").read_bytes()[:4] == b"\x89PNG"
    assert sxtlab.read_segmentation(out / "phantom" / "segmentation.ome.zarr")["labels"].attrs["classes"]
    phantom_files = sorted(p.name for p in (out / "phantom").iterdir())
    assert phantom_files == ["organelles.csv", "overview.png", "segmentation.ome.zarr"]
    assert main(["demo", "-o", str(out), "--size", "48"]) == 3  # outputs are not overwritten silently
    capsys.readouterr()
    assert main(["demo", "--real", "-o", str(out), "--iterations", "2", "2"]) == 0
    captured = capsys.readouterr()
    # each run in its own folder, the first run's files untouched
    assert sorted(p.name for p in (out / "phantom").iterdir()) == phantom_files
    assert sorted(p.name for p in (out / "real").iterdir()) == ["cells.csv", "cells.ome.zarr", "overview.png",
                                                                  "segmentation.ome.zarr"]
    assert "found 3 cells" in captured.out and "sizes are in voxels" in captured.out
    table = pd.read_csv(out / "real" / "cells.csv")
    assert len(table) == 3 and table["annotated"].sum() == 1  # one row per cell
    assert table["touches_border"].sum() == 2  # the capillary's ends cut two cells
    assert "volume_voxels" in table and "gray_mean" in table  # units follow what is known
    seg = sxtlab.read_segmentation(out / "real" / "segmentation.ome.zarr")
    assert seg["labels"].attrs["classes"] == {"1": "cell"}
    # the annotated cell has the same voxels in both outputs
    assert table.loc[table["annotated"], "voxel_count"].item() == int((seg["labels"].values == 1).sum())
    assert (out / "real" / "overview.png").stat().st_size > 10_000
    # every cell as an instance, so that `sxtlab measure` gives the same rows
    again_csv = out / "again.csv"
    assert main(["measure", str(out / "real" / "cells.ome.zarr"), "-o", str(again_csv), "--allow-voxel-units"]) == 0
    np.testing.assert_array_equal(pd.read_csv(again_csv)["voxel_count"], table["voxel_count"])
    assert main(["demo", "--real", "-o", str(out), "--iterations", "2", "2"]) == 3


# -- one voxel-size parser; messages for the command line's user ---------------------
@pytest.fixture
def mrc_without_voxel_size(tmp_path):
    import mrcfile

    path = tmp_path / "tomo.mrc"
    mrcfile.new(path, np.zeros((4, 5, 6), np.float32)).close()  # voxel size 0: unset
    return path


@pytest.mark.parametrize("given, shown", [("0.032", "0.032 × 0.032 × 0.032"), ("0.05,0.032,0.032", "0.05 × 0.032 × 0.032"),
                                           ("0.05x0.032x0.032", "0.05 × 0.032 × 0.032")])
def test_voxel_size_takes_one_value_or_three(mrc_without_voxel_size, given, shown, capsys):
    assert main(["info", str(mrc_without_voxel_size), "--voxel-size", given]) == 0
    assert f"voxel size {shown} µm" in capsys.readouterr().out
    # the API parses the same values the same way
    vs = sxtlab.read_volume(mrc_without_voxel_size, voxel_size=given).sxt.voxel_size
    assert " × ".join(f"{v:g}" for v in vs) == shown
    assert sxtlab.read_volume(mrc_without_voxel_size, voxel_size=(0.032,)).sxt.voxel_size == (0.032,) * 3


def test_zero_voxel_size_is_refused_once_with_a_clean_message(mrc_without_voxel_size, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["info", str(mrc_without_voxel_size), "--voxel-size", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "sxtlab info: error: argument --voxel-size: voxel size must be finite and positive (µm), "
        "got (dz, dy, dx) = (0, 0, 0)")
    with pytest.raises(sxtlab.FormatError) as err:
        sxtlab.read_volume(mrc_without_voxel_size, voxel_size=(0.0,))
    assert str(err.value) == (f"{mrc_without_voxel_size}: voxel_size: voxel size must be finite and positive "
                              "(µm), got (dz, dy, dx) = (0, 0, 0)")
    with pytest.raises(SystemExit):
        main(["info", str(mrc_without_voxel_size), "--voxel-size", "0.05,0.03"])
    assert "expected one value or three (dz, dy, dx) in µm, got '0.05,0.03'" in capsys.readouterr().err


def test_unknown_voxel_size_names_the_option_or_the_keyword(shared, tmp_path, capsys):
    hx = shared / "data" / "ncxt" / "sample_12.hx"
    assert main(["measure", str(hx), "-o", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("cannot be measured; give --voxel-size DZ,DY,DX (or one value) in µm, or "
                        "--allow-voxel-units for columns in voxel units (volume_voxels, ...)")
    with pytest.warns(sxtlab.SxtlabWarning):
        seg = sxtlab.read_project(hx)
    with pytest.raises(sxtlab.VoxelSizeUnknownError, match=r"give voxel_size=\(dz, dy, dx\) in µm, or "
                                                           r"allow_voxel_units=True for columns"):
        sxtlab.measure.instances(seg)


def test_a_folder_given_as_input_is_called_a_folder(tmp_path, capsys):
    (tmp_path / "stack").mkdir()
    assert main(["info", str(tmp_path / "stack")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"sxtlab: {tmp_path / 'stack'}: is a folder; sxtlab reads a volume file, or an OME-Zarr folder named "
        "*.zarr (Amira projects: the .hx file, not its -files folder)")


def test_segment_help_shows_the_default_values(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "'none' runs every window (default: 0.5)" in help_text
    assert "wherever it ran (default: 0.95)" in help_text and "sxtlab.cascade" not in help_text


@pytest.mark.parametrize("load, threads", [(0.2, 2), (1.2, 1), (5.0, 1)])
def test_torch_gets_the_cores_other_work_leaves_free(monkeypatch, load, threads):
    import torch

    from sxtlab import use_free_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr("os.getloadavg", lambda: (load, 0.0, 0.0))
    before = torch.get_num_threads()
    try:
        assert use_free_cores() == threads == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        assert use_free_cores() == 2  # an explicit setting is the user's
    finally:
        torch.set_num_threads(before)


def test_gray_input_names_the_calibration_option(mrc_without_voxel_size, tmp_path, capsys):
    out = tmp_path / "seg.zarr"
    assert main(["segment", str(mrc_without_voxel_size), "--voxel-size", "0.05", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"sxtlab: {mrc_without_voxel_size} holds gray values and has no calibration; give one (--lac where the "
        "values are LAC in µm⁻¹, --calibration SCALE[,OFFSET], or --calibrate-from-medium [LAC])")
    # A Python user is told the keyword and the function instead.
    with pytest.raises(sxtlab.CalibrationError, match=r"give one \(calibration=sxtlab\.Calibration\(1\.0\) where "
                       r"the values are LAC in µm⁻¹, .*sxtlab\.calibrate_from_medium\(image\)\)"):
        sxtlab.read_volume(mrc_without_voxel_size, voxel_size=0.05).sxt.to_lac()
    with pytest.raises(SystemExit):
        main(["segment", str(mrc_without_voxel_size), "--calibration", "0", "-o", str(out)])
    assert "SCALE finite and not 0), got '0'" in capsys.readouterr().err
