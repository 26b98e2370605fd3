"""A study of many cells: segment, measure and check a folder of reconstructions on a dask cluster.

One job from a folder of reconstructions to tables of a population::

    sxtlab study recs/ -o STUDY/ --metadata cells.csv          # LocalCluster on this machine
    sxtlab study recs/ -o STUDY/ --scheduler tcp://host:8786   # any dask.distributed cluster
    sxtlab compare STUDY/ --by condition --exclude-flagged

or from Python::

    study = sxtlab.Study.run(["recs/"], "STUDY", metadata="cells.csv")
    study.instances                # tidy tables with the metadata joined
    study.review.head()            # what to look at first
    study.compare("condition")     # tests, effect sizes, figures

Every cell is a :mod:`dask.distributed` task that reads its file, segments it with
the model (:meth:`sxtlab.cascade.CascadeModel.predict`; volumes above
``block_voxels`` stay on the block-wise Zarr path), measures it
(:mod:`sxtlab.measure`) and scores it (:mod:`sxtlab.qc`, :mod:`sxtlab.domain`).

The study folder
----------------
``cells/<cell_id>/``
    one folder per cell, written under a temporary name and renamed into place
    when complete (:func:`sxtlab.io.atomic_output`), so that a killed run never
    leaves a half-written cell that a rerun would take for done:
    ``segmentation.ome.zarr`` (image, labels, probabilities), ``instances.csv``
    (with the volume intervals and confidence of :func:`sxtlab.qc.instance_uncertainty`),
    ``classes.csv``, ``distances.csv``, ``confidence.csv`` and ``record.json``
    (input path and SHA-256, model and weights' SHA-256, sxtlab version, settings,
    input statistics and out-of-distribution score).
``instances.csv``, ``classes.csv``, ``distances.csv``
    every cell's table, the metadata joined (``cell_id`` first, then the metadata
    columns, then the measurements).
``cells.csv``
    one row per cell: its source, checksum, metadata, instance counts and volumes
    per class, QC scores and whether it is ``flagged``.
``review.csv``
    cells and objects, most likely wrong first (:func:`sxtlab.qc.review`).
``failed.csv``
    inputs that could not be read or segmented, with sxtlab's error message.
``manifest.json``
    the study's record: the model (name, weights' SHA-256), the sxtlab version,
    the settings, and every cell's input, checksum and status.

Rerunning the same command does only what is missing or changed: a cell is done
when its folder exists and its ``record.json`` names the same input checksum,
model weights, sxtlab version and settings; a changed cell is redone (its folder
replaced only once the new one is complete). Files that fail are reported and
skipped, not fatal, and tried again by the next run. The combined tables are
rebuilt from the cell folders at the end of every run.

Workers and threads
-------------------
By default a :class:`distributed.LocalCluster` of ``workers`` processes with one
thread each (default: :func:`default_workers`, one per core while memory allows), and torch in each
worker gets the free cores (:func:`sxtlab.threads.free_cores`: those the load
average leaves) divided by the workers, so that the workers together use each
core once (``OMP_NUM_THREADS`` set: that many per worker). With ``scheduler=ADDRESS`` (or ``client=``) the same tasks go to any
cluster; torch then gets the worker's CPUs (its affinity) divided by its threads.

On an HPC scheduler, start the cluster with `dask-jobqueue
<https://jobqueue.dask.org>`_ and pass its client (or its address); every worker
must see the input files and the study folder (a shared file system)::

    from dask_jobqueue import SLURMCluster
    from distributed import Client
    cluster = SLURMCluster(cores=8, processes=1, memory="32GB", walltime="04:00:00",
                           job_script_prologue=["source ~/venvs/sxtlab/bin/activate"])
    cluster.scale(jobs=10)                       # 10 nodes, one worker of 8 cores each
    study = sxtlab.Study.run(["/data/recs"], "/scratch/STUDY", client=Client(cluster))

From a shell, ``sxtlab study ... --scheduler $(cat scheduler-address)`` with a
scheduler started by ``dask scheduler --scheduler-file ...`` and workers started
in batch jobs by ``dask worker --scheduler-file ... --nthreads 1``. A job killed
by the batch system loses only the cells in flight; the same command resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import FormatError, SxtlabError, thread_warnings
from .threads import free_cores, usable_cores

__all__ = ["Study", "StudySettings", "compare_study", "find_inputs", "cell_id_of", "file_sha256", "process_cell",
           "default_pairs", "DEFAULT_BLOCK_VOXELS"]

LOG = logging.getLogger(__name__)

#: Volumes with more voxels than this are segmented block by block into Zarr
#: (``CascadeModel.predict(out=...)``, memory bounded by the block), the others in
#: memory (labels cleaned, :func:`sxtlab.clean.clean_labels`).
DEFAULT_BLOCK_VOXELS = 384 ** 3
#: Extensions of volume files a folder is searched for (lower case).
_VOLUME_SUFFIXES = (".ome.zarr", ".zarr", ".mrc.gz", ".map.gz", ".mrc", ".map", ".rec", ".st", ".ali",
                    ".tif", ".tiff", ".am", ".hx")
_TABLES = ("instances", "classes", "distances")
_MANIFEST_FORMAT = "sxtlab.study"
_MANIFEST_VERSION = 1


# ----------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------
def _volume_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in _VOLUME_SUFFIXES if name.endswith(s)), None)


def cell_id_of(path: str | os.PathLike) -> str:
    """A cell's identifier: its file name without the volume extension (``wt_03.mrc`` → ``wt_03``)."""
    p = Path(path)
    suffix = _volume_suffix(p)
    return p.name[: -len(suffix)] if suffix and len(p.name) > len(suffix) else p.name


