"""Tests of sxtlab.stats: per-cell aggregation, rank tests, effect sizes, corrections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from sxtlab.stats import MissingColumnError, compare, per_cell


def instances(shifts: dict[str, float], n_cells: int = 6, seed: int = 0,
              conditions: tuple[str, ...] = ("control", "treated")) -> pd.DataFrame:
    """A per-instance table: 2–6 instances per cell and class; ``treated`` shifted by ``shifts``."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, condition in enumerate(conditions):
        for c in range(n_cells):
            cell_level = rng.normal(0, 0.02)  # cells differ; their instances share it
            for name, shift in shifts.items():
                for i in range(rng.integers(2, 7)):
                    rows.append({"cell_id": f"{condition}-{c}", "cell": 1, "condition": condition,
                                 "class": name, "instance": i + 1,
                                 "lac_mean_per_um": 0.5 + k * shift + cell_level + rng.normal(0, 0.01),
                                 "volume_um3": rng.lognormal(-3, 0.5)})
    return pd.DataFrame(rows)


def one_per_test(result: pd.DataFrame, within=("class",)) -> pd.DataFrame:
    return result.drop_duplicates(["measurement", *within]).reset_index(drop=True)


# -- per-cell aggregation ---------------------------------------------------------------
def test_per_cell_reduces_n_to_the_number_of_cells():
    table = instances({"lipid_body": 0.2, "mitochondria": 0.0})
    out = per_cell(table, "lac_mean_per_um")
    assert len(out) == 12 * 2  # cells × classes
    assert out["n_instances"].sum() == len(table)
    expected = table.groupby(["cell_id", "class"])["lac_mean_per_um"].median()
    got = out.set_index(["cell_id", "class"])["lac_mean_per_um"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index())

    result = compare(table, "lac_mean_per_um")
    assert set(result["n_cells"]) == {6}
    assert result.groupby("class")["n_instances"].sum().to_dict() == table["class"].value_counts().to_dict()


def test_per_cell_counts_cells_of_one_volume_separately():
    table = pd.DataFrame({"cell_id": ["vol1"] * 4, "cell": [1, 1, 2, 2], "condition": "a",
                          "class": "lipid_body", "volume_um3": [1.0, 2.0, 3.0, 5.0]})
    out = per_cell(table, "volume_um3", aggregate="sum")
    assert out["volume_um3"].tolist() == [3.0, 8.0]
    assert out["n_instances"].tolist() == [2, 2]


def test_per_cell_sum_of_missing_values_is_missing():
    table = pd.DataFrame({"cell_id": ["a", "a", "b"], "condition": "x", "class": "vacuole",
                          "lac_mean_per_um": [np.nan, np.nan, 0.2]})
    out = per_cell(table, aggregate="sum")
    assert np.isnan(out["lac_mean_per_um"].iloc[0]) and out["lac_mean_per_um"].iloc[1] == 0.2


def test_per_cell_rejects_a_cell_in_two_conditions():
    table = pd.DataFrame({"cell_id": ["a", "a"], "condition": ["x", "y"], "class": "nucleus",
                          "lac_mean_per_um": [0.2, 0.3]})
    with pytest.raises(ValueError, match="more than one 'condition'"):
        per_cell(table)


def test_per_cell_unknown_aggregate():
    with pytest.raises(ValueError, match="aggregate must be one of"):
        per_cell(instances({"nucleus": 0}), aggregate="mode")


# -- tests and effect sizes ----------------------------------------------------------------
def test_mann_whitney_matches_scipy_on_per_cell_values():
    table = instances({"lipid_body": 0.02, "mitochondria": 0.0})
    result = one_per_test(compare(table, "lac_mean_per_um"))
    cells = per_cell(table, "lac_mean_per_um")
    for _, row in result.iterrows():
        part = cells[cells["class"] == row["class"]]
        a = part.loc[part["condition"] == "control", "lac_mean_per_um"]
        b = part.loc[part["condition"] == "treated", "lac_mean_per_um"]
        ref = st.mannwhitneyu(a, b, alternative="two-sided")
        assert row["test"] == "Mann-Whitney U"
        assert row["statistic"] == ref.statistic
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
        assert row["comparison"] == "treated vs control"


def test_complete_separation_gives_rank_biserial_of_one_with_sign():
    table = instances({"lipid_body": 0.3})
    up = one_per_test(compare(table))
    assert up.loc[0, "effect_size"] == 1.0  # every treated cell above every control cell
    assert up.loc[0, "p_value"] == pytest.approx(2 / 924)  # exact: 2 of C(12, 6) orderings
    down = one_per_test(compare(table, order=["treated", "control"]))
    assert down.loc[0, "effect_size"] == -1.0
    assert down.loc[0, "comparison"] == "control vs treated"


