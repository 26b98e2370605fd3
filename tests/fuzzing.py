"""Seeded mutations of real files for fuzzing the readers and :meth:`CascadeModel.load` (issue 16).

Used by ``tests/test_fuzz_readers.py`` (a few hundred inputs per format, in process)
and ``benchmarks/fuzz_readers.py`` (thousands, each in a worker process under time
and memory limits). Input ``i`` of a format is a pure function of ``(format, seed, i)``,
so any failure is reproduced with :func:`make_input`.

Seeds are real files from ``../shared/data`` (MRC from IMOD, EMDB, sfftk and TARDIS;
AmiraMesh from Amira, ahds and TARDIS; an Amira-written LZW TIFF), the files sxtlab
writes from them (MRC with its JSON extended header, ImageJ TIFF with its Info JSON,
OME-TIFF, deflate TIFF, AmiraMesh with RLE and HxZip data, OME-Zarr with labels) and
the shipped default model folder.

Mutations: bit flips (anywhere, or in the header), truncation, extreme integers
written over header fields (1, 2, 4 or 8 bytes, either byte order), extreme numbers
and stray bytes in text headers (AmiraMesh, JSON), values of JSON documents replaced
by extreme ones (Zarr metadata, model.json), spliced byte ranges; model weights may
get a matching checksum so that the checks behind it are reached.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("mrc", "amira", "tiff", "omezarr", "model")

_EXTREME_INTS = (0, 1, -1, 2, 255, 256, 65535, 2**15 - 1, -(2**15), 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1,
                 -(2**63))
_EXTREME_TEXT = ("0", "-1", "-2147483648", "2147483647", "4294967296", "99999999999999999999", "1e308", "-1e308",
                 "nan", "inf", "1e-320", "3.5", "@1", "{", "}", '"', "\\", "\x0c", "\x85", "\xa0", "\x00", "\x1c",
                 "\n", "\r\n", "\t")
_EXTREME_JSON: tuple[Any, ...] = (0, -1, 1, 2**31 - 1, 2**63, -(2**63), 10**30, 1e308, -1e308, 0.5, "", "x" * 300,
                                  None, True, False, [], {}, [0, 0, 0], [-1, -1, -1], [2**40] * 3, ["a"],
                                  {"a": 1}, "../../etc/passwd", "/abs", [[[[[[[[[[[[]]]]]]]]]]]])
_NUMBER = re.compile(rb"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


# ---------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------
def seeds(shared_data: Path, work: Path) -> dict[str, list[Path]]:
    """Seed inputs per format: real files, and files sxtlab writes from them (into ``work``)."""
    import sxtlab
    from sxtlab.io import read_volume, write_volume

    d = shared_data
    out: dict[str, list[Path]] = {f: [] for f in FORMATS}
    out["mrc"] = [d / "ncxt/blob.mrc", d / "ncxt/blob.labels.mrc", *sorted((d / "readers/mrc").glob("*.map*")),
                  d / "readers/mrc/tardis_mrc3D.mrc"]
    out["amira"] = [d / "ncxt/sample_12-files/sample_12.labels", d / "ncxt/template-ver63/template-files/blob.labels",
                    d / "ncxt/template-ver2019/template-files/blob.labels",
                    d / "ncxt/template-ver63/template-files/blob.tiff",
                    *sorted(p for p in (d / "readers/amiramesh").glob("*.am") if p.stat().st_size < 400_000)]
    out["tiff"] = [d / "readers/tiff/tardis_tif3D.tif"]
    work.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = read_volume(d / "ncxt/blob.mrc", voxel_size=0.05)
        labels = read_volume(d / "ncxt/blob.labels.mrc", voxel_size=0.05, classes={1: "cell"})
        image = image.sxt.with_calibration(sxtlab.Calibration(0.001, 0.1))
        out["mrc"].append(_fresh(work / "sxtlab.mrc", lambda p: write_volume(image, p)))
        out["mrc"].append(_fresh(work / "sxtlab_labels.mrc", lambda p: write_volume(labels, p)))
        out["tiff"].append(_fresh(work / "sxtlab.tif", lambda p: write_volume(image, p)))
        out["tiff"].append(_fresh(work / "sxtlab_labels.tif", lambda p: write_volume(labels, p)))
        out["tiff"].append(_fresh(work / "ome.ome.tif", lambda p: _ome_tiff(image, p)))
        out["tiff"].append(_fresh(work / "deflate.tif", lambda p: _deflate_tiff(image, p)))
        out["amira"].append(_fresh(work / "sxtlab.am", lambda p: write_volume(image, p)))
        out["amira"].append(_fresh(work / "sxtlab_rle.labels", lambda p: write_volume(labels, p, compression="rle")))
        out["amira"].append(_fresh(work / "sxtlab_zip.am", lambda p: write_volume(image, p, compression="zip")))
        seg = sxtlab.segmentation(image, labels)
        out["omezarr"].append(_fresh(work / "seg.ome.zarr", lambda p: write_volume(seg, p)))
        out["omezarr"].append(_fresh(work / "image.ome.zarr", lambda p: write_volume(image, p)))
    out["model"] = [Path(sxtlab.__file__).parent / "models" / "default"]
    return {f: [p for p in paths if p.exists()] for f, paths in out.items()}


def _fresh(path: Path, write: Callable[[Path], Any]) -> Path:
    if not path.exists():
        write(path)
    return path


def _ome_tiff(image, path: Path) -> None:
    import tifffile

    tifffile.imwrite(path, np.asarray(image.values), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.05, "PhysicalSizeY": 0.05, "PhysicalSizeZ": 0.05})


def _deflate_tiff(image, path: Path) -> None:
    import tifffile

    tifffile.imwrite(path, np.asarray(image.values), compression="zlib", imagej=True,
                     metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um"})


# ---------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------
def _header_size(fmt: str, data: bytes) -> int:
    """Bytes at the start of a file that hold its header (where mutations matter most)."""
    if fmt == "mrc":
        return min(len(data), 1024 + 2048)
    if fmt == "amira":
        m = re.search(rb"\n@1\s*\n", data)
        return m.end() if m else min(len(data), 4096)
    if fmt == "tiff":
        return min(len(data), 2048)
    return len(data)


def mutate_bytes(data: bytes, fmt: str, rng: random.Random) -> tuple[bytes, str]:
    """One seeded mutation of a file's bytes; returns the new bytes and what was done."""
    buf = bytearray(data)
    head = max(1, _header_size(fmt, data))
    n = max(1, len(buf))
    op = rng.choice(("flip", "flip_head", "truncate", "int_head", "int_head", "splice", "text")
                    if fmt == "amira" else ("flip", "flip_head", "truncate", "int_head", "int_head", "splice"))
    if not buf:
        return bytes(rng.randbytes(rng.randint(1, 64))), "random bytes"
    if op in ("flip", "flip_head"):
        span = head if op == "flip_head" else n
        k = rng.choice((1, 1, 2, 4, 8, 32))
        where = [rng.randrange(min(span, n)) for _ in range(k)]
        for w in where:
            buf[w] ^= 1 << rng.randrange(8)
        return bytes(buf), f"{op} {k} bits at {where[:4]}"
    if op == "truncate":
        cut = rng.choice((rng.randrange(n), rng.randrange(min(head, n)), n - rng.randint(1, min(n, 16))))
        return bytes(buf[:cut]), f"truncate at {cut}"
    if op == "int_head":
        size = rng.choice((1, 2, 4, 4, 8))
        value = rng.choice(_EXTREME_INTS)
        order = rng.choice(("little", "big"))
        pos = rng.randrange(0, max(1, min(head, n) - size + 1))
        if fmt == "mrc" and rng.random() < 0.7:
            pos = 4 * rng.randrange(0, 56)  # MRC header words: nx..nsymbt, mode, cella, mapc, ...
        raw = (value % 2 ** (8 * size)).to_bytes(size, order)
        buf[pos:pos + size] = raw
        return bytes(buf), f"int {value} as {size} bytes {order}-endian at {pos}"
    if op == "splice":
        a, b = sorted(rng.randrange(n) for _ in range(2))
        at = rng.randrange(n)
        buf[at:at] = buf[a:b][:4096]
        return bytes(buf), f"splice [{a}:{min(b, a + 4096)}] at {at}"
    return mutate_text(bytes(buf), head, rng)


