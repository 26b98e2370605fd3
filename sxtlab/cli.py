"""The ``sxtlab`` command line.

Exit codes: 0 success; 1 an unexpected failure (a bug: the traceback is shown);
2 bad input or usage (a one-line reason, no traceback); 3 an output exists and
``--overwrite`` was not given.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .calibration import LAC_ICE_PER_UM, LAC_WATER_PER_UM
from .errors import OutputExistsError, SxtlabError
from .threads import use_free_cores

__all__ = ["main", "describe", "add_image_options", "read_image", "calibrate", "build_parser"]

log = logging.getLogger("sxtlab")


#: measured in benchmarks/results/generalisation.md, 2026-12-05 22:58 (128³ fields, 2 cores)
_TTA_HELP = ("average over the 8 axis mirrorings of the input: 8 network passes per stage-2 "
             "window (a 128³ field took 2.3× as long)")


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
    cal = image.sxt.calibration
    if units == "gray" and cal is not None:
        lines.append(f"  calibration: LAC = {cal.scale:.6g}·gray + {cal.offset:.6g} µm⁻¹, so LAC "
                     f"{cal.apply(lo):.4g} … {cal.apply(hi):.4g}, mean {cal.apply(mean):.4g} µm⁻¹")
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


def _read_input(path: str, voxel_size) -> xr.Dataset:
    """An input file as a Dataset: ``lac`` and, where the file has them, ``labels``
    (units as read; :func:`read_image` completes them from the options)."""
    from .io import detect_format, read_segmentation, read_volume

    p = Path(path)
    if p.suffix.lower() == ".hx" or (detect_format(p) == "omezarr" and (p / "labels").is_dir()):
        return read_segmentation(p, voxel_size=voxel_size)
    return read_volume(p, voxel_size=voxel_size).to_dataset(name="lac")


# -- the options of every command that reads an image ------------------------------------

def add_image_options(parser: argparse.ArgumentParser, *, calibration: bool = True) -> None:
    """Add the options that complete what an image file lacks: voxel size and units.

    ``--voxel-size`` and, with ``calibration``, ``--lac``, ``--calibration
    SCALE[,OFFSET]`` and ``--calibrate-from-medium [LAC]``, in one group. Every
    command that reads an image uses this, and :func:`read_image` reads with them,
    so the options mean the same everywhere (a new command adds both).
    """
    group = parser.add_argument_group(
        "image units", "complete what the file does not record (MRC, TIFF and Amira files record no LAC units)")
    group.add_argument("--voxel-size", type=_voxel_size, default=None,
                       help="voxel size in µm ('D' or 'DZ,DY,DX') where the file records none, or to replace it")
    if not calibration:
        return
    group.add_argument("--lac", action="store_true",
                       help="the file's values are LAC in µm⁻¹ already (as most SXT reconstructions are)")
    group.add_argument("--calibration", type=_calibration, default=None, metavar="SCALE[,OFFSET]",
                       help="gray → LAC of an image in gray values: LAC = SCALE·gray + OFFSET (µm⁻¹); with "
                            "--calibrate-from-medium, SCALE alone and the medium fixes OFFSET")
    group.add_argument("--calibrate-from-medium", type=_positive_lac, nargs="?", const=LAC_WATER_PER_UM,
                       default=None, metavar="LAC",
                       help="estimate the calibration from the medium around the cells, whose LAC (µm⁻¹) is "
                            f"LAC (default {LAC_WATER_PER_UM}, water at 517 eV; vitreous ice {LAC_ICE_PER_UM}): "
                            "LAC = SCALE·gray with the scale fitted, or the offset fitted with --calibration "
                            "SCALE; the fit is reported")


def _positive_lac(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10:
        raise argparse.ArgumentTypeError(f"expected the medium's LAC in µm⁻¹ (e.g. {LAC_WATER_PER_UM}), got {text!r}")
    return value


def _calibration_options(args: argparse.Namespace) -> tuple[bool, Any, float | None]:
    """(--lac, --calibration, --calibrate-from-medium) of a command, checked together."""
    lac = getattr(args, "lac", False)
    given = getattr(args, "calibration", None)
    medium = getattr(args, "calibrate_from_medium", None)
    if lac and (given is not None or medium is not None):
        raise SxtlabError("--lac says the values are LAC already; it takes no --calibration or "
                          "--calibrate-from-medium")
    if given is not None and medium is not None and given.offset != 0.0:
        raise SxtlabError(f"--calibrate-from-medium fits the offset when --calibration gives the scale alone; "
                          f"got --calibration {given.scale:g},{given.offset:g}")
    return lac, given, medium


def has_calibration_options(args: argparse.Namespace) -> bool:
    """Whether any of --lac, --calibration, --calibrate-from-medium was given."""
    lac, given, medium = _calibration_options(args)
    return bool(lac or given is not None or medium is not None)


def calibrate(image: xr.DataArray, args: argparse.Namespace, where: str) -> xr.DataArray:
    """``image`` with the calibration the image options give (unchanged without one).

    The fit of ``--calibrate-from-medium`` is printed, for the user to judge.
    """
    from .calibration import Calibration

    lac, given, medium = _calibration_options(args)
    if not (lac or given is not None or medium is not None):
        return image
    units = image.attrs.get("units")
    if units == "1/um":
        if lac:
            return image  # says what the file says already
        raise SxtlabError(f"{where}: holds LAC in µm⁻¹ already (units '1/um'); it takes no --calibration or "
                          "--calibrate-from-medium")
    if lac:
        cal = Calibration(1.0, 0.0, {"method": "values are LAC in µm⁻¹ (--lac)"})
    elif medium is not None:
        from .cells import calibrate_from_medium, describe_fit

        # Not loaded: a large (lazy) image is calibrated on a block-mean copy.
        cal = calibrate_from_medium(image, medium, scale=None if given is None else given.scale)
        print(f"{where}: calibrated from the medium: {describe_fit(cal)}")
    else:
        cal = given
    return image.sxt.with_calibration(cal)


def read_image(path: str, args: argparse.Namespace) -> xr.Dataset:
    """An input file as a Dataset (``lac`` and, where the file has them, ``labels``),
    completed by the image options of :func:`add_image_options`."""
    ds = _read_input(path, getattr(args, "voxel_size", None))
    ds["lac"] = calibrate(ds["lac"], args, path)
    return ds


def _refuse_existing(path: Path, overwrite: bool) -> None:
    # Checked before the work starts, so a long run never ends in a refusal.
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def _write_table(table, path: Path, overwrite: bool) -> Path:
    from .measure import write_table

    return write_table(table, path, overwrite=overwrite)


def _segment(image: xr.DataArray, model, out: Path | None, overwrite: bool, ngff_version: str | None = None,
             **predict: Any) -> xr.Dataset:
    """Predict (``predict``: options of ``CascadeModel.predict``), writing to ``out``
    block by block where no resampling is needed."""
    from .io import write_volume

    same_grid = (model.voxel_size is None or not image.sxt.has_voxel_size
                 or np.allclose(image.sxt.voxel_size, model.voxel_size, rtol=0.02))
    if out is not None and same_grid:
        return model.predict(image, out=out, overwrite=overwrite, ngff_version=ngff_version, **predict)
    seg = model.predict(image.load(), **predict)
    if out is not None:
        write_volume(seg, out, overwrite=overwrite, **_ngff(ngff_version))
    return seg


def _ngff(version: str | None) -> dict[str, str]:
    """``write_volume`` keywords of an OME-Zarr version (none: the writer's default)."""
    return {} if version is None else {"ngff_version": version}


def _cmd_segment(args: argparse.Namespace) -> int:
    from .models import load_model

    out = Path(args.output)
    _refuse_existing(out, args.overwrite)
    ds = read_image(args.input, args)
    model = load_model(args.model)
    log.info("model %s: classes %s", args.model, ", ".join(model.classes))
    if "sparse" in model.info and "labels" in ds and not args.ignore_annotation:
        # A model made from this kind of sparse annotation: complete the annotation
        # and keep the instances it marks (sxtlab.sparse.segment_sparse).
        from .io import write_volume
        from .sparse import segment_sparse

        seg = segment_sparse(ds, model, beta=args.beta, progress=True)
        write_volume(seg, out, overwrite=args.overwrite, **_ngff(args.ngff_version))
        print(f"used the annotation of {args.input}: probabilities of the model and of the annotation's "
              "interpolation averaged, only the instances the annotation marks kept")
    else:
        gates = {k: getattr(args, k) for k in ("skip_background", "trust_background") if hasattr(args, k)}
        seg = _segment(ds["lac"], model, out, args.overwrite, args.ngff_version, tta=args.tta, **gates)
    print(describe(seg))
    print(f"wrote {out}")
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from . import measure
    from .io import read_segmentation

    out = Path(args.output)
    _refuse_existing(out, args.overwrite)
    seg = read_segmentation(args.segmentation, voxel_size=args.voxel_size)
    seg["lac"] = calibrate(seg["lac"], args, args.segmentation)
    kwargs = {"allow_voxel_units": args.allow_voxel_units}
    if args.table == "distances":
        pairs = [tuple(p.split(":")) for p in args.pairs.split(",")] if args.pairs else None
        if not pairs:
            raise SxtlabError("--table distances needs --pairs, e.g. --pairs mitochondria:nucleus,lipid_body:cell")
        table = measure.distances(seg, pairs, **kwargs)
    else:
        table = getattr(measure, args.table)(seg, **kwargs)
    table.attrs["source"] = str(args.segmentation)
    _write_table(table, out, args.overwrite)
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
    ds = read_image(args.image, args)
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
                             voxel_size=args.voxel_size, calibration=_per_project(args), **metadata)
    for row in report.itertuples():
        detail = f" {row.entry} ({', '.join(row.classes)})" if row.status in ("added", "present") else ""
        print(f"{row.status:>9}  {row.project}{detail}")
        if row.status in ("unmapped", "failed", "no labels") and row.message:
            print(f"           {row.message}")
    counts = report["status"].value_counts()
    print(f"{len(report)} projects: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {len(cat)} entries")
    # Projects left out are a reason to look, and scripts should see it.
    return 2 if counts.get("unmapped", 0) or counts.get("failed", 0) else 0


