"""Damaged and hostile files: each reader gives sxtlab's own error, fast and without large allocations.

One test (or more) per finding of issue 16; the messages are asserted. Files are made
here from small volumes and patched, so no test needs ../shared.
"""

from __future__ import annotations

import gzip
import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import xarray as xr

from sxtlab.errors import FormatError, SxtlabWarning
from sxtlab.io import read_segmentation, read_volume, write_volume
from sxtlab.volume import volume

#: Byte offset of the MRC header word ``nsymbt`` (word 24) and of ``nx`` (word 1).
NSYMBT, NX = 92, 0


def small(dtype=np.float32) -> xr.DataArray:
    data = np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6)
    return volume(data, 0.05)


def patched(path: Path, offset: int, fmt: str, value) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    return path


class Bounded:
    """Asserts that a block runs in under ``seconds`` and allocates under ``mib`` MiB (Python heap)."""

    def __init__(self, seconds: float = 2.0, mib: float = 64) -> None:
        self.seconds, self.mib = seconds, mib

    def __enter__(self):
        tracemalloc.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < self.seconds, f"took {elapsed:.1f} s"
        assert peak < self.mib * 2**20, f"allocated {peak / 2**20:.0f} MiB"
        return False


# --------------------------------------------------------------------------------- MRC
@pytest.mark.parametrize("compress", [False, True])
def test_mrc_huge_nsymbt_is_refused_before_allocating(tmp_path, compress) -> None:
    path = patched(write_volume(small(), tmp_path / "a.mrc"), NSYMBT, "<i", 2**31 - 1)
    if compress:
        gz = tmp_path / "a.mrc.gz"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    with Bounded(), pytest.raises(FormatError, match=r"header 'nsymbt' claims an extended header of "
                                                     r"2,147,483,647 bytes, but only [\d,]+ bytes follow"):
        read_volume(path)


def test_mrc_negative_nsymbt(tmp_path) -> None:
    path = patched(write_volume(small(), tmp_path / "a.mrc"), NSYMBT, "<i", -5)
    with pytest.raises(FormatError, match=r"header 'nsymbt' \(extended header bytes\) = -5: expected 0 or more"):
        read_volume(path)


def test_mrc_huge_dimensions_are_refused_before_allocating(tmp_path) -> None:
    gz = tmp_path / "a.mrc.gz"
    path = patched(write_volume(small(), tmp_path / "a.mrc"), NX, "<i", 2**31 - 1)
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with Bounded(), pytest.raises(FormatError, match=r"the header promises 171,798,691,760 data bytes \(nx, ny, "
                                                     r"nz = 2147483647, 5, 4; mode 2\) after [\d,]+ header bytes, "
                                                     r"but the file holds 480"):
        read_volume(gz)


@pytest.mark.parametrize("field, value, expected", [
    ("origin_um", 7, "three finite numbers"),
    ("voxel_size_um", ["a", 1, 2], "three positive numbers"),
    ("dtype", 5, "a NumPy dtype name"),
    ("name", {"x": 1}, "a string"),
])
def test_mrc_damaged_json_values_warn_and_read(tmp_path, field, value, expected) -> None:
    path = write_volume(small(), tmp_path / "a.mrc")
    raw = path.read_bytes()
    n = struct.unpack_from("<i", raw, NSYMBT)[0]
    doc = json.loads(raw[1024:1024 + n])
    doc["sxtlab"][field] = value
    text = json.dumps(doc).encode()
    text += b" " * (-len(text) % 4)
    out = bytearray(raw[:1024]) + text + raw[1024 + n:]
    struct.pack_into("<i", out, NSYMBT, len(text))
    path.write_bytes(bytes(out))
    with pytest.warns(SxtlabWarning, match=rf"sxtlab metadata field '{field}' is .*, expected {expected}.*; "
                                           r"it is ignored"):
        vol = read_volume(path)
    np.testing.assert_array_equal(vol.values, small().values)


def test_mrc_deeply_nested_json_warns(tmp_path) -> None:
    path = write_volume(small(), tmp_path / "a.mrc")
    raw = path.read_bytes()
    n = struct.unpack_from("<i", raw, NSYMBT)[0]
    text = b"[" * 100_000
    out = bytearray(raw[:1024]) + text + raw[1024 + n:]
    struct.pack_into("<i", out, NSYMBT, len(text))
    path.write_bytes(bytes(out))
    with pytest.warns(SxtlabWarning, match=r"sxtlab metadata is not valid JSON"):
        read_volume(path)