def mutate_text(data: bytes, head: int, rng: random.Random) -> tuple[bytes, str]:
    """Replace a number of a text header with an extreme value, or insert a stray token."""
    numbers = [m for m in _NUMBER.finditer(data, 0, head)]
    token = rng.choice(_EXTREME_TEXT).encode("latin-1")
    if numbers and rng.random() < 0.7:
        m = rng.choice(numbers)
        return data[:m.start()] + token + data[m.end():], f"number {m.group()!r} at {m.start()} -> {token!r}"
    at = rng.randrange(max(1, head))
    return data[:at] + token + data[at:], f"insert {token!r} at {at}"


def mutate_json(text: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Replace, delete or retype one value of a JSON document (bytes mutations if it is not JSON)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return mutate_bytes(text, "json", rng)
    paths: list[tuple] = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node[:8]):
                walk(v, path + (i,))

    walk(doc, ())
    path = rng.choice(paths[1:] or paths)
    if not path:
        return json.dumps(rng.choice(_EXTREME_JSON)).encode(), "document replaced"
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
        what = "deleted"
    else:
        value = rng.choice(_EXTREME_JSON)
        parent[path[-1]] = value
        what = f"= {json.dumps(value)[:40]}"
    return json.dumps(doc).encode(), f"{'.'.join(map(str, path))} {what}"


