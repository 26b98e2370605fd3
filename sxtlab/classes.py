"""The organelle vocabulary: canonical class names, synonyms, hierarchy and colours.

Label volumes store one integer per voxel; their ``classes`` attribute maps each
value to a canonical name of this vocabulary (``{"1": "cell", "2": "nucleus"}``).
Value 0 is background (medium, ice, void) and :data:`UNANNOTATED` marks voxels
that nobody annotated, which losses and metrics ignore.

A class may have a parent (the nucleolus lies within the nucleus, every organelle
within the cell). A label volume is exclusive (one class per voxel), so the voxels
labelled ``cell`` are the cytoplasm, and the *region* of a class is its own voxels
plus those of all its descendants (see :func:`descendants`).

LAC ranges (µm⁻¹ at ~517 eV, water window) are the literature ranges collected in
sxtlab's DESIGN notes (after Henke et al. 1993, At. Data Nucl. Data Tables 54, 181;
and the SXT reviews of Le Gros et al. 2005 and Weiss et al. 2000).
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import SxtlabError

__all__ = [
    "UNANNOTATED",
    "BACKGROUND",
    "OrganelleClass",
    "VOCABULARY",
    "UnknownClassError",
    "canonical_name",
    "is_ignore_name",
    "descendants",
    "colour",
    "class_map",
    "LabelSets",
    "LABEL_SET_CODES",
]

#: Label value of voxels that were not annotated (ignored by losses and metrics).
UNANNOTATED: int = 255
#: Label value of background (medium, ice, anything outside the cells).
BACKGROUND: int = 0


class UnknownClassError(SxtlabError, KeyError):
    """A class name is not in the vocabulary."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class OrganelleClass:
    """One class of the vocabulary.

    Attributes
    ----------
    name : str
        Canonical name (lower case, ``snake_case``).
    synonyms : tuple of str
        Other names for the same class, matched case-insensitively.
    parent : str or None
        Canonical name of the class that contains this one.
    colour : tuple of float
        RGB display colour, each channel in [0, 1].
    lac_range_per_um : tuple of float or None
        Typical LAC range (µm⁻¹) at 517 eV.
    """

    name: str
    synonyms: tuple[str, ...] = ()
    parent: str | None = None
    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)
    lac_range_per_um: tuple[float, float] | None = None


# Colours: a colour-blind friendly set (Okabe & Ito 2008) so overlays stay legible.
VOCABULARY: dict[str, OrganelleClass] = {
    c.name: c
    for c in [
        OrganelleClass(
            "background",
            ("void", "medium", "exterior", "outside", "ice", "buffer"),
            None,
            (0.0, 0.0, 0.0),
            (0.08, 0.12),
        ),
        OrganelleClass(
            "cell",
            ("cytoplasm", "cytosol", "cell body", "whole cell", "cells"),
            None,
            (0.90, 0.62, 0.0),
            (0.2, 0.3),
        ),
        OrganelleClass(
            "nucleus",
            ("nuclei", "nuc"),
            "cell",
            (0.0, 0.45, 0.70),
            (0.2, 0.3),
        ),
        OrganelleClass(
            "nucleolus",
            ("nucleoli",),
            "nucleus",
            (0.34, 0.71, 0.91),
            (0.3, 0.4),
        ),
        OrganelleClass(
            "mitochondria",
            ("mitochondrion", "mito", "mitos", "mitochondrial network"),
            "cell",
            (0.0, 0.62, 0.45),
            (0.3, 0.45),
        ),
        OrganelleClass(
            "lipid_body",
            ("lipid bodies", "lipid droplet", "lipid droplets", "ld", "lds", "lipid", "lipids",
             "lipid body"),
            "cell",
            (0.80, 0.47, 0.65),
            (0.5, 1.0),
        ),
        OrganelleClass(
            "vacuole",
            ("vacuoles", "vac"),
            "cell",
            (0.94, 0.89, 0.26),
            (0.1, 0.2),
        ),
        # A union class for tasks that merge organelles (sxtlab.task.Task merges=...).
        OrganelleClass(
            "organelle",
            ("organelles", "all organelles"),
            "cell",
            (0.6, 0.6, 0.6),
            None,
        ),
        OrganelleClass(
            "starch_granule",
            ("starch", "starch granules", "starch grain", "starch grains"),
            "cell",
            (0.84, 0.37, 0.0),
            (0.4, 0.6),
        ),
    ]
}

# Names that mean "nobody annotated this voxel"; they map to UNANNOTATED.
_IGNORE_NAMES = {"ignore", "ignored", "unlabeled", "unlabelled", "unannotated", "exclude",
                 "excluded", "unknown", "none"}


