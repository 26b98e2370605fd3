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

import numpy as np
import xarray as xr

from .errors import OutputExistsError, SxtlabError

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


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import phantom
    from .io import read_segmentation, write_volume

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    size = args.size
    cell = phantom.cell(seed=args.seed, shape=(size, size, size), voxel_size=args.voxel_size,
                        acquisition=phantom.Acquisition())
    path = write_volume(cell, out / "phantom_cell.ome.zarr", overwrite=args.overwrite)
    back = read_segmentation(path)
    xr.testing.assert_identical(back.compute(), cell)
    print(describe(back))
    print(f"wrote {path} (OME-Zarr with an NGFF labels group; read back identical)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .io import read_segmentation, read_volume

    try:
        obj: xr.DataArray | xr.Dataset = read_segmentation(args.path, voxel_size=args.voxel_size)
    except SxtlabError:
        obj = read_volume(args.path, voxel_size=args.voxel_size)
    print(describe(obj))
    return 0


def _voxel_size(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"voxel size must be 'D' or 'DZ,DY,DX' in µm, got {text!r}") from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"voxel size needs 1 or 3 values (µm), got {len(values)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sxtlab`` command."""
    parser = argparse.ArgumentParser(
        prog="sxtlab",
        description="Segment and measure organelles in soft X-ray tomography (SXT) reconstructions.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done, step by step")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="make a phantom cell, write it to OME-Zarr and summarise it",
                          description="Make a synthetic SXT cell with known truth (simulated acquisition), "
                                      "write it with its labels to OME-Zarr and print a summary.")
    demo.add_argument("-o", "--output", default="sxtlab-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    demo.add_argument("--size", type=int, default=96, help="voxels per side (default: %(default)s)")
    demo.add_argument("--voxel-size", type=float, default=0.06, help="µm (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser("info", help="summarise a volume file (MRC, AmiraMesh, TIFF, OME-Zarr, .hx)")
    info.add_argument("path")
    info.add_argument("--voxel-size", type=_voxel_size, default=None,
                      help="voxel size in µm ('D' or 'DZ,DY,DX') where the file has none")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    with warnings.catch_warnings():
        # Warnings (unknown voxel size, resampling) are messages for the user, not tracebacks.
        warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}", file=sys.stderr)
        try:
            return args.func(args)
        except OutputExistsError as exc:
            print(f"sxtlab: {exc}", file=sys.stderr)
            return 3
        except (SxtlabError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            print(f"sxtlab: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
