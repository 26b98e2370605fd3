"""Tests of sxtlab.catalog: round trips, listing, selecting, atomicity, concurrency, errors."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
import time

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import sxtlab
from sxtlab import catalog as catalog_module
from sxtlab.catalog import (
    Catalog,
    CatalogError,
    EntryExistsError,
    EntryNotFoundError,
    InvalidEntryError,
)
from sxtlab.classes import UNANNOTATED, UnknownClassError

SHAPE = (10, 12, 14)


def make_cell(seed: int = 0, *, shape=SHAPE, voxel_size=(0.05, 0.03, 0.03),
              classes=None, calibration=None) -> tuple[xr.DataArray, xr.DataArray]:
    """A small random image and labels with cell (1), nucleus (2), lipid droplets (3)."""
    rng = np.random.default_rng(seed)
    if calibration is None:
        data = rng.uniform(0.1, 0.8, shape).astype(np.float32)
    else:
        data = rng.integers(0, 4000, shape).astype(np.float32)
    image = sxtlab.volume(data, voxel_size, calibration=calibration, source=f"cell{seed}.mrc",
                          origin_um=(1.0, 2.0, 3.0) if voxel_size is not None else (0, 0, 0))
    labels = rng.integers(0, 4, shape).astype(np.uint8)
    labels[0] = UNANNOTATED
    classes = classes if classes is not None else {1: "cell", 2: "nucleus", 3: "lipid droplets"}
    return image, sxtlab.label_volume(labels, image, classes)


@pytest.fixture(scope="module")
def mp_context():
    """Processes forked from a server that has imported sxtlab once (spawning each
    child would import numpy, xarray, dask and zarr anew, seconds per child)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sxtlab.catalog", "pytest", "test_catalog"])
    return ctx


@pytest.fixture
def cat(tmp_path) -> Catalog:
    return Catalog.create(tmp_path / "cat")


def entry_folders(cat: Catalog) -> list[str]:
    return sorted(os.listdir(cat.path / "entries"))


# -- round trip ---------------------------------------------------------------------

def test_create_open_add_get_round_trip(tmp_path):
    cal = sxtlab.Calibration(scale=1e-4, offset=0.02)
    image, labels = make_cell(1, calibration=cal)
    metadata = {"species": "S. cerevisiae", "cell_type": "yeast", "condition": "glucose",
                "annotator": "ana", "date": "2024-05-01", "n_cells": 1, "tags": ["wt", "g1"]}
    cat = Catalog.create(tmp_path / "cat")
    entry = cat.add(image, labels, **metadata)
    cat.close()

    cat = Catalog.open(tmp_path / "cat")
    ds = cat.get(entry)
    assert isinstance(ds.lac.data, da.Array) and isinstance(ds.labels.data, da.Array)
    xr.testing.assert_identical(ds.lac, image.rename("lac"))
    xr.testing.assert_identical(ds.labels, labels.assign_coords(image.coords))
    assert ds.lac.attrs["voxel_size_um"] == [0.05, 0.03, 0.03]
    assert ds.lac.sxt.calibration == cal
    assert ds.lac.attrs["units"] == "gray"
    assert ds.labels.attrs["classes"] == {"1": "cell", "2": "nucleus", "3": "lipid_body"}
    assert ds.labels.dtype == np.uint8 and ds.lac.dtype == np.float32
    for key, value in metadata.items():
        assert ds.attrs[key] == value
    assert ds.attrs["source"] == "cell1.mrc"  # taken from the image
    assert ds.attrs["entry_id"] == entry
    assert ds.attrs["annotated_classes"] == ["cell", "nucleus", "lipid_body"]
    assert cat.entry_classes(entry) == ["cell", "nucleus", "lipid_body"]
    assert cat.metadata(entry) == {**metadata, "source": "cell1.mrc"}
    # the entry is a plain Zarr v3 group xarray reads directly
    direct = xr.open_zarr(cat.entry_path(entry), consolidated=False)
    np.testing.assert_array_equal(direct.labels.values, labels.values)
    assert sorted(os.listdir(cat.path))[:2] == ["entries", "index.sqlite"]


