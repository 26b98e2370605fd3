"""A study of many cells: resume, bad and unusual inputs, a separate scheduler, QC, comparison.

One study of six inputs is run once per module on an in-process dask cluster (four
48³ phantom cells of two conditions, one corrupt MRC file and one cell written at
16.7 nm voxels, three times finer than the shipped model's); the other tests resume,
repeat or compare it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import sxtlab
from sxtlab import phantom
from sxtlab.study import Study, cell_id_of, find_inputs

distributed = pytest.importorskip("distributed")

SHAPE = (48, 48, 48)
VS = 0.05


@pytest.fixture(scope="module")
def cells():
    return phantom.population(2, shape=SHAPE, voxel_size=VS, acquisition=True, seed=7, progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, cells):
    folder = tmp_path_factory.mktemp("recs")
    rows = []
    for i, ds in enumerate(cells):
        sxtlab.write_volume(ds["lac"], folder / f"cell{i}.mrc")
        rows.append({"file": f"cell{i}.mrc", "condition": ds.attrs["condition"]})
    (folder / "broken.mrc").write_bytes(b"this is no MRC file" * 4)
    # A cell of 32³ at 50 nm, repeated to 96³ voxels of 16.7 nm: what the model sees
    # after resampling is an ordinary cell, but nothing it trained on had such voxels.
    small = phantom.cell(seed=3, shape=(32, 32, 32), voxel_size=VS, acquisition=True)["lac"].values
    fine = np.repeat(np.repeat(np.repeat(small, 3, 0), 3, 1), 3, 2)
    sxtlab.write_volume(sxtlab.volume(fine, VS / 3), folder / "fine.mrc")
    rows += [{"file": "fine.mrc", "condition": "control"}, {"file": "broken.mrc", "condition": "control"}]
    meta = folder.parent / "cells.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    return folder, meta


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def study(inputs, client, tmp_path_factory):
    folder, meta = inputs
    out = tmp_path_factory.mktemp("study") / "S"
    return Study.run([folder], out, metadata=meta, client=client, threads=1, progress=False)


def _tables(study: Study) -> dict[str, pd.DataFrame]:
    return {name: study.table(name) for name in ("instances", "classes", "distances", "cells", "review")}


def test_inputs_are_found_and_named_by_file():
    assert cell_id_of("a/wt_03.ome.zarr") == "wt_03" and cell_id_of("b/x.mrc.gz") == "x"


def test_every_good_cell_is_done_with_a_manifest_that_identifies_it(study, inputs):
    folder, _ = inputs
    m = study.manifest
    assert m["run"] == {**m["run"], "cells": 6, "done": 5, "failed": 1, "processed_now": 6}
    assert m["model"]["name"] == "default" and m["model"]["weights_sha256"] == sxtlab.load_model().weights_sha256
    assert m["model"]["reference"] == "recorded"
    record = json.loads((study.folder / "cells" / "cell0" / "record.json").read_text())
    assert record["sha256"] == m["cells"]["cell0"]["sha256"] and len(record["sha256"]) == 64
    assert record["sxtlab_version"] == sxtlab.__version__ and record["torch_threads"] == 1
    assert record["model_temperature"] == m["model"]["temperature"] == sxtlab.load_model().temperature
    seg = sxtlab.read_segmentation(study.folder / "cells" / "cell0" / "segmentation.ome.zarr")
    assert {"labels", "probabilities"} <= set(seg.data_vars)
    inst = study.instances
    # metadata joined after cell_id; the volume interval brackets the expected volume
    assert list(inst.columns[:3]) == ["cell_id", "file", "condition"]
    assert (inst["volume_low_um3"] <= inst["volume_expected_um3"] + 1e-12).all()
    assert (inst["volume_expected_um3"] <= inst["volume_high_um3"] + 1e-12).all()
    assert set(study.cells["cell_id"]) == {"cell0", "cell1", "cell2", "cell3", "fine"}
    assert not list(study.folder.glob("cells/.*"))  # no temporary leftovers


def test_a_corrupt_file_is_reported_with_its_error_and_skipped(study):
    (row,) = study.failed.to_dict("records")
    assert row["cell_id"] == "broken" and "broken.mrc" in row["error"] and "MRC" in row["error"]
    assert not (study.folder / "cells" / "broken").exists()


def test_a_cell_at_voxels_the_model_never_saw_tops_the_review(study):
    review = study.review
    top = review.iloc[0]
    assert (top["level"], top["cell_id"], bool(top["flagged"])) == ("cell", "fine", True)
    assert "voxel_size_um 0.0167" in top["reason"]
    cells = study.cells.set_index("cell_id")
    assert cells.loc["fine", "flagged"] and not cells.drop("fine")["ood_flag"].any()


def test_resume_after_an_interruption_does_no_cell_twice_and_gives_equal_tables(study, inputs, client, tmp_path):
    folder, meta = inputs
    # What a kill half-way leaves: two cells done, one half-written under its temporary name.
    resumed = tmp_path / "S"
    shutil.copytree(study.folder, resumed)
    for name in ("cell2", "cell3"):
        shutil.rmtree(resumed / "cells" / name)
    (resumed / "cells" / ".cell2.partial-dead0001").mkdir()
    (resumed / "cells" / ".cell2.partial-dead0001" / "instances.csv").write_text("half")
    before = {c: (resumed / "cells" / c / "record.json").stat().st_mtime_ns for c in ("cell0", "cell1", "fine")}
    again = Study.run([folder], resumed, metadata=meta, client=client, threads=1, progress=False)
    assert again.manifest["run"]["processed_now"] == 3  # cell2, cell3, and the broken file tried again
    assert {c for c, r in again.manifest["cells"].items() if r.get("reused")} == {"cell0", "cell1", "fine"}
    assert before == {c: (resumed / "cells" / c / "record.json").stat().st_mtime_ns for c in before}
    assert not list((resumed / "cells").glob(".*"))
    for name, table in _tables(study).items():
        pd.testing.assert_frame_equal(again.table(name), table, obj=name)
    # and once more: nothing left to do but the file that cannot be read
    third = Study.run([folder], resumed, metadata=meta, client=client, threads=1, progress=False)
    assert third.manifest["run"]["processed_now"] == 1


def test_a_changed_input_is_redone_and_replaces_its_cell(study, inputs, client, tmp_path):
    folder, meta = inputs
    recs = tmp_path / "recs"
    recs.mkdir()
    for name in ("cell0", "cell1"):
        shutil.copy(folder / f"{name}.mrc", recs)
    out = tmp_path / "S"
    shutil.copytree(study.folder / "cells" / "cell0", out / "cells" / "cell0")
    shutil.copytree(study.folder / "cells" / "cell1", out / "cells" / "cell1")
    lac = sxtlab.read_volume(recs / "cell1.mrc")
    (recs / "cell1.mrc").unlink()
    sxtlab.write_volume(lac.copy(data=lac.values * 1.5), recs / "cell1.mrc")  # the same cell, brighter
    again = Study.run([recs], out, metadata=meta, client=client, threads=1, progress=False)
    assert again.manifest["run"]["processed_now"] == 1
    assert again.manifest["cells"]["cell0"].get("reused") and not again.manifest["cells"]["cell1"].get("reused")
    record = json.loads((out / "cells" / "cell1" / "record.json").read_text())
    assert record["sha256"] == again.manifest["cells"]["cell1"]["sha256"] != study.manifest["cells"]["cell1"]["sha256"]


def test_a_new_temperature_redoes_the_cells_though_the_weights_are_the_same(study, inputs, client, tmp_path):
    folder, meta = inputs
    recs = tmp_path / "recs"
    recs.mkdir()
    shutil.copy(folder / "cell0.mrc", recs)
    model = sxtlab.load_model()
    model.temperature = 2.0
    warm = model.save(tmp_path / "warm")
    out = tmp_path / "S"
    shutil.copytree(study.folder / "cells" / "cell0", out / "cells" / "cell0")
    again = Study.run([recs], out, metadata=meta, model=warm, client=client, threads=1, progress=False)
    assert again.manifest["run"]["processed_now"] == 1 and not again.manifest["cells"]["cell0"].get("reused")
    assert again.manifest["model"]["weights_sha256"] == study.manifest["model"]["weights_sha256"]
    # softer probabilities: the whole cell's p >= 0.05 ... p >= 0.95 volume interval widens
    width = [s.instances.query("cell_id == 'cell0' and `class` == 'cell'").eval("volume_high_um3 - volume_low_um3")
             .sum() for s in (study, again)]
    assert width[1] > width[0]


def test_a_separately_started_scheduler_gives_the_same_tables(study, inputs, tmp_path):
    folder, meta = inputs
    picked = tmp_path / "two"
    picked.mkdir()
    for name in ("cell0", "cell3"):
        shutil.copy(folder / f"{name}.mrc", picked)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        other = Study.run([picked], tmp_path / "S", metadata=meta, scheduler=cluster.scheduler_address,
                          threads=1, progress=False)
    assert other.manifest["run"]["done"] == 2
    for name in ("instances", "classes", "distances"):
        mine = study.table(name)
        mine = mine[mine["cell_id"].isin(["cell0", "cell3"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(other.table(name), mine, obj=name)


def _soft_sphere(radius: float, true_radius: float):
    """A 'segmentation' of a sphere whose probability falls off over 1.5 voxels at
    ``radius``, and the truth: a sphere of ``true_radius`` (voxels of 0.1 µm)."""
    z, y, x = np.mgrid[:32, :32, :32] - 15.5
    r = np.sqrt(z ** 2 + y ** 2 + x ** 2)
    p = 1 / (1 + np.exp((r - radius) / 1.5))
    img = sxtlab.volume(np.zeros(r.shape, np.float32), 0.1)
    probs = xr.DataArray(np.stack([1 - p, p]).astype(np.float32), dims=("class", "z", "y", "x"),
                         coords={"class": ["background", "lipid_body"], **{d: img[d] for d in "zyx"}})
    seg = sxtlab.segmentation(img, sxtlab.label_volume((p >= 0.5).astype(np.uint8), img, {1: "lipid_body"}), probs)
    truth = sxtlab.label_volume((r <= true_radius).astype(np.uint8), img, {1: "lipid_body"})
    return seg, truth


def test_volume_interval_spans_the_two_thresholds_and_coverage_counts_the_truth_inside():
    from sxtlab import qc

    seg, truth = _soft_sphere(8.0, 9.0)
    (row,) = qc.instance_uncertainty(seg, low=0.25, high=0.75, margin=4).to_dict("records")
    # p >= 0.75 inside r = 8 - 1.5 ln 3, p >= 0.25 inside r = 8 + 1.5 ln 3 (voxels of 0.001 µm³)
    r = np.sqrt(((np.mgrid[:32, :32, :32] - 15.5) ** 2).sum(0))
    assert row["volume_low_um3"] == pytest.approx((r < 8 - 1.5 * np.log(3)).sum() * 1e-3)
    assert row["volume_high_um3"] == pytest.approx((r <= 8 + 1.5 * np.log(3)).sum() * 1e-3)
    assert row["volume_low_um3"] < row["volume_expected_um3"] < row["volume_high_um3"]
    assert 0 < row["uncertain_fraction"] < 1 and 0 < row["entropy_mean"] < 1
    inside = qc.coverage(qc.instance_uncertainty(seg, low=0.25, high=0.75, margin=4), seg, truth)
    assert inside["true_volume_um3"].iloc[0] == pytest.approx((r <= 9.0).sum() * 1e-3) and inside["covered"].all()
    assert inside["true_instance"].tolist() == [1]
    seg, truth = _soft_sphere(8.0, 11.0)  # the truth reaches beyond the plausible extent
    assert not qc.coverage(qc.instance_uncertainty(seg, low=0.25, high=0.75, margin=4), seg, truth)["covered"].any()


def test_coverage_matches_each_piece_of_a_split_object_to_the_whole_and_a_false_one_to_none():
    from sxtlab import qc

    true = np.zeros((8, 8, 24), np.uint8)
    true[2:6, 2:6, 2:20] = 1  # one tube, 4 × 4 × 18 voxels
    pred = true.copy()
    pred[:, :, 10:12] = 0  # the model splits it in two
    pred[2:4, 2:4, 22:24] = 1  # and makes one up
    img = sxtlab.volume(np.zeros(true.shape, np.float32), 0.1)
    probs = xr.DataArray(np.stack([pred == 0, pred == 1]).astype(np.float32), dims=("class", "z", "y", "x"),
                         coords={"class": ["background", "mitochondria"], **{d: img[d] for d in "zyx"}})
    seg = sxtlab.segmentation(img, sxtlab.label_volume(pred, img, {1: "mitochondria"}), probs)
    truth = sxtlab.label_volume(true, img, {1: "mitochondria"})
    table = qc.coverage(qc.instance_uncertainty(seg), seg, truth)
    assert sorted(table["true_instance"]) == [0, 1, 1]
    pieces = table[table["true_instance"] == 1]
    assert pieces["true_volume_um3"].tolist() == pytest.approx([4 * 4 * 18 * 1e-3] * 2)
    assert not pieces["covered"].any()  # neither half holds the whole tube
    assert table.loc[table["true_instance"] == 0, "true_volume_um3"].tolist() == [0.0]


def test_compare_writes_tests_figures_and_counts_the_flagged_cells_left_out(study):
    result = study.compare("condition", exclude_flagged=True)
    out = study.folder / "compare-condition-unflagged"
    assert result.attrs["flagged_left_out"] >= 1 and result.attrs["cells"] == 5 - result.attrs["flagged_left_out"]
    assert {"comparison.csv", "volume.png", "counts.png", "lac.png", "summary.txt"} <= {p.name for p in out.iterdir()}
    assert "flagged cells left out (" in (out / "summary.txt").read_text()
    lipid = result[(result["measurement"] == "volume_um3") & (result["class"] == "lipid_body")]
    assert set(lipid["condition"]) == {"control", "high_lipid"} and lipid["p_adjusted"].notna().all()
    assert lipid["segmentation_uncertainty_um3"].gt(0).all() and lipid["exceeds_uncertainty"].notna().all()
    with pytest.raises(sxtlab.OutputExistsError):
        study.compare("condition", exclude_flagged=True)
    with pytest.raises(sxtlab.stats.MissingColumnError, match="strain"):
        study.compare("strain")


def test_find_inputs_refuses_two_files_of_one_cell(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.mrc").write_bytes(b"")
    (tmp_path / "b" / "x.tif").write_bytes(b"")
    with pytest.raises(sxtlab.SxtlabError, match="two inputs give the cell id 'x'"):
        find_inputs([tmp_path])


def test_a_study_whose_every_file_fails_still_writes_its_tables(client, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.tif").write_bytes(b"no TIFF")
    study = Study.run([tmp_path / "in"], tmp_path / "S", client=client, threads=1, progress=False)
    assert study.manifest["run"]["failed"] == 1 and study.manifest["run"]["done"] == 0
    assert "x.tif" in study.failed["error"].iloc[0]
    assert len(study.review) == 0 and len(study.cells) == 0 and len(study.instances) == 0


def test_default_workers_one_per_core_bounded_by_memory(monkeypatch):
    import psutil

    from sxtlab.study import WORKER_MEMORY, default_workers

    class Memory:
        available = 10 * WORKER_MEMORY

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    assert default_workers(2) == 2
    assert default_workers(16) == 10
    Memory.available = 0.5 * WORKER_MEMORY
    assert default_workers(8) == 1


def test_a_cell_records_its_own_warnings_not_other_threads() -> None:
    # a dask worker runs its event loop and monitors beside the task: their warnings
    # made a cell's record differ between two runs of the same study
    import threading
    import warnings

    from sxtlab.errors import thread_warnings

    passed_on = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: passed_on.append(str(message))
        with thread_warnings() as log:
            other = threading.Thread(target=warnings.warn, args=("from another thread",))
            other.start()
            other.join()
            for _ in range(2):  # every occurrence, not once per place
                warnings.warn("from the cell", UserWarning)
    assert [str(w.message) for w in log] == ["from the cell", "from the cell"]
    assert passed_on == ["from another thread"]
