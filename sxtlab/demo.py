"""The main job end to end, on a sample cell: segment, measure, write, plot.

``sxtlab demo`` runs :func:`run_demo` on a phantom cell with the shipped model;
``sxtlab demo --real`` on the shipped real reconstruction (:func:`sxtlab.data.ncxt_sample_12`),
learning from its sparse annotation. The tutorials do the same steps one by one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy import ndimage

from .errors import OutputExistsError

__all__ = ["run_demo", "summary_figure"]

log = logging.getLogger(__name__)

_OUTPUTS = {"segmentation": "segmentation.ome.zarr", "table": "organelles.csv", "figure": "overview.png"}
_REAL_OUTPUTS = {"segmentation": "segmentation.ome.zarr", "cells": "cells.ome.zarr", "table": "cells.csv",
                 "figure": "overview.png"}


def summary_figure(seg: xr.Dataset, table: pd.DataFrame, *, reference: xr.DataArray | None = None,
                   value: str = "volume_um3", by: str | None = None, title: str | None = None):
    """One figure: orthogonal slices with the label overlay, beside a morphometrics plot.

    Parameters
    ----------
    seg : xarray.Dataset
        ``lac`` and ``labels`` (z, y, x).
    table : pandas.DataFrame
        Per-instance measurements (:func:`sxtlab.measure.instances`).
    reference : xarray.DataArray, optional
        Labels drawn as outlines (e.g. the truth or a sparse annotation).
    value : str
        Column plotted per class.
    by : str, optional
        Column that groups the rows side by side (see :func:`sxtlab.plot.per_class`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from . import plot
    from ._figure import NotebookFigure
    from .viewer import show_slices

    fig = NotebookFigure(figsize=(14, 6.5), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.4, 1])
    show_slices(seg["lac"], seg["labels"], reference=reference, fig=left)
    ax = right.subplots()
    plot.per_class(table, value, by=by, ax=ax, aggregate=None)
    if title:
        fig.suptitle(title)
    return fig


def _save_png(fig, path: Path, overwrite: bool) -> Path:
    from .io import atomic_output

    return atomic_output(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), overwrite=overwrite)


def _phantom_job(seed: int, size: int):
    from . import measure, phantom
    from .metrics import evaluate
    from .models import load_model
    from .task import Task

    model = load_model("default")
    log.info("making phantom cell %d (%d³ voxels at %s µm) with a simulated acquisition",
             seed, size, model.voxel_size)
    cell = phantom.cell(seed=seed, shape=(size, size, size), voxel_size=model.voxel_size,
                        acquisition=phantom.Acquisition())
    seg = model.predict(cell["lac"])
    # the truth's sub-classes (nucleolus) fold into the model's classes (nucleus)
    truth = Task(model.classes).remap(cell["labels"])
    scores = evaluate(seg, truth)
    notes = ["Dice against the phantom's truth: " + ", ".join(
        f"{name} {row['dice']:.3f}" for name, row in scores.iterrows())]
    table = measure.instances(seg)
    return {"segmentation": seg}, table, truth, notes, "volume_um3"


def _one_body_per_cell(ids: np.ndarray) -> np.ndarray:
    """Cell ids with each cell reduced to its largest connected piece (the rest 0)."""
    out = np.zeros_like(ids)
    for k, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None:
            continue
        pieces, n = ndimage.label(ids[box] == k)
        if n:
            body = pieces == np.bincount(pieces.ravel())[1:].argmax() + 1
            out[box][body] = k
    return out