def _per_project(args: argparse.Namespace):
    """The calibration of each imported project, from the image options (None: as read)."""
    if not has_calibration_options(args):
        return None
    return lambda image, where: calibrate(image, args, where).sxt.calibration


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

        if has_calibration_options(args) or args.voxel_size is not None:
            raise SxtlabError("--voxel-size, --lac, --calibration and --calibrate-from-medium apply to input "
                              "files; catalog entries carry their own")
        model, history = task.train(Catalog.open(args.catalog), _cascade_config(args))
    elif args.inputs:
        cells = []
        for path in args.inputs:
            ds = read_image(path, args)
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


def _cmd_model(args: argparse.Namespace) -> int:
    from .export import describe_model, export_bioimageio
    from .models import load_model

    model = load_model(args.model)
    if args.model_command == "info":
        print(describe_model(model, args.model))
        return 0
    out = Path(args.output)
    _refuse_existing(out, args.overwrite)
    export_bioimageio(model, out, overwrite=args.overwrite)
    print(f"BioImage.IO packages of {args.model}: {out / 'stage1'} and {out / 'stage2'} (how they chain: "
          f"{out / 'README.md'})")
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
    lac, given, medium = _calibration_options(args)
    settings = StudySettings(voxel_size=args.voxel_size, tta=args.tta, medium_lac=medium)
    if lac:
        settings = replace(settings, calibration=(1.0, 0.0))
    elif given is not None:
        settings = replace(settings, calibration=(given.scale, given.offset))
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
    ds = read_image(args.path, args)
    print(describe(ds))
    for line in missing(ds["lac"]):
        print(line)
    return 0


