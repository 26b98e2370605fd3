"""Tasks map every reference cell's labels onto their classes; what it left unannotated
becomes the set of classes each voxel may be."""

import numpy as np
import pytest

import sxtlab
from sxtlab import UNANNOTATED
from sxtlab.task import Task, TaskError

ENTRY = {1: "cell", 2: "nucleus", 3: "nucleolus", 4: "mitochondria", 5: "lipid droplet"}


def test_output_classes_accept_synonyms_and_comma_lists():
    assert Task("nucleus, LD").output_classes == {1: "nucleus", 2: "lipid_body"}
    assert Task(["Lipid bodies"]).name == "lipid_body"


@pytest.mark.parametrize("classes, merges, match", [
    ([], {}, "at least one class"),
    (["nucleus", "nuclei"], {}, "listed twice"),
    (["background", "cell"], {}, "always label 0"),
    (["nucleus"], {"organelle": ["mitochondria"]}, "not one of the task's classes"),
    (["organelle", "mitochondria"], {"organelle": ["mitochondria"]}, "both an output class and merged"),
])
def test_ill_defined_tasks(classes, merges, match):
    with pytest.raises(TaskError, match=match):
        Task(classes, merges)


def test_subclasses_fold_into_their_parent_and_others_into_background():
    m = Task(["nucleus", "lipid_body"]).describe_mapping(ENTRY)
    assert m == {"background": "background", "cell": "background", "nucleus": "nucleus",
                 "nucleolus": "nucleus", "mitochondria": "background", "lipid_body": "lipid_body"}


def test_unannotated_class_turns_its_nearest_annotated_ancestor_into_a_label_set():
    task = Task(["nucleus", "vacuole"])
    # the entry never annotated vacuoles: they could hide in its cytoplasm, nowhere else,
    # and the cytoplasm is background for this task unless it is a vacuole
    m = task.describe_mapping(ENTRY)
    assert m["cell"] == "background or vacuole"
    assert m["background"] == "background" and m["mitochondria"] == "background"
    # an entry that annotated only mitochondria: a nucleus or a vacuole could be anywhere
    # but in them, so outside them a voxel could be any class: unannotated
    only_mito = task.mapping({1: "mitochondria"})
    assert only_mito.values[0] == UNANNOTATED and only_mito.sets == {}
    assert task.describe_mapping({1: "mitochondria"}) == {"background": "ignored (not annotated)",
                                                          "mitochondria": "background"}


def test_classes_hiding_under_one_annotated_class_share_one_label_set():
    task = Task(["cell", "mitochondria", "lipid_body", "nucleus"])
    m = task.mapping({1: "cell", 2: "nucleus"})
    # the cytoplasm may be cell, mitochondria or lipid bodies; the nucleus is known
    assert m.values == {0: 0, 1: 254, 2: 4, UNANNOTATED: UNANNOTATED}
    assert m.sets == {254: (1, 2, 3)}
    assert m.masked == {"cell": "cell or mitochondria or lipid_body"}
    # merged classes: a mitochondrion would be an "organelle", and so would a lipid body
    merged = Task(["cell", "organelle"], merges={"organelle": ["mitochondria", "lipid_body"]})
    assert merged.mapping({1: "cell"}).sets == {254: (1, 2)}
    assert merged.mapping({1: "cell", 2: "mitochondria", 3: "lipid_body"}).sets == {}


def test_merges_make_unions():
    task = Task(["cell", "organelle"], merges={"organelle": ["mitochondria", "lipid_body"]})
    m = task.describe_mapping(ENTRY)
    assert m["mitochondria"] == m["lipid_body"] == "organelle"
    assert m["nucleus"] == m["nucleolus"] == m["cell"] == "cell"


