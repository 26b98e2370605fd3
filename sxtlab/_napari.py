"""The napari plugin (npe2; manifest ``sxtlab/napari.yaml``; ``pip install "sxtlab[napari]"``).

Contributes a reader for every format sxtlab reads (MRC, AmiraMesh, Amira projects,
TIFF, OME-Zarr), a writer of image and labels to OME-Zarr, two sample data sets (the
real ``sample_12`` and a phantom cell) and a widget that segments the active image.

Layers carry their physical geometry: ``scale`` is the voxel size in µm (z, y, x) and
``translate`` the first voxel's centre in µm, with ``units`` micrometer and
``axis_labels`` z, y, x; a volume whose voxel size is unknown gets scale 1 (voxels)
and says so in its metadata. Label layers get the class names (``features``: one row
per label value, columns ``index`` and ``class``) and sxtlab's class colours;
probabilities are one image layer per class. Every sxtlab attribute of a volume
(``units``, calibration, source ...) is in the layer's ``metadata``, so the writer and
the widget restore the volume exactly.

Nothing here imports napari: the functions take and return napari's plain
"LayerData" tuples ``(data, kwargs, layer_type)``, so they are tested without a
window, through npe2's own reader and writer API.
"""

# No `from __future__ import annotations` here: magicgui builds the widget from the
# annotations of segment_layer and cannot evaluate a string such as
# "Annotated[str, {'choices': VALUES}]" (it needs the objects themselves).
import os
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
import xarray as xr

from .calibration import LAC_WATER_PER_UM
from .classes import colour
from .volume import DIMS

__all__ = ["get_reader", "read_layers", "write_ome_zarr", "sample_12", "phantom_cell", "segment_layer",
           "segment_data", "layers_of"]

LayerData = tuple[Any, dict[str, Any], str]


def _geometry(v: xr.DataArray) -> dict[str, Any]:
    known = v.attrs.get("voxel_size_um") is not None
    return {"scale": tuple(float(s) for s in v.attrs["voxel_size_um"]) if known else (1.0, 1.0, 1.0),
            "translate": tuple(float(v[d].values[0]) if v.sizes[d] else 0.0 for d in DIMS) if known
            else (0.0, 0.0, 0.0),
            "axis_labels": DIMS,
            "units": ("micrometer",) * 3 if known else ("pixel",) * 3}


def _metadata(v: xr.DataArray) -> dict[str, Any]:
    return {"sxtlab": {"attrs": dict(v.attrs), "name": v.name}}


def _label_layer(labels: xr.DataArray, name: str) -> LayerData:
    classes = labels.sxt.classes
    own = {int(k): [c / 255 for c in rgba] for k, rgba in (labels.attrs.get("colours_rgba") or {}).items()}
    colours: dict[Any, list[float]] = {None: [0.0, 0.0, 0.0, 0.0], 0: [0.0, 0.0, 0.0, 0.0]}
    for value, cls in classes.items():
        colours[value] = own.get(value, [*colour(cls), 1.0])
    values = sorted(classes)
    features = {"index": values, "class": [classes[v] for v in values]}
    return (labels.data, {"name": name, **_geometry(labels), "metadata": _metadata(labels),
                          "colormap": colours, "features": features, "opacity": 0.5}, "labels")


