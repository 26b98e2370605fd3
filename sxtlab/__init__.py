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
]