def find_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The volume files named by ``inputs``: files as given, folders searched recursively.

    In a folder, files with a volume extension (MRC/.rec, TIFF, AmiraMesh ``.am``,
    Amira projects ``.hx``) and OME-Zarr folders (``.zarr``) are taken; the files
    an Amira project loads (its ``NAME-files`` folder) and ``.labels`` fields are
    not inputs of their own.

    Raises
    ------
    FileNotFoundError
        If an input does not exist.
    sxtlab.SxtlabError
        If nothing was found, or two inputs give the same cell identifier.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if p.is_file() or _volume_suffix(p) in (".zarr", ".ome.zarr"):
            found.append(p)
            continue
        projects = {q.with_name(f"{cell_id_of(q)}-files") for q in p.rglob("*.hx")}
        for q in sorted(p.rglob("*")):
            if any(parent in projects for parent in q.parents) or any(
                    _volume_suffix(parent) in (".zarr", ".ome.zarr") for parent in q.parents if parent != p):
                continue
            if any(part.startswith(".") for part in q.relative_to(p).parts):
                continue  # hidden: e.g. what a killed write left
            suffix = _volume_suffix(q)
            if suffix is None or (suffix not in (".zarr", ".ome.zarr") and not q.is_file()):
                continue
            found.append(q)
    if not found:
        raise SxtlabError(f"no volume files found in {', '.join(map(str, inputs))} (looked for "
                          f"{', '.join(_VOLUME_SUFFIXES)})")
    seen: dict[str, Path] = {}
    for p in found:
        cid = cell_id_of(p)
        if cid in seen and seen[cid] != p:
            raise SxtlabError(f"two inputs give the cell id {cid!r}: {seen[cid]} and {p}; rename one")
        seen[cid] = p
    return [seen[k] for k in sorted(seen)]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder (OME-Zarr: every file's relative path and bytes, in order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    for q in files:
        if q != p:
            h.update(q.relative_to(p).as_posix().encode() + b"\0")
        with open(q, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------
# Settings and the work of one cell (runs on a worker)
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudySettings:
    """What a study does to every cell; a cell is redone when these change.

    Attributes
    ----------
    voxel_size : (dz, dy, dx) or None
        µm, for files that record none (as ``sxtlab segment --voxel-size``).
    calibration : (scale, offset) or None
        Gray → LAC (µm⁻¹) for files in gray values (``--calibration``; ``--lac`` is
        ``(1, 0)``).
    medium_lac : float or None
        Calibrate every file from the medium around its cells, whose LAC (µm⁻¹) this
        is (``--calibrate-from-medium``, :func:`sxtlab.cells.calibrate_from_medium`);
        with ``calibration``, its scale is kept and the offset fitted.
    pairs : tuple of (class, target)
        Distances measured (:func:`sxtlab.measure.distances`); default each
        organelle to the nucleus and to the cell's boundary, for the classes the
        model has.
    tta : bool
        Mirrored test-time augmentation: 8 network passes per stage-2 window (a 128³
        field took 2.3× as long; ``benchmarks/results/generalisation.md``, 2026-12-05 22:58).
    low, high : float
        Probability thresholds of the volume intervals (:mod:`sxtlab.qc`).
    block_voxels : int
        Volumes larger than this are segmented block by block into Zarr.
    """

    voxel_size: tuple[float, float, float] | None = None
    calibration: tuple[float, float] | None = None
    medium_lac: float | None = None
    pairs: tuple[tuple[str, str], ...] | None = None
    tta: bool = False
    low: float = 0.05
    high: float = 0.95
    block_voxels: int = DEFAULT_BLOCK_VOXELS

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = None if self.pairs is None else [list(p) for p in self.pairs]
        return d


def default_pairs(classes: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Each organelle to the nucleus (if the model has one) and to the cell's boundary."""
    organelles = [c for c in classes if c not in ("cell", "nucleus", "nucleolus")]
    pairs = [(c, "nucleus") for c in organelles if "nucleus" in classes]
    if "cell" in classes:
        pairs += [(c, "cell") for c in [*(["nucleus"] if "nucleus" in classes else []), *organelles]]
    return tuple(pairs)


_MODELS: dict[tuple[str, str], Any] = {}


def _model(name: str, sha: str):
    """The model, loaded once per worker process (tasks of one worker share it)."""
    key = (name, sha)
    if key not in _MODELS:
        from .models import load_model

        model = load_model(name)
        if model.weights_sha256 != sha:
            raise SxtlabError(f"model {name}: its weights changed during the study (SHA-256 "
                              f"{model.weights_sha256[:12]}…, the study started with {sha[:12]}…)")
        _MODELS.clear()
        _MODELS[key] = model
    return _MODELS[key]


def _torch_threads(threads: int | None) -> int:
    import torch

    if threads is None:
        cpus = usable_cores()
        try:
            from distributed import get_worker

            per = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):
            per = 1
        threads = max(1, cpus // max(1, per))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _read(path: Path, settings: StudySettings):
    from .calibration import Calibration
    from .io import detect_format, read_segmentation, read_volume

    given = Calibration(*settings.calibration) if settings.calibration is not None else None
    # from the medium, the calibration is fitted on the file's own values
    cal = given if settings.medium_lac is None else None
    if path.suffix.lower() == ".hx" or (detect_format(path) == "omezarr" and (path / "labels").is_dir()):
        lac = read_segmentation(path, voxel_size=settings.voxel_size)["lac"]
        lac = lac.sxt.with_calibration(cal) if cal is not None else lac
    else:
        lac = read_volume(path, voxel_size=settings.voxel_size, calibration=cal)
    if settings.medium_lac is not None:
        from .cells import calibrate_from_medium

        fit = calibrate_from_medium(lac, settings.medium_lac, scale=None if given is None else given.scale)
        lac = lac.sxt.with_calibration(fit)
    return lac


def _segment(model, lac, out: Path, settings: StudySettings):
    """Predict into ``out``: in memory (cleaned) or, for large volumes on the model's
    grid, block by block into the Zarr file."""
    from .io import write_volume

    same_grid = (model.voxel_size is None or not lac.sxt.has_voxel_size
                 or np.allclose(lac.sxt.voxel_size, model.voxel_size, rtol=0.02))
    if same_grid and lac.size > settings.block_voxels:
        return model.predict(lac, out=out, tta=settings.tta, progress=False), False
    seg = model.predict(lac.load(), tta=settings.tta, progress=False)
    write_volume(seg, out)
    return seg, True


def process_cell(job: Mapping[str, Any]) -> dict[str, Any]:
    """Segment, measure and score one cell into its folder; the task a worker runs.

    Parameters
    ----------
    job : mapping
        ``cell_id``, ``input``, ``sha256``, ``folder`` (the study's), ``model``,
        ``model_sha256`` and ``model_temperature`` (recorded), ``settings`` (:meth:`StudySettings.to_json`),
        ``reference`` (the model's training range, :func:`sxtlab.domain.model_reference`),
        ``threads`` (torch threads, or None), ``redo`` (replace an outdated folder).

    Returns
    -------
    dict
        The cell's record (``status`` ``"done"``) or ``{"status": "failed",
        "error": message}`` for a file sxtlab cannot read or segment. Unexpected
        errors (bugs) are reported the same way, with the exception's type, so
        that one cell does not end the study.
    """
    import dask

    t0 = time.perf_counter()
    cid, path = job["cell_id"], Path(job["input"])
    settings = StudySettings(**{**job["settings"],
                                "pairs": None if job["settings"]["pairs"] is None
                                else tuple(tuple(p) for p in job["settings"]["pairs"]),
                                "voxel_size": None if job["settings"]["voxel_size"] is None
                                else tuple(job["settings"]["voxel_size"]),
                                "calibration": None if job["settings"]["calibration"] is None
                                else tuple(job["settings"]["calibration"])})
    # Dask work inside the task (lazy reads, resampling, Zarr writes) stays in it: on a
    # distributed worker dask would otherwise send it back to the cluster as a graph
    # holding the volume, and a worker of one thread waiting on it could wait forever.
    # Warnings (a voxel size resampled, one unknown) go into the cell's record, not onto
    # a worker's console that nobody reads.
    with dask.config.set(scheduler="synchronous"), thread_warnings() as log:
        return _process_cell(job, t0, cid, path, settings, log)


def _process_cell(job: Mapping[str, Any], t0: float, cid: str, path: Path, settings: StudySettings,
                  log: list) -> dict[str, Any]:
    from .domain import input_statistics, ood_scores
    from .io import atomic_output

    try:
        threads = _torch_threads(job.get("threads"))
        model = _model(job["model"], job["model_sha256"])
        lac = _read(path, settings)
        lac.attrs["cell_id"] = cid
        values = lac.sxt.to_lac() if (model.normalisation.units == "1/um" and lac.attrs.get("units") == "gray"
                                      and lac.sxt.calibration is not None) else lac
        stats = input_statistics(values)
        ood = ood_scores(stats, job["reference"])

        def write(tmp: Path) -> None:
            from . import measure, qc

            tmp.mkdir()
            seg, cleaned = _segment(model, lac, tmp / "segmentation.ome.zarr", settings)
            seg.attrs["cell_id"] = cid
            tables = {
                "instances": measure.instances(seg, cell_id=cid),
                "classes": measure.classes(seg, cell_id=cid),
                "distances": measure.distances(seg, list(settings.pairs or default_pairs(model.classes)),
                                               cell_id=cid),
            }
            uncertainty = qc.instance_uncertainty(seg, low=settings.low, high=settings.high, cell_id=cid)
            tables["instances"] = tables["instances"].merge(
                uncertainty.drop(columns=["voxel_count", "volume_um3"]), on=["cell_id", "class", "instance"],
                how="left")
            confidence = qc.class_confidence(seg, cell_id=cid)
            for name, table in {**tables, "confidence": confidence}.items():
                table.to_csv(tmp / f"{name}.csv", index=False)
            whole = confidence[confidence["class"] == "all"].iloc[0]
            record.update({
                "warnings": list(dict.fromkeys(str(w.message) for w in log)),
                "shape": [int(n) for n in lac.shape],
                "voxel_size_um": None if not lac.sxt.has_voxel_size else list(lac.sxt.voxel_size),
                "labels_cleaned": cleaned,
                "input_statistics": stats, **ood,
                "entropy_mean": float(whole["entropy_mean"]),
                "uncertain_voxel_fraction": float(whole["uncertain_voxel_fraction"]),
            })
            (tmp / "record.json").write_text(json.dumps(record, indent=1, default=_json_default))

        record: dict[str, Any] = {
            "cell_id": cid, "input": str(path), "sha256": job["sha256"], "model": job["model"],
            "model_sha256": job["model_sha256"], "model_temperature": job.get("model_temperature"),
            "sxtlab_version": job["sxtlab_version"],
            "settings": job["settings"], "torch_threads": threads,
        }
        atomic_output(Path(job["folder"]) / "cells" / cid, write, overwrite=bool(job.get("redo")))
    except SxtlabError as err:
        return {"cell_id": cid, "input": str(path), "status": "failed", "error": err.for_command_line()}
    except Exception as err:  # noqa: BLE001 - the task's boundary
        # A file no reader turned into sxtlab's error, or a bug: reported with its type
        # (and logged with its traceback on the worker), never the end of the study.
        LOG.warning("cell %s (%s) failed:\n%s", cid, path, traceback.format_exc())
        return {"cell_id": cid, "input": str(path), "status": "failed", "error": f"{type(err).__name__}: {err}"}
    return {**record, "status": "done", "seconds": round(time.perf_counter() - t0, 2), "pid": os.getpid()}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------
def _sxtlab_version() -> str:
    from . import __version__

    return __version__


def _read_metadata(metadata: str | os.PathLike | pd.DataFrame | None) -> pd.DataFrame | None:
    """Metadata with a ``cell_id`` column (from ``cell_id``, ``file`` or ``path``)."""
    if metadata is None:
        return None
    if isinstance(metadata, pd.DataFrame):
        table, where = metadata.copy(), "metadata"
    else:
        where = str(metadata)
        try:
            table = pd.read_csv(metadata, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise FormatError(f"{where}: cannot read the metadata table: {err}") from err
    if "cell_id" not in table.columns:
        key = next((c for c in ("file", "path", "filename") if c in table.columns), None)
        if key is None:
            raise FormatError(f"{where}: the metadata needs a column 'cell_id' (the file name without its "
                              f"extension) or 'file'; it has {list(table.columns)}")
        table.insert(0, "cell_id", [cell_id_of(v) for v in table[key]])
    table["cell_id"] = table["cell_id"].astype(str)
    dup = table["cell_id"][table["cell_id"].duplicated()].tolist()
    if dup:
        raise FormatError(f"{where}: cell ids {dup[:5]} appear more than once")
    return table


@dataclass
class Study:
    """A study folder: per-cell results, combined tables and the manifest that records them.

    Open a finished (or interrupted) study with ``Study(folder)``; run or resume one
    with :meth:`run`. The tables are read from the folder when first asked for.

    Attributes
    ----------
    folder : pathlib.Path
    manifest : dict
        ``manifest.json``: model, sxtlab version, settings, cells and failures.

    Examples
    --------
    >>> study = Study.run(["recs/"], "STUDY", metadata="cells.csv", workers=2)  # doctest: +SKIP
    >>> study.cells[["cell_id", "condition", "ood_score", "flagged"]]          # doctest: +SKIP
    >>> study.compare("condition", exclude_flagged=True)                       # doctest: +SKIP
    """

    folder: Path
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        path = self.folder / "manifest.json"
        if not self.manifest:
            if not path.is_file():
                raise FileNotFoundError(f"{self.folder}: not a study (no manifest.json); run one with "
                                        "`sxtlab study INPUTS -o FOLDER` or Study.run")
            try:
                self.manifest = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise FormatError(f"{path}: not JSON: {err}") from err
            if self.manifest.get("format") != _MANIFEST_FORMAT:
                raise FormatError(f"{path}: field 'format': expected {_MANIFEST_FORMAT!r}, "
                                  f"found {self.manifest.get('format')!r}")

    # -- tables ---------------------------------------------------------------------
    def table(self, name: str) -> pd.DataFrame:
        """A combined table of the folder: instances, classes, distances, cells, review or failed."""
        path = self.folder / f"{name}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such table in the study")
        try:
            return pd.read_csv(path, dtype={"cell_id": str})
        except pd.errors.EmptyDataError:  # a table of a study whose every file failed
            return pd.DataFrame()

    @property
    def instances(self) -> pd.DataFrame:
        """One row per organelle, with volume intervals, confidence and the metadata."""
        return self.table("instances")

    @property
    def classes(self) -> pd.DataFrame:
        """One row per cell and class (counts, volumes, fractions), with the metadata."""
        return self.table("classes")

    @property
    def distances(self) -> pd.DataFrame:
        """One row per organelle and class pair, with the metadata."""
        return self.table("distances")

    @property
    def cells(self) -> pd.DataFrame:
        """The per-cell summary: metadata, counts and volumes per class, QC."""
        return self.table("cells")

    @property
    def review(self) -> pd.DataFrame:
        """Cells and objects, most likely wrong first."""
        return self.table("review")

    @property
    def failed(self) -> pd.DataFrame:
        """Inputs that could not be read or segmented, with the reason."""
        return self.table("failed")

    def compare(self, by: str = "condition", *, exclude_flagged: bool = False, output: str | os.PathLike | None = None,
                overwrite: bool = False, figures: bool = True):
        """Compare the cells by a metadata column; see :func:`compare_study`."""
        return compare_study(self, by, exclude_flagged=exclude_flagged, output=output, overwrite=overwrite,
                             figures=figures)

    # -- running --------------------------------------------------------------------
    @classmethod
    def run(cls, inputs: Iterable[str | os.PathLike], folder: str | os.PathLike, *,
            metadata: str | os.PathLike | pd.DataFrame | None = None, model: str | os.PathLike = "default",
            settings: StudySettings | None = None, workers: int | None = None, scheduler: str | None = None,
            client: Any = None, threads: int | None = None, progress: bool = True) -> "Study":
        """Run a study, or resume one: every cell not yet done (or changed) is done.

        Parameters
        ----------
        inputs : iterable of path-like
            Volume files or folders (:func:`find_inputs`).
        folder : path-like
            The study folder; created if missing. An existing study is resumed:
            its settings and model must be those given (else
            :class:`sxtlab.SxtlabError`), or cells are redone where they differ.
        metadata : path-like or pandas.DataFrame, optional
            A table (CSV) with a ``cell_id`` (or ``file``) column and any others
            (``condition``, ``strain``, ``date`` ...), joined to every table.
        model : str or path-like
            ``"default"`` or a model folder.
        settings : StudySettings, optional
        workers : int, optional
            Worker processes of the local cluster (default: :func:`default_workers`).
        scheduler : str, optional
            Address of a running dask scheduler (``tcp://host:8786``) instead.
        client : distributed.Client, optional
            A client to use as is (neither closed nor changed).
        threads : int, optional
            Torch threads per task (default as the module notes say).
        progress : bool
            Show progress bars (:mod:`tqdm.auto`): the cells done, and a line per cell.

        Returns
        -------
        Study

        Raises
        ------
        FileNotFoundError
            If an input does not exist.
        sxtlab.SxtlabError
            If no input is found, two give one cell id, or the metadata is bad.

        Notes
        -----
        The local cluster's workers are new Python processes, which import the
        calling script again: in a script, call this under ``if __name__ ==
        "__main__":`` (as for :mod:`multiprocessing`); notebooks and the ``sxtlab``
        command need nothing.
        """
        from .domain import model_reference
        from .models import SHIPPED, load_model

        settings = settings or StudySettings()
        folder = Path(folder)
        paths = find_inputs(inputs)
        meta = _read_metadata(metadata)
        loaded = load_model(model)
        model_key = os.fspath(model) if os.fspath(model) in SHIPPED else str(Path(model).resolve())
        model_sha = loaded.weights_sha256
        reference, reference_source = model_reference(loaded)
        if settings.pairs is None:
            from dataclasses import replace

            settings = replace(settings, pairs=default_pairs(loaded.classes))
        version = _sxtlab_version()
        (folder / "cells").mkdir(parents=True, exist_ok=True)

        hashes = {}
        from tqdm.auto import tqdm

        for p in tqdm(paths, desc="checksums", disable=not progress, leave=False):
            hashes[p] = file_sha256(p)
        jobs, kept = [], {}
        for p in paths:
            cid = cell_id_of(p)
            job = {"cell_id": cid, "input": str(p.resolve()), "sha256": hashes[p], "folder": str(folder.resolve()),
                   "model": model_key, "model_sha256": model_sha, "model_temperature": loaded.temperature,
                   "sxtlab_version": version, "settings": settings.to_json(), "reference": reference,
                   "threads": threads}
            record = _done_record(folder / "cells" / cid)
            # the temperature changes the probabilities (and so QC) with the weights unchanged
            if record is not None and all(record.get(k) == job[k] for k in
                                          ("sha256", "model_sha256", "model_temperature", "sxtlab_version",
                                           "settings")):
                # the file may have moved: same bytes, so the cell stands; its current path is shown
                kept[cid] = {**record, "input": job["input"], "status": "done", "reused": True}
                continue
            job["redo"] = (folder / "cells" / cid).exists()
            jobs.append(job)

        results = list(kept.values())
        if jobs:
            results += _run_jobs(jobs, workers=workers, scheduler=scheduler, client=client, threads=threads,
                                 progress=progress)
        model_id = {"name": model_key, "weights_sha256": model_sha, "temperature": loaded.temperature,
                    "reference": reference_source}
        study = cls._finish(folder, paths, results, meta, model_id, settings, version, len(jobs))
        return study

    @classmethod
    def _finish(cls, folder: Path, paths: list[Path], results: list[dict], meta: pd.DataFrame | None,
                model_id: dict[str, Any], settings: StudySettings, version: str, n_run: int) -> "Study":
        from .io import atomic_output
        from .qc import review

        by_id = {r["cell_id"]: r for r in results}
        order = [cell_id_of(p) for p in paths]
        done = [c for c in order if by_id.get(c, {}).get("status") == "done"]
        failed = [by_id[c] for c in order if by_id.get(c, {}).get("status") == "failed"]

        def frame(name: str) -> pd.DataFrame:
            parts = [pd.read_csv(folder / "cells" / c / f"{name}.csv", dtype={"cell_id": str}) for c in done]
            parts = [t for t in parts if len(t)] or parts[:1]
            return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

        tables = {name: frame(name) for name in _TABLES}
        confidence = frame("confidence")
        summary = _summary(done, by_id, tables["classes"], confidence)
        summary.insert(1, "source", [by_id[c]["input"] for c in done])
        summary.insert(2, "sha256", [by_id[c]["sha256"] for c in done])
        rev = review(summary, tables["instances"] if len(tables["instances"]) else None)
        flagged_cells = set(rev.loc[(rev["level"] == "cell") & rev["flagged"], "cell_id"])
        summary["flagged"] = summary["cell_id"].isin(flagged_cells)
        if meta is not None:
            unknown = sorted(set(done) - set(meta["cell_id"]))
            if unknown:
                LOG.warning("metadata has no row for cells %s", unknown[:10])
            tables = {k: _join(t, meta) for k, t in tables.items()}
            summary = _join(summary, meta)
        tables["cells"] = summary
        tables["review"] = rev
        tables["failed"] = pd.DataFrame(failed, columns=["cell_id", "input", "error"])

        for name, table in tables.items():
            text = table.to_csv(index=False)
            atomic_output(folder / f"{name}.csv", lambda tmp, text=text: tmp.write_text(text), overwrite=True)
        manifest = {
            "format": _MANIFEST_FORMAT, "format_version": _MANIFEST_VERSION,
            "sxtlab_version": version,
            "model": model_id,
            "settings": settings.to_json(),
            "cells": {c: {k: by_id[c].get(k) for k in ("input", "sha256", "status", "seconds", "reused", "error")
                          if by_id[c].get(k) is not None} for c in order if c in by_id},
            "run": {"cells": len(order), "done": len(done), "failed": len(failed), "processed_now": n_run,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        }
        text = json.dumps(manifest, indent=1, default=_json_default)
        atomic_output(folder / "manifest.json", lambda tmp: tmp.write_text(text), overwrite=True)
        return cls(folder, manifest)


def _done_record(cell_folder: Path) -> dict | None:
    path = cell_folder / "record.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # not ours or damaged: the cell is redone


def _join(table: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """The metadata columns after ``cell_id`` (and ``source``), the table's after them."""
    if not len(table):
        return table
    extra = [c for c in meta.columns if c != "cell_id" and c not in table.columns]
    clash = [c for c in meta.columns if c != "cell_id" and c in table.columns]
    if clash:
        LOG.warning("metadata columns %s clash with the table's and are left out", clash)
    joined = table.merge(meta[["cell_id", *extra]], on="cell_id", how="left")
    front = [c for c in ("cell_id", "source", "sha256") if c in table.columns]
    rest = [c for c in table.columns if c not in front]
    return joined[[*front, *extra, *rest]]


def _summary(done: list[str], by_id: dict, classes: pd.DataFrame, confidence: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: shape, voxel size, per-class counts and volumes, QC scores."""
    rows = []
    for c in done:
        r = by_id[c]
        row = {"cell_id": c, "shape": "x".join(map(str, r.get("shape", []))),
               "voxel_size_um": ",".join(f"{v:.5g}" for v in r["voxel_size_um"]) if r.get("voxel_size_um") else "",
               "labels_cleaned": r.get("labels_cleaned"), "warnings": "; ".join(r.get("warnings", []))}
        rows.append(row)
    out = pd.DataFrame(rows, columns=["cell_id", "shape", "voxel_size_um", "labels_cleaned", "warnings"])
    if len(classes):
        # the cell's first cell instance (a volume may hold several: summed over them)
        per = classes.groupby(["cell_id", "class"], sort=False)[["count", "volume_um3"]].sum()
        wide = per.unstack("class")
        wide.columns = [f"{cls}_{'count' if what == 'count' else 'volume_um3'}" for what, cls in wide.columns]
        out = out.merge(wide.reset_index(), on="cell_id", how="left")
    qc_cols = ["ood_score", "ood_flag", "ood_reasons", "entropy_mean", "uncertain_voxel_fraction",
               *[f"ood_{f}" for f in ("voxel_size_um", "lac_p01_per_um", "lac_p50_per_um", "lac_p95_per_um",
                                      "noise_per_um")]]
    for col in qc_cols:
        out[col] = [by_id[c].get(col, math.nan) for c in done]
    stats_cols = ["voxel_size_um", "lac_p01_per_um", "lac_p50_per_um", "lac_p95_per_um", "noise_per_um"]
    for col in stats_cols:
        out[f"input_{col}"] = [by_id[c].get("input_statistics", {}).get(col, math.nan) for c in done]
    return out


#: Resident memory one study worker is given room for (bytes): 128³ cells peaked at
#: 818 MiB with the default model of 2026-12-05 (0.92 GB with that of 2026-12-03;
#: ``benchmarks/results/study.md``); larger cells take the block-wise path.
WORKER_MEMORY = 1.5 * 2**30


def default_workers(cores: int | None = None) -> int:
    """Local workers for a study: one per core, fewer where memory would not hold them.

    One single-threaded worker per core beats one worker per two cores with two torch
    threads: on 2 cores, 1 123 against 659 cells per hour (``benchmarks/results/study.md``, 2026-12-05),
    as the parts of a cell outside torch (reading, QC, tables, writing) leave a lone
    worker's second core idle.

    Parameters
    ----------
    cores : int, optional
        Cores to use (default: this process's CPU affinity).

    Returns
    -------
    int
        At least 1; at most ``cores`` and available memory / :data:`WORKER_MEMORY`.
    """
    import psutil

    if cores is None:
        cores = usable_cores()
    return max(1, min(cores, int(psutil.virtual_memory().available // WORKER_MEMORY)))


def _run_jobs(jobs: list[dict], *, workers: int | None, scheduler: str | None, client: Any,
              threads: int | None, progress: bool) -> list[dict]:
    """Run the cells' tasks on a dask.distributed cluster; results in completion order."""
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    own_cluster = own_client = None
    try:
        if client is None:
            if scheduler is not None:
                client = own_client = Client(scheduler)
            else:
                n = workers or default_workers()
                # the cores other work leaves free, shared out (sxtlab.threads: a torch thread on
                # a busy core makes its partners spin); OMP_NUM_THREADS, if set, decides
                free = int(os.environ["OMP_NUM_THREADS"]) * n if os.environ.get("OMP_NUM_THREADS", "").isdigit() \
                    else free_cores()
                per = threads or max(1, free // n)
                for job in jobs:
                    job["threads"] = per
                # one thread per worker: torch in the task uses `per` threads, so the
                # workers together use every core once
                own_cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=":0",
                                           env={"OMP_NUM_THREADS": str(per), "MKL_NUM_THREADS": str(per)})
                client = own_client = Client(own_cluster)
        futures = [client.submit(process_cell, job, key=f"sxtlab-cell-{job['cell_id']}-{job['sha256'][:12]}",
                                 pure=False) for job in jobs]
        results = []
        with tqdm(total=len(futures), desc="cells", unit="cell", disable=not progress) as bar:
            for future in as_completed(futures):
                try:
                    r = future.result()
                except Exception as err:  # noqa: BLE001 - a worker died (memory, a kill): that cell fails
                    cid = future.key.removeprefix("sxtlab-cell-").rsplit("-", 1)[0]
                    source = next((j["input"] for j in jobs if j["cell_id"] == cid), "?")
                    r = {"cell_id": cid, "input": source, "status": "failed",
                         "error": f"the worker running it was lost: {type(err).__name__}: {err}"}
                results.append(r)
                if r["status"] == "done":
                    bar.set_postfix_str(f"{r['cell_id']} {r.get('seconds', 0):.0f} s")
                    if progress:
                        flag = "  unlike the training data" if r.get("ood_flag") else ""
                        tqdm.write(f"done {r['cell_id']} in {r.get('seconds', 0):.1f} s{flag}")
                else:
                    tqdm.write(f"failed {r['cell_id']} ({r['input']}): {r['error']}")
                bar.update()
        return results
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


# ----------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------
#: Per-cell measurements of the classes table that compare_study tests, and figures.
COMPARED = ("volume_um3", "count", "volume_fraction", "lac_mean_per_um")
_FIGURES = {"volume": "volume_um3", "counts": "count", "lac": "lac_mean_per_um"}


def _uncertainty(instances: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per cell and class, half the width of the summed volume intervals (µm³)."""
    if not {"volume_low_um3", "volume_high_um3"} <= set(instances.columns):
        return pd.DataFrame(columns=["class", by, "segmentation_uncertainty_um3"])
    t = instances.assign(_half=(instances["volume_high_um3"] - instances["volume_low_um3"]) / 2)
    per = t.groupby(["cell_id", by, "class"], observed=True)["_half"].sum().reset_index()
    return (per.groupby(["class", by], observed=True)["_half"].median()
            .rename("segmentation_uncertainty_um3").reset_index())


def compare_study(study: "Study | str | os.PathLike", by: str = "condition", *, exclude_flagged: bool = False,
                  output: str | os.PathLike | None = None, overwrite: bool = False,
                  figures: bool = True) -> pd.DataFrame:
    """Compare a study's cells between the groups of a metadata column: tests, effect sizes, figures.

    Cells are the replicates (:mod:`sxtlab.stats`): per class, each cell's volume,
    count of instances, volume fraction and mean LAC (the classes table), and
    each organelle's distances (median per cell) are compared between the groups
    of ``by`` with a rank test (Mann–Whitney U for two groups, Kruskal–Wallis
    for more) and its effect size; all p-values of the call are adjusted together
    (Benjamini–Hochberg). For volumes, the segmentation's own uncertainty is set
    beside the difference: ``segmentation_uncertainty_um3`` is the median over
    a group's cells of half the width of the cell's summed volume intervals
    (:mod:`sxtlab.qc`), and ``exceeds_uncertainty`` says whether the difference
    of the groups' medians is larger than the mean of the groups' uncertainties.

    Parameters
    ----------
    study : Study or path-like
    by : str
        A metadata column of the study (e.g. ``condition``).
    exclude_flagged : bool
        Leave out cells that QC flagged (``cells.csv`` ``flagged``: unlike the
        training data, or too uncertain); how many is in ``attrs`` and the output.
    output : path-like, optional
        Folder for ``comparison.csv``, the PNG figures and ``summary.txt``; default
        ``STUDY/compare-<by>`` (``-unflagged`` with ``exclude_flagged``). Written
        atomically; an existing one is refused unless ``overwrite``.
    overwrite : bool
        Replace an existing output folder.
    figures : bool
        Write the figures (volume, counts, LAC per class; distances).

    Returns
    -------
    pandas.DataFrame
        :func:`sxtlab.stats.compare`'s tidy table for every measurement (classes
        and distances together, ``target_class`` empty for the former), with the
        uncertainty columns; ``attrs``: ``by``, ``cells``, ``flagged_left_out``,
        ``output``.

    Raises
    ------
    sxtlab.stats.MissingColumnError
        If ``by`` is not a column of the study's tables (the message lists them).
    sxtlab.SxtlabError
        If fewer than two groups have cells.
    sxtlab.OutputExistsError
        If the output exists and ``overwrite`` is false.
    """
    from . import plot, stats
    from .io import atomic_output

    study = study if isinstance(study, Study) else Study(Path(study))
    cells = study.cells
    stats.require_columns(cells, [by], f"{study.folder / 'cells.csv'}")
    left_out: list[str] = []
    if exclude_flagged and "flagged" in cells:
        left_out = cells.loc[cells["flagged"].astype(bool), "cell_id"].astype(str).tolist()
    keep = set(cells["cell_id"].astype(str)) - set(left_out)
    name = f"compare-{by}" + ("-unflagged" if exclude_flagged else "")
    out_dir = Path(output) if output is not None else study.folder / name
    if out_dir.exists() and not overwrite:
        from .errors import OutputExistsError

        raise OutputExistsError(f"{out_dir} exists; pass overwrite=True (or --overwrite) to replace it")

    def rows(table: pd.DataFrame) -> pd.DataFrame:
        return table[table["cell_id"].astype(str).isin(keep) & table[by].notna()] if len(table) else table

    classes, instances, distances = rows(study.classes), rows(study.instances), rows(study.distances)
    try:
        parts = [stats.compare(classes, [c for c in COMPARED if c in classes], by, correction=None)]
        if len(distances) and distances["distance_um"].notna().any():
            parts.append(stats.compare(distances, "distance_um", by, within=["class", "target_class"],
                                       correction=None))
    except ValueError as err:
        raise SxtlabError(f"{study.folder}: cannot compare by {by!r}: {err}") from err
    result = pd.concat(parts, ignore_index=True)
    # one family: every test of this call, adjusted together (Benjamini-Hochberg)
    tests = result.drop_duplicates(["measurement", "class", "target_class"] if "target_class" in result
                                   else ["measurement", "class"])
    adjusted = stats._adjust(tests["p_value"].to_numpy(float), "bh")
    key = ["measurement", "class", *(["target_class"] if "target_class" in result else [])]
    lookup = dict(zip(map(tuple, tests[key].fillna("").to_numpy()), adjusted))
    result["p_adjusted"] = [lookup[tuple(k)] for k in result[key].fillna("").to_numpy()]
    unc = _uncertainty(instances, by)
    result = result.merge(unc.assign(measurement="volume_um3"), on=["measurement", "class", by], how="left")
    exceeds = {}
    for k, part in result[result["measurement"] == "volume_um3"].groupby("class"):
        if len(part) >= 2 and part["segmentation_uncertainty_um3"].notna().all():
            diff = float(part["median"].max() - part["median"].min())
            exceeds[k] = diff > float(part["segmentation_uncertainty_um3"].mean())
    result["exceeds_uncertainty"] = [exceeds.get(c) if m == "volume_um3" else None
                                     for m, c in zip(result["measurement"], result["class"])]
    n_cells = int(cells["cell_id"].astype(str).isin(keep).sum())
    result.attrs = {"by": by, "cells": n_cells, "flagged_left_out": len(left_out), "output": str(out_dir)}

    def write(tmp: Path) -> None:
        tmp.mkdir()
        result.to_csv(tmp / "comparison.csv", index=False)
        made = []
        if figures:
            for fname, value in _FIGURES.items():
                if value in classes and classes[value].notna().any():
                    fig = plot.per_class(classes[classes["class"] != "cytoplasm"], value, by=by)
                    fig.savefig(tmp / f"{fname}.png", dpi=120, bbox_inches="tight")
                    made.append(f"{fname}.png")
            if len(distances) and distances["distance_um"].notna().any():
                fig = plot.distances(distances, by=by)
                fig.savefig(tmp / "distances.png", dpi=120, bbox_inches="tight")
                made.append("distances.png")
        significant = result.drop_duplicates(key)
        significant = significant[significant["p_adjusted"] < 0.05]
        lines = [f"comparison of {study.folder} by {by!r}: {n_cells} cells"
                 + (f", {len(left_out)} flagged cells left out ({', '.join(left_out)})" if exclude_flagged
                    else f" (flagged cells kept; {int(cells.get('flagged', pd.Series(dtype=bool)).sum())} flagged)"),
                 f"{len(tests)} tests, Benjamini-Hochberg adjusted; {len(significant)} with p_adjusted < 0.05:"]
        for r in significant.to_dict("records"):
            target = r.get("target_class")
            what = r["measurement"] + (f" to {target}" if isinstance(target, str) and target else "")
            lines.append(f"  {r['class']} {what}: p_adjusted {r['p_adjusted']:.3g}, "
                         f"{r['effect_size_measure']} {r['effect_size']:.2f} ({r['comparison']})")
        lines.append(f"figures: {', '.join(made) or 'none'}")
        (tmp / "summary.txt").write_text("\n".join(lines) + "\n")

    atomic_output(out_dir, write, overwrite=overwrite)
    result.attrs["summary"] = (out_dir / "summary.txt").read_text()
    return result