def layers_of(obj: xr.DataArray | xr.Dataset, name: str = "") -> list[LayerData]:
    """napari layers of a volume or a segmentation Dataset (lazy data stay lazy).

    Returns
    -------
    list of (data, kwargs, layer_type)
        An ``image`` (gray colormap), ``labels`` with class names and colours,
        ``instances`` as a second labels layer, and the probabilities as one hidden
        image per class (``channel_axis`` 0).
    """
    prefix = f"{name} " if name else ""
    if isinstance(obj, xr.DataArray):
        if obj.sxt.is_labels:
            return [_label_layer(obj, f"{prefix}{obj.name or 'labels'}")]
        obj = obj.to_dataset(name=obj.name or "lac")
    out: list[LayerData] = []
    # One grid for all variables of a segmentation: the image's (the others may lack
    # the voxel_size_um attr, e.g. a phantom's instance ids).
    ref = next((v for v in obj.data_vars.values() if v.dims == DIMS and v.attrs.get("voxel_size_um") is not None),
               next(v for v in obj.data_vars.values() if v.dims == DIMS))
    grid = _geometry(ref)
    for var in obj.data_vars.values():
        if var.dims != DIMS or var.name == "labels":
            continue
        if np.issubdtype(var.dtype, np.integer) and not var.sxt.is_labels:
            # Instance ids (sxtlab.cells, a phantom's instances): napari colours each id.
            out.append((var.data, {"name": f"{prefix}{var.name}", **grid, "metadata": _metadata(var),
                                   "opacity": 0.5, "visible": False}, "labels"))
        elif var.sxt.is_labels:
            out.append(_label_layer(var, f"{prefix}{var.name}"))
        else:
            out.append((var.data, {"name": f"{prefix}{var.name}", **grid, "metadata": _metadata(var),
                                   "colormap": "gray"}, "image"))
            if var.attrs.get("units") == "1/um":
                out[-1][1]["metadata"]["sxtlab"]["display"] = "LAC [µm⁻¹]"
    if "labels" in obj:
        out.append(_label_layer(obj["labels"], f"{prefix}labels"))
    if "probabilities" in obj:
        p = obj["probabilities"]
        names = ["background", *obj["labels"].sxt.classes.values()] if "labels" in obj else \
            [str(c) for c in p["class"].values]
        names = names if len(names) == p.sizes["class"] else [str(c) for c in range(p.sizes["class"])]
        out.append((p.data, {"name": [f"{prefix}p({n})" for n in names], "channel_axis": 0, **grid,
                             "colormap": "magma", "contrast_limits": (0.0, 1.0), "visible": False,
                             "metadata": _metadata(p)}, "image"))
    return out


def read_layers(path: str | os.PathLike) -> list[LayerData]:
    """Everything sxtlab reads from ``path``, as napari layers (see :func:`layers_of`).

    An Amira project or an OME-Zarr with labels opens as a segmentation (image,
    labels, probabilities); any other file as one volume.
    """
    from .io import detect_format, read_segmentation, read_volume

    p = Path(path)
    name = p.name.split(".")[0]
    if p.suffix.lower() == ".hx" or (detect_format(p) == "omezarr" and (p / "labels").is_dir()):
        return layers_of(read_segmentation(p), name)
    return layers_of(read_volume(p), name)


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: :func:`read_layers` for a path sxtlab reads, else None."""
    from .errors import FormatError
    from .io import detect_format

    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        detect_format(Path(path))
    except (FormatError, OSError):
        return None
    return lambda p: read_layers(p[0] if isinstance(p, list) else p)


def _volume_of(data: Any, meta: dict[str, Any], what: str) -> xr.DataArray:
    """A layer's data back as the sxtlab volume it came from (or a new one, in µm)."""
    from .volume import volume

    own = (meta.get("metadata") or {}).get("sxtlab") or {}
    attrs = dict(own.get("attrs") or {})
    # napari layers give NumPy arrays here, layer-data tuples give tuples (or nothing).
    scale = tuple(float(s) for s in (meta["scale"] if meta.get("scale") is not None else (1.0,) * 3))[-3:]
    translate = tuple(float(t) for t in (meta["translate"] if meta.get("translate") is not None
                                         else (0.0,) * 3))[-3:]
    units = meta.get("units")
    known = attrs.get("voxel_size_um") is not None or (units is not None and "micrometer" in str(units))
    v = volume(np.asarray(data) if not hasattr(data, "dask") else data, scale if known else None,
               units=attrs.get("units", "gray"),
               origin_um=translate if known else None, name=own.get("name") or what)
    v.attrs = {**attrs, "voxel_size_um": v.attrs["voxel_size_um"]}
    return v


