"""The AmiraMesh file format: header parser, data sections, codecs and writer.

AmiraMesh is the native format of Amira and Avizo (Zuse Institute Berlin, now
Thermo Fisher Scientific). A file is an ASCII header followed by data sections::

    # AmiraMesh BINARY-LITTLE-ENDIAN 2.1
    define Lattice 58 61 58
    Parameters {
        Materials { Exterior { Color 0 0 0 } Inside { Color 1 0 0 } }
        BoundingBox 0 57 0 60 0 57,
        CoordType "uniform"
    }
    Lattice { byte Labels } @1(HxByteRLE,1453)
    # Data section follows
    @1
    <data>

Sources: the "AmiraMesh" chapter of the Amira Reference Guide (ZIB, 1995-2010;
amira.zib.de/usersguide/HxFileFormat_AmiraMesh.html) and the Avizo User's Guide;
T. Weinkauf's notes "Reading AmiraMesh files" (x-fastest order, interleaved
components); the readers of Bio-Formats (``AmiraReader``), natverse ``nat``
(``read.amiramesh``) and ``ahds`` for the codecs ``HxByteRLE`` and ``HxZip``.

We parse the format ourselves rather than depend on ``ahds`` (the one Python
package for it): ``ahds`` is not maintained for our needs (its grammar rejects
headers that Amira 2019+ writes, it decodes HxByteRLE byte by byte in Python and
its HxByteRLE branch crashed on the ``name`` parameter of materials, ahds#7),
and a volume reader needs only a small, well-tested subset of the format.

Facts this module relies on:

- ``define Lattice nx ny nz`` gives the lattice size with x first; data are stored
  x fastest, then y, then z, so a C-ordered array has shape ``(nz, ny, nx)``;
  vector components (``float[3]``) are interleaved per voxel.
- Encodings in the first line: ``ASCII``, ``BINARY-LITTLE-ENDIAN`` and ``BINARY``,
  which means big-endian (Amira's first platforms were big-endian SGI machines).
- ``@N`` marks each data section; sections need not appear in the order of their
  declarations, so they are found by marker, never by position.
- ``HxByteRLE``: a control byte ``c``; ``c <= 127`` repeats the next byte ``c``
  times, ``c > 127`` copies the next ``c & 127`` bytes. ``HxZip``: a zlib stream.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FormatError
from ._common import check_claimed_size, warn

__all__ = [
    "Block",
    "Field",
    "Header",
    "is_amiramesh",
    "read_header",
    "read_field",
    "field_memmap",
    "decode_hx_byte_rle",
    "encode_hx_byte_rle",
    "write_amiramesh",
    "DTYPES",
]

#: AmiraMesh primitive types and their NumPy equivalents (byte order added per file).
DTYPES: dict[str, str] = {
    "byte": "u1", "sbyte": "i1", "short": "i2", "ushort": "u2",
    "int": "i4", "float": "f4", "double": "f8",
}

_ENCODINGS = {"ASCII": None, "BINARY-LITTLE-ENDIAN": "<", "BINARY": ">", "BINARY-BIG-ENDIAN": ">"}
_MAGIC_NAMES = ("AmiraMesh", "Avizo", "HyperMesh")
_HEADER_READ_SIZES = (1 << 20, 1 << 24, 1 << 28)


def is_amiramesh(path: str | Path) -> bool:
    """Whether the file starts as an AmiraMesh file does (``# AmiraMesh``, ``# Avizo``, ``# HyperMesh``)."""
    with open(path, "rb") as fh:
        return fh.read(16).startswith(tuple(f"# {name}".encode() for name in _MAGIC_NAMES))


# --------------------------------------------------------------------------- header model
class Block:
    """An ordered block of header entries: ``name value ...`` lines and nested blocks.

    AmiraMesh blocks keep their order (material order is meaningful) and may hold
    anonymous sub-blocks (the ``{ Id 0, Name "Exterior" }`` style), so this is a
    list of ``(name or None, value)`` pairs with dictionary-style look-up.
    """

    def __init__(self, items: list[tuple[str | None, Any]] | None = None) -> None:
        self.items: list[tuple[str | None, Any]] = items or []

    def get(self, name: str, default: Any = None) -> Any:
        """Value of the first entry called ``name`` (exact match), else ``default``."""
        for key, value in self.items:
            if key == name:
                return value
        return default

    def get_ci(self, name: str, default: Any = None) -> Any:
        """Like :meth:`get`, ignoring case (Amira writes both ``Name`` and ``name``)."""
        low = name.lower()
        for key, value in self.items:
            if key is not None and key.lower() == low:
                return value
        return default

    def __contains__(self, name: str) -> bool:
        return any(key == name for key, _ in self.items)

    def blocks(self) -> Iterator[tuple[str | None, Block]]:
        """The nested blocks, in order, with their names (``None`` if anonymous)."""
        for key, value in self.items:
            if isinstance(value, Block):
                yield key, value

    def __repr__(self) -> str:
        return f"Block({self.items!r})"


@dataclass(frozen=True)
class Field:
    """One data declaration, e.g. ``Lattice { float[3] Data } @1(HxZip,1234)``."""

    location: str          #: where the data live, e.g. "Lattice"
    name: str              #: e.g. "Labels", "Data"
    type: str              #: AmiraMesh type, e.g. "byte", "float"
    components: int        #: values per element (3 for float[3])
    marker: int            #: N of its ``@N`` data section
    encoding: str          #: "raw", "HxByteRLE" or "HxZip"
    encoded_size: int | None  #: bytes on disk for HxByteRLE/HxZip, as declared
    dims: tuple[int, ...]  #: size of the location, x first (from ``define``)

    @property
    def declaration(self) -> str:
        """The declaration as it reads in the header (for messages)."""
        t = self.type + (f"[{self.components}]" if self.components > 1 else "")
        enc = "" if self.encoding == "raw" else f"({self.encoding},{self.encoded_size})"
        return f"{self.location} {{ {t} {self.name} }} @{self.marker}{enc}"

    @property
    def count(self) -> int:
        """Number of values (elements times components)."""
        return math.prod(self.dims) * self.components  # Python ints: no overflow from a damaged header

    @property
    def array_shape(self) -> tuple[int, ...]:
        """C-order shape of the data: dims reversed (x fastest on disk), components last."""
        return tuple(reversed(self.dims)) + ((self.components,) if self.components > 1 else ())


@dataclass
class Header:
    """A parsed AmiraMesh header and where its data sections lie.

    Attributes
    ----------
    path : pathlib.Path
    magic : str
        ``AmiraMesh`` or ``Avizo``.
    encoding : str
        ``ASCII``, ``BINARY-LITTLE-ENDIAN`` or ``BINARY`` (big-endian).
    byteorder : str or None
        ``"<"`` or ``">"`` for binary files, ``None`` for ASCII.
    version : str
    defines : dict
        ``define`` statements, e.g. ``{"Lattice": (58, 61, 58)}`` (x first).
    parameters : Block
        The top-level ``Parameters`` block (empty if absent).
    materials : Block or None
        A top-level ``Materials`` block (AmiraMesh 1.0 style), if any.
    fields : list of Field
        Data declarations in header order.
    data_offset : int
        Byte offset just after the first ``@N`` marker line.
    sections : dict
        ``{marker: (offset, length)}`` in bytes, filled by :func:`read_header`.
    """

    path: Path
    magic: str
    encoding: str
    byteorder: str | None
    version: str
    defines: dict[str, tuple[int, ...]]
    parameters: Block
    materials: Block | None
    fields: list[Field]
    data_offset: int
    first_marker: int
    sections: dict[int, tuple[int, int]] = dataclass_field(default_factory=dict)

    @property
    def is_ascii(self) -> bool:
        return self.byteorder is None

    def field(self, name: str | None = None) -> Field:
        """The field called ``name``, or the first ``Lattice`` field when ``name`` is None.

        Raises
        ------
        FormatError
            If there is no such field (the message lists those there are).
        """
        lattice = [f for f in self.fields if f.location == "Lattice"]
        if name is None:
            if not lattice:
                raise FormatError(
                    f"{self.path}: declares no 'Lattice' field, so it holds no volume "
                    f"(its fields: {', '.join(f.declaration for f in self.fields) or 'none'})"
                )
            return lattice[0]
        for f in self.fields:
            if f.name == name:
                return f
        raise FormatError(
            f"{self.path}: no field named {name!r}; it declares "
            f"{', '.join(repr(f.name) for f in self.fields) or 'none'}"
        )


# --------------------------------------------------------------------------- lexer
@dataclass
class _Tok:
    kind: str   # "{", "}", ",", "\n", "str", "word", "eof"
    value: str
    pos: int


class _Incomplete(Exception):
    """The text read so far ends inside the header: read more of the file."""


class _Lexer:
    """Tokens of an AmiraMesh header (decoded as Latin-1, so offsets are byte offsets).

    ``complete`` says whether ``text`` is the whole file; if not, running out of
    text inside a block or a string asks for more (:class:`_Incomplete`).
    """

    _WORD = re.compile(r'[^\s{},"]+')
    # every blank that ends a word (form feed, NEL and no-break space too, which Latin-1
    # decoding brings in), except the newline, which ends a statement
    _BLANK = re.compile(r"[^\S\n]*")

    def __init__(self, text: str, pos: int, path: Path, complete: bool) -> None:
        self.text, self.pos, self.path, self.complete = text, pos, path, complete
        self._peeked: _Tok | None = None

    def ended(self, pos: int, what: str) -> Exception:
        return self.error(pos, what) if self.complete else _Incomplete()

    def line_of(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def error(self, pos: int, what: str) -> FormatError:
        line = self.line_of(pos)
        snippet = self.text[pos:pos + 40].split("\n")[0]
        return FormatError(f"{self.path}: header line {line}: {what} (at {snippet!r})")

    def peek(self) -> _Tok:
        if self._peeked is None:
            self._peeked = self._scan()
        return self._peeked

    def next(self) -> _Tok:
        tok = self.peek()
        self._peeked = None
        return tok

    def seek(self, pos: int) -> None:
        self.pos, self._peeked = pos, None

    def _scan(self) -> _Tok:
        text, n = self.text, len(self.text)
        i = self._BLANK.match(text, self.pos).end()  # type: ignore[union-attr]
        if i >= n:
            self.pos = n
            return _Tok("eof", "", n)
        c = text[i]
        if c == "#":  # a comment runs to the end of its line
            j = text.find("\n", i)
            i = n if j < 0 else j
            self.pos = i
            return self._scan()
        if c in "{},\n":
            self.pos = i + 1
            return _Tok(c, c, i)
        if c == '"':
            j, out = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:  # \" and \\ inside strings (Tcl commands in HistoryLog)
                    j += 1
                out.append(text[j])
                j += 1
            if j >= n:
                raise self.ended(i, "unterminated string")
            self.pos = j + 1
            return _Tok("str", "".join(out), i)
        m = self._WORD.match(text, i)
        if m is None:  # cannot happen after _BLANK; an error, not a crash, if the patterns ever disagree
            raise self.error(i, f"unexpected character {c!r}")
        self.pos = m.end()
        return _Tok("word", m.group(), i)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INT = re.compile(r"[+-]?\d+")


def _value(tok: _Tok) -> Any:
    if tok.kind == "str":
        return _fix_text(tok.value)
    if _INT.fullmatch(tok.value):
        return int(tok.value)
    if _NUMBER.fullmatch(tok.value):
        return float(tok.value)
    return _fix_text(tok.value)


def _fix_text(s: str) -> str:
    """Undo Latin-1 decoding of UTF-8 text (``µm`` written by Amira 2019+ as UTF-8)."""
    if s.isascii():
        return s
    try:
        return s.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return s


def _parse_block(lx: _Lexer) -> Block:
    """Parse entries up to the matching ``}`` (the ``{`` is already consumed)."""
    items: list[tuple[str | None, Any]] = []
    while True:
        tok = lx.next()
        if tok.kind in ("\n", ","):
            continue
        if tok.kind == "}":
            return Block(items)
        if tok.kind == "eof":
            raise lx.ended(tok.pos, "a '{' block is not closed before the end of the header")
        if tok.kind == "{":
            items.append((None, _parse_block(lx)))
            continue
        name = tok.value
        values: list[Any] = []
        while True:
            t = lx.peek()
            if t.kind == "{":
                lx.next()
                items.append((name, _parse_block(lx)))
                break
            if t.kind == "\n" and not values:
                # "Name\n{" puts a block's brace on the next line
                save = lx.pos, lx._peeked
                lx.next()
                while lx.peek().kind == "\n":
                    lx.next()
                if lx.peek().kind == "{":
                    continue
                lx.pos, lx._peeked = save
            if t.kind in ("\n", ",", "}", "eof"):
                items.append((name, tuple(values)))
                break
            values.append(_value(lx.next()))


_FIELD_TAIL = re.compile(
    r"[ \t]*(?:[A-Za-z]+[ \t]+)?=?[ \t]*@(\d+)"
    r"(?:[ \t]*\([ \t]*([A-Za-z][\w-]*)[ \t]*(?:,[ \t]*(\d+)[ \t]*)?\))?[ \t]*(?:#[^\n]*)?(?=\r?\n|$)"
)
_TYPE = re.compile(r"([A-Za-z]\w*)(?:\[(\d+)\])?")
_MARKER_LINE = re.compile(rb"@(\d+)[ \t]*(?:#[^\n]*)?\r?\n")


def _parse_magic(first_line: str, path: Path) -> tuple[str, str, str | None, str]:
    words = first_line.lstrip("#").split()
    if not first_line.startswith("#") or not words:
        raise FormatError(
            f"{path}: not an AmiraMesh file: the first line is {first_line[:60]!r}, "
            "expected '# AmiraMesh <encoding> <version>'"
        )
    magic = words[0]
    if magic == "HyperSurface":
        raise FormatError(f"{path}: an Amira HyperSurface (a triangulated surface), not a volume")
    if magic not in _MAGIC_NAMES:
        raise FormatError(
            f"{path}: not an AmiraMesh file: the first line names {magic!r}, expected one of "
            f"{', '.join(_MAGIC_NAMES[:2])} (line: {first_line[:60]!r})"
        )
    rest = [w for w in words[1:] if w != "3D"]  # "# AmiraMesh 3D ASCII 2.0"
    if len(rest) < 2:
        raise FormatError(
            f"{path}: first line {first_line!r} lacks the encoding and version "
            "(expected e.g. '# AmiraMesh BINARY-LITTLE-ENDIAN 2.1')"
        )
    encoding, version = rest[0], rest[1]
    if encoding not in _ENCODINGS:
        raise FormatError(
            f"{path}: unknown AmiraMesh encoding {encoding!r} in the first line; expected one of "
            f"{', '.join(_ENCODINGS)}"
        )
    if not re.fullmatch(r"\d+(\.\d+)*", version):
        raise FormatError(f"{path}: unknown AmiraMesh version {version!r} in the first line (expected e.g. 2.1)")
    return magic, encoding, _ENCODINGS[encoding], version


def _parse_header_text(text: str, path: Path, complete: bool) -> Header | None:
    """Parse a header; ``None`` if ``text`` (not the whole file) ends before the first data marker."""
    try:
        return _parse_header(text, path, complete)
    except _Incomplete:
        return None


def _parse_header(text: str, path: Path, complete: bool) -> Header | None:
    nl = text.find("\n")
    first = text if nl < 0 else text[:nl]
    magic, encoding, byteorder, version = _parse_magic(first.rstrip("\r"), path)
    lx = _Lexer(text, 0 if nl < 0 else nl + 1, path, complete)
    defines: dict[str, tuple[int, ...]] = {}
    parameters = Block()
    materials: Block | None = None
    decls: list[tuple[str, str, int, int, str, str, int | None, int]] = []
    while True:
        tok = lx.next()
        if tok.kind in ("\n", ","):
            continue
        if tok.kind == "eof":
            return None
        if tok.kind == "word" and re.fullmatch(r"@\d+", tok.value):
            end = text.find("\n", tok.pos)
            if end < 0:
                return None
            marker = int(tok.value[1:])
            break
        if tok.kind != "word":
            raise lx.error(tok.pos, f"unexpected {tok.value!r} at the top level")
        name = tok.value
        if name == "define":
            what = lx.next()
            dims = []
            while lx.peek().kind == "word":
                t = lx.next()
                if not _INT.fullmatch(t.value) or int(t.value) < 1:
                    raise lx.error(t.pos, f"'define {what.value}' expects positive integer sizes, "
                                          f"found {t.value[:40]!r}")
                dims.append(int(t.value))
            if not dims:
                raise lx.error(what.pos, f"'define {what.value}' gives no size")
            defines[what.value] = tuple(dims)
            continue
        if lx.peek().kind == "{":
            lx.next()
            block = _parse_block(lx)
            m = _FIELD_TAIL.match(text, lx.pos)
            if m:  # "Lattice { byte Labels } @1(HxByteRLE,1453)"
                lx.seek(m.end())
                entries = [(k, v) for k, v in block.items if k is not None]
                if len(entries) != 1 or len(entries[0][1]) != 1:
                    raise lx.error(tok.pos, f"cannot read the data declaration of {name!r}")
                tm = _TYPE.fullmatch(entries[0][0])
                if tm is None:
                    raise lx.error(tok.pos, f"cannot read the type {entries[0][0]!r}")
                enc = m.group(2) or "raw"
                size = int(m.group(3)) if m.group(3) else None
                decls.append((name, str(entries[0][1][0]), int(m.group(1)), int(tm.group(2) or 1),
                              tm.group(1), enc, size, tok.pos))
            elif name == "Parameters":
                parameters = Block(parameters.items + block.items)
            elif name == "Materials":
                materials = block
            else:
                parameters.items.append((name, block))
            continue
        # old-style size statements such as "nVertices 4651"
        values = []
        while lx.peek().kind in ("word", "str"):
            values.append(_value(lx.next()))
        if values and all(isinstance(v, int) for v in values):
            defines[name] = tuple(values)
        else:
            parameters.items.append((name, tuple(values)))

    fields: list[Field] = []
    seen: dict[int, Field] = {}
    for location, fname, mk, comps, type_, enc, size, pos in decls:
        if location not in defines:
            raise lx.error(pos, f"field {location} {{ {fname} }} refers to {location!r}, which no 'define' sizes")
        f = Field(location, fname, type_, comps, mk, enc, size, defines[location])
        if mk in seen:
            raise FormatError(
                f"{path}: data section @{mk} is declared twice, by '{seen[mk].declaration}' and "
                f"'{f.declaration}'; each field needs its own @N"
            )
        seen[mk] = f
        fields.append(f)
    return Header(path, magic, encoding, byteorder, version, defines, parameters, materials,
                  fields, end + 1, marker)


# --------------------------------------------------------------------------- sections
def _stored_size(h: Header, f: Field) -> int | None:
    if f.encoding != "raw":
        return f.encoded_size
    if f.type not in DTYPES:
        raise FormatError(
            f"{h.path}: field '{f.declaration}' has type {f.type!r}; AmiraMesh types sxtlab reads: "
            f"{', '.join(DTYPES)}"
        )
    return f.count * np.dtype(DTYPES[f.type]).itemsize


def _locate_binary(h: Header, raw: bytes | np.memmap, size: int) -> dict[int, tuple[int, int]]:
    """Walk the data sections marker by marker; each one's length comes from its field."""
    by_marker = {f.marker: f for f in h.fields}
    sections: dict[int, tuple[int, int]] = {}
    marker, pos = h.first_marker, h.data_offset
    while True:
        f = by_marker.get(marker)
        if f is None:
            raise FormatError(f"{h.path}: data section @{marker} at byte {pos} belongs to no declared field")
        if marker in sections:
            raise FormatError(f"{h.path}: data section @{marker} appears twice in the file")
        length = _stored_size(h, f)
        available = size - pos
        what = "bytes" if f.encoding == "raw" else f"bytes of {f.encoding} data"
        if length is None:  # a compressed section without its size: only the last one can be read
            length = available
            while length and bytes(raw[pos + length - 1:pos + length]) in (b"\n", b"\r", b" "):
                length -= 1
        if available < length:
            found = "found none" if available <= 1 else f"found only {available:,}"
            raise FormatError(
                f"{h.path}: data section @{marker} ('{f.declaration}') is short: the header declares "
                f"{length:,} {what}, {found} (the file ends at byte {size:,}); the file is truncated "
                "or its data were not saved with it"
            )
        sections[marker] = (pos, length)
        pos += length
        while pos < size and bytes(raw[pos:pos + 1]) in (b"\n", b"\r", b" ", b"\t"):
            pos += 1
        if pos >= size:
            break
        m = _MARKER_LINE.match(bytes(raw[pos:pos + 64]))
        if m is None:
            missing = sorted(set(by_marker) - set(sections))
            msg = (f"{h.path}: {size - pos:,} unexpected bytes after data section @{marker} "
                   f"('{f.declaration}', declared {length:,} {what}) at byte {pos:,}; expected an '@N' "
                   "marker or the end of the file")
            if missing:
                raise FormatError(msg + " (is the declared size right?)")
            warn(msg + "; they are ignored")
            break
        marker, pos = int(m.group(1)), pos + m.end()
    return sections


def _locate_ascii(h: Header, raw: bytes) -> dict[int, tuple[int, int]]:
    """ASCII sections: text between marker lines, found by their markers."""
    starts: list[tuple[int, int, int]] = [(h.first_marker, h.data_offset, h.data_offset)]
    for m in re.finditer(rb"(?m)^@(\d+)[ \t]*(?:#[^\n]*)?\r?$\n?", raw[h.data_offset:]):
        starts.append((int(m.group(1)), h.data_offset + m.start(), h.data_offset + m.end()))
    sections: dict[int, tuple[int, int]] = {}
    for i, (marker, _, begin) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else len(raw)
        if marker in sections:
            raise FormatError(f"{h.path}: data section @{marker} appears twice in the file")
        sections[marker] = (begin, end - begin)
    return sections


def read_header(path: str | Path) -> Header:
    """Parse the header of an AmiraMesh file and locate all its data sections.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    Header

    Raises
    ------
    FormatError
        If the file is not AmiraMesh (``# Mesh``), names an unknown encoding
        (``BINARY-ENDIAN``), declares one ``@N`` twice, or if a declared section is
        missing or shorter than declared (the message names the file, the section,
        the declared and the found byte counts).
    """
    path = Path(path)
    size = path.stat().st_size
    header = None
    with open(path, "rb") as fh:
        for n in _HEADER_READ_SIZES:
            fh.seek(0)
            head = fh.read(n)
            header = _parse_header_text(head.decode("latin-1"), path, complete=len(head) >= size)
            if header is not None or len(head) >= size:
                break
    if header is None:
        raise FormatError(
            f"{path}: the header never reaches a data section (no '@N' line after the "
            f"declarations in its {size:,} bytes); the file holds no data"
        )
    if not header.fields:
        raise FormatError(f"{path}: the header declares no data fields")
    if header.is_ascii:
        raw = path.read_bytes()
        header.sections = _locate_ascii(header, raw)
    else:
        raw_map = np.memmap(path, dtype=np.uint8, mode="r") if size else b""
        header.sections = _locate_binary(header, raw_map, size)
        del raw_map
    missing = [f for f in header.fields if f.marker not in header.sections]
    if missing:
        raise FormatError(
            f"{path}: the header declares "
            + ", ".join(f"'{f.declaration}'" for f in missing)
            + " but the file holds no data section "
            + ", ".join(f"@{f.marker}" for f in missing)
        )
    return header


# --------------------------------------------------------------------------- codecs
def decode_hx_byte_rle(payload: np.ndarray, n_out: int, *, where: str) -> np.ndarray:
    """Decode Amira's ``HxByteRLE`` run-length code, vectorised.

    A control byte ``c <= 127`` repeats the next byte ``c`` times; ``c > 127``
    copies the next ``c & 127`` bytes. Control bytes sit at positions that depend
    on all earlier ones, a sequential chain; it is found here without a Python loop
    over bytes by pointer doubling (each round doubles the length of the chain
    known from byte 0; O(n log n) NumPy work over the encoded bytes), then all
    runs are expanded with one ``numpy.repeat``.

    Parameters
    ----------
    payload : numpy.ndarray of uint8
        The encoded bytes (exactly the declared length).
    n_out : int
        Bytes the lattice needs.
    where : str
        File and field, for messages.

    Returns
    -------
    numpy.ndarray of uint8, length ``n_out``

    Raises
    ------
    FormatError
        If the stream decodes to more or fewer bytes than ``n_out``.

    Notes
    -----
    A final zero control byte without an operand is accepted silently: Amira
    writes one at the end of its streams (the declared size counts it).
    """
    payload = np.ascontiguousarray(payload, dtype=np.uint8)
    n = payload.size
    if n == 0:
        raise FormatError(f"{where}: HxByteRLE data are empty; the lattice needs {n_out:,} bytes")
    itype = np.int32 if n < 2**31 - 256 else np.int64
    step = np.where(payload < 128, 2, 1 + (payload & 0x7F)).astype(itype)
    jump = np.minimum(np.arange(n, dtype=itype) + step, n).astype(itype)
    jump = np.append(jump, itype(n))  # position n: past the end, maps to itself
    del step
    on = np.zeros(n + 1, dtype=bool)
    on[0] = True
    while True:
        targets = jump[on]
        fresh = ~on[targets]
        if not fresh.any():
            break
        on[targets[fresh]] = True
        jump = jump[jump]
    del jump
    on[n] = False
    pos = np.flatnonzero(on).astype(np.int64)
    del on
    ctrl = payload[pos]
    literal = ctrl >= 128
    count = (ctrl & 0x7F).astype(np.int64)
    # Amira ends its streams with a lone zero control byte (both template label
    # fields of Amira 6.3 and 2019 do): a run of length 0 that needs no operand.
    # Any other run cut by the end of the stream leaves the output short.
    room = n - 1 - pos[-1]
    if (literal[-1] and room < count[-1]) or (not literal[-1] and room < 1):
        count[-1] = min(int(count[-1]), int(room)) if literal[-1] else 0
    total = int(count.sum())
    if total != n_out:
        raise FormatError(
            f"{where}: HxByteRLE data decode to {total:,} bytes, the lattice needs {n_out:,} "
            f"({len(pos):,} runs in {n:,} encoded bytes); the data are "
            f"{'short' if total < n_out else 'too long'} or their declared size is wrong"
        )
    # every run first as a repeat of its first operand byte, then the literal runs copied over
    first = payload[np.minimum(pos + 1, n - 1)]
    out = np.repeat(first, count)
    lit = np.flatnonzero(literal & (count > 1))
    if lit.size:
        ends = np.cumsum(count)
        lc = count[lit]
        m = int(lc.sum())
        within = np.arange(m, dtype=np.int64) - np.repeat(np.cumsum(lc) - lc, lc)
        out[np.repeat(ends[lit] - lc, lc) + within] = payload[np.repeat(pos[lit] + 1, lc) + within]
    return out


def encode_hx_byte_rle(data: np.ndarray, *, slice_size: int | None = None) -> bytes:
    """Encode bytes as ``HxByteRLE``, vectorised.

    Runs of two or more equal bytes become repeat codes (at most 127 per code);
    other bytes go into literal codes of at most 127 bytes. No code crosses a
    multiple of ``slice_size`` bytes: Amira expects the stream to restart at each
    z slice (as Bio-Formats' AmiraReader notes).
    """
    b = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    n = b.size
    if n == 0:
        return b""
    idx = np.arange(n, dtype=np.int64)
    boundary = np.ones(n, dtype=bool)
    boundary[1:] = b[1:] != b[:-1]
    if slice_size:
        boundary |= idx % slice_size == 0
    run_start = np.flatnonzero(boundary)
    run_len = np.diff(np.append(run_start, n))
    single = run_len == 1
    # repeat codes: runs of >= 2, split into pieces of <= 127
    rs, rl = run_start[~single], run_len[~single]
    pieces = -(-rl // 127)
    rep_run = np.repeat(np.arange(rs.size), pieces)
    k = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    rep_start = rs[rep_run] + 127 * k
    rep_count = np.minimum(127, rl[rep_run] - 127 * k)
    # literal codes: consecutive single bytes, split at slice starts and every 127 bytes
    lit_pos = run_start[single]
    new_group = np.ones(lit_pos.size, dtype=bool)
    new_group[1:] = lit_pos[1:] != lit_pos[:-1] + 1
    if slice_size:
        new_group |= lit_pos % slice_size == 0
    group = np.cumsum(new_group) - 1
    group_first = np.flatnonzero(new_group)
    within = np.arange(lit_pos.size) - group_first[group]
    new_code = new_group | (within % 127 == 0)
    code_first = np.flatnonzero(new_code)
    lit_start = lit_pos[code_first]
    lit_count = np.diff(np.append(code_first, lit_pos.size))
    # interleave the codes in stream order
    starts = np.concatenate([rep_start, lit_start])
    counts = np.concatenate([rep_count, lit_count])
    is_lit = np.concatenate([np.zeros(rep_start.size, bool), np.ones(lit_start.size, bool)])
    order = np.argsort(starts, kind="stable")
    starts, counts, is_lit = starts[order], counts[order], is_lit[order]
    size = 1 + np.where(is_lit, counts, 1)
    offset = np.cumsum(size) - size
    out = np.empty(int(size.sum()), dtype=np.uint8)
    out[offset] = np.where(is_lit, counts | 0x80, counts).astype(np.uint8)
    out[offset[~is_lit] + 1] = b[starts[~is_lit]]
    lit_codes = np.flatnonzero(is_lit)
    shift = np.repeat(offset[lit_codes] + 1 - starts[lit_codes], counts[lit_codes])
    out[lit_pos + shift] = b[lit_pos]
    return out.tobytes()


def _native(a: np.ndarray) -> np.ndarray:
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def read_field(h: Header, f: Field) -> np.ndarray:
    """Read and decode one field into memory.

    Returns
    -------
    numpy.ndarray
        Native byte order, shape ``Field.array_shape`` (``(nz, ny, nx)`` for a
        scalar lattice, components last).

    Raises
    ------
    FormatError
        For unknown types or encodings, ASCII sections with the wrong number of
        values, and compressed data that do not decode to the lattice's size.
    """
    where = f"{h.path}: field '{f.declaration}'"
    if f.type not in DTYPES:
        raise FormatError(f"{where}: unknown type {f.type!r}; sxtlab reads {', '.join(DTYPES)}")
    offset, length = h.sections[f.marker]
    raw = np.empty(length, dtype=np.uint8)  # a writable buffer, so the volume is writable too
    with open(h.path, "rb") as fh:
        fh.seek(offset)
        fh.readinto(memoryview(raw))
    if h.is_ascii:
        tokens = raw.tobytes().decode("latin-1").split()
        if len(tokens) != f.count:
            raise FormatError(
                f"{where}: the ASCII section @{f.marker} holds {len(tokens):,} values, the lattice "
                f"{' x '.join(map(str, f.dims))} with {f.components} component(s) needs {f.count:,}"
            )
        kind = np.dtype(DTYPES[f.type]).kind
        try:
            values = np.array(tokens, dtype=np.float64 if kind == "f" else np.int64)
        except ValueError as exc:
            raise FormatError(
                f"{where}: the ASCII section @{f.marker} holds a value that is not a number: {exc}") from None
        return values.astype(DTYPES[f.type]).reshape(f.array_shape)
    dtype = np.dtype(h.byteorder + DTYPES[f.type])
    n_bytes = f.count * dtype.itemsize
    if f.encoding != "raw":  # the lattice must be what the encoded bytes can decode to
        check_claimed_size(n_bytes, length, where=where, compressed=True,
                           field=f"the lattice {' x '.join(map(str, f.dims))} of {f.type}")
    if f.encoding == "raw":
        buf = raw
    elif f.encoding == "HxByteRLE":
        buf = decode_hx_byte_rle(raw, n_bytes, where=where)
    elif f.encoding == "HxZip":
        try:
            # 47: a zlib or a gzip header, detected; one byte more than needed tells "too long"
            unzipped = zlib.decompressobj(wbits=47).decompress(raw, n_bytes + 1)
        except zlib.error as exc:
            raise FormatError(f"{where}: HxZip data ({length:,} bytes) do not decompress: {exc}") from exc
        if len(unzipped) != n_bytes:
            found = f"more than {n_bytes:,}" if len(unzipped) > n_bytes else f"{len(unzipped):,}"
            raise FormatError(f"{where}: HxZip data decompress to {found} bytes, the lattice needs {n_bytes:,}")
        buf = np.frombuffer(bytearray(unzipped), dtype=np.uint8)
    else:
        raise FormatError(f"{where}: unknown data encoding {f.encoding!r}; sxtlab reads raw, HxByteRLE and HxZip")
    return _native(buf.view(dtype).reshape(f.array_shape))


def field_memmap(h: Header, f: Field) -> np.memmap | None:
    """A read-only memory map of a raw binary field (file byte order), else ``None``."""
    if h.is_ascii or f.encoding != "raw" or f.type not in DTYPES:
        return None
    offset, _ = h.sections[f.marker]
    return np.memmap(h.path, dtype=np.dtype(h.byteorder + DTYPES[f.type]), mode="r",
                     offset=offset, shape=f.array_shape)


# --------------------------------------------------------------------------- writer
def _format_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _format_block(items: list[tuple[str, Any]], indent: int) -> list[str]:
    pad = "    " * indent
    lines = []
    for i, (key, value) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        if isinstance(value, list):
            lines.append(f"{pad}{key} {{")
            lines.extend(_format_block(value, indent + 1))
            lines.append(f"{pad}}}")
        else:
            vals = value if isinstance(value, tuple) else (value,)
            lines.append(f"{pad}{key} {' '.join(_format_value(v) for v in vals)}{sep}")
    return lines


_WRITE_TYPES = {np.dtype(v): k for k, v in DTYPES.items()}


def write_amiramesh(path: str | Path, data: Any, *, parameters: list[tuple[str, Any]],
                    field_name: str = "Data", encoding: str = "raw") -> None:
    """Write one scalar lattice as ``AmiraMesh BINARY-LITTLE-ENDIAN 2.1``.

    Parameters
    ----------
    path : path-like
    data : array-like, shape (nz, ny, nx)
        NumPy or dask array of a type in :data:`DTYPES`.
    parameters : list of (name, value)
        Entries of the ``Parameters`` block; a value is a scalar, a tuple of
        scalars, or a list of entries (a nested block).
    field_name : str
        ``"Labels"`` for a label field (Amira's name), ``"Data"`` otherwise.
    encoding : {"raw", "HxByteRLE", "HxZip"}
        Raw data are written slab by slab (a dask array is never loaded whole);
        compressed data are encoded in memory.

    Raises
    ------
    FormatError
        If the data are not 3-D or of a type AmiraMesh has no name for.
    """
    if getattr(data, "ndim", None) != 3:
        raise FormatError(f"{path}: AmiraMesh lattices are written from 3-D (z, y, x) arrays, got shape "
                          f"{tuple(getattr(data, 'shape', ()))}")
    dtype = np.dtype(data.dtype)
    type_ = _WRITE_TYPES.get(dtype.newbyteorder("="))
    if type_ is None:
        raise FormatError(
            f"{path}: AmiraMesh has no type for {dtype}; convert to one of "
            f"{', '.join(str(np.dtype(v)) for v in DTYPES.values())}"
        )
    nz, ny, nx = (int(s) for s in data.shape)
    le = dtype.newbyteorder("<")
    if encoding == "raw":
        payload = None
    elif encoding == "HxByteRLE":
        payload = encode_hx_byte_rle(np.asarray(data, dtype=le), slice_size=nx * ny * le.itemsize)
    elif encoding == "HxZip":
        payload = zlib.compress(np.asarray(data, dtype=le).tobytes(), 6)
    else:
        raise ValueError(f"encoding must be 'raw', 'HxByteRLE' or 'HxZip', got {encoding!r}")
    params = [*parameters, ("Content", f"{nx}x{ny}x{nz} {type_}, uniform coordinates"),
              ("CoordType", "uniform")]
    enc = "" if payload is None else f"({encoding},{len(payload)})"
    head = "\n".join([
        "# AmiraMesh BINARY-LITTLE-ENDIAN 2.1", "", "",
        f"define Lattice {nx} {ny} {nz}", "",
        "Parameters {", *_format_block(params, 1), "}", "",
        f"Lattice {{ {type_} {field_name} }} @1{enc}", "",
        "# Data section follows", "@1", "",
    ])
    with open(path, "wb") as fh:
        fh.write(head.encode("utf-8"))
        if payload is not None:
            fh.write(payload)
        else:  # z slab by slab, so a dask array is never loaded whole
            step = max(1, (64 << 20) // max(1, nx * ny * le.itemsize))
            for z in range(0, nz, step):
                fh.write(np.ascontiguousarray(np.asarray(data[z:z + step]), dtype=le).tobytes())
        fh.write(b"\n")