def test_mrc_library_errors_are_chained(tmp_path) -> None:
    # mz = 0 with a volume-stack space group: mrcfile divides by it
    path = write_volume(small(), tmp_path / "a.mrc")
    patched(path, 88, "<i", 401)  # ispg
    patched(path, 36, "<i", 0)    # mz
    with pytest.raises(FormatError, match=r"a\.mrc: not a readable MRC file: cannot read its extended header "
                                          r"\(\d+ bytes\) and data \(ZeroDivisionError") as info:
        read_volume(path)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# --------------------------------------------------------------------------- AmiraMesh
def amira_text(define: str = "define Lattice 2 2 2", extra: str = "") -> bytes:
    return (f"# AmiraMesh BINARY-LITTLE-ENDIAN 2.1\n\n{define}\n\nParameters {{\n{extra}"
            "    BoundingBox 0 1 0 1 0 1,\n    CoordType \"uniform\"\n}\n\n"
            "Lattice { byte Data } @1\n\n# Data section follows\n@1\n").encode("latin-1") + bytes(range(8)) + b"\n"


@pytest.mark.parametrize("blank", ["\x0c", "\x85", "\xa0", "\x1c", "\x0b"])
def test_amira_header_blanks_are_blanks_not_assertions(tmp_path, blank) -> None:
    path = tmp_path / "a.am"
    path.write_bytes(amira_text(extra=f"    Content{blank}\"2x2x2 byte\",\n"))
    with pytest.warns(SxtlabWarning, match="no unit for its BoundingBox"):
        vol = read_volume(path)
    assert vol.shape == (2, 2, 2)


@pytest.mark.parametrize("dims, found", [("-2 2 2", "-2"), ("2 0 2", "0")])
def test_amira_non_positive_dimensions(tmp_path, dims, found) -> None:
    path = tmp_path / "a.am"
    path.write_bytes(amira_text(define=f"define Lattice {dims}"))
    with pytest.raises(FormatError, match=rf"a\.am: header line 3: 'define Lattice' expects positive integer sizes, "
                                          rf"found '{found}'"):
        read_volume(path)


def test_amira_coord_type_block_is_no_type_error(tmp_path) -> None:
    path = tmp_path / "a.am"
    path.write_bytes(amira_text().replace(b'CoordType "uniform"', b"CoordType { a 1 }"))
    with pytest.warns(SxtlabWarning, match=r"its CoordType is None, not a uniform grid"):
        read_volume(path)


def test_amira_rle_lattice_larger_than_its_data_can_hold(tmp_path) -> None:
    path = write_volume(volume(np.zeros((4, 4, 4), np.uint8), 0.05), tmp_path / "a.am", compression="rle")
    raw = path.read_bytes().replace(b"define Lattice 4 4 4", b"define Lattice 100000 100000 100000")
    path.write_bytes(raw)
    with Bounded(), pytest.raises(FormatError, match=r"the lattice 100000 x 100000 x 100000 of byte claims "
                                                     r"1,000,000,000,000,000 bytes, but the file holds \d+ compressed "
                                                     r"bytes \(at most [\d,]+ decoded\)"):
        read_volume(path)


def test_amira_hxzip_bomb_is_decompressed_only_as_far_as_the_lattice(tmp_path) -> None:
    path = write_volume(volume(np.zeros((4, 4, 4), np.uint8), 0.05), tmp_path / "a.am", compression="zip")
    raw = path.read_bytes()
    bomb = zlib.compress(bytes(64 * 2**20))  # 64 MiB of zeros in 64 kB
    head, _, _ = raw.partition(b"\n@1\n")
    head = head.replace(f"@1(HxZip,{len(raw) - len(head) - 5})".encode(), f"@1(HxZip,{len(bomb)})".encode())
    path.write_bytes(head + b"\n@1\n" + bomb + b"\n")
    with Bounded(mib=8), pytest.raises(FormatError, match=r"HxZip data decompress to more than 64 bytes, "
                                                          r"the lattice needs 64"):
        read_volume(path)


