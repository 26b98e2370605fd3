"""sxtlab: organelle segmentation and measurement for soft X-ray tomography (SXT).

Volumes are :class:`xarray.DataArray` objects whose attrs carry their voxel size
(µm) and gray → LAC calibration; see :mod:`sxtlab.volume`.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import classes
from .calibration import Calibration, CalibrationError, estimate_calibration
from .classes import UNANNOTATED, canonical_name
from .errors import FormatError, OutputExistsError, SxtlabError, SxtlabWarning, VoxelSizeUnknownError
from .io import read_project, read_segmentation, read_volume, write_volume
from .volume import label_volume, segmentation, volume

# Submodules that pull in heavy libraries (torch, matplotlib, scikit-image) load on
# first use, so that `import sxtlab` stays fast; `sxtlab.measure` etc. work as usual.
_LAZY_SUBMODULES = {"cascade", "catalog", "data", "measure", "metrics", "phantom", "plot", "stats", "task",
                    "train", "unet", "viewer", "acquisition", "cli", "demo", "inference", "models", "sparse", "cells",
                    "clean", "threads", "domain", "qc", "study"}
_LAZY_NAMES = {"Catalog": "catalog", "Task": "task", "CascadeModel": "cascade", "SliceViewer": "viewer",
               "show_slices": "viewer", "load_model": "models", "train_cascade": "train",
               "clean_labels": "clean", "use_free_cores": "threads", "calibrate_from_medium": "cells",
               "read_table": "measure", "read_tables": "measure", "write_table": "measure",
               "Study": "study"}


def __getattr__(name: str):
    import importlib

    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'sxtlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES | set(_LAZY_NAMES))


try:
    __version__ = _version("sxtlab")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Calibration",
    "CalibrationError",
    "FormatError",
    "OutputExistsError",
    "SxtlabError",
    "SxtlabWarning",
    "UNANNOTATED",
    "VoxelSizeUnknownError",
    "canonical_name",
    "classes",
    "estimate_calibration",
    "label_volume",
    "read_project",
    "read_segmentation",
    "read_volume",
    "segmentation",
    "volume",
    "write_volume",
    *sorted(_LAZY_NAMES),
    *sorted(_LAZY_SUBMODULES),
]