def test_rank_biserial_with_ties_on_a_hand_worked_case():
    # b vs a: 7 pairs with b larger, 1 tie (2 = 2), 1 with a larger: r = (7 - 1) / 9.
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 5.0]
    table = pd.DataFrame({"cell_id": range(6), "condition": ["a"] * 3 + ["b"] * 3, "class": "nucleus",
                          "lac_mean_per_um": a + b})
    row = compare(table).iloc[0]
    assert row["effect_size"] == pytest.approx(6 / 9)
    assert row["statistic"] == 1.5  # U of the first condition: one win and one tie
    assert row["effect_size_measure"] == "rank-biserial r"


def test_kruskal_wallis_for_three_conditions():
    table = instances({"lipid_body": 0.1, "vacuole": 0.0}, conditions=("a", "b", "c"))
    result = one_per_test(compare(table))
    cells = per_cell(table)
    for _, row in result.iterrows():
        part = cells[cells["class"] == row["class"]]
        groups = [part.loc[part["condition"] == c, "lac_mean_per_um"] for c in "abc"]
        ref = st.kruskal(*groups)
        assert row["test"] == "Kruskal-Wallis H"
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
        assert row["effect_size"] == pytest.approx(ref.statistic / (18 - 1))  # ε² = H/(n − 1)
        assert 0 <= row["effect_size"] <= 1
    # Three fully separated groups of 6 cells: mean ranks 3.5, 9.5, 15.5 of n = 18, so
    # H = 12/(n(n+1)) Σ n_i R̄_i² − 3(n+1), worked by hand.
    h = 12 / (18 * 19) * 6 * (3.5**2 + 9.5**2 + 15.5**2) - 3 * 19
    separated = result.set_index("class").loc["lipid_body"]
    assert separated["statistic"] == pytest.approx(h)
    assert separated["effect_size"] == pytest.approx(h / 17)


def test_benjamini_hochberg_equals_scipy_and_is_monotone():
    shifts = {"nucleus": 0.0, "nucleolus": 0.005, "mitochondria": 0.01, "lipid_body": 0.02,
              "vacuole": 0.05, "starch_granule": 0.0}
    result = compare(instances(shifts, n_cells=5, seed=3), ["lac_mean_per_um", "volume_um3"])
    tests = one_per_test(result)
    assert len(tests) == 12 and result.attrs["tests"] == 12
    p, adjusted = tests["p_value"].to_numpy(), tests["p_adjusted"].to_numpy()
    np.testing.assert_allclose(adjusted, st.false_discovery_control(p), rtol=1e-12)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= -1e-15)
    assert np.all(adjusted >= p)


def test_holm_and_no_correction():
    table = instances({"nucleus": 0.0, "mitochondria": 0.01, "lipid_body": 0.05}, seed=1)
    tests = one_per_test(compare(table, correction="holm"))
    p = tests["p_value"].to_numpy()
    order = np.argsort(p)
    expected = np.empty(3)
    expected[order] = np.minimum(1, np.maximum.accumulate((3 - np.arange(3)) * p[order]))
    np.testing.assert_allclose(tests["p_adjusted"], expected)
    plain = one_per_test(compare(table, correction=None))
    np.testing.assert_array_equal(plain["p_adjusted"], plain["p_value"])


def test_summary_statistics_of_per_cell_values():
    table = instances({"lipid_body": 0.2})
    result = compare(table).set_index("condition")
    cells = per_cell(table)
    x = cells.loc[cells["condition"] == "treated", "lac_mean_per_um"].to_numpy()
    row = result.loc["treated"]
    assert row["mean"] == pytest.approx(x.mean())
    assert row["std"] == pytest.approx(x.std(ddof=1))
    assert row["median"] == pytest.approx(np.median(x))
    assert row["iqr"] == pytest.approx(np.subtract(*np.percentile(x, [75, 25])))
    assert list(result.columns[:3]) == ["measurement", "class", "n_cells"]  # condition is the index here


def test_distances_within_class_and_target():
    rng = np.random.default_rng(2)
    table = pd.DataFrame({"cell_id": np.repeat(np.arange(8), 6), "condition": np.repeat(["a", "b"], 24),
                          "class": "lipid_body", "target_class": np.tile(["nucleus", "cell"], 24),
                          "distance_um": rng.uniform(0, 1, 48)})
    result = compare(table, "distance_um", within=["class", "target_class"])
    assert len(result) == 4 and result["n_cells"].eq(4).all()
    no_within = compare(table, "distance_um", within=None)
    assert len(no_within) == 2 and "class" not in no_within