# -------------------------------------------------------------------------------- TIFF
def test_tiff_huge_image_length_is_refused_before_allocating(tmp_path) -> None:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offsets = [p.tags["ImageLength"].valueoffset for p in tif.pages]
    raw = bytearray(path.read_bytes())
    for off in offsets:
        struct.pack_into("<I", raw, off, 2**31)
    path.write_bytes(bytes(raw))
    assert len(raw) < 2000
    with Bounded(), pytest.raises(FormatError, match=r"a\.tif: the image series \(axes \w+, shape \(3, "
                                                     r"2147483648, 5\) of uint8; ImageLength 2147483648, ImageWidth 5"
                                                     r"\) claims 32,212,254,720 bytes, but the file holds \d+ bytes"):
        read_volume(path)


def test_tiff_codec_errors_are_chained(tmp_path) -> None:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((3, 16, 16), np.float32), compression="zlib",
                     imagej=True, metadata={"axes": "ZYX", "spacing": 0.05, "unit": "um"}, resolution=(20, 20))
    with tifffile.TiffFile(path) as tif:
        start = tif.pages.first.dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[start:start + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match=r"a\.tif: not a readable TIFF stack: cannot read its pixel data") as info:
        read_volume(path)
    assert info.value.__cause__ is not None


def test_tiff_broken_ome_xml(tmp_path) -> None:
    path = tmp_path / "a.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 5), np.uint8), ome=True, metadata={"axes": "ZYX"})
    raw = path.read_bytes()
    start = raw.index(b"<OME")
    path.write_bytes(raw[:start + 10] + b"<" + raw[start + 11:])
    try:
        read_volume(path)
    except FormatError as err:
        assert "a.ome.tif: not a readable TIFF stack" in str(err)


# ---------------------------------------------------------------------------- OME-Zarr
def test_zarr_damaged_chunk_raises_when_computed(tmp_path) -> None:
    path = write_volume(small(), tmp_path / "a.ome.zarr")
    chunk = next(p for p in (path / "0").rglob("*")
                 if p.is_file() and not p.name.startswith(".") and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:20])
    vol = read_volume(path)
    with pytest.raises(FormatError, match=r"a\.ome\.zarr: not a readable OME-Zarr image: cannot read its chunk "
                                          r"data of array '0'"):
        vol.values


@pytest.mark.parametrize("version, meta_file", [("0.4", ".zarray"), ("0.5", "zarr.json")])
def test_zarr_claimed_shape_is_bounded(tmp_path, version, meta_file) -> None:
    path = write_volume(small(), tmp_path / "a.ome.zarr", ngff_version=version)
    meta = json.loads((path / "0" / meta_file).read_text())
    meta["shape"] = [4, 5, 2**40]
    (path / "0" / meta_file).write_text(json.dumps(meta))
    with Bounded(), pytest.raises(FormatError, match=r"array '0' \('shape' in \.zarray or zarr\.json\) is "
                                                     r"\(4, 5, 1099511627776\): "
                                                     r"expected at most 1,048,576 voxels along each axis"):
        read_volume(path)


@pytest.mark.parametrize("version, meta_file", [("0.4", ".zattrs"), ("0.5", "zarr.json")])
def test_zarr_metadata_not_json(tmp_path, version, meta_file) -> None:
    path = write_volume(small(), tmp_path / "a.ome.zarr", ngff_version=version)
    (path / meta_file).write_bytes(b"{\xff")
    with pytest.raises(FormatError, match=r"a\.ome\.zarr: not a readable OME-Zarr image: cannot read its group "
                                          r"metadata") as info:
        read_segmentation(path)
    assert info.value.__cause__ is not None


def test_tiff_strip_byte_count_beyond_the_file_is_refused_before_reading(tmp_path) -> None:
    # tifffile reads a strip with one allocation of its StripByteCounts (found by the long fuzz run)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 5), np.uint8), compression="zlib", imagej=True,
                     metadata={"axes": "ZYX"})
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags["StripByteCounts"]
        offset, width = tag.valueoffset, tag.dtype
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I" if width == 4 else "<H", raw, offset, 3_000_000_000 if width == 4 else 65535)
    path.write_bytes(bytes(raw))
    with Bounded(), pytest.raises(FormatError, match=r"a\.tif: page 0: a strip or tile at byte [\d,]+ of [\d,]+ "
                                                     r"bytes \(StripOffsets/StripByteCounts or TileOffsets/"
                                                     r"TileByteCounts\) ends beyond the file's [\d,]+ bytes"):
        read_volume(path)
