"""Measurement tables on disk: CSV as before, Parquet with units and voxel size in its metadata."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import sxtlab
from sxtlab.cli import main
from sxtlab.measure import column_units, read_table, read_tables, write_table



def test_measure_to_parquet_keeps_units_voxel_size_and_dtypes(seg_file, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet tables need pyarrow (sxtlab[parquet])")
    out = tmp_path / "organelles.parquet"
    assert main(["measure", str(seg_file), "-o", str(out)]) == 0
    assert main(["measure", str(seg_file), "-o", str(tmp_path / "organelles.csv")]) == 0
    table = read_table(out)
    csv = read_table(tmp_path / "organelles.csv")
    # The same rows and values; Parquet keeps the ids' type (CSV makes numbers of "0").
    pd.testing.assert_frame_equal(table.drop(columns="cell_id"), csv.drop(columns="cell_id"), check_dtype=False)
    assert (table["cell_id"].astype(str) == csv["cell_id"].astype(str)).all()
    assert table.attrs["voxel_size_um"] == [0.05, 0.03, 0.03] and table.attrs["length_unit"] == "um"
    assert table.attrs["source"] == str(seg_file)
    assert table.attrs["column_units"]["volume_um3"] == "micrometer^3"
    nucleus = table[table["class"] == "nucleus"].iloc[0]
    assert nucleus["volume_um3"] == pytest.approx(4 * 4 * 6 * 0.05 * 0.03 * 0.03)
    # what a reader without sxtlab (or pandas) sees: field and schema metadata
    schema = pq.read_schema(out)
    assert schema.field("volume_um3").metadata[b"unit"] == b"micrometer^3"
    assert schema.field("lac_mean_per_um").metadata[b"unit"] == b"1/micrometer"
    assert json.loads(schema.metadata[b"sxtlab"])["attrs"]["voxel_size_um"] == [0.05, 0.03, 0.03]


def test_tables_are_never_overwritten_silently_and_read_together(seg_file, tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet tables need pyarrow (sxtlab[parquet])")
    table = sxtlab.measure.instances(sxtlab.read_segmentation(seg_file))
    first = write_table(table, tmp_path / "a.parquet")
    with pytest.raises(sxtlab.OutputExistsError):
        write_table(table, first)
    write_table(table, tmp_path / "b.csv")
    both = read_tables([first, tmp_path / "b.csv"])
    assert len(both) == 2 * len(table) and set(both["table_file"]) == {str(first), str(tmp_path / "b.csv")}


def test_unreadable_table_is_a_format_error(tmp_path):
    pytest.importorskip("pyarrow", reason="Parquet tables need pyarrow (sxtlab[parquet])")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(sxtlab.FormatError, match=r"bad\.parquet: not a readable Parquet table") as info:
        read_table(bad)
    assert info.value.__cause__ is not None


def test_column_units_from_names():
    assert column_units(["surface_area_um2", "distance_voxels", "n"]) == {
        "surface_area_um2": "micrometer^2", "distance_voxels": "voxel"}