def make_input(fmt: str, seed_paths: list[Path], index: int, out: Path, *, seed: int = 0) -> tuple[Path, str]:
    """Write mutated input ``index`` of ``fmt`` under ``out``; returns its path and a description."""
    rng = random.Random(f"{fmt}:{seed}:{index}")
    source = seed_paths[rng.randrange(len(seed_paths))]
    out.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        target = out / f"{index}-{source.name}"
        shutil.copytree(source, target)
        files = sorted(p for p in target.rglob("*") if p.is_file())
        meta = [p for p in files if p.name in (".zattrs", ".zarray", ".zgroup", "zarr.json", "model.json")]
        victim = rng.choice(meta) if meta and rng.random() < 0.7 else rng.choice(files)
        data = victim.read_bytes()
        if victim.suffix == ".json" or victim.name.startswith(".z"):
            new, what = mutate_json(data, rng) if rng.random() < 0.7 else mutate_bytes(data, "json", rng)
        else:
            new, what = mutate_bytes(data, "chunk", rng)
        victim.write_bytes(new)
        if fmt == "model" and victim.suffix == ".safetensors" and rng.random() < 0.6:
            _fix_checksum(target / "model.json", new)
            what += ", checksum updated"
        return target, f"{source.name}/{victim.relative_to(target)}: {what}"
    data = source.read_bytes()
    if source.suffix == ".gz" and rng.random() < 0.5:
        import gzip

        inner, what = mutate_bytes(gzip.decompress(data), fmt, rng)
        new, what = gzip.compress(inner, mtime=0), f"inside gzip: {what}"
    else:
        new, what = mutate_bytes(data, fmt, rng)
    target = out / f"{index}-{source.name}"
    target.write_bytes(new)
    return target, f"{source.name}: {what}"


def _fix_checksum(meta_path: Path, weights: bytes) -> None:
    try:
        meta = json.loads(meta_path.read_text())
        meta["weights"]["sha256"] = hashlib.sha256(weights).hexdigest()
        meta_path.write_text(json.dumps(meta))
    except (ValueError, KeyError, TypeError):
        pass  # model.json itself is not the target here


# ---------------------------------------------------------------------------------------
# running one input
# ---------------------------------------------------------------------------------------
def read_input(fmt: str, path: Path) -> None:
    """Read ``path`` as sxtlab would, and compute any lazy data (so that decoding runs too)."""
    import xarray as xr

    from sxtlab.cascade import CascadeModel
    from sxtlab.io import read_segmentation, read_volume

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "model":
            CascadeModel.load(path)
            return
        out = read_segmentation(path) if fmt == "omezarr" and "seg" in path.name else read_volume(path)
        arrays = out.data_vars.values() if isinstance(out, xr.Dataset) else [out]
        for a in arrays:
            if a.nbytes <= 256 * 2**20:
                np.asarray(a.values)


def classify(fmt: str, path: Path) -> tuple[str, str]:
    """``("read", "")``, ``("sxtlab", message)`` or ``("other", "Type: message")`` for one input."""
    from sxtlab.errors import SxtlabError

    try:
        read_input(fmt, path)
    except SxtlabError as err:
        return "sxtlab", str(err)[:300]
    except Exception as err:  # noqa: BLE001  (what the fuzzer looks for)
        return "other", f"{type(err).__name__}: {str(err)[:300]}"
    return "read", ""