def missing(image: xr.DataArray) -> list[str]:
    """What an image lacks for sxtlab's physical results, each with the option that completes it.

    Examples
    --------
    >>> import numpy as np, sxtlab
    >>> print("\\n".join(missing(sxtlab.volume(np.full((2, 2, 2), 0.2, np.float32), None, units="gray"))))
    ... # doctest: +NORMALIZE_WHITESPACE
    voxel size: unknown (the file records none); give it with --voxel-size DZ,DY,DX (or one value) in µm
    units: gray values without a calibration; give --lac if they are LAC in µm⁻¹ already (their range, 0.2 … 0.2, is LAC's), --calibration SCALE[,OFFSET], or --calibrate-from-medium [LAC]
    """
    from .errors import GIVE_VOXEL_SIZE

    lines = []
    if image.attrs.get("voxel_size_um") is None:
        lines.append(f"voxel size: unknown (the file records none); give it with {GIVE_VOXEL_SIZE[1]}")
    if image.attrs.get("units") != "1/um" and image.sxt.calibration is None and not image.sxt.is_labels:
        lo, hi = float(image.min()), float(image.max())
        # Only a hint: cells absorb more than water (0.111 µm⁻¹), lipid at most about
        # 1 µm⁻¹ (DESIGN notes); noise reaches a little below 0.
        looks = f" (their range, {lo:.3g} … {hi:.3g}, is LAC's)" if -0.2 <= lo and 0.1 <= hi <= 2.0 else ""
        lines.append(f"units: gray values without a calibration; give --lac if they are LAC in µm⁻¹ "
                     f"already{looks}, --calibration SCALE[,OFFSET], or --calibrate-from-medium [LAC]")
    if not lines:
        lines.append("complete: voxel size and LAC units known")
    return lines


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
    add_image_options(seg)
    seg.add_argument("--ngff-version", choices=("0.5", "0.4"), default=None,
                     help="OME-Zarr version written: 0.5 (Zarr v3, the default) or 0.4 (Zarr v2) for viewers "
                          "that read no Zarr v3")
    seg.add_argument("--tta", action="store_true", help=_TTA_HELP)
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

    meas = sub.add_parser("measure", help="measure a segmentation into a CSV or Parquet table",
                          description="Measure organelles of a segmentation (OME-Zarr or .hx) into a table "
                                      "with units in the column names: CSV, or Parquet (.parquet) with the "
                                      "units and voxel size in its metadata too.")
    meas.add_argument("segmentation", help="OME-Zarr segmentation or Amira project")
    meas.add_argument("-o", "--output", required=True,
                      help="output table: .csv, or .parquet (needs pyarrow: pip install \"sxtlab[parquet]\")")
    meas.add_argument("--table", choices=("instances", "classes", "distances"), default="instances",
                      help="one row per organelle, per class, or per distance (default: %(default)s)")
    meas.add_argument("--pairs", help="class pairs for --table distances, e.g. mitochondria:nucleus,lipid_body:cell")
    add_image_options(meas)
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
    add_image_options(add)
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
    add_image_options(imp)
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
    add_image_options(train)
    train.add_argument("--task-voxel-size", type=_voxel_size, default=None,
                       help="resolution (µm) the model works at; catalog entries are resampled to it")
    train.add_argument("--fast", action="store_true", help="a short training run, for trying things out")
    train.add_argument("--iterations", type=int, nargs=2, metavar=("STAGE1", "STAGE2"),
                       help="optimiser steps of each stage (default: the trainer's; one sparsely annotated "
                            "volume: 600 600)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output")
    train.set_defaults(func=_cmd_train)

    mod = sub.add_parser("model", help="what a model holds; export it for BioImage.IO")
    mod_sub = mod.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    minfo = mod_sub.add_parser("info", help="classes, voxel size, training data, validation Dice, checksum")
    minfo.add_argument("model", help="'default' or a model folder")
    export = mod_sub.add_parser(
        "export", help="write the model as BioImage.IO 0.5 packages (one per stage, TorchScript)",
        description="Write each stage of the cascade as a BioImage.IO 0.5 model package (TorchScript weights, "
                    "preprocessing, test tensors of sxtlab's own prediction) and a README on how they chain.")
    export.add_argument("model", help="'default' or a model folder")
    export.add_argument("-o", "--output", required=True, help="output folder")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output")
    mod.set_defaults(func=_cmd_model)

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
                                                   "(default: one per core while memory allows)")
    where.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786")
    study.add_argument("--threads", type=int, help="torch threads per cell (default: the cores over the workers)")
    add_image_options(study)
    study.add_argument("--pairs", help="distances measured, e.g. mitochondria:nucleus,lipid_body:cell "
                                       "(default: each organelle to the nucleus and to the cell boundary)")
    study.add_argument("--tta", action="store_true", help=_TTA_HELP)
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
    add_image_options(info)
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
