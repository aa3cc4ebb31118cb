"""CBF files as bytes: split a file into its header and its compressed binary payload.

Only the binary section's MIME header is parsed here (it says where the payload starts, how long
it is and what shape it decodes to); the imgCIF/Pilatus header text is left to fabio, which reads
it in :func:`read_header`.  Decoding lives in :mod:`xrdct_dask.io.decode` so that a batch of
payloads can go to the GPU still compressed.
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import fabio

from xrdct_dask.errors import CorruptFrameError, NotRegularFileError, SizeMismatchError, TruncatedFrameError

BINARY_MARKER = b"\x0c\x1a\x04\xd5"
_FIELD = re.compile(rb"^[ \t]*([A-Za-z][A-Za-z0-9-]*)[ \t]*[:=][ \t]*(.*?)[ \t;]*\r?$", re.MULTILINE)
_SECTION = b"--CIF-BINARY-FORMAT-SECTION--"










OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(fd: int, path) -> os.stat_result:
    """``fstat`` of an open frame file; raises :class:`NotRegularFileError` unless it is a regular file."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{path}: {_kind(st.st_mode)}, not a frame file")
    return st


def read_file(path: str | Path) -> bytes:
    """The bytes of a regular file, opened so that nothing can block (``O_NONBLOCK``: a named pipe
    or a device in place of a frame raises :class:`NotRegularFileError` instead of hanging)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # not even opened: a device may act on open
            raise NotRegularFileError(f"{path}: {_kind(os.stat(path).st_mode)}, not a frame file")
        fd = os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: frame file not found") from None
    try:
        size = check_regular(fd, path).st_size
        parts = []
        while True:  # the file may have grown since fstat: read to its end
            chunk = os.read(fd, max(size, 1 << 16))
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class CbfPayload:
    """The compressed pixels of one CBF file.

    Attributes
    ----------
    data : bytes-like
        byte-offset compressed payload, exactly ``X-Binary-Size`` bytes.
    shape : (ny, nx)
        decoded image shape (slow, fast), from ``X-Binary-Size-Second/Fastest-Dimension``.
    md5 : str or None
        base64 ``Content-MD5`` of the payload, when the file has one.
    """

    data: memoryview
    shape: tuple[int, int]
    md5: str | None = None

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def check_md5(self) -> bool:
        """True when the file has no Content-MD5 or it matches the payload."""
        if self.md5 is None:
            return True
        return base64.b64encode(hashlib.md5(self.data).digest()).decode() == self.md5


def _binary_header(raw: bytes, name: str) -> tuple[int, int, tuple[int, int], str | None]:
    """Parse the MIME header of the binary section: ``(payload offset, nbytes, shape, md5)``."""
    start = raw.find(_SECTION)
    if start < 0:
        raise CorruptFrameError(f"{name}: no CIF binary section (not a CBF file?)")
    marker = raw.find(BINARY_MARKER, start)
    if marker < 0:
        raise CorruptFrameError(f"{name}: binary section has no start marker (truncated header?)")
    fields = {m.group(1).decode("ascii", "replace").lower(): m.group(2).decode("ascii", "replace").strip('"')
              for m in _FIELD.finditer(raw, start, marker)}
    try:
        nbytes = int(fields["x-binary-size"])
        nfast = int(fields["x-binary-size-fastest-dimension"])
        nslow = int(fields["x-binary-size-second-dimension"])
    except (KeyError, ValueError) as err:
        raise CorruptFrameError(f"{name}: binary header lacks a valid {err} field") from None
    if nbytes < 0 or nfast <= 0 or nslow <= 0:
        raise CorruptFrameError(f"{name}: binary header gives {nbytes} bytes for {nslow} x {nfast} pixels")
    if "byte_offset" not in fields.get("conversions", "x-cbf_byte_offset").lower():
        raise CorruptFrameError(f"{name}: compression {fields.get('conversions')!r} is not byte-offset")
    etype = fields.get("x-binary-element-type", "signed 32-bit integer")
    if "32-bit" not in etype:
        raise CorruptFrameError(f"{name}: element type {etype!r} is not a 32-bit integer")
    try:
        nelem = int(fields.get("x-binary-number-of-elements", nfast * nslow))
    except ValueError:
        raise CorruptFrameError(f"{name}: X-Binary-Number-of-Elements is not a number") from None
    if nelem != nfast * nslow or nfast <= 0 or nslow <= 0 or nbytes < 0:
        raise CorruptFrameError(f"{name}: {nelem} elements but the dimensions say {nslow} x {nfast}")
    return marker + len(BINARY_MARKER), nbytes, (nslow, nfast), fields.get("content-md5")


def parse_cbf(raw: bytes | memoryview, name: str = "<bytes>") -> CbfPayload:
    """Locate the byte-offset payload inside the bytes of a CBF file.

    Raises :class:`CorruptFrameError` naming ``name`` when the binary section is missing or not
    byte-offset int32; its subclass :class:`TruncatedFrameError` when the file ends inside the
    payload, and :class:`SizeMismatchError` when the file is whole but ``X-Binary-Size`` does not
    match the section (see :func:`check_extent`).
    """
    raw = bytes(raw) if not isinstance(raw, bytes) else raw
    begin, nbytes, shape, md5 = _binary_header(raw, name)
    check_extent(raw, begin, nbytes, shape, name)
    return CbfPayload(memoryview(raw)[begin:begin + nbytes], shape, md5)


def locate_payload(region: memoryview, name: str = "<bytes>", header_max: int = 16384):
    """Where the payload lies in a CBF file image (e.g. in pinned memory), without copying it.

    Returns ``(offset, nbytes, shape, md5)``; raises :class:`CorruptFrameError` as :func:`parse_cbf`.
    """
    head = bytes(region[:header_max])
    if head.find(BINARY_MARKER) < 0 and len(region) > header_max:
        head = bytes(region)  # an unusually long header
    begin, nbytes, shape, md5 = _binary_header(head, name)
    check_extent(region, begin, nbytes, shape, name)
    return begin, nbytes, shape, md5


_CLOSING = _SECTION + b"--"
_TAIL_BYTES = 16384  # the closing boundary of a whole file lies within its padding (<= 4095 B) of the end


def check_extent(buf, begin: int, nbytes: int, shape: tuple[int, int], name: str = "<bytes>") -> None:
    """Check that ``buf[begin:begin + nbytes]`` is exactly the payload of the CBF file image ``buf``
    (bytes or a memoryview, e.g. of pinned memory; only its last 16 kB are copied).

    Raises :class:`SizeMismatchError` when the file is whole (it ends with the closing boundary)
    but the payload would run into the boundary or leave non-padding bytes before it, or when
    ``nbytes`` cannot hold the pixels (byte-offset spends one byte per pixel at least: this also
    bounds what a decoder allocates by the file size); :class:`TruncatedFrameError` when the file
    ends inside the payload.
    """
    n = len(buf)
    end = begin + nbytes
    tail_start = max(begin, n - _TAIL_BYTES)
    k = bytes(buf[tail_start:n]).rfind(_CLOSING)
    if k >= 0:
        closing = tail_start + k
        if end > closing or bytes(buf[end:closing]).rstrip(b"\r\n").strip(b"\x00"):
            raise SizeMismatchError(f"{name}: X-Binary-Size says {nbytes} bytes but the binary section holds "
                                    f"{closing - begin} (payload and padding)")
    if end > n:
        raise TruncatedFrameError(f"{name}: truncated, payload needs {nbytes} bytes but only {n - begin} remain")
    if nbytes < shape[0] * shape[1]:
        raise SizeMismatchError(f"{name}: X-Binary-Size {nbytes} bytes cannot hold {shape[0]} x {shape[1]} pixels")


MAX_DECOMPRESSED_BYTES = 1 << 30  # a .cbf.gz that inflates past 1 GiB is not a detector frame
_GZIP, _BZIP2 = b"\x1f\x8b", b"BZh"


def decompress_frame(raw: bytes, name: str, limit: int = MAX_DECOMPRESSED_BYTES) -> bytes:
    """The CBF bytes of a file read whole: gzip / bzip2 by their magic bytes, else as is.

    Raises TruncatedFrameError when the compressed stream ends early, CorruptFrameError when it is
    not valid or inflates past ``limit`` bytes."""
    if raw[:2] == _GZIP:
        d, kind = zlib.decompressobj(16 + zlib.MAX_WBITS), "gzip"
    elif raw[:3] == _BZIP2:
        d, kind = bz2.BZ2Decompressor(), "bzip2"
    else:
        return raw
    try:
        out = d.decompress(raw, limit + 1) if kind == "gzip" else d.decompress(raw, max_length=limit + 1)
    except (OSError, zlib.error, ValueError, EOFError) as err:
        raise CorruptFrameError(f"{name}: not a valid {kind} stream ({err})") from None
    if len(out) > limit:
        raise CorruptFrameError(f"{name}: {kind} stream inflates past {limit} bytes")
    if not d.eof:
        raise TruncatedFrameError(f"{name}: {kind} stream ends before its end marker (truncated file)")
    return out


def read_cbf_payload(path: str | Path) -> CbfPayload:
    """Read one CBF file (plain, or gzip / bzip2 compressed as archives keep them: ``.cbf.gz``,
    ``.cbf.bz2``, told by their first bytes) and return its byte-offset payload (no decoding)."""
    return parse_cbf(decompress_frame(read_file(path), str(path)), str(path))


def read_header(path: str | Path) -> dict:
    """The header of a CBF file as fabio reads it (Pilatus ``# key value`` lines included)."""

    with fabio.open(str(path)) as img:
        header = dict(img.header)
    contents = header.get("_array_data.header_contents", "")
    for line in contents.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            key, _, val = line.partition(" ")
            header.setdefault(key.rstrip(":"), val.strip())
    return header



def frame_complete(path: str | Path, header_max: int = 16384) -> bool:
    """Whether the detector has finished writing the CBF file at ``path``, read without its payload.

    True when the file is a regular file whose binary header is whole, whose size reaches the
    header's promise (``X-Binary-Size`` bytes after the start marker) and whose last bytes hold
    the closing boundary of the binary section (written after the payload).  A gzip / bzip2 file
    is whole when its stream ends.  False for anything else: no file yet (or a temporary name not
    yet renamed), a header still being written, a payload short of its size, no trailer yet.
    Reads the first ``header_max`` and the last 16 kB of the file, never more (a file without the
    binary marker in its first ``header_max`` bytes is not taken as whole: a poll of a 200 MB file
    of something else costs 32 kB, not 200 MB); never raises for a frame.  A file that is whole
    by these tests may still be corrupt: the reader flags it (``xrdct watch`` reads a file that
    stays "not whole" and unchanged as it is).
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return False
    try:
        size = check_regular(fd, path).st_size
        head = os.pread(fd, header_max, 0)
        if head[:2] == _GZIP or head[:3] == _BZIP2:  # only a whole compressed stream says the file is whole
            try:
                decompress_frame(read_file(path), str(path))
                return True
            except (CorruptFrameError, OSError):
                return False
        try:
            begin, nbytes, _, _ = _binary_header(head, str(path))
        except CorruptFrameError:
            return False
        if size < begin + nbytes:
            return False
        n = min(_TAIL_BYTES, size - begin - nbytes + len(_CLOSING) + 64, size)
        tail = os.pread(fd, n, size - n)
        return _CLOSING in tail
    except OSError:
        return False
    finally:
        os.close(fd)
