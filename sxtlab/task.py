"""A user's segmentation task: the classes their question needs, and how every
reference cell's labels map onto them.

A reference cell annotated for one question (say nucleus and lipid bodies) can
still teach a model for another (nucleus and mitochondria): its nucleus voxels are
known, and its unannotated mitochondria could hide only where the cell annotated
their nearest enclosing class (the cytoplasm). Those voxels are not thrown away:
they are *partially labelled*, known to be one of a set of task classes (cytoplasm
or mitochondria, not background, not nucleus), and the training loss asks only that
the probabilities of that set add up to one (the marginal loss of Shi et al. 2021,
"Marginal loss and exclusion loss for partially supervised multi-organ
segmentation", Med. Image Anal. 70:101979). Masking them outright (the nnU-Net
"partial labels" answer, MIC-DKFZ/nnUNet#1104) loses what they say, that they are
not background, and a model trained on many such cells under-segments the class
that covers them (``benchmarks/results/task.md``).

Rules, for an entry whose labels name classes ``E`` (its *annotated* classes) and a
task with output classes ``T`` (each a vocabulary class, or a union given in
``merges``):

1. A voxel labelled ``X`` gets the task class that covers ``X`` or its nearest
   ancestor (``nucleolus`` → ``nucleus``; ``mitochondria`` → ``cell`` when the task
   has ``cell`` but not ``mitochondria``); background (0) when none does.
2. For each class ``C`` the task needs but the entry did not annotate, the voxels
   labelled with ``C``'s nearest annotated ancestor ``A`` (background when there is
   none) could be ``C``: they get a *label set* code standing for {task class of
   ``A``, task class of ``C``, ...} (every class that could hide under ``A``).
   Codes count down from 254; the labels' ``label_sets`` attr names each code's
   classes. A set of every class (background included) says nothing: such voxels
   are unannotated.
3. Unannotated voxels (:data:`~sxtlab.classes.UNANNOTATED`, the set of all classes)
   stay unannotated.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from . import phantom
from .catalog import Catalog
from .classes import BACKGROUND, LABEL_SET_CODES, UNANNOTATED, VOCABULARY, LabelSets, canonical_name
from .errors import SxtlabError
from .volume import check_voxel_size, label_volume

__all__ = ["Task", "TaskError", "LabelMapping", "PHANTOM_STUDIES", "phantom_catalog"]

class TaskError(SxtlabError, ValueError):
    """A task is ill-defined, or no reference data fits it."""


def _ancestors(name: str) -> list[str]:
    """``name`` and its ancestors, nearest first (canonical names)."""
    out = [name]
    while VOCABULARY[out[-1]].parent is not None:
        out.append(VOCABULARY[out[-1]].parent)  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class LabelMapping:
    """How one entry's label values map onto a task's classes.

    Attributes
    ----------
    values : dict[int, int]
        Entry label value → task label value, a code of ``sets``, or
        ``UNANNOTATED``.
    masked : dict[str, str]
        Entry class whose voxels only partly say what they are → the task classes
        that could hide there (joined by ``" or "``).
    sets : dict[int, tuple[int, ...]]
        Label-set code (from :data:`LABEL_SET_CODES`) → the task label values a voxel
        with that code may have (0 is background).
    """

    values: dict[int, int]
    masked: dict[str, str]
    sets: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Map a label array (any integer dtype) to task values (uint8)."""
        lut = np.full(max(int(labels.max(initial=0)), UNANNOTATED) + 1, UNANNOTATED, np.uint8)
        for src, dst in self.values.items():
            lut[src] = dst
        return lut[labels]