def test_round_trip_dask_input_multiple_chunks_unknown_voxel_size(cat):
    shape = (70, 9, 20)  # more than one 64-voxel chunk along z
    image, labels = make_cell(2, shape=shape, voxel_size=None)
    lazy_image = image.chunk({"z": 7, "y": 5, "x": 20})
    # int32 labels are stored in the smallest unsigned type that holds them
    lazy_labels = labels.astype(np.int32).chunk({"z": 11})
    lazy_labels.attrs = labels.attrs
    entry = cat.add(lazy_image, lazy_labels)
    ds = cat.get(entry)
    assert ds.lac.data.chunks[0] == (64, 6)
    assert ds.labels.dtype == np.uint8
    np.testing.assert_array_equal(ds.lac.values, image.values)
    np.testing.assert_array_equal(ds.labels.values, labels.values)
    assert ds.lac.attrs["voxel_size_um"] is None
    assert ds.z.attrs["units"] == "voxel"
    frame = cat.to_frame()
    assert np.isnan(frame.loc[entry, ["dz_um", "dy_um", "dx_um"]].astype(float)).all()


def test_uint16_labels_kept(cat):
    image, labels = make_cell(3)
    values = labels.values.astype(np.uint16)
    big = labels.copy(data=np.where(values == 3, 300, values).astype(np.uint16))
    big.attrs = {**labels.attrs, "classes": {"1": "cell", "2": "nucleus", "300": "mitochondria"}}
    ds = cat.get(cat.add(image, big))
    assert ds.labels.dtype == np.uint16
    np.testing.assert_array_equal(ds.labels.values, big.values)


# -- listing -------------------------------------------------------------------------

def test_to_frame_columns(cat):
    image, labels = make_cell(4)
    a = cat.add(image, labels, classes=["nucleus"], species="yeast", well="B2", entry_id="yeast_01")
    b = cat.add(*make_cell(5, voxel_size=None), species="alga")
    frame = cat.to_frame()
    assert frame.index.name == "id" and frame.index.tolist() == [a, b]
    expected = ["shape", "dz_um", "dy_um", "dx_um", "units", "lac_scale", "lac_offset",
                "annotated_classes", "label_classes", "annotates_cell", "annotates_nucleus",
                "annotates_lipid_body", "species", "cell_type", "condition", "annotator", "date",
                "source", "well", "added", "path"]
    assert set(expected) <= set(frame.columns)
    row = frame.loc[a]
    assert row["shape"] == SHAPE
    assert (row["dz_um"], row["dy_um"], row["dx_um"]) == (0.05, 0.03, 0.03)
    assert row["units"] == "1/um" and np.isnan(row["lac_scale"])
    assert row["annotated_classes"] == ["nucleus"]
    assert row["annotates_nucleus"] and not row["annotates_cell"] and not row["annotates_lipid_body"]
    assert row["path"] == str(cat.path / "entries" / "yeast_01.zarr")
    assert row["well"] == "B2" and frame.loc[b, "species"] == "alga"
    assert frame["added"].dt.tz is not None
    assert frame["annotates_cell"].dtype == bool


def test_to_frame_and_select_read_only_the_index(cat, monkeypatch):
    cat.add(*make_cell(6), species="yeast")

    def no_zarr(*args, **kwargs):
        raise AssertionError("listing opened a Zarr group")

    monkeypatch.setattr(catalog_module.zarr, "open_group", no_zarr)
    assert len(cat.to_frame()) == 1
    assert len(cat.select("nucleus", species="yeast")) == 1


def test_empty_catalog_frame(cat):
    frame = cat.to_frame()
    assert len(frame) == 0 and "annotates_nucleus" in frame.columns
    assert len(cat.select("nucleus", species="yeast", anything=1)) == 0
    assert len(cat) == 0 and list(cat) == []


# -- selecting -----------------------------------------------------------------------

