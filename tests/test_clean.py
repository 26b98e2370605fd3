"""sxtlab.clean against analytic shapes: specks, holes and touching objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import sxtlab
from sxtlab import measure
from sxtlab.clean import MIN_CUT_FACES, MIN_VOLUME_UM3, clean_labels, cut_face_areas, is_speck, too_small

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


def test_a_neighbour_cut_by_the_field_edge_is_kept_however_little_of_it_is_inside():
    """A neighbouring cell of radius 1 µm whose centre lies 0.6 µm beyond the y = 0 voxels:
    a cap of 0.47 µm³ in the field (below a cell's 1 µm³) with a cut face of about
    π(1 − 0.6²) = 2.0 µm². A speck of 4 voxels on the same edge goes."""
    vs = ANISO
    lab = cell(shape=(48, 80, 160))
    neighbour = ball(lab.shape, vs, (1.2, -0.6, 3.6), 1.0)
    lab[neighbour] = 1
    lab[ball(lab.shape, vs, (1.2, 0.2, 3.6), 0.15)] = 5  # its lipid body
    lab[40:42, 0, 5:7] = 1  # 4 voxels on the edge: 0.0036 µm² of cut face
    h = 0.4 + vs[1] / 2  # the first voxel's centre lies at y = 0, the field's edge half a voxel before it
    cap_um3 = np.pi * h ** 2 * (3 - h) / 3
    assert neighbour.sum() * np.prod(vs) == pytest.approx(cap_um3, rel=0.05) and cap_um3 < MIN_VOLUME_UM3["cell"]
    cleaned = clean_labels(labelled(lab))
    assert cleaned.attrs["cleaned"]["removed"] == 1
    np.testing.assert_array_equal(cleaned.values[neighbour], lab[neighbour])
    assert (cleaned.values[40:42, 0, 5:7] == 0).all()
    table = measure.instances(labelled(lab), class_names=["cell"], min_volume_um3=MIN_VOLUME_UM3)
    assert len(table) == 2 and table["touches_border"].tolist() == [False, True]
    assert table["volume_um3"].iloc[1] == pytest.approx(cap_um3, rel=0.05)


def test_cut_faces_count_only_the_field_edge_in_physical_area():
    components = np.zeros((6, 8, 10), np.int32)
    components[0:3, 2:4, 0:2] = 1    # on z = 0 (2 x 2 faces of dy·dx) and x = 0 (3 x 2 of dz·dy)
    components[2:4, 2:4, 3:5] = 2    # inside
    components[5, 7, 9] = 3          # a corner voxel: one face on each of three edges
    dz, dy, dx = ANISO
    areas = cut_face_areas(components, 3, ANISO)
    assert areas.tolist() == pytest.approx([4 * dy * dx + 6 * dz * dy, 0.0, dy * dx + dz * dx + dz * dy])
    # the same components as a window of a larger field touch its edge only at z = 0
    window = (slice(0, 6), slice(5, 13), slice(5, 15))
    assert cut_face_areas(components, 3, ANISO, window=window, shape=(20, 20, 20)).tolist() == pytest.approx(
        [4 * dy * dx, 0.0, 0.0])
    assert is_speck(np.array([0.5, 0.5]), np.array([0.3, 0.31]), 1.0, ANISO).tolist() == [True, False]  # πr²/4 = 0.3023


def test_noise_in_the_field_s_edges_and_corners_is_still_a_speck():
    """For the small classes πr²/4 is a voxel face or two (lipid bodies: 0.003 µm²), which
    one voxel in an edge (2 faces of 0.0025 µm² at 50 nm) or a corner (3) has: the cut face
    must also span MIN_CUT_FACES voxel faces. A lipid body cut by the edge through a
    4 × 4-voxel section is kept."""
    vs = (0.05, 0.05, 0.05)
    lab = np.ones((20, 20, 20), np.uint8)   # cytoplasm filling the field
    lab[0, 0, 10] = 5                       # one voxel in an edge of the field
    lab[19, 19, 19] = 5                     # one in a corner
    lab[0:2, 5:7, 0] = 5                    # 4 voxels on a face: 0.01 µm² of cut face
    lab[8:12, 8:12, 0:2] = 5                # a lipid body cut by the x = 0 face, 0.04 µm² of it
    assert MIN_CUT_FACES == 9
    cleaned = clean_labels(labelled(lab, vs), min_volume_um3={"cell": 0.1, "lipid_body": 0.001})
    assert (cleaned.values == 5).sum() == 32 and (cleaned.values[8:12, 8:12, 0:2] == 5).all()
    kept = measure.instances(labelled(lab, vs), class_names=["lipid_body"],
                             min_volume_um3={"cell": 0.1, "lipid_body": 0.001})
    assert kept["voxel_count"].tolist() == [32]
    assert is_speck(np.array([1e-4, 1e-4]), np.array([0.0075, 0.023]), 0.001, vs).tolist() == [True, False]


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
