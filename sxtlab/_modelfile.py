"""Validation of a saved :class:`~sxtlab.cascade.CascadeModel` before anything is built from it.

A model folder may come from anywhere (a colleague, a download), so ``model.json``
and ``weights.safetensors`` are checked in this order, each step bounding the cost
of the next:

1. ``model.json``: at most :data:`MAX_META_BYTES`, JSON nested at most
   :data:`MAX_NESTING` deep (checked on the text, before parsing, so that no
   input reaches Python's recursion limit);
2. the schema: types and ranges of every field (:data:`UNET_RANGES` for the
   U-Net settings, whose names and types come from :class:`~sxtlab.unet.UNetConfig`
   itself so that a new setting is validated by its type without a change here);
3. the weights file: a plain file name inside the model folder, no larger than the
   recorded networks' parameters need, its SHA-256 the recorded one;
4. the safetensors header: every tensor's name, dtype and shape equal to those of
   the networks the configuration describes (made on PyTorch's ``meta`` device,
   which allocates nothing) before any tensor or network is materialised.

Every failure is a :class:`~sxtlab.errors.FormatError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .classes import UnknownClassError, canonical_name
from .errors import FormatError
from .metrics import TEMPERATURE_RANGE

if TYPE_CHECKING:
    from .unet import UNetConfig

__all__ = ["MAX_META_BYTES", "MAX_NESTING", "MAX_PARAMETERS", "UNET_RANGES", "ModelSpec",
           "read_meta", "validate_meta", "expected_tensors", "read_weights"]

#: Largest ``model.json`` read (bytes); the shipped model's is 5 kB.
MAX_META_BYTES = 1 * 2**20
#: Deepest nesting of JSON arrays and objects in ``model.json`` (the shipped one: 6).
MAX_NESTING = 32
#: Most parameters of both networks together: 25 M float32 is 100 MB, 300 times the
#: default model; a file that claims more is refused before anything is allocated.
MAX_PARAMETERS = 25_000_000
#: Largest safetensors header (bytes): one short JSON entry per tensor.
MAX_WEIGHTS_HEADER = 1 * 2**20
#: Inclusive ranges of the known U-Net settings. A setting without an entry (one added
#: to UNetConfig later) is checked for its type only; the parameter count still bounds it.
UNET_RANGES: dict[str, tuple[float, float]] = {
    "in_channels": (1, 256),
    "out_channels": (2, 256),
    "depth": (1, 8),
    "base_width": (1, 512),
    "max_width": (1, 1024),
    "groups": (1, 512),
    "convs_per_level": (1, 8),
    "negative_slope": (0.0, 1.0),
    "stem_stride": (1, 2),
}
#: Most foreground classes (label values 1..254; 255 is the unannotated value).
MAX_CLASSES = 254
#: Stage-1 downsampling factor and patch edges (voxels), inclusive.
FACTOR_RANGE = (1, 64)
PATCH_RANGE = (1, 1024)
#: Smoothing of stage-1 probabilities, full-resolution voxels.
SIGMA_RANGE = (0.0, 1000.0)
#: Voxel sizes (µm) from 0.1 pm to 1 m.
VOXEL_RANGE = (1e-7, 1e6)

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Strings are removed before brackets are counted: "[" inside a class name is no nesting.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


@dataclass(frozen=True)
class ModelSpec:
    """What ``model.json`` says, validated: enough to check the weights and build the model."""

    classes: list[str]
    factor: tuple[int, int, int]
    normalisation: tuple[float, float, str]
    voxel_size: tuple[float, float, float] | None
    context: str
    smooth_sigma: float
    temperature: float
    stage1: UNetConfig
    stage2: UNetConfig
    stage1_patch: tuple[int, int, int]
    stage2_patch: tuple[int, int, int]
    weights_file: str
    sha256: str
    info: dict


# ---------------------------------------------------------------------------------------
# model.json
# ---------------------------------------------------------------------------------------
def read_meta(meta_path: Path) -> Any:
    """The parsed ``model.json``, its size and nesting bounded before parsing.

    Raises
    ------
    sxtlab.FormatError
        If the file is too large, not UTF-8 JSON, or nested too deep.
    """
    size = meta_path.stat().st_size
    if size > MAX_META_BYTES:
        raise FormatError(f"{meta_path}: not an sxtlab model: {size} bytes, expected at most "
                          f"{MAX_META_BYTES} (the metadata of a model is a few kB)")
    raw = meta_path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"{meta_path}: not an sxtlab model: not valid JSON (not UTF-8: {err})") from err
    depth = _nesting(text)
    if depth > MAX_NESTING:
        raise FormatError(f"{meta_path}: not an sxtlab model: JSON nested {depth} levels deep, "
                          f"expected at most {MAX_NESTING}")
    try:
        return json.loads(text)
    except ValueError as err:
        raise FormatError(f"{meta_path}: not an sxtlab model: not valid JSON ({err})") from err


def _nesting(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside strings (an upper bound where the JSON is invalid)."""
    chars = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    if chars.size == 0:
        return 0
    step = np.isin(chars, (ord("["), ord("{"))).astype(np.int64) - np.isin(chars, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def validate_meta(meta: Any, meta_path: Path, *, format_name: str, format_version: int,
                  sxtlab_version: str) -> ModelSpec:
    """Check ``model.json``'s content against the schema and return it validated.

    Raises
    ------
    sxtlab.FormatError
        Naming the first field that is missing, of the wrong type or out of range.
    """
    from .cascade import CONTEXT_MODES, INPUT_UNITS, stage2_in_channels

    where = str(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise FormatError(f"{where}: not an sxtlab model: 'format' is {found!r}, expected {format_name!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{where}: 'format_version' must be a positive integer, got {version!r}")
    if version > format_version:
        raise FormatError(f"{where}: model format version {version} was written by sxtlab "
                          f"{str(meta.get('sxtlab_version', '?'))[:40]}; this sxtlab ({sxtlab_version}) "
                          f"reads up to version {format_version}: upgrade sxtlab")
    f = _Fields(where, meta)
    classes = f.list_of("classes", str, 1, MAX_CLASSES)
    try:
        classes = [canonical_name(c) for c in classes]
    except UnknownClassError as err:
        raise FormatError(f"{where}: field 'classes': {err}") from err
    if len(set(classes)) != len(classes):
        raise FormatError(f"{where}: field 'classes' must be distinct, got {classes}")
    factor = f.triple("factor", FACTOR_RANGE)
    norm = f.sub("normalisation")
    offset = norm.number("offset")
    scale = norm.number("scale", (1e-12, math.inf))
    units = norm.choice("units", INPUT_UNITS, default="1/um")
    vs_raw = f.get("voxel_size_um")
    voxel_size = None if vs_raw == "unknown" else f.triple("voxel_size_um", VOXEL_RANGE, integer=False)
    context = f.sub("context")
    mode = context.choice("mode", CONTEXT_MODES)
    sigma = context.number("smooth_sigma", SIGMA_RANGE)
    k = len(classes) + 1
    stages = []
    for name, channels in (("stage1", (1, k)), ("stage2", (stage2_in_channels(k, mode), k))):
        stage = f.sub(name)
        config = _unet_config(stage.sub("unet"))
        if (config.in_channels, config.out_channels) != channels:
            raise FormatError(f"{where}: field '{name}.unet': maps {config.in_channels} channels to "
                              f"{config.out_channels}, expected {channels[0]} to {channels[1]} "
                              f"for {len(classes)} classes")
        patch = stage.triple("patch", PATCH_RANGE)
        if any(p % config.divisor for p in patch):
            raise FormatError(f"{where}: field '{name}.patch': {list(patch)} must be multiples of "
                              f"{config.divisor} (the U-Net's depth is {config.depth})")
        stages.append((config, patch))
        if name == "stage2":
            # absent in files written before temperature scaling: softmax as it is
            temperature = stage.number("temperature", TEMPERATURE_RANGE) if "temperature" in stage.obj else 1.0
    weights = f.sub("weights")
    file = weights.get("file")
    if not _plain_name(file):
        raise FormatError(f"{where}: field 'weights.file': {str(file)[:80]!r} must be a plain file name "
                          "inside the model folder (no folder, '..' or absolute path)")
    sha = weights.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise FormatError(f"{where}: field 'weights.sha256': expected 64 lower-case hex digits, "
                          f"got {str(sha)[:80]!r}")
    info = meta.get("info", {})
    if not isinstance(info, dict):
        raise FormatError(f"{where}: field 'info': expected an object, got {type(info).__name__}")
    return ModelSpec(classes=classes, factor=factor, normalisation=(offset, scale, units),
                     voxel_size=voxel_size, context=mode, smooth_sigma=sigma, temperature=temperature,
                     stage1=stages[0][0], stage2=stages[1][0], stage1_patch=stages[0][1],
                     stage2_patch=stages[1][1], weights_file=file, sha256=sha, info=info)


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in (".", "..")
            and not any(c in name for c in "/\\\0:") and Path(name).name == name)


class _Fields:
    """Typed access to one JSON object's fields, naming ``prefix.field`` in errors."""

    def __init__(self, where: str, obj: dict, prefix: str = "") -> None:
        self.where, self.obj, self.prefix = where, obj, prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, found: Any, expected: str) -> FormatError:
        text = json.dumps(found) if not isinstance(found, _Missing) else "nothing (missing)"
        return FormatError(f"{self.where}: field '{self.name(key)}': found {text[:80]}, expected {expected}")

    def get(self, key: str) -> Any:
        value = self.obj.get(key, _MISSING)
        if isinstance(value, _Missing):
            raise self.fail(key, value, "a value")
        return value

    def sub(self, key: str) -> "_Fields":
        value = self.obj.get(key, _MISSING)
        if not isinstance(value, dict):
            raise self.fail(key, value, "an object")
        return _Fields(self.where, value, f"{self.name(key)}.")

    def number(self, key: str, bounds: tuple[float, float] = (-math.inf, math.inf)) -> float:
        value = self.obj.get(key, _MISSING)
        if not _is_number(value) or not math.isfinite(value) or not bounds[0] <= value <= bounds[1]:
            raise self.fail(key, value, f"a finite number in [{bounds[0]:g}, {bounds[1]:g}]")
        return float(value)

    def choice(self, key: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self.obj.get(key, _MISSING if default is None else default)
        if value not in options:
            raise self.fail(key, value, f"one of {list(options)}")
        return value

    def list_of(self, key: str, kind: type, lo: int, hi: int) -> list:
        value = self.obj.get(key, _MISSING)
        if not isinstance(value, list) or not lo <= len(value) <= hi or not all(isinstance(v, kind) for v in value):
            raise self.fail(key, value, f"a list of {lo} to {hi} {kind.__name__} values")
        return value

    def triple(self, key: str, bounds: tuple[float, float], *, integer: bool = True) -> tuple:
        value = self.obj.get(key, _MISSING)
        kind = "integers" if integer else "numbers"
        expected = f"one or three {kind} in [{bounds[0]:g}, {bounds[1]:g}] (z, y, x)"
        values = value if isinstance(value, list) else [value]
        if len(values) == 1:
            values = values * 3
        ok = len(values) == 3 and all(
            (_is_int(v) if integer else _is_number(v)) and math.isfinite(v) and bounds[0] <= v <= bounds[1]
            for v in values)
        if not ok:
            raise self.fail(key, value, expected)
        return tuple(int(v) if integer else float(v) for v in values)


class _Missing:
    pass


_MISSING = _Missing()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unet_config(f: _Fields) -> UNetConfig:
    """A :class:`~sxtlab.unet.UNetConfig` from its JSON object, every field checked first.

    The fields, their types and their defaults are UNetConfig's own; :data:`UNET_RANGES`
    adds the ranges of those known here.
    """
    from .unet import UNetConfig

    hints = typing.get_type_hints(UNetConfig)
    known = {fl.name: fl for fl in fields(UNetConfig)}
    unknown = sorted(set(f.obj) - set(known))
    if unknown:
        raise FormatError(f"{f.where}: field '{f.prefix.rstrip('.')}': unknown U-Net settings "
                          f"{[u[:40] for u in unknown[:5]]}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, fl in known.items():
        if name not in f.obj:
            if fl.default is MISSING and fl.default_factory is MISSING:
                raise f.fail(name, _MISSING, "a value")
            continue  # the dataclass default: files written before the setting existed
        value, kind = f.obj[name], hints[name]
        if typing.get_origin(kind) is typing.Literal:
            options = typing.get_args(kind)
            if value not in options:
                raise f.fail(name, value, f"one of {list(options)}")
        elif kind is bool:
            if not isinstance(value, bool):
                raise f.fail(name, value, "true or false")
        elif kind is int or kind is float:
            lo, hi = UNET_RANGES.get(name, (-math.inf, math.inf))
            ok = (_is_int(value) if kind is int else _is_number(value) and math.isfinite(value))
            if not ok or not lo <= value <= hi:
                raise f.fail(name, value, f"{'an integer' if kind is int else 'a finite number'} "
                                          f"in [{lo:g}, {hi:g}]")
        elif kind is str:
            if not isinstance(value, str):
                raise f.fail(name, value, "a string")
        else:  # a setting of a type this check does not know: refuse rather than pass it unchecked
            raise f.fail(name, value, f"a {kind} value, which this sxtlab cannot validate")
        values[name] = value
    try:
        return UNetConfig(**values)
    except ValueError as err:  # combinations UNetConfig refuses (e.g. groups not dividing widths)
        raise FormatError(f"{f.where}: field '{f.prefix.rstrip('.')}': {err}") from err


# ---------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------
def expected_tensors(spec: ModelSpec) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name → (dtype, shape) of every weight the recorded networks have, without allocating them.

    Raises
    ------
    sxtlab.FormatError
        If the networks have more than :data:`MAX_PARAMETERS` parameters.
    """
    import torch

    from .unet import UNet3D

    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    with torch.device("meta"):
        for prefix, config in (("stage1.", spec.stage1), ("stage2.", spec.stage2)):
            for key, tensor in UNet3D(config).state_dict().items():
                out[prefix + key] = (str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))
    return out


def read_weights(folder: Path, spec: ModelSpec, meta_path: Path) -> bytes:
    """The weights file's bytes, checked against ``spec`` before any tensor is made.

    Raises
    ------
    sxtlab.FormatError
        If the file is missing, outside the folder, of the wrong size or checksum, or
        its tensors' names, dtypes or shapes differ from the recorded networks'.
    """
    expected = expected_tensors(spec)
    n_params = sum(math.prod(shape) for _, shape in expected.values())
    if n_params > MAX_PARAMETERS:
        raise FormatError(f"{meta_path}: fields 'stage1.unet'/'stage2.unet' describe networks of "
                          f"{n_params:,} parameters, expected at most {MAX_PARAMETERS:,}")
    path = folder / spec.weights_file
    if not path.is_file() or path.resolve().parent != folder.resolve():
        raise FormatError(f"{meta_path}: field 'weights.file': {spec.weights_file!r} is missing or not a "
                          f"regular file inside {folder}")
    tensor_bytes = sum(np.dtype(dtype).itemsize * math.prod(shape) for dtype, shape in expected.values())
    size, bound = path.stat().st_size, 8 + MAX_WEIGHTS_HEADER + tensor_bytes
    if size > bound:
        raise FormatError(f"{path}: {size} bytes, expected at most {bound} for the recorded networks")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise FormatError(f"{path}: checksum {digest[:12]}… does not match the recorded "
                          f"{spec.sha256[:12]}… (corrupt or replaced)")
    found = _safetensors_header(data, path)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise FormatError(f"{path}: weights do not fit the recorded architecture: missing "
                          f"{missing[:5]}{'…' if len(missing) > 5 else ''}, unexpected "
                          f"{extra[:5]}{'…' if len(extra) > 5 else ''}")
    for name, (dtype, shape) in expected.items():
        if found[name] != (dtype, shape):
            raise FormatError(f"{path}: tensor {name!r} is {found[name][0]} {list(found[name][1])}, "
                              f"expected {dtype} {list(shape)} from the recorded architecture")
    return data


def _safetensors_header(data: bytes, path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name → (dtype, shape) from a safetensors file's header, its offsets checked against its size."""
    if len(data) < 8:
        raise FormatError(f"{path}: not a safetensors file: {len(data)} bytes, expected at least 8")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_WEIGHTS_HEADER, len(data) - 8):
        raise FormatError(f"{path}: not a safetensors file: header length {n}, expected at most "
                          f"{min(MAX_WEIGHTS_HEADER, len(data) - 8)}")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise FormatError(f"{path}: not a safetensors file: header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file: header is {type(header).__name__}, expected an object")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    body = len(data) - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_DTYPES
              and isinstance(entry.get("shape"), list) and all(_is_int(s) and s >= 0 for s in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(_is_int(o) for o in entry["data_offsets"]))
        if not ok:
            raise FormatError(f"{path}: not a safetensors file: tensor {name[:80]!r} has a malformed "
                              f"entry {json.dumps(entry)[:120]}")
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        start, stop = entry["data_offsets"]
        # numpy has no bfloat16; it is 2 bytes like float16
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if not 0 <= start <= stop <= body or stop - start != itemsize * math.prod(entry["shape"]):
            raise FormatError(f"{path}: tensor {name[:80]!r}: data offsets {entry['data_offsets']} do not "
                              f"fit its shape {entry['shape']} and the file's {body} data bytes")
        out[name] = (dtype, tuple(entry["shape"]))
    return out
