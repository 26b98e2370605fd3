"""The ``sxtlab`` command line.

Exit codes: 0 success; 1 an unexpected failure (a bug: the traceback is shown);
2 bad input or usage (a one-line reason, no traceback); 3 an output exists and
``--overwrite`` was not given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import OutputExistsError, SxtlabError
from .threads import use_free_cores

__all__ = ["main", "describe"]

log = logging.getLogger("sxtlab")


def describe(obj: xr.DataArray | xr.Dataset) -> str:
    """A short, human-readable summary of a volume or segmentation.

    Examples
    --------
    >>> import numpy as np, sxtlab
    >>> print(describe(sxtlab.volume(np.zeros((2, 3, 4), np.float32), 0.03)))  # doctest: +ELLIPSIS
    volume 'lac': 2 × 3 × 4 voxels (z, y, x), voxel size 0.03 × 0.03 × 0.03 µm...
    """
    image = obj["lac"] if isinstance(obj, xr.Dataset) else obj
    lines = []
    nz, ny, nx = image.shape
    vs = image.attrs.get("voxel_size_um")
    if vs is None:
        size = "voxel size unknown"
    else:
        extent = " × ".join(f"{n * v:.3g}" for n, v in zip(image.shape, vs))
        size = f"voxel size {' × '.join(f'{v:.4g}' for v in vs)} µm, extent {extent} µm"
    lines.append(f"volume {image.name!r}: {nz} × {ny} × {nx} voxels (z, y, x), {size}")
    units = image.attrs.get("units", "?")
    lo, hi, mean = (float(v) for v in (image.min(), image.max(), image.mean()))
    unit_text = "µm⁻¹ (LAC)" if units == "1/um" else units
    lines.append(f"  values {lo:.4g} … {hi:.4g}, mean {mean:.4g} {unit_text}")
    if image.attrs.get("source"):
        lines.append(f"  source: {image.attrs['source']}")
    if isinstance(obj, xr.Dataset) and "labels" in obj:
        labels = obj["labels"]
        values, counts = np.unique(np.asarray(labels), return_counts=True)
        names = {int(k): v for k, v in labels.attrs.get("classes", {}).items()}
        vox = float(np.prod(vs)) if vs is not None else None
        for v, c in zip(values, counts):
            name = names.get(int(v), "background" if v == 0 else "unannotated" if v == 255 else "?")
            amount = f"{c * vox:.4g} µm³" if vox is not None else f"{c} voxels"
            lines.append(f"  label {int(v):3d} {name:<16} {amount}")
    return "\n".join(lines)


def _read_input(path: str, voxel_size, calibration=None) -> xr.Dataset:
    """An input file as a Dataset: ``lac`` and, where the file has them, ``labels``;
    ``calibration`` (a :class:`sxtlab.Calibration`) is recorded on a gray image."""
    from .io import detect_format, read_segmentation, read_volume

    p = Path(path)
    if p.suffix.lower() == ".hx" or (detect_format(p) == "omezarr" and (p / "labels").is_dir()):
        ds = read_segmentation(p, voxel_size=voxel_size)
        if calibration is not None:
            ds["lac"] = ds["lac"].sxt.with_calibration(calibration)
        return ds
    return read_volume(p, voxel_size=voxel_size, calibration=calibration).to_dataset(name="lac")


def _refuse_existing(path: Path, overwrite: bool) -> None:
    # Checked before the work starts, so a long run never ends in a refusal.
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def _write_csv(table, path: Path, overwrite: bool) -> Path:
    from .io import atomic_output

    return atomic_output(path, lambda tmp: table.to_csv(tmp, index=False), overwrite=overwrite)


def _segment(image: xr.DataArray, model, out: Path | None, overwrite: bool, **predict: Any) -> xr.Dataset:
    """Predict (``predict``: options of ``CascadeModel.predict``), writing to ``out``
    block by block where no resampling is needed."""
    from .io import write_volume

    same_grid = (model.voxel_size is None or not image.sxt.has_voxel_size
                 or np.allclose(image.sxt.voxel_size, model.voxel_size, rtol=0.02))
    if out is not None and same_grid:
        return model.predict(image, out=out, overwrite=overwrite, **predict)
    seg = model.predict(image.load(), **predict)
    if out is not None:
        write_volume(seg, out, overwrite=overwrite)
    return seg


def _cmd_segment(args: argparse.Namespace) -> int:
    from .models import load_model

    out = Path(args.output)
    _refuse_existing(out, args.overwrite)
    ds = _read_input(args.input, args.voxel_size, args.calibration)
    model = load_model(args.model)
    log.info("model %s: classes %s", args.model, ", ".join(model.classes))
    if "sparse" in model.info and "labels" in ds and not args.ignore_annotation:
        # A model made from this kind of sparse annotation: complete the annotation
        # and keep the instances it marks (sxtlab.sparse.segment_sparse).
        from .io import write_volume
        from .sparse import segment_sparse

        seg = segment_sparse(ds, model, beta=args.beta, progress=True)
        write_volume(seg, out, overwrite=args.overwrite)
        print(f"used the annotation of {args.input}: probabilities of the model and of the annotation's "
              "interpolation averaged, only the instances the annotation marks kept")
    else:
        gates = {k: getattr(args, k) for k in ("skip_background", "trust_background") if hasattr(args, k)}
        seg = _segment(ds["lac"], model, out, args.overwrite, tta=args.tta, **gates)
    print(describe(seg))
    print(f"wrote {out}")
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from . import measure
    from .io import read_segmentation

    out = Path(args.output)
    _refuse_existing(out, args.overwrite)
    seg = read_segmentation(args.segmentation, voxel_size=args.voxel_size)
    kwargs = {"allow_voxel_units": args.allow_voxel_units}
    if args.table == "distances":
        pairs = [tuple(p.split(":")) for p in args.pairs.split(",")] if args.pairs else None
        if not pairs:
            raise SxtlabError("--table distances needs --pairs, e.g. --pairs mitochondria:nucleus,lipid_body:cell")
        table = measure.distances(seg, pairs, **kwargs)
    else:
        table = getattr(measure, args.table)(seg, **kwargs)
    _write_csv(table, out, args.overwrite)
    print(f"{len(table)} rows ({args.table}) -> {out}")
    return 0


def _cmd_catalog(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    if args.catalog_command == "create":
        Catalog.create(args.catalog)
        print(f"created catalog {args.catalog}")
        return 0
    cat = Catalog.open(args.catalog)
    if args.catalog_command == "import":
        return _import(cat, args)
    if args.catalog_command == "list":
        frame = cat.to_frame()
        columns = [c for c in ("annotated_classes", "shape", "dz_um", "dy_um", "dx_um", "species", "condition",
                               "source") if c in frame]
        print(frame[columns].to_string() if len(frame) else f"{args.catalog}: empty catalog")
        return 0
    ds = _read_input(args.image, args.voxel_size)
    if args.labels:
        labels = _read_input(args.labels, args.voxel_size)["lac"]
        if not labels.sxt.is_labels:
            raise SxtlabError(f"{args.labels}: not a label volume (it names no classes)")
    elif "labels" in ds:
        labels = ds["labels"]
    else:
        raise SxtlabError(f"{args.image}: holds no labels; give the label file as a second argument")
    metadata = dict(_key_value(kv) for kv in args.meta)
    classes = args.classes.split(",") if args.classes else None
    entry = cat.add(ds["lac"], labels, classes=classes, **metadata)
    print(f"added {entry} to {args.catalog} ({len(cat)} entries)")
    return 0


def _import(cat, args: argparse.Namespace) -> int:
    from .catalog import import_projects

    class_map = dict(_key_value(kv, "--class-map") for kv in args.class_map)
    metadata = dict(_key_value(kv) for kv in args.meta)
    report = import_projects(cat, args.folder, pattern=args.pattern, class_map=class_map,
                             voxel_size=args.voxel_size, **metadata)
    for row in report.itertuples():
        detail = f" {row.entry} ({', '.join(row.classes)})" if row.status in ("added", "present") else ""
        print(f"{row.status:>9}  {row.project}{detail}")
        if row.status in ("unmapped", "failed", "no labels") and row.message:
            print(f"           {row.message}")
    counts = report["status"].value_counts()
    print(f"{len(report)} projects: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {len(cat)} entries")
    # Projects left out are a reason to look, and scripts should see it.
    return 2 if counts.get("unmapped", 0) or counts.get("failed", 0) else 0


def _key_value(text: str, option: str = "--meta") -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SxtlabError(f"{option} takes KEY=VALUE, got {text!r}")
    return key, value


def _cascade_config(args: argparse.Namespace):
    """Training settings from --fast and --iterations (None: the trainer's defaults)."""
    from dataclasses import replace

    from .train import CascadeConfig, fast_config

    if args.iterations is None:
        return fast_config() if args.fast else None
    cfg = fast_config() if args.fast else CascadeConfig()
    n1, n2 = args.iterations
    return replace(cfg, stage1=replace(cfg.stage1, iterations=n1), stage2=replace(cfg.stage2, iterations=n2))


def _is_sparse(ds: xr.Dataset) -> bool:
    from .classes import UNANNOTATED

    return bool((np.asarray(ds["labels"]) == UNANNOTATED).any())


def _cmd_train(args: argparse.Namespace) -> int:
    from .task import Task

    out = Path(args.output)
    _refuse_existing(out, args.overwrite)
    task = Task(args.task, voxel_size_um=args.task_voxel_size)
    history = None
    if args.catalog:
        from .catalog import Catalog

        model, history = task.train(Catalog.open(args.catalog), _cascade_config(args))
    elif args.inputs:
        cells = []
        for path in args.inputs:
            ds = _read_input(path, args.voxel_size)
            if "labels" not in ds:
                raise SxtlabError(f"{path}: has no label field; training needs labels "
                                  "(`sxtlab segment` works without them)")
            cells.append(ds)
        if len(cells) == 1 and _is_sparse(cells[0]):
            # One partly annotated volume: the settings made for it (whole volume in
            # every stage-1 patch, no model selection on the training planes).
            from .sparse import fit_sparse, sparse_config

            iterations = args.iterations or ((150, 150) if args.fast else (600, 600))
            model = fit_sparse(cells[0], task, config=sparse_config(iterations=tuple(iterations)), progress=True)
            sparse = model.info["sparse"]
            print(f"trained on the {sparse['annotated_voxels']:,} annotated voxels of {args.inputs[0]} "
                  f"(planes {', '.join(f'{d}: {len(v)}' for d, v in sparse['planes'].items())}; "
                  f"input {sparse['input_units']}) in {model.info['train_seconds']:.0f} s")
        else:
            model, history = task.train(cells, _cascade_config(args))
    else:
        raise SxtlabError("give labelled input files or --catalog CAT to train from")
    model.save(out, overwrite=args.overwrite)
    if history is not None and "mean_dice" in history:
        best = history.groupby("stage")["mean_dice"].max()
        print("best validation Dice per stage:", ", ".join(f"{k}: {v:.3f}" for k, v in best.items()))
    print(f"model for {', '.join(model.classes)} -> {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    paths = run_demo(Path(args.output), seed=args.seed, size=args.size, overwrite=args.overwrite, real=args.real,
                     iterations=tuple(args.iterations), voxel_size=args.voxel_size)
    for what, path in paths.items():
        print(f"{what:>13}: {path}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .study import Study, StudySettings

    if args.workers is not None and args.scheduler is not None:
        raise SxtlabError("give --workers (a cluster on this machine) or --scheduler ADDRESS, not both")
    settings = StudySettings(voxel_size=args.voxel_size, tta=args.tta)
    if args.calibration is not None:
        settings = replace(settings, calibration=(args.calibration.scale, args.calibration.offset))
    if args.pairs:
        settings = replace(settings, pairs=tuple(tuple(p.split(":")) for p in args.pairs.split(",")))
    study = Study.run(args.inputs, args.output, metadata=args.metadata, model=args.model, settings=settings,
                      workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                      progress=not args.quiet)
    run = study.manifest["run"]
    reused = run["done"] - (run["processed_now"] - run["failed"])
    print(f"{run['cells']} cells: {run['done']} done ({reused} from earlier runs), {run['failed']} failed")
    failed = study.failed
    for row in failed.itertuples():
        print(f"  failed {row.cell_id}: {row.error}")
    review = study.review
    flagged = review[review["flagged"].astype(bool)]
    cells_flagged = flagged[flagged["level"] == "cell"]
    first = [r["cell_id"] + (f" {r['class']} {r['instance']}" if r["level"] == "object" else "")
             for r in review.head(3).to_dict("records")]
    print(f"review: {len(cells_flagged)} cells and {len(flagged) - len(cells_flagged)} objects flagged; "
          f"first to check: {', '.join(first) or 'none'}")
    print(f"tables, review.csv and manifest.json -> {args.output}")
    # Files left out are a reason to look, and scripts should see it (as catalog import).
    return 2 if len(failed) else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .study import compare_study

    result = compare_study(args.study, args.by, exclude_flagged=args.exclude_flagged, output=args.output,
                           overwrite=args.overwrite)
    print(result.attrs["summary"], end="")
    print(f"-> {result.attrs['output']}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    print(describe(_read_input(args.path, args.voxel_size)))
    return 0


def _beta(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"beta must be 'auto' or a positive number, got {text!r}")
    return value


def _gate(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1 or 'none', got {text!r}")
    return value


def _calibration(text: str):
    from .calibration import Calibration

    parts = text.split(",")
    try:
        if len(parts) > 2:
            raise ValueError(text)
        return Calibration(*(float(p) for p in parts))
    except (ValueError, SxtlabError):
        raise argparse.ArgumentTypeError(f"expected SCALE or SCALE,OFFSET (LAC = SCALE·gray + OFFSET, µm⁻¹; "
                                         f"SCALE finite and not 0), got {text!r}") from None


def _voxel_size(text: str) -> tuple[float, float, float]:
    from .volume import check_voxel_size

    # The API's parser, so that the command line accepts and refuses the same values;
    # argparse names the option itself ("argument --voxel-size: ...").
    try:
        return check_voxel_size(text, where="--voxel-size")  # type: ignore[return-value]
    except SxtlabError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--voxel-size: ")) from None


class _PredictDefaultsHelp(argparse.HelpFormatter):
    """Help that fills ``%(predict_default)s`` with the default of the same-named keyword
    of :meth:`sxtlab.cascade.CascadeModel.predict`.

    Those defaults live with ``predict`` (one place); reading them imports torch, so
    it happens only when the help is shown, not whenever the parser is built.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and "%(predict_default)s" in text:
            import inspect

            from .cascade import CascadeModel

            default = inspect.signature(CascadeModel.predict).parameters[action.dest].default
            text = text.replace("%(predict_default)s", "none" if default is None else str(default))
        return text


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sxtlab`` command."""
    parser = argparse.ArgumentParser(
        prog="sxtlab",
        description="Segment and measure organelles in soft X-ray tomography (SXT) reconstructions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done, step by step")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    vs_help = "voxel size in µm ('D' or 'DZ,DY,DX') where the file records none"

    demo = sub.add_parser("demo", help="segment and measure a sample cell; write OME-Zarr, CSV and PNG",
                          description="Segment a sample cell with the shipped model, measure its organelles "
                                      "and write the segmentation (OME-Zarr), the table (CSV) and a figure "
                                      "(PNG).")
    demo.add_argument("-o", "--output", default="sxtlab-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=1000, help="phantom seed (default: %(default)s)")
    demo.add_argument("--size", type=int, default=128, help="phantom voxels per side (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.add_argument("--real", action="store_true",
                      help="use the real reconstruction shipped with sxtlab (cells in a capillary, a few "
                           "annotated planes): learn from the annotation, fill it in, measure every cell")
    demo.add_argument("--iterations", type=int, nargs=2, default=(600, 600), metavar=("STAGE1", "STAGE2"),
                      help="training steps with --real (default: %(default)s)")
    demo.add_argument("--voxel-size", type=_voxel_size, default=None,
                      help="voxel size in µm of the real sample (its files record none)")
    demo.set_defaults(func=_cmd_demo)

    seg = sub.add_parser("segment", help="segment a volume with a model", formatter_class=_PredictDefaultsHelp,
                         description="Segment a volume (MRC, AmiraMesh/.hx, TIFF, OME-Zarr) and write an "
                                     "OME-Zarr segmentation with labels and class probabilities.")
    seg.add_argument("input", help="volume file")
    seg.add_argument("-o", "--output", required=True, help="output OME-Zarr folder (e.g. seg.zarr)")
    seg.add_argument("--model", default="default", help="'default' or a model folder (default: %(default)s)")
    seg.add_argument("--voxel-size", type=_voxel_size, default=None, help=vs_help)
    seg.add_argument("--calibration", type=_calibration, default=None, metavar="SCALE[,OFFSET]",
                     help="gray → LAC of an image in gray values: LAC = SCALE·gray + OFFSET (µm⁻¹); "
                          "'1' where the file's values are LAC in µm⁻¹ already")
    seg.add_argument("--tta", action="store_true", help="average over mirrored inputs (8× slower)")
    # Defaults stay with CascadeModel.predict (SUPPRESS: not passed unless given); the
    # help shows them (_PredictDefaultsHelp) without importing torch to build the parser.
    seg.add_argument("--skip-background", type=_gate, default=argparse.SUPPRESS, metavar="P",
                     help="do not run stage 2 on windows where stage 1 calls every voxel background with at "
                          "least this probability; 'none' runs every window (default: %(predict_default)s)")
    seg.add_argument("--trust-background", type=_gate, default=argparse.SUPPRESS, metavar="P",
                     help="keep stage 1's answer where it calls a voxel background with at least this "
                          "probability; 'none' keeps stage 2's wherever it ran (default: %(predict_default)s)")
    seg.add_argument("--ignore-annotation", action="store_true",
                     help="with a model trained from sparse annotations (sxtlab train X.hx), predict from the "
                          "image alone instead of completing the file's annotation")
    seg.add_argument("--beta", type=_beta, default="auto",
                     help="edge penalty of the annotation's interpolation (random walker); default 'auto' "
                          "chooses it on held-out planes of the annotation (13 walks instead of 1)")
    seg.add_argument("--overwrite", action="store_true", help="replace an existing output")
    seg.set_defaults(func=_cmd_segment)

    meas = sub.add_parser("measure", help="measure a segmentation into a CSV table",
                          description="Measure organelles of a segmentation (OME-Zarr or .hx) into a CSV "
                                      "table with units in the column names.")
    meas.add_argument("segmentation", help="OME-Zarr segmentation or Amira project")
    meas.add_argument("-o", "--output", required=True, help="output CSV file")
    meas.add_argument("--table", choices=("instances", "classes", "distances"), default="instances",
                      help="one row per organelle, per class, or per distance (default: %(default)s)")
    meas.add_argument("--pairs", help="class pairs for --table distances, e.g. mitochondria:nucleus,lipid_body:cell")
    meas.add_argument("--voxel-size", type=_voxel_size, default=None, help=vs_help)
    meas.add_argument("--allow-voxel-units", action="store_true",
                      help="measure in voxels when the voxel size is unknown")
    meas.add_argument("--overwrite", action="store_true", help="replace an existing output")
    meas.set_defaults(func=_cmd_measure)

    cat = sub.add_parser("catalog", help="create, fill and list a reference catalog of segmented cells")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True, metavar="ACTION")
    create = cat_sub.add_parser("create", help="create an empty catalog")
    create.add_argument("catalog", help="catalog folder")
    listing = cat_sub.add_parser("list", help="list the entries")
    listing.add_argument("catalog", help="catalog folder")
    add = cat_sub.add_parser("add", help="add an image and its labels")
    add.add_argument("catalog", help="catalog folder")
    add.add_argument("image", help="image file, or an Amira project / OME-Zarr that holds labels too")
    add.add_argument("labels", nargs="?", help="label file (AmiraMesh .labels, OME-Zarr, ...)")
    add.add_argument("--classes", help="the classes annotated, comma-separated (default: those the labels name)")
    add.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                     help="metadata, e.g. --meta species=yeast --meta condition=control")
    add.add_argument("--voxel-size", type=_voxel_size, default=None, help=vs_help)
    imp = cat_sub.add_parser(
        "import", help="add every segmented Amira project (.hx) under a folder that is not in yet",
        description="Walk FOLDER for Amira projects, map their materials onto sxtlab's classes and add each "
                    "cell with its provenance. Materials that match no class are reported, not guessed; "
                    "materials named like 'ignore' mark unannotated voxels. Re-running adds only new cells.")
    imp.add_argument("catalog", help="catalog folder")
    imp.add_argument("folder", help="folder searched recursively for projects")
    imp.add_argument("--pattern", default="*.hx", help="glob of the project files (default: *.hx)")
    imp.add_argument("--class-map", action="append", default=[], metavar="MATERIAL=CLASS",
                     help="map a material name onto a class (or 'ignore'), e.g. --class-map Inside=cell")
    imp.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                     help="metadata for every imported cell, e.g. --meta species=yeast")
    imp.add_argument("--voxel-size", type=_voxel_size, default=None, help=vs_help)
    cat.set_defaults(func=_cmd_catalog)

    train = sub.add_parser("train", help="train a model for a task",
                           description="Train a cascade for the classes a task needs, from labelled files "
                                       "or from a catalog. One file whose annotation leaves voxels unannotated "
                                       "(e.g. a few planes of an Amira project) is learnt from its annotated "
                                       "voxels alone; segment it afterwards with `sxtlab segment` on the same "
                                       "file.")
    train.add_argument("inputs", nargs="*", help="labelled volumes (.hx projects, OME-Zarr segmentations)")
    train.add_argument("--task", required=True, help="classes, comma-separated, e.g. nucleus,lipid_body")
    train.add_argument("--catalog", help="train from every entry of this catalog that fits the task")
    train.add_argument("-o", "--output", required=True, help="output model folder")
    train.add_argument("--voxel-size", type=_voxel_size, default=None, help=vs_help)
    train.add_argument("--task-voxel-size", type=_voxel_size, default=None,
                       help="resolution (µm) the model works at; catalog entries are resampled to it")
    train.add_argument("--fast", action="store_true", help="a short training run, for trying things out")
    train.add_argument("--iterations", type=int, nargs=2, metavar=("STAGE1", "STAGE2"),
                       help="optimiser steps of each stage (default: the trainer's; one sparsely annotated "
                            "volume: 600 600)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output")
    train.set_defaults(func=_cmd_train)

    study = sub.add_parser(
        "study", help="segment, measure and check many cells on a dask cluster; resumable",
        description="Segment every volume of INPUTS (files or folders: MRC/.rec, AmiraMesh/.hx, TIFF, OME-Zarr) "
                    "as a dask.distributed task, measure it and score how likely it is wrong. STUDY holds one "
                    "OME-Zarr segmentation and tables per cell, the combined tables with the metadata joined, "
                    "cells.csv, review.csv (what to check first), failed.csv and manifest.json. Running the same "
                    "command again does only the cells that are missing or changed. Exit code 2 when some "
                    "inputs failed (they are listed; the others are done).")
    study.add_argument("inputs", nargs="+", help="volume files or folders")
    study.add_argument("-o", "--output", required=True, help="study folder (created, or resumed)")
    study.add_argument("--metadata", help="CSV with a cell_id (file name without extension) or file column, and "
                                          "any others (condition, strain, date ...)")
    study.add_argument("--model", default="default", help="'default' or a model folder (default: %(default)s)")
    where = study.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="worker processes of a cluster on this machine "
                                                   "(default: one per two cores)")
    where.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786")
    study.add_argument("--threads", type=int, help="torch threads per cell (default: the cores over the workers)")
    study.add_argument("--voxel-size", type=_voxel_size, default=None, help=vs_help)
    study.add_argument("--calibration", type=_calibration, default=None, metavar="SCALE[,OFFSET]",
                       help="gray → LAC of images in gray values: LAC = SCALE·gray + OFFSET (µm⁻¹)")
    study.add_argument("--pairs", help="distances measured, e.g. mitochondria:nucleus,lipid_body:cell "
                                       "(default: each organelle to the nucleus and to the cell boundary)")
    study.add_argument("--tta", action="store_true", help="average over mirrored inputs (8× slower)")
    study.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    study.set_defaults(func=_cmd_study)

    comp = sub.add_parser("compare", help="compare a study's cells by a metadata column: tests, figures",
                          description="Per-cell statistics of a study, rank tests with effect sizes and "
                                      "Benjamini-Hochberg correction between the groups of a metadata column, "
                                      "and figures (PNG), written to STUDY/compare-BY/.")
    comp.add_argument("study", help="study folder (sxtlab study)")
    comp.add_argument("--by", default="condition", help="metadata column of the groups (default: %(default)s)")
    comp.add_argument("--exclude-flagged", action="store_true",
                      help="leave out the cells that QC flagged (unlike the training data, or uncertain)")
    comp.add_argument("-o", "--output", help="output folder (default: STUDY/compare-BY)")
    comp.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    comp.set_defaults(func=_cmd_compare)

    info = sub.add_parser("info", help="summarise a volume file (MRC, AmiraMesh, TIFF, OME-Zarr, .hx)")
    info.add_argument("path")
    info.add_argument("--voxel-size", type=_voxel_size, default=None, help=vs_help)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    if args.command in ("segment", "train", "demo"):  # a study sets threads per worker
        use_free_cores()
    with warnings.catch_warnings():
        # Warnings (unknown voxel size, resampling) are messages for the user, not tracebacks.
        warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}", file=sys.stderr)
        try:
            return args.func(args)
        except OutputExistsError as exc:
            print(f"sxtlab: {exc}", file=sys.stderr)
            return 3
        except SxtlabError as exc:
            print(f"sxtlab: {exc.for_command_line()}", file=sys.stderr)
            return 2
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            print(f"sxtlab: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