@pytest.fixture
def populated(cat):
    image, labels = make_cell(7)
    lab = labels.copy()
    lab.attrs = {**labels.attrs, "classes": {"1": "cell", "2": "nucleus", "3": "nucleolus"}}
    cat.add(image, labels, entry_id="nuc_ld", species="yeast", annotator="ana")  # cell nucleus lipid
    cat.add(image, labels, classes=["nucleus"], entry_id="nuc_only", species="alga", annotator="ben")
    cat.add(image, lab, entry_id="nucleolus", species="yeast")  # cell nucleus nucleolus
    cat.add(image, lab, classes=["nucleoli"], entry_id="nucleolus_only", species="yeast")
    mito = sxtlab.label_volume((labels.values == 1).astype(np.uint8), image, {1: "mitochondria"})
    cat.add(image, mito, entry_id="mito", species="yeast", dose=2.5)
    return cat


def test_select_by_classes_synonyms_all_any(populated):
    ids = lambda frame: frame.index.tolist()  # noqa: E731
    assert ids(populated.select(["Nuclei"])) == ["nuc_ld", "nuc_only", "nucleolus"]
    assert ids(populated.select(["nucleus", "LDs"])) == ["nuc_ld"]
    assert ids(populated.select(["nucleus", "lipid droplet"], how="any")) == ["nuc_ld", "nuc_only", "nucleolus"]
    assert ids(populated.select("mitochondrion")) == ["mito"]
    assert ids(populated.select(["mito", "lipid body"], how="any")) == ["nuc_ld", "mito"]
    # background is in every entry
    assert len(populated.select(["background"])) == len(populated)
    assert ids(populated.select(["background", "mitochondria"])) == ["mito"]
    assert len(populated.select(["background", "mitochondria"], how="any")) == len(populated)


def test_select_hierarchy_is_exact(populated):
    # nucleus annotated without nucleolus cannot tell nucleoli apart: excluded
    assert populated.select(["nucleolus"]).index.tolist() == ["nucleolus", "nucleolus_only"]
    # nucleolus alone does not say where the rest of the nucleus is: excluded
    assert "nucleolus_only" not in populated.select(["nucleus"]).index


def test_select_filters(populated):
    ids = lambda frame: frame.index.tolist()  # noqa: E731
    assert ids(populated.select(species="alga")) == ["nuc_only"]
    assert ids(populated.select(["nucleus"], species="yeast")) == ["nuc_ld", "nucleolus"]
    assert ids(populated.select(annotator=["ana", "ben"])) == ["nuc_ld", "nuc_only"]
    assert ids(populated.select(annotator=lambda a: a.startswith("b"))) == ["nuc_only"]
    assert ids(populated.select(dose=lambda d: d > 1)) == ["mito"]  # missing never matches
    assert ids(populated.select(dz_um=0.05, units="1/um")) == list(populated)
    with pytest.raises(ValueError, match="no entry has a column 'specis'.*species"):
        populated.select(specis="yeast")
    with pytest.raises(ValueError, match="how must be 'all' or 'any', got 'most'"):
        populated.select(["nucleus"], how="most")
    with pytest.raises(UnknownClassError, match="unknown class name 'nucleos'"):
        populated.select(["nucleos"])


# -- container protocol, ids, updates, removal ---------------------------------------

def test_container_protocol_and_repr(populated):
    assert len(populated) == 5
    assert list(populated) == ["nuc_ld", "nuc_only", "nucleolus", "nucleolus_only", "mito"]
    assert "mito" in populated and "MITO" in populated and "nope" not in populated and 3 not in populated
    text = repr(populated)
    assert "5 entries" in text and "nucleus 3" in text and "mitochondria 1" in text
    clone = pickle.loads(pickle.dumps(populated))
    assert list(clone) == list(populated)


def test_entry_ids(cat):
    image, labels = make_cell(8)
    assert len(cat.add(image, labels)) == 32  # uuid4 hex
    cat.add(image, labels, entry_id="Cell-01.a")
    with pytest.raises(EntryExistsError, match="entry 'cell-01.A' exists"):
        cat.add(image, labels, entry_id="cell-01.A")  # folders collide on case-insensitive disks
    for bad in ["../x", ".hidden", "a/b", "", "x" * 129, "con", "NUL.txt", 5]:
        with pytest.raises(InvalidEntryError, match="entry id"):
            cat.add(image, labels, entry_id=bad)
    assert len(cat) == 2 and len(entry_folders(cat)) == 2