def _key(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").replace("-", " ").split())


_LOOKUP: dict[str, str] = {}
for _c in VOCABULARY.values():
    for _n in (_c.name, *_c.synonyms):
        _LOOKUP[_key(_n)] = _c.name


def is_ignore_name(name: str) -> bool:
    """Whether a material name means "not annotated" (``ignore``, ``unlabeled``, ...)."""
    return _key(name) in _IGNORE_NAMES


def canonical_name(name: str) -> str:
    """Return the canonical class name for ``name`` or one of its synonyms.

    Parameters
    ----------
    name : str
        A class name as a user or a file gives it, e.g. ``"Lipid droplets"``.

    Returns
    -------
    str
        The canonical name, e.g. ``"lipid_body"``.

    Raises
    ------
    UnknownClassError
        If the name is unknown; the message lists the nearest known names.

    Examples
    --------
    >>> canonical_name("LD")
    'lipid_body'
    """
    try:
        return _LOOKUP[_key(name)]
    except KeyError:
        near = difflib.get_close_matches(_key(name), list(_LOOKUP), n=5, cutoff=0.5)
        suggestions = list(dict.fromkeys(_LOOKUP[n] for n in near))[:3]
        hint = f"; did you mean {', '.join(map(repr, suggestions))}?" if suggestions else "."
        raise UnknownClassError(
            f"unknown class name {name!r}{hint} Known classes: {', '.join(VOCABULARY)}"
        ) from None


def descendants(name: str) -> list[str]:
    """Canonical names of ``name`` and every class nested within it.

    Examples
    --------
    >>> descendants("nucleus")
    ['nucleus', 'nucleolus']
    """
    root = canonical_name(name)
    out = [root]
    for c in VOCABULARY.values():
        if c.parent is not None and c.parent in out and c.name not in out:
            out.append(c.name)
    # The vocabulary is ordered parents before children, so one pass suffices.
    return out


def colour(name: str) -> tuple[float, float, float]:
    """RGB display colour (channels in [0, 1]) of a class name or synonym."""
    return VOCABULARY[canonical_name(name)].colour


def _label_value(key: object) -> int:
    """A ``classes`` key as the integer label value it names: an int, a string of
    one (JSON keeps only strings) or a float without a fraction."""
    if isinstance(key, bool):
        raise ValueError(f"a 'classes' attr key must be an integer label value, got {key!r}")
    if isinstance(key, numbers.Integral):
        return int(key)
    if isinstance(key, str) and key.strip().lstrip("+-").isdigit():
        return int(key)
    if isinstance(key, numbers.Real) and float(key).is_integer():
        return int(key)
    raise ValueError(f"a 'classes' attr key must be an integer label value, got {key!r}")


def class_map(classes: Mapping) -> dict[int, str]:
    """Normalise a label volume's ``classes`` attribute to ``{int value: canonical name}``.

    Keys may be ints or strings of ints (JSON keeps only strings); names may be
    synonyms. Raises :class:`UnknownClassError` for unknown names, listing them all,
    :class:`ValueError` for a key that is no integer and :class:`TypeError` if
    ``classes`` is not a mapping.
    """
    if not isinstance(classes, Mapping):
        raise TypeError(f"a 'classes' attr must map label values to class names, got {type(classes).__name__} "
                        f"{str(classes)[:80]!r}")
    out: dict[int, str] = {}
    unknown = []
    for value, name in classes.items():
        try:
            out[_label_value(value)] = canonical_name(str(name))
        except UnknownClassError:
            unknown.append(f"{value}: {name!r}")
    if unknown:
        raise UnknownClassError(
            f"label values name classes that are not in the vocabulary: {', '.join(unknown)}. "
            f"Known classes: {', '.join(VOCABULARY)}"
        )
    return out


#: Label values that stand for a set of task classes (see :mod:`sxtlab.task`, rule 2), first to
#: last; the task's own classes count up from 1 and never reach them.
LABEL_SET_CODES = range(UNANNOTATED - 1, 127, -1)


class LabelSets:
    """Codes for sets of class values a voxel may have, handed out as sets are met.

    One set of rules serves the task's labels (codes from :data:`LABEL_SET_CODES`)
    and training (codes after the classes, :func:`sxtlab.train.train_cascade`): a
    set of one class is that class, a set of every class is
    :data:`~sxtlab.classes.UNANNOTATED`, and equal sets share one code.

    Parameters
    ----------
    n_classes : int
        Number of class values, background included.
    codes : iterable of int
        Values to hand out, in order.
    """

    def __init__(self, n_classes: int, codes: Iterable[int]) -> None:
        self.n_classes = n_classes
        self._free = iter(codes)
        self.sets: dict[int, frozenset[int]] = {}

    def code(self, members: frozenset[int]) -> int:
        """The value a voxel known to be one of ``members`` gets.

        Raises
        ------
        ValueError
            If the codes run out.
        """
        if len(members) == 1:
            return next(iter(members))
        if len(members) == self.n_classes:     # could be anything: unannotated
            return UNANNOTATED
        for code, known in self.sets.items():
            if known == members:
                return code
        code = next(self._free, None)
        if code is None:
            raise ValueError(f"more than {len(self.sets)} different label sets")
        self.sets[code] = members
        return code