def write_ome_zarr(path: str, layer_data: list[LayerData]) -> list[str]:
    """npe2 writer contribution: the image layer and (optionally) one labels layer as an
    OME-Zarr segmentation (sxtlab's writer; NGFF 0.5; refuses an existing path)."""
    from .io import write_volume
    from .volume import label_volume, segmentation

    images = [(d, m) for d, m, t in layer_data if t == "image"]
    labels = [(d, m) for d, m, t in layer_data if t == "labels"]
    if len(images) != 1 or len(labels) > 1:
        from .errors import SxtlabError

        raise SxtlabError(f"{path}: sxtlab writes one image and at most one labels layer, got "
                          f"{len(images)} and {len(labels)}")
    image = _volume_of(*images[0], "lac")
    if labels:
        data, meta = labels[0]
        own = ((meta.get("metadata") or {}).get("sxtlab") or {}).get("attrs") or {}
        # A napari layer gives its features as a DataFrame, a layer-data tuple maybe a dict.
        features = meta.get("features")
        features = {} if features is None else {k: list(features[k]) for k in ("index", "class") if k in features}
        classes = own.get("classes") or dict(zip((str(i) for i in features.get("index", [])),
                                                 features.get("class", [])))
        lab = label_volume(np.asarray(data), image, classes)
        write_volume(segmentation(image, lab), path)
    else:
        write_volume(image, path)
    return [str(path)]


def sample_12() -> list[LayerData]:
    """npe2 sample data: NCXT ``sample_12``, the real reconstruction shipped with sxtlab."""
    from .data import ncxt_sample_12_path

    return read_layers(ncxt_sample_12_path())


def phantom_cell() -> list[LayerData]:
    """npe2 sample data: a simulated SXT cell (LAC) with its organelles' truth."""
    from . import phantom

    ds = phantom.cell(seed=1, shape=(96, 96, 96), voxel_size=0.05, acquisition=phantom.Acquisition(seed=1))
    return layers_of(ds, "phantom")


#: What the values of the image to segment are (the widget's choices).
VALUES = ("as recorded", "LAC", "calibrate from medium")


def segment_layer(image: "napari.layers.Image", model: str = "default",  # noqa: F821
                  values: Annotated[str, {"choices": VALUES}] = "as recorded",
                  medium_lac: Annotated[float, {"min": 0.001, "max": 2.0, "step": 0.001}] = LAC_WATER_PER_UM,
                  ) -> "napari.types.LayerDataTuple":  # noqa: F821
    """npe2 widget (autogenerated by magicgui): segment the chosen image layer.

    Parameters
    ----------
    image : napari.layers.Image
        A volume; its ``scale`` is taken as the voxel size in µm.
    model : str
        ``"default"`` or a model folder.
    values : {"as recorded", "LAC", "calibrate from medium"}
        What the image's values are: as sxtlab read them (LAC or with a recorded
        calibration), LAC in µm⁻¹ (``--lac``), or gray values calibrated from the
        medium around the cells (``--calibrate-from-medium``).
    medium_lac : float
        The medium's LAC (µm⁻¹) for ``"calibrate from medium"``.

    Returns
    -------
    napari.types.LayerDataTuple
        The labels layer (class names, colours, µm geometry).
    """
    meta = {"scale": image.scale, "translate": image.translate, "metadata": image.metadata,
            "units": getattr(image, "units", None)}
    return segment_data(image.data, meta, model=model, values=values, medium_lac=medium_lac)


def segment_data(data: Any, meta: dict[str, Any], *, model: str = "default", values: str = "as recorded",
                 medium_lac: float = LAC_WATER_PER_UM) -> LayerData:
    """:func:`segment_layer` on a layer's data and kwargs (napari-free, for tests and scripts)."""
    from .calibration import Calibration
    from .cells import calibrate_from_medium
    from .models import load_model

    if values not in VALUES:
        raise ValueError(f"values must be one of {VALUES}, got {values!r}")
    v = _volume_of(data, meta, "lac")
    if v.attrs.get("units") != "1/um":
        if values == "LAC":
            v = v.sxt.with_calibration(Calibration(1.0))
        elif values == "calibrate from medium":
            v = v.sxt.with_calibration(calibrate_from_medium(v.load(), medium_lac))
    seg = load_model(model).predict(v.load(), progress=False)
    return _label_layer(seg["labels"], "sxtlab labels")