# -- what cannot be tested: notes, not crashes ---------------------------------------------
def test_group_with_fewer_than_two_cells_gives_nan_and_a_note():
    table = instances({"lipid_body": 0.2, "mitochondria": 0.0})
    lonely = (table["class"] == "mitochondria") & (table["condition"] == "treated") \
        & (table["cell_id"] != "treated-0")
    result = one_per_test(compare(table[~lonely])).set_index("class")
    assert np.isnan(result.loc["mitochondria", "p_value"])
    assert np.isnan(result.loc["mitochondria", "p_adjusted"])
    assert result.loc["mitochondria", "note"] == "fewer than 2 cells in treated (1)"
    assert np.isfinite(result.loc["lipid_body", "p_value"]) and result.loc["lipid_body", "note"] == ""
    # the family is the tests that could be made
    assert result.loc["lipid_body", "p_adjusted"] == result.loc["lipid_body", "p_value"]


def test_class_absent_from_one_condition():
    table = instances({"lipid_body": 0.2, "starch_granule": 0.0})
    table = table[~((table["class"] == "starch_granule") & (table["condition"] == "control"))]
    result = compare(table).set_index(["class", "condition"])
    assert result.loc[("starch_granule", "control"), "n_cells"] == 0
    assert result.loc[("starch_granule", "control"), "note"] == "fewer than 2 cells in control (0)"


def test_all_values_identical():
    table = pd.DataFrame({"cell_id": range(9), "condition": list("aaabbbccc"), "class": "cell",
                          "volume_fraction": 1.0})
    row = compare(table, "volume_fraction").iloc[0]
    assert np.isnan(row["p_value"]) and row["note"] == "all values are identical"


def test_missing_column_lists_the_available_ones():
    table = instances({"nucleus": 0.0})
    with pytest.raises(MissingColumnError, match="no column 'lac_mean'.*'lac_mean_per_um'") as info:
        compare(table, "lac_mean")
    assert "Available columns: cell_id, cell, condition, class, instance, lac_mean_per_um" in str(info.value)
    assert isinstance(info.value, KeyError)
    with pytest.raises(MissingColumnError, match="'genotype'"):
        compare(table, by="genotype")


def test_missing_lac_in_a_gray_table_suggests_gray():
    table = instances({"nucleus": 0.0}).rename(columns={"lac_mean_per_um": "gray_mean"})
    with pytest.raises(MissingColumnError, match="did you mean 'gray_mean'"):
        compare(table)


def test_missing_cell_column():
    table = instances({"nucleus": 0.0}).drop(columns=["cell_id", "cell"])
    with pytest.raises(MissingColumnError, match="to identify cells"):
        compare(table)


def test_a_single_condition_is_an_error():
    table = instances({"nucleus": 0.0}, conditions=("control",))
    with pytest.raises(ValueError, match="at least two conditions in 'condition'; found \\['control'\\]"):
        compare(table)


def test_invalid_test_and_correction():
    table = instances({"nucleus": 0.0}, conditions=("a", "b", "c"))
    with pytest.raises(ValueError, match="compares two conditions"):
        compare(table, test="mannwhitneyu")
    assert one_per_test(compare(table, test="mannwhitneyu", order=["a", "c"]))["comparison"][0] == "c vs a"
    with pytest.raises(ValueError, match="test must be"):
        compare(table, test="t")
    with pytest.raises(ValueError, match="correction must be"):
        compare(table, correction="bonferroni")
    with pytest.raises(ValueError, match="order names \\['d'\\]"):
        compare(table, order=["a", "d"])


def test_objects_cut_by_the_volume_edge_are_left_out_of_summaries():
    t = pd.DataFrame({"cell_id": ["a", "a", "a", "b", "b", "c", "c"], "condition": ["x", "x", "x", "y", "y", "y", "y"],
                      "class": "lipid_body", "volume_um3": [1.0, 3.0, 0.1, 2.0, 0.2, 5.0, 4.0],
                      "touches_border": [False, False, True, False, True, False, False]})
    per = per_cell(t, "volume_um3", aggregate="sum")
    assert per.set_index("cell_id")["volume_um3"].to_dict() == {"a": 4.0, "b": 2.0, "c": 9.0}
    assert per["n_instances"].tolist() == [2, 1, 2] and per.attrs["cut_left_out"] == 2
    every = per_cell(t, "volume_um3", aggregate="sum", include_cut=True)
    assert every.set_index("cell_id")["volume_um3"].to_dict() == pytest.approx({"a": 4.1, "b": 2.2, "c": 9.0})
    res = compare(t, "volume_um3", aggregate="sum")
    assert res.attrs["cut_left_out"] == 2 and res["n_instances"].tolist() == [2, 3]