def _real_job(iterations: tuple[int, int], voxel_size):
    from . import measure
    from .cells import find_cells
    from .data import ncxt_sample_12
    from .sparse import fit_sparse, segment_sparse, sparse_config

    ds = ncxt_sample_12(voxel_size=voxel_size)
    log.info("training a cascade for 'cell' on the annotated planes of sample_12 (%d + %d steps)", *iterations)
    model = fit_sparse(ds, "cell", config=sparse_config(iterations=iterations), progress=True)
    seg = segment_sparse(ds, model, progress=True)
    everything = find_cells(ds["lac"])
    # The annotated cell as the model filled it in replaces the watershed's outline of
    # it, so that it has the same voxels in cells.csv as in segmentation.ome.zarr;
    # its neighbours keep their main body where it cut into them.
    annotated = seg["labels"].values == 1
    ids = everything["instances"].values
    k = int(np.bincount(ids[annotated], minlength=2)[1:].argmax()) + 1
    ids = np.where(ids == k, 0, ids)
    ids[annotated] = k
    ids = _one_body_per_cell(ids)
    everything = everything.assign(instances=everything["instances"].copy(data=ids),
                                   labels=everything["labels"].copy(data=(ids > 0).astype(np.uint8)))
    table = measure.instances(everything, allow_voxel_units=True)
    # measure numbers cells in raster order of their first voxel; each id is one body
    present, first = np.unique(ids.ravel(), return_index=True)
    order = present[1:][np.argsort(first[1:])]
    table.insert(table.columns.get_loc("cell") + 1, "annotated",
                 table["instance"].to_numpy() == int(np.flatnonzero(order == k)[0]) + 1)
    value = "volume_um3" if "volume_um3" in table else "volume_voxels"
    sparse = model.info["sparse"]
    n_cells = int(len(order))
    notes = [
        f"trained on the {sparse['annotated_voxels']:,} annotated voxels of sample_12 "
        f"({model.info['train_seconds']:.0f} s), then filled in the annotation (model + interpolation) "
        f"and kept the cell the annotation marks: {int(annotated.sum()):,} voxels",
        f"found {n_cells} cells in the capillary by watershed "
        f"({everything.attrs['wall_voxels']:,} voxels of glass wall left out), the annotated one as filled in; "
        f"one row each in the table ({int(table['touches_border'].sum())} cut by the volume's edge)",
    ]
    if value == "volume_voxels":
        notes.append("the file records no voxel size: sizes are in voxels (give --voxel-size in µm)")
    return {"segmentation": seg, "cells": everything}, table, ds["labels"], notes, value


def run_demo(output: str | Path = "sxtlab-demo", *, seed: int = 1000, size: int = 128,
             overwrite: bool = False, real: bool = False, iterations: tuple[int, int] = (600, 600),
             voxel_size=None) -> dict[str, Path]:
    """Segment and measure a sample cell; write OME-Zarr, CSV and PNG under ``output``.

    Each demo writes into its own subfolder, ``output/phantom`` or ``output/real``,
    so that both can run into the same ``output`` and each folder holds the files of
    one run.

    Parameters
    ----------
    output : path-like
        Parent folder of the outputs (created if missing).
    seed, size : int
        Seed (one the shipped model never saw) and voxels per side of the phantom
        cell that the shipped model segments.
    overwrite : bool
        Replace the outputs of an earlier run of the same demo.
    real : bool
        Instead, the real reconstruction shipped with sxtlab: train a cascade on its
        sparse annotation (:func:`sxtlab.sparse.fit_sparse`, ``iterations`` steps per
        stage; a few minutes on 2 cores), fill in the annotated cell
        (:func:`sxtlab.sparse.segment_sparse`), find every cell in the capillary
        (:func:`sxtlab.cells.find_cells`), the annotated one as filled in, and
        measure them (``cells.csv``: one row per cell, column ``annotated``; the
        cells as instances in ``cells.ome.zarr``). The PNG shows the prediction with
        the sparse annotation as outlines.
    iterations : (int, int)
        Training steps of the two stages with ``real``.
    voxel_size : float or (dz, dy, dx), optional
        Voxel size in µm of the real sample, which its files do not record;
        without it sizes are in voxels.

    Returns
    -------
    dict
        ``{"segmentation": path, "table": path, "figure": path}`` (and ``"cells"``
        with ``real``), in ``output/phantom`` or ``output/real``.

    Raises
    ------
    sxtlab.OutputExistsError
        If an output of this demo exists and ``overwrite`` is false (checked before
        any work).
    """
    from .io import write_volume

    out = Path(output) / ("real" if real else "phantom")
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in (_REAL_OUTPUTS if real else _OUTPUTS).items()}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{', '.join(existing)} exist; pass --overwrite to replace them")
    if real:
        segs, table, reference, notes, value = _real_job(tuple(iterations), voxel_size)
        title = "sample_12 (NCXT): the annotated cell filled in (filled), the sparse annotation (outlines)"
    else:
        segs, table, reference, notes, value = _phantom_job(seed, size)
        title = f"phantom cell {seed}: prediction (filled) and truth (outlines)"
    for key, ds in segs.items():
        write_volume(ds, paths[key], overwrite=overwrite)
    seg = segs["segmentation"]
    from .io import atomic_output

    atomic_output(paths["table"], lambda tmp: table.to_csv(tmp, index=False), overwrite=overwrite)
    _save_png(summary_figure(seg, table, reference=reference, value=value, title=title),
              paths["figure"], overwrite)
    for note in notes:
        print(note)
    return paths