@dataclass(frozen=True)
class Task:
    """The classes a question needs, at a resolution, from the entries that fit.

    Parameters
    ----------
    classes : sequence of str
        Output classes in order (label values 1, 2, ...); vocabulary names or
        synonyms. A class named in ``merges`` is the union of its members.
    merges : mapping, optional
        ``{output class: [member classes]}``, e.g. ``{"organelle": ["mitochondria",
        "lipid_body"]}``.
    voxel_size_um : float or (dz, dy, dx), optional
        Resolution the model works at; reference cells are resampled to it.
    filters : mapping, optional
        Metadata filters for the catalog (``{"species": "yeast"}``; a value may be a
        callable taking the column and returning a boolean mask).
    name : str, optional
        A label for the task (default: the class names joined by ``+``).

    Raises
    ------
    TaskError
        If no classes are given, a class is listed twice, or a merge member is
        also an output class.
    sxtlab.classes.UnknownClassError
        If a class name is unknown.

    Examples
    --------
    >>> task = Task(["nucleus", "lipid droplets"])
    >>> task.output_classes
    {1: 'nucleus', 2: 'lipid_body'}
    """

    classes: Sequence[str]
    merges: Mapping[str, Sequence[str]] = field(default_factory=dict)
    voxel_size_um: float | Sequence[float] | None = None  # stored as (dz, dy, dx)
    filters: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):
            object.__setattr__(self, "classes", [c for c in self.classes.split(",") if c.strip()])
        names = tuple(canonical_name(c) for c in self.classes)
        if not names:
            raise TaskError("a task needs at least one class")
        if len(set(names)) != len(names):
            raise TaskError(f"a class is listed twice in {list(self.classes)} (as {list(names)})")
        if "background" in names:
            raise TaskError("background is always label 0; do not list it among a task's classes")
        merges = {canonical_name(k): tuple(canonical_name(m) for m in v) for k, v in self.merges.items()}
        for target, members in merges.items():
            if target not in names:
                raise TaskError(f"merge target {target!r} is not one of the task's classes {list(names)}")
            clash = set(members) & set(names)
            if clash:
                raise TaskError(f"{sorted(clash)} cannot be both an output class and merged into {target!r}")
        object.__setattr__(self, "classes", names)
        object.__setattr__(self, "merges", merges)
        object.__setattr__(self, "voxel_size_um", check_voxel_size(self.voxel_size_um, where="task voxel size"))
        if self.name is None:
            object.__setattr__(self, "name", "+".join(names))

    # -- what the task is ------------------------------------------------------------
    @property
    def output_classes(self) -> dict[int, str]:
        """``{label value: class}`` of the task's output (0 is background)."""
        return {i + 1: c for i, c in enumerate(self.classes)}

    def _value_names(self) -> dict[int, str]:
        """``{label value: class}`` with background (0)."""
        return {BACKGROUND: "background", **self.output_classes}

    def _members(self) -> dict[str, str]:
        """Vocabulary class → the task class that covers it directly."""
        cover: dict[str, str] = {}
        for c in self.classes:
            for m in self.merges.get(c, (c,)):
                cover[m] = c
        return cover

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (filters that are callables are named, not stored)."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "merges": {k: list(v) for k, v in self.merges.items()},
            "voxel_size_um": None if self.voxel_size_um is None else list(self.voxel_size_um),
            "filters": {k: (v if not callable(v) else f"<callable {getattr(v, '__name__', 'filter')}>")
                        for k, v in self.filters.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Task":
        """Rebuild a task from :meth:`to_dict` output (callable filters are dropped)."""
        filters = {k: v for k, v in d.get("filters", {}).items()
                   if not (isinstance(v, str) and v.startswith("<callable"))}
        return cls(d["classes"], d.get("merges", {}), d.get("voxel_size_um"), filters, d.get("name"))

    # -- label mapping ------------------------------------------------------------------
    def mapping(self, entry_classes: Mapping[int, str], annotated: Sequence[str] | None = None) -> LabelMapping:
        """How an entry's label values map onto this task (rules in the module docstring).

        Parameters
        ----------
        entry_classes : mapping
            The entry's ``{label value: class name}`` (background 0 is implicit).
        annotated : sequence of str, optional
            The classes the entry annotated; default: those its labels name.
        """
        entry = {int(v): canonical_name(n) for v, n in entry_classes.items()}
        entry.setdefault(BACKGROUND, "background")
        value_of = {n: v for v, n in entry.items()}
        done = set(entry.values()) if annotated is None else {canonical_name(a) for a in annotated}
        done.add("background")
        cover = self._members()
        out_value = {c: v for v, c in self.output_classes.items()}

        def target(name: str) -> int:
            for a in _ancestors(name):
                if a in cover:
                    return out_value[cover[a]]
            return BACKGROUND

        values = {v: target(n) if n != "background" else BACKGROUND for v, n in entry.items()}
        # Every class the task needs but the entry did not annotate could hide under
        # the nearest class the entry did annotate (background if none).
        hidden: dict[str, set[int]] = {}
        for needed in cover:
            # Sub-classes of a needed class are covered by it, so only the class itself matters.
            if needed in done:
                continue
            hider = next((a for a in _ancestors(needed)[1:] if a in done), "background")
            if hider in value_of:
                hidden.setdefault(hider, {values[value_of[hider]]}).add(target(needed))
        names = self._value_names()
        masked: dict[str, str] = {}
        sets = LabelSets(len(names), LABEL_SET_CODES)
        for hider, members in hidden.items():
            if len(members) < 2:    # every class that could hide there maps onto the same task class
                continue
            masked[hider] = " or ".join(names[m] for m in sorted(members))
            values[value_of[hider]] = sets.code(frozenset(members))
        values[UNANNOTATED] = UNANNOTATED
        return LabelMapping(values, masked, {c: tuple(sorted(m)) for c, m in sets.sets.items()})

    def remap(self, labels: xr.DataArray, annotated: Sequence[str] | None = None) -> xr.DataArray:
        """Map a label volume onto the task's classes; what it did not annotate
        becomes label-set codes (rules in the module docstring).

        Returns
        -------
        xarray.DataArray
            uint8 labels (z, y, x) with values 0, 1..K (``output_classes``), label-set
            codes and 255, on the same grid, with ``classes`` = the task's classes and
            ``label_sets`` = ``{code: [class names]}`` ("background" for 0).

        Examples
        --------
        An entry that annotated the cell and lipid bodies, for a task that also
        needs mitochondria: its cytoplasm may be cell or mitochondria.

        >>> import numpy as np, sxtlab
        >>> img = sxtlab.volume(np.zeros((1, 1, 3), np.float32), 0.05)
        >>> lab = sxtlab.label_volume(np.array([[[0, 1, 2]]], np.uint8), img, {1: "cell", 2: "lipid_body"})
        >>> out = Task(["cell", "mitochondria", "lipid_body"]).remap(lab)
        >>> out.values.ravel().tolist(), out.attrs["label_sets"]
        ([0, 254, 3], {'254': ['cell', 'mitochondria']})
        """
        m = self.mapping(labels.sxt.classes, annotated)
        data = labels.data
        mapped = data.map_blocks(m.apply, dtype=np.uint8) if hasattr(data, "map_blocks") else m.apply(np.asarray(data))
        names = self._value_names()
        return label_volume(mapped, labels, self.output_classes,
                            attrs={"task": self.name, "partly_labelled": dict(m.masked),
                                   "label_sets": {str(c): [names[v] for v in members]
                                                  for c, members in m.sets.items()}})

    # -- catalog -----------------------------------------------------------------------
    def select(self, catalog) -> pd.DataFrame:
        """The catalog entries this task draws on, with how each maps onto it.

        An entry is drawn when it annotates at least one of the task's classes (or a
        merge member) and passes the metadata filters. Only the catalog's index is
        read, no image.

        Returns
        -------
        pandas.DataFrame
            The catalog's rows for those entries plus ``mapping`` (entry class →
            task class) and ``masked`` (entry class whose voxels are only partly
            labelled → the task classes they may be).

        Raises
        ------
        TaskError
            If no entry fits.
        """
        needed = list(self._members())
        frame = catalog.select(needed, how="any", **dict(self.filters))
        if frame.empty:
            raise TaskError(
                f"no catalog entry annotates any of {needed}"
                + (f" with {dict(self.filters)}" if self.filters else "")
                + f"; the catalog holds {len(catalog)} entries"
            )
        frame = frame.copy()
        pairs = list(zip(frame["label_classes"], frame["annotated_classes"]))
        frame["mapping"] = [self.describe_mapping(named, annotated) for named, annotated in pairs]
        frame["masked"] = [dict(self.mapping(named, annotated).masked) for named, annotated in pairs]
        return frame

    def describe_mapping(self, entry_classes: Mapping[int, str], annotated: Sequence[str] | None = None) -> dict[str, str]:
        """Readable mapping of an entry's classes: ``{entry class: task class, a set of them, or 'ignored'}``."""
        m = self.mapping(entry_classes, annotated)
        names = {**self._value_names(), UNANNOTATED: "ignored (not annotated)"}
        names.update({c: " or ".join(names[v] for v in members) for c, members in m.sets.items()})
        entry = {int(v): canonical_name(n) for v, n in entry_classes.items()}
        entry.setdefault(BACKGROUND, "background")
        return {entry[v]: names[m.values[v]] for v in sorted(entry)}

    # -- training ----------------------------------------------------------------------
    def training_set(self, source) -> tuple[list[xr.Dataset], pd.DataFrame]:
        """The cells a task trains on, with labels mapped onto its classes.

        Parameters
        ----------
        source : sxtlab.catalog.Catalog or iterable of xarray.Dataset
            A catalog (entries chosen by :meth:`select`) or segmented cells
            (``lac`` + ``labels``; the classes their labels name count as annotated).

        Returns
        -------
        cells : list of xarray.Dataset
            ``lac`` and task ``labels`` (values 0, 1..K, label-set codes, 255; see
            :meth:`remap`), resampled to the task's voxel size where it is set.
        report : pandas.DataFrame
            One row per cell: id, voxel size, how its classes map, what is only
            partly labelled, and how many voxels each task class, the partly
            labelled ones and the unannotated ones hold.
        """
        if isinstance(source, Catalog):
            frame = self.select(source)
            items = [(entry_id, source.get(entry_id), list(row["annotated_classes"]))
                     for entry_id, row in frame.iterrows()]
        else:
            items = [(str(ds.attrs.get("cell_id", ds["lac"].attrs.get("cell_id", f"cell {i}"))), ds, None)
                     for i, ds in enumerate(source)]
        if not items:
            raise TaskError("no cells to train on")
        cells, rows = [], []
        for name, ds, annotated in items:
            labels = self.remap(ds["labels"], annotated)
            lac = ds["lac"]
            if self.voxel_size_um is not None and lac.sxt.has_voxel_size and not np.allclose(
                    lac.sxt.voxel_size, self.voxel_size_um, rtol=0.02):
                lac, labels = lac.sxt.resample(self.voxel_size_um), labels.sxt.resample(self.voxel_size_um)
            values, counts = np.unique(np.asarray(labels.values), return_counts=True)
            voxels = dict(zip(values.tolist(), counts.tolist()))
            rows.append({"id": name, "voxel_size_um": lac.attrs.get("voxel_size_um"),
                         "mapping": self.describe_mapping(ds["labels"].sxt.classes, annotated),
                         "masked": labels.attrs["partly_labelled"],
                         **{f"{c}_voxels": voxels.get(v, 0) for v, c in self.output_classes.items()},
                         "partly_labelled_voxels": sum(voxels.get(int(c), 0) for c in labels.attrs["label_sets"]),
                         "unannotated_voxels": voxels.get(UNANNOTATED, 0)})
            cells.append(xr.Dataset({"lac": lac, "labels": labels}, attrs={"cell_id": name}))
        return cells, pd.DataFrame(rows).set_index("id")

    def train(self, source, config=None, *, fast: bool = False, init=None, progress: bool = True):
        """Train a cascade whose outputs are exactly this task's classes.

        Parameters
        ----------
        source : sxtlab.catalog.Catalog or iterable of xarray.Dataset
            Where the training cells come from (see :meth:`training_set`).
        config : sxtlab.train.CascadeConfig, optional
            Training settings; default :func:`sxtlab.train.CascadeConfig` defaults
            (or a short run with ``fast=True``).
        init : sxtlab.cascade.CascadeModel, optional
            Fine-tune from this model (same classes) instead of training from
            scratch, e.g. after adding corrected cells to the catalog.
        progress : bool
            Show progress bars.

        Returns
        -------
        model : sxtlab.cascade.CascadeModel
            Its ``info`` records the task (``info["task"]``) and the data used
            (``info["training_data"]``).
        history : pandas.DataFrame
            Validation history of both stages.
        """
        from .train import CascadeConfig, fast_config, train_cascade

        cells, report = self.training_set(source)
        cfg = config or (fast_config() if fast else CascadeConfig())
        model, history = train_cascade(cells, list(self.classes), cfg, init=init, progress=progress)
        model.info["task"] = self.to_dict()
        model.info["training_data"] = report.reset_index().to_dict(orient="records")
        return model, history


#: Studies of :func:`phantom_catalog`: (annotator, the classes it annotated, in its own
#: words; None = everything, under the vocabulary's names). Real archives look like
#: this: one study drew every organelle, the others only what their question needed,
#: and each used its own names.
PHANTOM_STUDIES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("complete", None),
    ("lipid storage", ("cell", "lipid droplets")),
    ("mitochondria", ("cytoplasm", "mitochondrion")),
    ("nuclear envelope", ("cell", "nuclei", "LD")),
)


