"""Exceptions raised by sxtlab, and the category of the warnings it gives.

Every error names what was wrong (the file, the field, the value found and the
value expected), so that a user can fix their input without reading a traceback.
"""

from __future__ import annotations

__all__ = ["SxtlabError", "FormatError", "VoxelSizeUnknownError", "OutputExistsError", "SxtlabWarning"]


class SxtlabError(Exception):
    """Base class of all errors that sxtlab raises on purpose."""


class FormatError(SxtlabError, ValueError):
    """A file or an array is not what it claims to be (header, shape, values)."""


class VoxelSizeUnknownError(SxtlabError, ValueError):
    """A physical quantity was asked for, but the volume's voxel size is unknown."""


class OutputExistsError(SxtlabError, FileExistsError):
    """An output path exists and ``overwrite=True`` was not given."""


class SxtlabWarning(UserWarning):
    """Warnings about input that sxtlab could read but had to interpret, e.g. an unknown voxel size."""