def test_remap_volume_values_and_attrs():
    image = sxtlab.volume(np.zeros((2, 2, 3), np.float32), voxel_size=(0.05, 0.03, 0.03))
    lab = np.array([[[0, 1, 2], [3, 4, 5]], [[255, 1, 1], [2, 0, 5]]], np.uint8)
    labels = sxtlab.label_volume(lab, image, ENTRY)
    out = Task(["nucleus", "vacuole"]).remap(labels)
    # cell (1) may be a vacuole or, for this task, background: code 254
    expected = np.array([[[0, 254, 1], [1, 0, 0]], [[255, 254, 254], [1, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(out.values, expected)
    assert out.attrs["classes"] == {"1": "nucleus", "2": "vacuole"}
    assert out.attrs["label_sets"] == {"254": ["background", "vacuole"]}
    assert out.attrs["partly_labelled"] == {"cell": "background or vacuole"}
    assert out.sxt.voxel_size == (0.05, 0.03, 0.03)


def test_explicit_annotated_list_overrides_the_labels():
    # labels name lipid bodies, but the annotator says they only annotated cell and nucleus
    m = Task(["lipid_body"]).mapping(ENTRY, annotated=["cell", "nucleus"])
    # its cytoplasm could be a lipid body or background: every class of this task
    assert m.values[1] == UNANNOTATED and m.masked == {"cell": "background or lipid_body"}


def test_round_trip_dict():
    t = Task(["cell", "organelle"], merges={"organelle": ["mitochondria", "LD"]}, voxel_size_um=0.04,
             filters={"species": "yeast"})
    assert Task.from_dict(t.to_dict()) == t


def test_select_reports_mapping_per_entry(tmp_path):
    from sxtlab.catalog import Catalog

    image = sxtlab.volume(np.zeros((4, 4, 4), np.float32), voxel_size=0.04)
    lab = np.zeros((4, 4, 4), np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    lab[2, 2, 2] = 2
    cat = Catalog.create(tmp_path / "cat")
    a = cat.add(image, sxtlab.label_volume(lab, image, {1: "cell", 2: "nucleus"}), species="yeast")
    b = cat.add(image, sxtlab.label_volume(lab, image, {1: "cell", 2: "mitochondria"}), species="alga")
    cat.add(image, sxtlab.label_volume(lab, image, {1: "cell", 2: "vacuole"}), species="yeast")
    frame = Task(["nucleus", "mitochondria"]).select(cat)
    assert set(frame.index) == {a, b}
    assert frame.loc[a, "mapping"]["cell"] == "background or mitochondria"
    assert frame.loc[a, "masked"] == {"cell": "background or mitochondria"}
    assert frame.loc[b, "mapping"]["mitochondria"] == "mitochondria"
    only_yeast = Task(["nucleus", "mitochondria"], filters={"species": "yeast"}).select(cat)
    assert list(only_yeast.index) == [a]
    with pytest.raises(TaskError, match=r"no catalog entry annotates any of \['lipid_body'\]; the catalog holds 3"):
        Task(["lipid_body"]).select(cat)


def _cells():
    from sxtlab import phantom

    return [phantom.cell(seed=s, shape=(32, 32, 32), voxel_size=0.06)[["lac", "labels"]] for s in (1, 2)]


def test_training_set_maps_and_reports():
    cells, report = Task(["nucleus", "lipid_body"]).training_set(_cells())
    assert cells[0]["labels"].attrs["classes"] == {"1": "nucleus", "2": "lipid_body"}
    assert set(np.unique(cells[0]["labels"].values)) <= {0, 1, 2}
    assert report["nucleus_voxels"].gt(0).all()
    assert report.iloc[0]["mapping"]["nucleolus"] == "nucleus"


def test_train_records_the_task_and_fine_tunes():
    from sxtlab.train import fast_config

    task = Task(["nucleus"])
    cfg = fast_config((4, 4))
    model, history = task.train(_cells(), cfg, progress=False)
    assert model.classes == ["nucleus"] and model.info["task"]["classes"] == ["nucleus"]
    assert len(model.info["training_data"]) == 2
    tuned, _ = task.train(_cells(), cfg, init=model, progress=False)
    assert tuned.info["fine_tuned_from"] == model.weights_sha256
    with pytest.raises(ValueError, match=r"cannot fine-tune a model for \['nucleus'\]"):
        Task(["lipid_body"]).train(_cells(), cfg, init=model, progress=False)


def test_partly_labelled_cells_train_with_their_label_sets():
    from sxtlab.classes import LabelSets
    from sxtlab.train import _remap, _set_table, fast_config

    full, other = _cells()
    # the second study annotated only the cell and its lipid bodies (as real archives do)
    lab = other["labels"]
    keep = {v: n for v, n in lab.sxt.classes.items() if n in ("cell", "lipid_body")}
    values = np.where(np.isin(lab.values, list(keep)), lab.values, np.where(lab.values > 0, 1, 0))
    partial = other.assign(labels=sxtlab.label_volume(values.astype(np.uint8), other["lac"], keep))
    task = Task(["cell", "mitochondria", "lipid_body"])
    cells, report = task.training_set([full, partial])
    assert report["partly_labelled_voxels"].tolist()[0] == 0
    cytoplasm = values == 1
    assert report["partly_labelled_voxels"].tolist()[1] == cytoplasm.sum() > 0
    assert cells[1]["labels"].attrs["label_sets"] == {"254": ["cell", "mitochondria"]}
    # training codes follow the classes: 4 values (background + 3), so the set is code 4
    sets = LabelSets(4, range(4, UNANNOTATED))
    trained = _remap(cells[1]["labels"], list(task.classes), "partial", sets)
    assert np.all(trained[cytoplasm] == 4) and _set_table(sets, 4).tolist() == [[False, True, True, False]]
    np.testing.assert_array_equal(trained[~cytoplasm], cells[1]["labels"].values[~cytoplasm])
    model, history = task.train([full, partial], fast_config((4, 4)), progress=False)
    assert model.classes == ["cell", "mitochondria", "lipid_body"]
    assert model.info["training_data"][1]["masked"] == {"cell": "cell or mitochondria"}