def phantom_catalog(path: str | os.PathLike, n_cells: int = 8, *, shape: Sequence[int] = (64, 64, 64),
                    voxel_size: float = 0.05, studies: Sequence[tuple[str, Sequence[str] | None]] = PHANTOM_STUDIES,
                    seed: int = 0, acquisition: bool = True, progress: bool = True) -> Catalog:
    """A new catalog of phantom cells annotated partially and under different names.

    Cell ``i`` (phantom seed ``seed + i``) goes to study ``i mod len(studies)``; a
    study that annotated only some classes keeps those (in its own words, e.g.
    ``"lipid droplets"``, stored as its label names) and leaves the voxels where an
    unannotated class could hide unannotated (255), as
    :meth:`Task.remap` does. For tests, tutorials and the benchmark of
    task-based training (``benchmarks/bench_task.py``).

    Parameters
    ----------
    path : path-like
        The catalog to create (must not exist).
    n_cells : int
        Number of cells.
    shape, voxel_size
        Phantom grid (voxels, µm).
    studies : sequence of (str, sequence of str or None)
        Annotator name and the classes it annotated (None: every class).
    seed : int
        Seed of the first cell.
    acquisition : bool
        Simulate the microscope (:class:`sxtlab.phantom.Acquisition`: noise, blur,
        missing wedge); otherwise the noise-free LAC.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Catalog
        Metadata per entry: ``annotator`` (the study), ``species`` ``"phantom"``,
        ``phantom_seed``.

    Examples
    --------
    >>> cat = phantom_catalog(tmp / "refs", n_cells=4, shape=(32, 32, 32))  # doctest: +SKIP
    >>> cat.to_frame()[["annotator", "annotated_classes"]]  # doctest: +SKIP
    """
    cat = Catalog.create(path)
    for i in tqdm(range(n_cells), desc="phantom catalog", unit="cell", disable=not progress):
        annotator, annotated = studies[i % len(studies)]
        acq = phantom.Acquisition(seed=seed + i) if acquisition else None
        cell = phantom.cell(seed=seed + i, shape=shape, voxel_size=voxel_size, acquisition=acq)
        labels = cell["labels"]
        if annotated is not None:
            labels = Task(list(annotated)).remap(labels)
            own_words = {canonical_name(n): n for n in annotated}
            labels.attrs["classes"] = {k: own_words.get(v, v) for k, v in labels.attrs["classes"].items()}
        cat.add(cell["lac"], labels, annotator=annotator, species="phantom", phantom_seed=seed + i)
    return cat
