"""The organelle vocabulary."""

import pytest

from sxtlab import classes


@pytest.mark.parametrize("name, canonical", [
    ("Lipid droplets", "lipid_body"), ("LD", "lipid_body"), ("lipid_body", "lipid_body"),
    ("Mitochondrion", "mitochondria"), ("cytoplasm", "cell"), ("Exterior", "background"),
    ("void", "background"), ("starch-granule", "starch_granule"),
])
def test_synonyms(name, canonical):
    assert classes.canonical_name(name) == canonical


def test_unknown_name_suggests_nearest():
    with pytest.raises(classes.UnknownClassError, match=r"'nucleos'; did you mean [^?]*'nucleus'"):
        classes.canonical_name("nucleos")


def test_hierarchy():
    assert classes.descendants("nucleus") == ["nucleus", "nucleolus"]
    assert set(classes.descendants("cell")) == set(classes.VOCABULARY) - {"background"}


def test_ignore_names():
    assert classes.is_ignore_name("Ignore") and classes.is_ignore_name("unlabeled")
    assert not classes.is_ignore_name("cell")


def test_class_map_lists_every_unknown_name():
    with pytest.raises(classes.UnknownClassError, match=r"1: 'golgi', 3: 'er'"):
        classes.class_map({"1": "golgi", "2": "nucleus", "3": "er"})
    assert classes.class_map({"1": "LD"}) == {1: "lipid_body"}


def test_class_map_takes_integer_keys_of_any_kind_and_refuses_others():
    import numpy as np

    assert classes.class_map({"1": "cell", np.int64(2): "nucleus", 3.0: "vacuole", " 4": "LD"}) == {
        1: "cell", 2: "nucleus", 3: "vacuole", 4: "lipid_body"}
    for key in ("a", 1.5, True, None):
        with pytest.raises(ValueError, match=f"key must be an integer label value, got {key!r}"):
            classes.class_map({key: "cell"})
    with pytest.raises(TypeError, match="must map label values to class names, got str"):
        classes.class_map('{"1": "cell"}')


def test_colours_are_distinct():
    colours = [c.colour for c in classes.VOCABULARY.values()]
    assert len(set(colours)) == len(colours)