def test_update_metadata(cat):
    entry = cat.add(*make_cell(9), species="yeast", date="2024-01-01", entry_id="e1")
    meta = cat.update_metadata("e1", condition="starved", date=None)
    assert meta == {"species": "yeast", "condition": "starved", "source": "cell9.mrc"}
    assert cat.metadata(entry) == meta
    assert cat.get(entry).attrs["condition"] == "starved" and "date" not in cat.get(entry).attrs
    import zarr

    copy = zarr.open_group(str(cat.entry_path(entry)), mode="r").attrs["sxtlab_catalog_entry"]
    assert copy["metadata"] == meta
    with pytest.raises(InvalidEntryError, match=r"metadata\['when'\].*JSON"):
        cat.update_metadata(entry, when=object())
    with pytest.raises(EntryNotFoundError, match="no entry 'e2'"):
        cat.update_metadata("e2", condition="x")
    assert cat.metadata(entry) == meta


def test_remove(cat):
    a = cat.add(*make_cell(10))
    b = cat.add(*make_cell(11))
    cat.remove(a)
    assert list(cat) == [b] and a not in cat
    assert entry_folders(cat) == [f"{b}.zarr"]
    with pytest.raises(EntryNotFoundError, match=f"no entry '{a}'"):
        cat.get(a)
    with pytest.raises(EntryNotFoundError, match=f"no entry '{a}'"):
        cat.remove(a)
    cat.add(*make_cell(10), entry_id="again")
    cat.remove("AGAIN")
    assert list(cat) == [b]


def test_remove_failing_at_commit_restores_entry(cat, monkeypatch):
    entry = cat.add(*make_cell(12))

    con = cat._connection()

    class FailingCommit:
        """The connection, except that COMMIT fails (after the folder was moved aside)."""

        def __getattr__(self, name):
            return getattr(con, name)

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise OSError("disk gone")
            return con.execute(sql, *args)

    monkeypatch.setattr(cat, "_connection", lambda: FailingCommit())
    with pytest.raises(OSError, match="disk gone"):
        cat.remove(entry)
    monkeypatch.undo()
    assert list(cat) == [entry] and entry_folders(cat) == [f"{entry}.zarr"]
    assert cat.get(entry).labels.shape == SHAPE


# -- atomicity -----------------------------------------------------------------------

def _state(cat: Catalog):
    return list(cat), entry_folders(cat), cat.to_frame()["species"].tolist()


@pytest.mark.parametrize("where", ["zarr write", "sql insert", "rename"])
def test_crash_mid_add_leaves_catalog_unchanged(cat, monkeypatch, where):
    cat.add(*make_cell(13), species="yeast")
    before = _state(cat)

    def crash(*args, **kwargs):
        raise RuntimeError(f"crash in {where}")

    if where == "zarr write":
        real = catalog_module._write_array

        def write_then_crash(group, name, *args, **kwargs):
            if name == "labels":  # the image is already written
                crash()
            real(group, name, *args, **kwargs)

        monkeypatch.setattr(catalog_module, "_write_array", write_then_crash)
    elif where == "sql insert":
        monkeypatch.setattr(catalog_module, "_insert_entry", crash)
    else:
        real_move = catalog_module._move_into_place

        def move_then_crash(tmp, final):
            real_move(tmp, final)  # renamed into place, not yet committed
            crash()

        monkeypatch.setattr(catalog_module, "_move_into_place", move_then_crash)

    with pytest.raises(RuntimeError, match=f"crash in {where}"):
        cat.add(*make_cell(14), entry_id="crashed", species="alga")
    assert _state(cat) == before  # no row, no folder, no temporary
    assert "crashed" not in cat
    monkeypatch.undo()
    # the write lock was released: adding works again, with the same id
    cat.add(*make_cell(14), entry_id="crashed")
    assert len(cat) == 2


