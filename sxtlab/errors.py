"""Exceptions raised by sxtlab, and the category of the warnings it gives.

Every error names what was wrong (the file, the field, the value found and the
value expected), so that a user can fix their input without reading a traceback.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["SxtlabError", "FormatError", "VoxelSizeUnknownError", "OutputExistsError", "SxtlabWarning",
           "GIVE_VOXEL_SIZE", "ALLOW_VOXEL_UNITS", "GIVE_CALIBRATION", "GIVE_CALIBRATION_SCALE", "thread_warnings"]

#: A remedy as a Python user and as a command-line user gives it: (keyword, option).
Remedy = tuple[str, str]
GIVE_VOXEL_SIZE: Remedy = ("voxel_size=(dz, dy, dx) in µm", "--voxel-size DZ,DY,DX (or one value) in µm")
ALLOW_VOXEL_UNITS: Remedy = ("allow_voxel_units=True", "--allow-voxel-units")
GIVE_CALIBRATION: Remedy = (
    "calibration=sxtlab.Calibration(1.0) where the values are LAC in µm⁻¹, calibration=sxtlab.Calibration("
    "scale, offset), or one estimated by sxtlab.calibrate_from_medium(image)",
    "--lac where the values are LAC in µm⁻¹, --calibration SCALE[,OFFSET], or --calibrate-from-medium [LAC]")
GIVE_CALIBRATION_SCALE: Remedy = ("scale= (µm⁻¹ per gray unit)", "--calibration SCALE beside --calibrate-from-medium")


class SxtlabError(Exception):
    """Base class of all errors that sxtlab raises on purpose.

    Parameters
    ----------
    message : str
        Worded for a Python user: the remedies it suggests are keywords.
    remedies : sequence of (str, str)
        Each keyword text the message holds and the command-line option that does
        the same, e.g. :data:`GIVE_VOXEL_SIZE`; :meth:`for_command_line` swaps them.
    """

    def __init__(self, *args: object, remedies: Sequence[Remedy] = ()) -> None:
        super().__init__(*args)
        self.remedies = tuple(remedies)

    def for_command_line(self) -> str:
        """The message with each remedy spelt as the ``sxtlab`` command's option."""
        text = str(self)
        for keyword, option in self.remedies:
            text = text.replace(keyword, option)
        return text


class FormatError(SxtlabError, ValueError):
    """A file or an array is not what it claims to be (header, shape, values)."""


class VoxelSizeUnknownError(SxtlabError, ValueError):
    """A physical quantity was asked for, but the volume's voxel size is unknown."""


class OutputExistsError(SxtlabError, FileExistsError):
    """An output path exists and ``overwrite=True`` was not given."""


class SxtlabWarning(UserWarning):
    """Warnings about input that sxtlab could read but had to interpret, e.g. an unknown voxel size."""


@contextlib.contextmanager
def thread_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning this thread raises; pass on those of other threads.

    ``warnings.catch_warnings(record=True)`` alone records the whole process's
    warnings, and a dask worker runs other threads beside its task (its event loop,
    its monitors): in ``sxtlab study`` one of their warnings landed in a cell's record in
    one run and not in another (``benchmarks/results/study.md``, 2026-12-04), and a
    reader that judges a file by the warnings of its parser would judge it by them too.
    Other threads' warnings go to the handler that was in place before.

    Yields
    ------
    list of warnings.WarningMessage
        This thread's warnings, every occurrence (filter ``"always"``).

    Examples
    --------
    >>> import threading
    >>> with thread_warnings() as log:
    ...     other = threading.Thread(target=warnings.warn, args=("not mine",))
    ...     other.start(); other.join()
    ...     warnings.warn("mine")
    >>> [str(w.message) for w in log]
    ['mine']
    """
    me = threading.get_ident()
    log: list[warnings.WarningMessage] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if threading.get_ident() == me:
                log.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield log
