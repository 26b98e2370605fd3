"""Clean objects: a label volume made into the objects a biologist counts and measures.

A network's arg-max labels hold what no cell has: specks of a few voxels called
``cell`` in the medium, a nucleus with a hole where its texture fooled the network,
two lipid bodies that touch counted as one. :func:`clean_labels` removes, fills and
splits them, class by class, in physical units so that the same settings hold at
every voxel size:

1. **Minimum sizes** (:data:`MIN_VOLUME_UM3`, µm³ of a class's nested region, i.e.
   with its sub-classes): a smaller connected component becomes what surrounds it
   (the most frequent label on its outer face: a ``cell`` speck in the medium
   becomes background, a mitochondria speck in the cytoplasm cytoplasm). The
   ``cell`` goes first, so the cell is its connected body and a speck's organelles
   go with it. A component cut by the edge of the field is judged by its cut face
   as well (:func:`is_speck`): the part of a neighbouring cell that reaches into the
   field may hold less than the least volume of a cell, but it is no speck.
2. **Holes filled** for classes that cannot have any (:data:`FILL_HOLES`: nucleus,
   lipid body, vacuole): voxels enclosed by the class region in 3-D
   (:func:`scipy.ndimage.binary_fill_holes`) join it.
3. **Touching objects split** where counts matter (:data:`SPLIT`: lipid bodies,
   vacuoles): the classic distance-transform watershed (scikit-image gallery,
   "Watershed segmentation"): one marker per regional maximum of the Euclidean
   distance to the outside (in µm) at least ``split_depth_voxels`` voxels above
   the neck joining it to another (:func:`skimage.morphology.h_maxima`), flooded
   over the component (:func:`skimage.segmentation.watershed`). Parts are then
   merged back where they are lobes of one object rather than objects that touch:
   where the neck between two (the pass of the distance map) is wider than
   :data:`SPLIT_NECK_RATIO` times the smaller part's inscribed radius (two equal
   balls of radius r with centres d apart meet in a neck r·sqrt(1 − d²/4r²), so
   balls are split once d > 1.43 r), and where a part is smaller than its class's
   minimum (a ripple of the surface). A one-voxel line between the remaining parts
   (so that no two touch, not even at a corner) becomes what surrounds them (the
   cytoplasm, mostly): the parts are then separate connected components for every
   later step. The size filter runs again after a split, for pieces of the line.

It needs only the label volume and its voxel size, so it sits beside
:mod:`sxtlab.volume` in the import order: :meth:`sxtlab.cascade.CascadeModel.predict`
applies it to predictions (``clean=True``) and :func:`sxtlab.measure.instances`
uses the same size filter (``min_volume_um3``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable, Mapping

import numpy as np
import xarray as xr
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .classes import UNANNOTATED, VOCABULARY, class_map, descendants
from .errors import GIVE_VOXEL_SIZE, FormatError, VoxelSizeUnknownError
from .volume import DIMS, check_voxel_size

__all__ = ["MIN_VOLUME_UM3", "FILL_HOLES", "SPLIT", "SPLIT_NECK_RATIO", "MIN_CUT_FACES", "clean_labels", "cut_face_areas",
           "is_speck", "too_small"]

log = logging.getLogger(__name__)

#: Least volume (µm³) of one object of each class; smaller components are specks.
#: Chosen well below the smallest real objects of the class in SXT of yeast and
#: algae (cells ≥ ~10 µm³; nuclei ≥ ~0.5 µm³; vacuoles, lipid bodies and starch
#: granules from ~0.1–0.2 µm across: 0.5–4·10⁻³ µm³; mitochondrial tubules
#: ~0.2 µm thick) and above what one or a few voxels of noise make at 25–60 nm
#: voxels (one 50 nm voxel is 1.25·10⁻⁴ µm³).
MIN_VOLUME_UM3: dict[str, float] = {
    "cell": 1.0,
    "nucleus": 0.05,
    "nucleolus": 0.005,
    "mitochondria": 0.002,
    "lipid_body": 0.001,
    "vacuole": 0.002,
    "starch_granule": 0.001,
    "organelle": 0.001,
}
#: Classes whose objects have no cavities, so an enclosed hole is a segmentation error.
FILL_HOLES: tuple[str, ...] = ("nucleus", "lipid_body", "vacuole")
#: Classes whose touching objects are split, because their number is measured.
SPLIT: tuple[str, ...] = ("lipid_body", "vacuole")
#: Widest neck, relative to the smaller part's inscribed radius, at which two parts
#: are split (wider necks join lobes of one object). Chosen on ten held-out phantom
#: cells of the default model (seeds 2000-2009): mean error of the lipid-body count
#: 2.5-2.6 at 0.5-0.8 (3.6 without a split, 4.7 with every h-maximum split), of the
#: vacuole count 4.3 (3.9, 5.4; the rest are the network's false vacuoles), and the
#: truth's own labels keep their exact counts.
SPLIT_NECK_RATIO = 0.7
#: Least cut face, in voxel faces, of an object the field's edge cuts (:func:`is_speck`):
#: a section of 3 × 3 voxels; below that, a cut object cannot be told from noise.
MIN_CUT_FACES = 9


def _depth(name: str) -> int:
    parent, depth = VOCABULARY[name].parent, 0
    while parent is not None:
        parent, depth = VOCABULARY[parent].parent, depth + 1
    return depth


def cut_face_areas(components: np.ndarray, n: int, spacing: Iterable[float], *,
                   window: tuple[slice, ...] | None = None, shape: Iterable[int] | None = None) -> np.ndarray:
    """Area of each component's voxel faces on the edge of the field (µm²): its cut face.

    Parameters
    ----------
    components : numpy.ndarray of int, shape (z, y, x)
        Component labels 1..n (0 none), as :func:`scipy.ndimage.label` gives.
    n : int
        Number of components.
    spacing : (dz, dy, dx)
        Voxel size, µm.
    window, shape : optional
        Where ``components`` lies in a larger field (slices) and that field's shape:
        only the window's sides that lie on the field's edge count. Default: the
        components fill the field.

    Returns
    -------
    numpy.ndarray of float, shape (n,)
        µm²; 0 for a component that does not reach the edge. A voxel face on the
        z edge counts dy·dx, and so on.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((4, 5, 5), int)
    >>> lab[0:2, 1:3, 1:3] = 1  # a 2 x 2 face on the z = 0 edge
    >>> lab[2, 2, 2] = 2        # inside
    >>> cut_face_areas(lab, 2, (0.05, 0.1, 0.1)).round(3).tolist()
    [0.04, 0.0]
    """
    sp = tuple(float(d) for d in spacing)
    full = tuple(components.shape) if shape is None else tuple(int(k) for k in shape)
    box = window or tuple(slice(0, k) for k in components.shape)
    out = np.zeros(n + 1)
    for axis in range(3):
        face = float(np.prod([d for a, d in enumerate(sp) if a != axis]))
        for index, on_edge in ((0, box[axis].start == 0), (-1, box[axis].stop == full[axis])):
            if on_edge:
                out += face * np.bincount(np.take(components, index, axis=axis).ravel(), minlength=n + 1)[:n + 1]
    return out[1:]


def is_speck(volume_um3: np.ndarray, cut_face_um2: np.ndarray, min_volume_um3: float,
             spacing: Iterable[float]) -> np.ndarray:
    """Which components are specks: below the least volume and not cut by the field's edge.

    A component whose cut face (:func:`cut_face_areas`) is at least a quarter of the
    central cross-section of a ball of ``min_volume_um3`` (πr²/4, r = (3V/4π)^⅓) is
    part of an object the field cuts off, however little of it lies inside: its own
    volume cannot tell it from a speck, but specks of noise touch the edge with a
    few voxels. (A quarter: a ball's section falls to that size 0.87 r from its
    centre, beyond which a cut piece is a cap of under 2 % of the ball.) The cut
    face must also span :data:`MIN_CUT_FACES` voxel faces
    (of the largest face), because for the small classes πr²/4 is a voxel face or
    two, which a voxel of noise in the field's edge or corner has.

    Parameters
    ----------
    volume_um3, cut_face_um2 : numpy.ndarray of float, shape (n,)
        Each component's volume in the field (µm³) and cut face (µm²).
    min_volume_um3 : float
        The class's least object volume (µm³).
    spacing : (dz, dy, dx)
        Voxel size, µm, for the floor in voxel faces.

    Returns
    -------
    numpy.ndarray of bool, shape (n,)

    Examples
    --------
    >>> is_speck(np.array([0.3, 0.3, 2.0]), np.array([0.0, 0.5, 0.0]), 1.0, (0.05, 0.05, 0.05)).tolist()
    [True, False, False]
    """
    radius = np.cbrt(3 * float(min_volume_um3) / (4 * np.pi))
    dz, dy, dx = (float(d) for d in spacing)
    least = max(np.pi * radius ** 2 / 4, MIN_CUT_FACES * max(dy * dx, dz * dx, dz * dy))
    return (np.asarray(volume_um3) < min_volume_um3) & (np.asarray(cut_face_um2) < least)


def too_small(mask: np.ndarray, spacing: Iterable[float], min_volume_um3: float, *,
              connectivity: int = 1) -> np.ndarray:
    """Components of ``mask`` that are specks (:func:`is_speck`): the size filter of this module.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (z, y, x)
    spacing : (dz, dy, dx)
        Voxel size, µm.
    min_volume_um3 : float
        Components with a smaller volume (voxel count · dz·dy·dx) are returned,
        unless the field's edge cuts them (:func:`is_speck`).
    connectivity : {1, 2, 3}
        As in :func:`skimage.measure.label`.

    Returns
    -------
    numpy.ndarray of bool, shape of ``mask``
        The voxels of the components that are too small.
    """
    sp = tuple(float(d) for d in spacing)
    components, n = ndimage.label(mask, ndimage.generate_binary_structure(3, connectivity))
    volumes = np.bincount(components.ravel(), minlength=n + 1)[1:] * float(np.prod(sp))
    small = np.concatenate([[False], is_speck(volumes, cut_face_areas(components, n, sp), min_volume_um3, sp)])
    return small[components]


def _surroundings(labels: np.ndarray, piece: np.ndarray, window) -> int:
    """Most frequent label on the outer face of ``piece`` (a bool mask on ``window``)."""
    ring = ndimage.binary_dilation(piece, ndimage.generate_binary_structure(3, 1)) & ~piece
    values = labels[window][ring]
    values = values[values != UNANNOTATED]
    return int(np.bincount(values).argmax()) if values.size else 0


def _remove_small(labels: np.ndarray, region: np.ndarray, spacing, min_volume: float, connectivity: int) -> int:
    small = too_small(region, spacing, min_volume, connectivity=connectivity)
    pieces, n = ndimage.label(small, ndimage.generate_binary_structure(3, connectivity))
    for k, box in enumerate(ndimage.find_objects(pieces), start=1):
        window = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        piece = pieces[window] == k
        # Pieces are separate components: no piece's ring holds another's voxels, so the
        # order in which they change does not matter.
        labels[window][piece] = _surroundings(labels, piece, window)
    return n


def _neighbour_pairs(shape: tuple[int, ...]):
    """(here, there) slice pairs: each unordered pair of 26-neighbours of an array of
    ``shape`` once, as ``a[here]`` against ``a[there]`` for the 13 forward offsets."""
    for offset in itertools.product((-1, 0, 1), repeat=3):
        if offset > (0, 0, 0):
            yield (tuple(slice(max(-o, 0), n - max(o, 0)) for o, n in zip(offset, shape)),
                   tuple(slice(max(o, 0), n + min(o, 0)) for o, n in zip(offset, shape)))


def _dividing_line(parts: np.ndarray) -> np.ndarray:
    """Voxels whose removal leaves no two watershed ``parts`` touching, even at a corner.

    Of each pair of 26-neighbours in different parts the one of the lower label goes:
    a line one voxel thick along the parts' common face. Written here because skimage
    0.26's ``watershed_line=True`` took 35–42 s (and in one variant more memory than
    the machine had) for a 41×37×36 window with two markers that it floods in 3 ms
    without the line (a vacuole of the default model in ``sxtlab demo``, 2026-12-03).
    """
    line = np.zeros(parts.shape, bool)
    for here, there in _neighbour_pairs(parts.shape):
        a, b = parts[here], parts[there]
        line[here] |= (a > 0) & (a < b)
        line[there] |= (b > 0) & (b < a)
    return line


def _necks(parts: np.ndarray, distance: np.ndarray) -> dict[int, dict[int, float]]:
    """Neck of every pair of touching ``parts``: ``necks[a][b]`` (both ways), µm.

    A neck is the pass between two basins of the distance map: the highest value, over
    the pairs of 26-neighbours on either side of their common face, of the lower of
    the two distances. It is the radius of the narrowest place that joins them.
    """
    found = []
    for here, there in _neighbour_pairs(parts.shape):
        a, b = parts[here], parts[there]
        touch = (a > 0) & (b > 0) & (a != b)
        found.append((np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch]),
                      np.minimum(distance[here], distance[there])[touch]))
    a, b, value = (np.concatenate(x) for x in zip(*found))
    necks: dict[int, dict[int, float]] = {}
    if not a.size:
        return necks
    order = np.lexsort((b, a))
    a, b, value = a[order], b[order], value[order]
    starts = np.flatnonzero(np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
    for i, j, v in zip(a[starts].tolist(), b[starts].tolist(), np.maximum.reduceat(value, starts).tolist()):
        necks.setdefault(i, {})[j] = v
        necks.setdefault(j, {})[i] = v
    return necks


def _merge_wide_necks(parts: np.ndarray, distance: np.ndarray, neck_ratio: float, min_voxels: float
                      ) -> tuple[np.ndarray, int]:
    """Merge watershed parts that are lobes of one object rather than objects that touch.

    Two balls of radius r whose centres lie d apart meet in a neck of radius
    sqrt(r² − d²/4); a lobe of one irregular object meets the rest in a neck nearly as
    wide as the lobe. Pairs whose neck exceeds ``neck_ratio`` times the smaller part's
    inscribed radius (its distance-map peak) are merged, widest relative neck first, and
    so is a part of fewer than ``min_voxels`` voxels with the neighbour it meets most
    widely (a ripple of the surface, not an object). Written here because scikit-image's
    region adjacency graphs weigh a boundary by its mean, and a pass is a maximum. A
    heap of pairs keeps it O(E log E) in the E touching pairs, for components of
    thousands of parts.

    Returns the parts relabelled 1..m and m.
    """
    m = int(parts.max())
    index = np.arange(m + 1)
    peak = np.asarray(ndimage.maximum(distance, parts, index), float).tolist()
    size = np.bincount(parts.ravel(), minlength=m + 1).tolist()
    necks = _necks(parts, distance)
    parent = list(range(m + 1))

    def score(i: int, j: int) -> float:
        # a tiny part goes first; otherwise the widest neck relative to the smaller lobe
        tiny = 2.0 if min(size[i], size[j]) < min_voxels else 0.0
        return necks[i][j] / max(min(peak[i], peak[j]), 1e-12) + tiny

    heap = [(-score(i, j), i, j) for i in necks for j in necks[i] if i < j]
    heapq.heapify(heap)
    while heap:
        negative, i, j = heapq.heappop(heap)
        if parent[i] != i or parent[j] != j:
            continue  # one of them was merged away since
        current = score(i, j)
        if current != -negative:  # stale: the pair changed since it was pushed
            heapq.heappush(heap, (-current, i, j))
            continue
        if current <= neck_ratio:
            break
        parent[j] = i
        peak[i], size[i] = max(peak[i], peak[j]), size[i] + size[j]
        for other, value in necks.pop(j).items():
            del necks[other][j]
            if other != i:
                necks[i][other] = necks[other][i] = max(value, necks[i].get(other, 0.0))
        for other in necks[i]:
            heapq.heappush(heap, (-score(i, other), min(i, other), max(i, other)))
    root = np.array(parent)
    while not np.array_equal(root, root[root]):
        root = root[root]
    live = np.flatnonzero(root[1:] == index[1:]) + 1
    renumber = np.zeros(m + 1, parts.dtype)
    renumber[live] = np.arange(1, live.size + 1)
    return renumber[root][parts], int(live.size)


def _split(labels: np.ndarray, region: np.ndarray, spacing, depth_um: float, neck_ratio: float,
           min_voxels: float) -> int:
    """Split touching objects of ``region``; returns how many objects were added."""
    added = 0
    components, n = ndimage.label(region)
    for k, box in enumerate(ndimage.find_objects(components), start=1):
        window = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        mask = components[window] == k
        distance = ndimage.distance_transform_edt(mask, sampling=spacing)
        markers, m = ndimage.label(h_maxima(distance, depth_um))
        if m < 2:
            continue
        parts, m = _merge_wide_necks(watershed(-distance, markers, mask=mask), distance, neck_ratio, min_voxels)
        if m < 2:
            continue
        # The dividing line becomes what surrounds the pair (the cytoplasm, mostly).
        labels[window][_dividing_line(parts)] = _surroundings(labels, mask, window)
        added += m - 1
    return added


def clean_labels(labels: xr.DataArray, *, min_volume_um3: Mapping[str, float] | None = None,
                 fill_holes: Iterable[str] = FILL_HOLES, split: Iterable[str] = SPLIT,
                 split_depth_voxels: float = 1.0, split_neck_ratio: float = SPLIT_NECK_RATIO,
                 voxel_size=None, connectivity: int = 1) -> xr.DataArray:
    """Remove specks, fill holes and split touching objects of a label volume.

    Parameters
    ----------
    labels : xarray.DataArray, dims (z, y, x)
        Integer labels with a ``classes`` attr (:func:`sxtlab.label_volume`); 0
        background, :data:`~sxtlab.classes.UNANNOTATED` kept as is.
    min_volume_um3 : mapping of class name to float, optional
        Least object volume per class (µm³, nested region); default
        :data:`MIN_VOLUME_UM3` (a class missing from the mapping is not filtered).
    fill_holes : iterable of str
        Classes whose enclosed holes are filled.
    split : iterable of str
        Classes whose touching objects are split by watershed.
    split_depth_voxels : float
        How far (in voxels of the coarsest axis) an object's centre must lie above
        the neck that joins it to another for a split: a voxelised surface makes
        ripples of the distance map below one voxel.
    split_neck_ratio : float
        Parts whose neck is wider than this times the smaller one's inscribed radius
        stay one object (default :data:`SPLIT_NECK_RATIO`).
    voxel_size : float or (dz, dy, dx), optional
        µm; default the labels' own (``voxel_size_um`` attr).
    connectivity : {1, 2, 3}
        Neighbourhood of the size filter's components, as in :func:`sxtlab.measure.instances`.

    Returns
    -------
    xarray.DataArray
        The cleaned labels (a copy, same grid, dtype and attrs), with attr
        ``cleaned``: ``{"removed": n, "holes_filled_voxels": n, "split_added": n}``.

    Raises
    ------
    sxtlab.VoxelSizeUnknownError
        If the voxel size is unknown and not given.
    sxtlab.FormatError
        If ``labels`` is not a (z, y, x) label volume with class names.

    Examples
    --------
    >>> import numpy as np, sxtlab
    >>> lab = np.zeros((30, 30, 30), np.uint8)
    >>> lab[5:25, 5:25, 5:25] = 1
    >>> lab[1, 1, 1] = 1  # a one-voxel "cell" in the medium
    >>> img = sxtlab.volume(np.zeros(lab.shape, np.float32), voxel_size=0.05)
    >>> clean_labels(sxtlab.label_volume(lab, img, {1: "cell"})).attrs["cleaned"]
    {'removed': 1, 'holes_filled_voxels': 0, 'split_added': 0}
    """
    if not isinstance(labels, xr.DataArray) or labels.dims != DIMS or "classes" not in labels.attrs:
        raise FormatError(f"clean_labels needs a label DataArray with dims {DIMS} and a 'classes' attr, got "
                          f"{type(labels).__name__} with dims {getattr(labels, 'dims', None)}")
    spacing = check_voxel_size(voxel_size if voxel_size is not None else labels.attrs.get("voxel_size_um"),
                               where="clean_labels: voxel_size")
    if spacing is None:
        raise VoxelSizeUnknownError(
            f"clean_labels: the voxel size is unknown, so minimum sizes in µm³ cannot be applied; give "
            f"{GIVE_VOXEL_SIZE[0]}", remedies=[GIVE_VOXEL_SIZE])
    minimum = MIN_VOLUME_UM3 if min_volume_um3 is None else min_volume_um3
    cmap = class_map(labels.attrs["classes"])
    value_of = {name: v for v, name in sorted(cmap.items(), reverse=True)}  # the lowest value per name
    out = np.array(labels.values, copy=True)

    def region(name: str) -> np.ndarray:
        return np.isin(out, [v for v, n in cmap.items() if n in descendants(name)])

    names = sorted(set(cmap.values()), key=_depth)  # outer classes first: the cell before its organelles

    def remove_small() -> int:
        return sum(_remove_small(out, region(n), spacing, minimum[n], connectivity) for n in names if n in minimum)

    removed = remove_small()
    filled = 0
    for name in (n for n in names if n in set(fill_holes)):
        inside = region(name)
        holes = ndimage.binary_fill_holes(inside) & ~inside & (out != UNANNOTATED)
        out[holes] = value_of[name]
        filled += int(holes.sum())
    added = 0
    depth = split_depth_voxels * max(spacing)
    for name in (n for n in names if n in set(split)):
        min_voxels = minimum.get(name, 0.0) / float(np.prod(spacing))
        added += _split(out, region(name), spacing, depth, split_neck_ratio, min_voxels)
    if added:
        # A split can leave a part, or a piece of dividing line, below its class's minimum.
        removed += remove_small()
    log.info("clean_labels: %d specks removed, %d hole voxels filled, %d touching objects split off",
             removed, filled, added)
    result = labels.copy(data=out)
    result.attrs["cleaned"] = {"removed": removed, "holes_filled_voxels": filled, "split_added": added}
    return result
