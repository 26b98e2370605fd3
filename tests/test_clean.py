"""sxtlab.clean against analytic shapes: specks, holes and touching objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import sxtlab
from sxtlab import measure
from sxtlab.clean import MIN_VOLUME_UM3, clean_labels, too_small

ANISO = (0.05, 0.03, 0.03)
CLASSES = {1: "cell", 2: "nucleus", 5: "lipid_body", 6: "vacuole"}


def ball(shape, vs, centre_um, radius_um):
    g = np.meshgrid(*[s * np.arange(n) for n, s in zip(shape, vs)], indexing="ij")
    return sum((gi - c) ** 2 for gi, c in zip(g, centre_um)) <= radius_um ** 2


def labelled(lab, vs=ANISO):
    img = sxtlab.volume(np.full(lab.shape, 0.3, np.float32), voxel_size=vs)
    return sxtlab.label_volume(lab, img, CLASSES)


def cell(shape=(48, 80, 80), vs=ANISO):
    lab = np.zeros(shape, np.uint8)
    lab[ball(shape, vs, (1.2, 1.2, 1.2), 1.0)] = 1  # a cell of radius 1 µm: 4.2 µm³
    return lab


def test_two_touching_lipid_bodies_are_split_into_two():
    lab = cell()
    lab[ball(lab.shape, ANISO, (1.2, 1.2, 1.0), 0.25)] = 5
    lab[ball(lab.shape, ANISO, (1.2, 1.2, 1.4), 0.25)] = 5  # centres 0.4 µm apart: a neck 0.15 µm in radius
    assert measure.instances(labelled(lab), class_names=["lipid_body"]).shape[0] == 1
    cleaned = clean_labels(labelled(lab))
    assert cleaned.attrs["cleaned"] == {"removed": 0, "holes_filled_voxels": 0, "split_added": 1}
    table = measure.instances(cleaned, class_names=["lipid_body"])
    assert len(table) == 2
    # each a ball of 0.0654 µm³ less the cap beyond the mid-plane (0.0018 µm³) and its
    # share of the one-voxel dividing line, which went to the cytoplasm
    assert table["volume_um3"].tolist() == pytest.approx([0.0621, 0.0621], abs=0.0002)
    assert ((lab == 5) & (cleaned.values == 1)).sum() == (lab == 5).sum() - (cleaned.values == 5).sum()
    # the parts do not touch even at a corner, and the line is one voxel thick
    _, n = ndimage.label(cleaned.values == 5, ndimage.generate_binary_structure(3, 3))
    assert n == 2
    line = (lab == 5) & (cleaned.values != 5)
    assert np.unique(np.nonzero(line)[2]).size == 1


def test_a_single_lipid_body_and_an_ellipsoidal_vacuole_are_not_split():
    lab = cell()
    lab[ball(lab.shape, ANISO, (1.2, 1.0, 1.0), 0.25)] = 5
    g = np.meshgrid(*[s * np.arange(n) for n, s in zip(lab.shape, ANISO)], indexing="ij")
    lab[((g[0] - 1.2) / 0.2) ** 2 + ((g[1] - 1.6) / 0.2) ** 2 + ((g[2] - 1.3) / 0.5) ** 2 <= 1] = 6
    assert clean_labels(labelled(lab)).attrs["cleaned"]["split_added"] == 0


def test_specks_become_what_surrounds_them():
    lab = cell()
    lab[2, 2, 2] = 1                # a one-voxel "cell" in the medium
    lab[1:4, 70:73, 70:73] = 1      # 27 voxels, 0.0012 µm³: still far below 1 µm³
    lab[24, 40, 40] = 5             # a one-voxel lipid body in the cytoplasm
    lab[2:5, 70:73, 2:5] = 5        # a lipid body speck in the medium, outside every cell
    cleaned = clean_labels(labelled(lab))
    assert cleaned.attrs["cleaned"]["removed"] == 4
    assert cleaned.values[2, 2, 2] == 0 and cleaned.values[24, 40, 40] == 1
    assert (cleaned.values[1:5, 70:73, :] == 0).all()
    assert len(measure.instances(cleaned, class_names=["cell"])) == 1


def test_a_hollow_nucleus_is_filled_and_a_hollow_cell_is_not():
    lab = cell()
    lab[ball(lab.shape, ANISO, (1.2, 1.2, 1.2), 0.5)] = 2
    cavity = ball(lab.shape, ANISO, (1.2, 1.2, 1.2), 0.2)
    lab[cavity] = 1  # cytoplasm inside the nucleus: not possible
    cleaned = clean_labels(labelled(lab))
    assert (cleaned.values[cavity] == 2).all()
    assert cleaned.attrs["cleaned"]["holes_filled_voxels"] == cavity.sum()
    # with nothing to fill, the labels are as they were
    lab[cavity] = 2
    np.testing.assert_array_equal(clean_labels(labelled(lab)).values, lab)


def test_minimum_sizes_are_in_cubic_micrometres_at_anisotropic_voxels():
    vs = ANISO
    voxel = np.prod(vs)  # 4.5e-5 µm³
    mask = np.zeros((10, 10, 40), bool)
    mask[1, 1, 1:23] = True   # 22 voxels: 0.00099 µm³
    mask[5, 5, 1:24] = True   # 23 voxels: 0.001035 µm³
    small = too_small(mask, vs, MIN_VOLUME_UM3["lipid_body"])
    assert 22 * voxel < MIN_VOLUME_UM3["lipid_body"] < 23 * voxel
    assert small[1].sum() == 22 and small[5].sum() == 0
    # the same objects at isotropic 30 nm voxels (2.7e-5 µm³) are all too small
    assert too_small(mask, (0.03, 0.03, 0.03), 0.001).sum() == 45


def test_unknown_voxel_size_is_refused():
    lab = np.zeros((4, 4, 4), np.uint8)
    img = sxtlab.volume(np.zeros(lab.shape, np.float32), voxel_size=None)
    with pytest.raises(sxtlab.VoxelSizeUnknownError, match=r"give voxel_size=\(dz, dy, dx\) in µm"):
        clean_labels(sxtlab.label_volume(lab, img, CLASSES))


def test_a_lobe_below_the_minimum_stays_with_its_object():
    vs = (0.03, 0.03, 0.03)
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[ball(lab.shape, vs, (0.6, 0.6, 0.6), 0.55)] = 1
    lab[ball(lab.shape, vs, (0.6, 0.6, 0.5), 0.25)] = 6
    bump = ball(lab.shape, vs, (0.6, 0.6, 0.88), 0.11) & (lab != 6)  # 0.0056 µm³ bulging out of the vacuole
    lab[bump] = 6
    cleaned = clean_labels(labelled(lab, vs), min_volume_um3={"cell": 0.1, "vacuole": 0.006})
    assert cleaned.attrs["cleaned"] == {"removed": 0, "holes_filled_voxels": 0, "split_added": 0}
    np.testing.assert_array_equal(cleaned.values, lab)  # nothing lost to the cytoplasm


@pytest.mark.parametrize(("separation", "parts"), [(1.2, 1), (1.35, 1), (1.55, 2), (1.7, 2)])
def test_two_balls_split_where_their_neck_is_narrower_than_the_ratio(separation, parts):
    """Equal balls of radius r with centres d apart meet in a neck of radius
    r·sqrt(1 − d²/4r²): 0.80r, 0.73r, 0.62r and 0.53r here, against SPLIT_NECK_RATIO 0.7."""
    vs = (0.03, 0.03, 0.03)
    lab = np.zeros((40, 40, 60), np.uint8)
    lab[ball(lab.shape, vs, (0.6, 0.6, 0.9), 0.6)] = 1
    r = 0.25
    for side in (-1, 1):
        lab[ball(lab.shape, vs, (0.6, 0.6, 0.9 + side * separation * r / 2), r)] = 5
    cleaned = clean_labels(labelled(lab, vs), min_volume_um3={"cell": 0.1, "lipid_body": 0.001})
    assert cleaned.attrs["cleaned"]["split_added"] == parts - 1
    assert len(measure.instances(cleaned, class_names=["lipid_body"])) == parts



def test_a_sheet_of_touching_balls_splits_into_every_ball():
    """36 balls in a 6×6 grid, each touching four through a neck of 0.44 r: one component,
    36 lipid bodies (the merge keeps a heap of pairs, not a dense table)."""
    vs, r = (0.03, 0.03, 0.03), 0.15
    step = 1.8 * r
    lab = np.zeros((16, 70, 70), np.uint8)
    lab[...] = 1
    for i in range(6):
        for j in range(6):
            lab[ball(lab.shape, vs, (0.24, 0.3 + i * step, 0.3 + j * step), r)] = 5
    assert len(measure.instances(labelled(lab, vs), class_names=["lipid_body"])) == 1
    cleaned = clean_labels(labelled(lab, vs), min_volume_um3={"cell": 0.01, "lipid_body": 0.001})
    assert cleaned.attrs["cleaned"]["split_added"] == 35
    volumes = measure.instances(cleaned, class_names=["lipid_body"])["volume_um3"]
    assert len(volumes) == 36 and volumes.min() > 0.5 * 4 / 3 * np.pi * r ** 3
