"""Bytes to UTF-8: the file's encoding (UTF-8, UTF-8 with BOM, GB18030) and non-CSV content."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.errors import InputError


def _is_ascii(buf: pa.Buffer, block: int = 1 << 23) -> bool:
    a = np.frombuffer(buf, dtype=np.uint8)
    n8 = len(a) // 8 * 8
    words = a[:n8].view(np.uint64)
    high = np.uint64(0x8080808080808080)
    for i in range(0, len(words), block):
        if (words[i : i + block] & high).any():
            return False
    return not (a[n8:] & 0x80).any()


def load_utf8(path: Path) -> tuple[pa.Buffer, str]:
    """Return the file as a UTF-8 Arrow buffer (BOM stripped) and the encoding found.

    Pure-ASCII files are memory-mapped and handed to pyarrow without a copy.
    """
    try:
        if path.is_dir():
            raise IsADirectoryError(path)
        size = path.stat().st_size
        mapped = pa.memory_map(str(path)).read_buffer() if size else pa.py_buffer(b"")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a CSV file") from None
    if re.search(rb"\S", memoryview(mapped)) is None:
        raise InputError(path, "file is empty")
    head = memoryview(mapped)[:65536].tobytes()
    if head.startswith(b"PAR1"):
        raise InputError(path, "not a CSV file: looks like a Parquet file")
    for magic, kind in (
        (b"PK\x03\x04", "a ZIP/Excel file"),
        (b"\x1f\x8b", "a gzip file"),
        (b"\xd0\xcf\x11\xe0", "an old Excel/OLE file"),
    ):
        if head.startswith(magic):
            raise InputError(path, f"not a CSV file: looks like {kind}")
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise InputError(path, "not a CSV file: binary content (NUL byte)", line=line)
    if not head.startswith(codecs.BOM_UTF8) and _is_ascii(mapped):
        return mapped, "utf-8"
    raw = mapped.to_pybytes()
    if raw.startswith(codecs.BOM_UTF8):
        try:
            raw[3:].decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start + 3) + 1
            raise InputError(
                path, f"undecodable byte 0x{raw[e.start + 3]:02x}: not valid UTF-8", line=line
            ) from None
        return pa.py_buffer(raw).slice(3), "utf-8-sig"
    try:
        raw.decode("utf-8")
        return pa.py_buffer(raw), "utf-8"
    except UnicodeDecodeError as e1:
        err_utf8 = e1
    try:
        return pa.py_buffer(raw.decode("gb18030").encode("utf-8")), "gb18030"
    except UnicodeDecodeError as e2:
        pos = max(err_utf8.start, e2.start)
        line = raw.count(b"\n", 0, pos) + 1
        raise InputError(
            path,
            f"undecodable byte 0x{raw[pos]:02x}: not valid in UTF-8 nor GB18030",
            line=line,
        ) from None