def _add_then_die(path: str) -> None:
    """Child process: killed after renaming its entry into place, before the commit."""
    from sxtlab import catalog as module

    real = module._move_into_place

    def move_and_die(tmp, final):
        real(tmp, final)
        os._exit(17)

    module._move_into_place = move_and_die
    Catalog(path).add(*make_cell(15), entry_id="killed")


def test_killed_writer_leaves_nothing_visible_and_open_cleans(cat, mp_context):
    entry = cat.add(*make_cell(16))
    child = mp_context.Process(target=_add_then_die, args=(str(cat.path),))
    child.start()
    child.join(60)
    assert child.exitcode == 17
    # the killed writer's folder sits under its final name, but nothing lists it
    assert "killed.zarr" in entry_folders(cat)
    assert list(cat) == [entry] and "killed" not in cat

    entries = cat.path / "entries"
    stale = entries / ".old.zarr.partial-0123abcd"
    fresh = entries / ".new.zarr.partial-4567abcd"
    stale.mkdir()
    fresh.mkdir()
    long_ago = time.time() - 2 * catalog_module.PARTIAL_MAX_AGE_S
    os.utime(stale, (long_ago, long_ago))
    # a remove() killed between moving the folder aside and committing
    os.replace(entries / f"{entry}.zarr", entries / f".{entry}.zarr.removing-89abcdef")

    reopened = Catalog.open(cat.path)  # the writer's lock died with it
    assert entry_folders(reopened) == [fresh.name, f"{entry}.zarr"]
    assert list(reopened) == [entry] and reopened.get(entry).lac.shape == SHAPE
    reopened.add(*make_cell(15), entry_id="killed")
    assert reopened.clean(partial_older_than_s=0) == [fresh.name]


def _add_many(path: str, worker: int, n: int, barrier) -> None:
    cat = Catalog(path)
    barrier.wait()  # start together, so that the writers really overlap
    for i in range(n):
        cat.add(*make_cell(100 * worker + i), entry_id=f"w{worker}_{i:02d}", worker=worker)


def test_two_processes_adding_at_once_lose_nothing(cat, mp_context):
    n = 8
    barrier = mp_context.Barrier(2)
    workers = [mp_context.Process(target=_add_many, args=(str(cat.path), w, n, barrier)) for w in (1, 2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0]
    assert len(cat) == 2 * n
    assert len(entry_folders(cat)) == 2 * n
    frame = cat.to_frame()
    assert frame["worker"].value_counts().to_dict() == {1: n, 2: n}
    for entry in cat:
        worker, i = int(entry[1]), int(entry[3:])
        _, labels = make_cell(100 * worker + i)
        np.testing.assert_array_equal(cat.get(entry).labels.values, labels.values)


# -- errors --------------------------------------------------------------------------

def test_add_rejects_bad_input(cat):
    image, labels = make_cell(20)
    other_image, other_labels = make_cell(21, shape=(10, 12, 15))
    with pytest.raises(sxtlab.FormatError, match=r"labels have shape \(10, 12, 15\), the image has \(10, 12, 14\)"):
        cat.add(image, other_labels)
    shifted = labels.assign_coords(z=labels.z + 0.5)
    with pytest.raises(sxtlab.FormatError, match="coordinates along 'z' differ"):
        cat.add(image, shifted)
    with pytest.raises(sxtlab.FormatError, match="expected dims"):
        cat.add(image.isel(z=0), labels)
    with pytest.raises(sxtlab.FormatError, match="expected an xarray.DataArray"):
        cat.add(image.values, labels)
    with pytest.raises(sxtlab.FormatError, match=r"use \.transpose"):
        cat.add(image.transpose("x", "y", "z"), labels)
    unknown = labels.copy()
    unknown.attrs = {**labels.attrs, "classes": {"1": "cell", "2": "nucleus", "3": "golgi"}}
    with pytest.raises(UnknownClassError, match="3: 'golgi'"):
        cat.add(image, unknown)
    with pytest.raises(UnknownClassError, match="unknown class name 'golgi'"):
        cat.add(image, labels, classes=["nucleus", "golgi"])
    with pytest.raises(InvalidEntryError, match=r"classes names \['mitochondria'\].*does not name"):
        cat.add(image, labels, classes=["nucleus", "mito"])
    unnamed = labels.copy()
    unnamed.attrs = {**labels.attrs, "classes": {"1": "cell", "2": "nucleus"}}
    with pytest.raises(sxtlab.FormatError, match=r"labels hold values \[3\]"):
        cat.add(image, unnamed)
    background_only = labels.where(labels == 0, 0).astype(np.uint8)
    background_only.attrs = {**labels.attrs, "classes": {}}
    with pytest.raises(InvalidEntryError, match="annotates no class"):
        cat.add(image, background_only)
    no_classes = labels.copy()
    no_classes.attrs = {}
    with pytest.raises(sxtlab.FormatError, match="no 'classes' attr"):
        cat.add(image, no_classes)
    with pytest.raises(sxtlab.FormatError, match="expected integers"):
        cat.add(image, labels.astype(np.float32).assign_attrs(labels.attrs))
    no_units = image.copy()
    del no_units.attrs["units"]
    with pytest.raises(sxtlab.FormatError, match="attr 'units' must be"):
        cat.add(no_units, labels)


def test_add_rejects_bad_metadata(cat):
    import datetime

    image, labels = make_cell(22)
    with pytest.raises(InvalidEntryError, match=r"metadata\['date'\] = datetime.date\(2024, 5, 1\).*ISO"):
        cat.add(image, labels, date=datetime.date(2024, 5, 1))
    with pytest.raises(InvalidEntryError, match=r"metadata\['score'\] = nan"):
        cat.add(image, labels, score=float("nan"))
    with pytest.raises(InvalidEntryError, match="metadata key 'path' is reserved"):
        cat.add(image, labels, path="x")
    with pytest.raises(InvalidEntryError, match="metadata key 'annotates_cell' is reserved"):
        cat.add(image, labels, annotates_cell=True)
    bad_attrs = image.assign_attrs(header=object())
    with pytest.raises(InvalidEntryError, match=r"image attrs\['header'\]"):
        cat.add(bad_attrs, labels)
    # NumPy scalars are stored as the Python numbers they hold
    entry = cat.add(image, labels, n=np.int64(3), pixel=np.float32(0.5))
    assert cat.metadata(entry)["n"] == 3 and cat.metadata(entry)["pixel"] == 0.5
    assert len(cat) == 1 and len(entry_folders(cat)) == 1


def test_create_and_open_errors(tmp_path):
    Catalog.create(tmp_path / "cat")
    with pytest.raises(sxtlab.OutputExistsError, match="exists; open an existing catalog"):
        Catalog.create(tmp_path / "cat")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Catalog.create(tmp_path / "no" / "such" / "cat")
    with pytest.raises(FileNotFoundError, match="no catalog at .*does not exist"):
        Catalog.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="not an sxtlab catalog: it has no index.sqlite and no entries"):
        Catalog.open(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(CatalogError, match="is a file, not a catalog folder"):
        Catalog.open(tmp_path / "file.txt")
    garbage = tmp_path / "garbage"
    (garbage / "entries").mkdir(parents=True)
    (garbage / "index.sqlite").write_bytes(b"not a database, not at all" * 10)
    with pytest.raises(CatalogError, match="index.sqlite is not an sxtlab catalog index"):
        Catalog.open(garbage)
    other = tmp_path / "other"
    (other / "entries").mkdir(parents=True)
    sqlite3.connect(other / "index.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(CatalogError, match="no such table: catalog_meta"):
        Catalog.open(other)
    con = sqlite3.connect(other / "index.sqlite")
    with con:
        con.execute("CREATE TABLE catalog_meta (key TEXT, value TEXT)")
        con.execute("INSERT INTO catalog_meta VALUES ('format_version', '1')")
    con.close()
    with pytest.raises(CatalogError, match="lacks the entries table"):
        Catalog.open(other)


def test_newer_format_refused(tmp_path):
    Catalog.create(tmp_path / "cat").close()
    con = sqlite3.connect(tmp_path / "cat" / "index.sqlite")
    with con:
        con.execute("UPDATE catalog_meta SET value = '99' WHERE key = 'format_version'")
    con.close()
    with pytest.raises(CatalogError, match="format version 99 .*reads versions up to 1: upgrade sxtlab"):
        Catalog.open(tmp_path / "cat")


def test_get_missing_folder(cat):
    entry = cat.add(*make_cell(23))
    import shutil

    shutil.rmtree(cat.entry_path(entry))
    with pytest.raises(CatalogError, match="in the index but its folder .* is missing"):
        cat.get(entry)
    cat.remove(entry)
    assert len(cat) == 0


def test_import_projects_reports_unmapped_names_and_adds_only_new(shared, tmp_path):
    import shutil

    from sxtlab.catalog import import_projects

    archive = tmp_path / "archive"
    shutil.copytree(shared / "data" / "ncxt", archive)
    cat = Catalog.create(tmp_path / "cat")
    first = import_projects(cat, archive, progress=False, species="yeast").set_index("project")
    sample = str(archive / "sample_12.hx")
    assert first.loc[sample, "status"] == "added" and first.loc[sample, "classes"] == ["cell"]
    assert "voxel size unknown" in first.loc[sample, "message"]
    templates = first.drop(index=sample)
    assert (templates["status"] == "unmapped").all() and len(templates) == 2
    assert templates["message"].str.contains("'Inside'").all()  # the name it could not map
    assert len(cat) == 1

    again = import_projects(cat, archive, class_map={"Inside": "cell"}, progress=False).set_index("project")
    assert again.loc[sample, "status"] == "present"
    assert (again.drop(index=sample)["status"] == "added").all() and len(cat) == 3
    entry = cat.to_frame().loc[first.loc[sample, "entry"]]
    assert entry["source"] == sample and entry["species"] == "yeast" and len(entry["sha256"]) == 64
    assert np.isnan(entry["dz_um"])  # unknown voxel size stays unknown
    labels = cat.get(first.loc[sample, "entry"])["labels"].values
    assert {0, 1, UNANNOTATED} <= set(np.unique(labels).tolist())  # 'ignore' became unannotated
    assert (import_projects(cat, archive, class_map={"Inside": "cell"}, progress=False)["status"]
            == "present").all()
    with pytest.raises(FileNotFoundError, match="no such folder"):
        import_projects(cat, tmp_path / "nowhere")


def test_phantom_catalog_annotates_like_a_real_archive(tmp_path):
    from sxtlab.task import phantom_catalog
    from sxtlab.task import Task

    cat = phantom_catalog(tmp_path / "refs", n_cells=4, shape=(32, 32, 32), voxel_size=0.1,
                          acquisition=False, progress=False)
    frame = cat.to_frame().set_index("annotator")
    assert frame.loc["complete", "annotated_classes"] == [
        "cell", "nucleus", "nucleolus", "mitochondria", "lipid_body", "vacuole"]
    assert frame.loc["lipid storage", "annotated_classes"] == ["cell", "lipid_body"]
    assert frame.loc["mitochondria", "annotated_classes"] == ["cell", "mitochondria"]
    # the study's own words ("lipid droplets") stay on its labels; the index holds the vocabulary's
    lipid = cat.get(cat.select(annotator="lipid storage").index[0])
    assert "lipid droplets" in lipid["labels"].attrs["classes"].values()
    # a task for mitochondria draws on the lipid study too: its cytoplasm may be a mitochondrion
    selection = Task(["mitochondria", "lipid_body"]).select(cat).set_index("annotator")
    assert set(selection.index) == {"complete", "lipid storage", "mitochondria", "nuclear envelope"}
    assert selection.loc["lipid storage", "masked"] == {"cell": "background or mitochondria"}
    assert (lipid["labels"].values == UNANNOTATED).sum() == 0  # masking happens in the task, not the entry
