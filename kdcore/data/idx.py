"""Reader for IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or plain.

Layout: 2 zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension, then the values (big-endian) in C order.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from kdcore.errors import DataError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file {path}: {exc.strerror or exc}") from None
    if blob[:2] != b"\x1f\x8b":
        return blob
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = dec.decompress(blob)
    except zlib.error as exc:
        raise DataError(
            f"file {path} is corrupt: it is not a valid gzip stream ({exc}); delete it and get it again"
        ) from None
    if not dec.eof:
        # keep what was decompressed: the size check below says how much is missing
        _check_header_and_size(path, data, compressed_truncated=True)
        raise DataError(f"file {path} is truncated: the gzip stream ends early; delete it and get it again")
    return data


def _what(ndim: int) -> str:
    return {1: "label data", 3: "image data"}.get(ndim, "data")


def _check_header_and_size(
    path: Path, data: bytes, compressed_truncated: bool = False
) -> tuple[np.dtype, tuple[int, ...], int]:
    if len(data) < 4:
        raise DataError(f"file {path} is truncated: it has {len(data)} bytes, fewer than an IDX header")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES or data[3] == 0:
        raise DataError(
            f"file {path} is not an IDX file: bad magic number 0x{data[:4].hex()} "
            "(expected 0x0000 then a type code and the number of dimensions)"
        )
    dtype, ndim = IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"file {path} is truncated: its header needs {header} bytes, found {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found < expected:
        how = " (the gzip stream ends early)" if compressed_truncated else ""
        raise DataError(
            f"file {path} is truncated: expected {expected} bytes of {_what(ndim)}, found {found}{how}; "
            "delete it and get it again"
        )
    if found > expected:
        raise DataError(
            f"file {path} is corrupt: expected {expected} bytes of {_what(ndim)} after the header, found {found}"
        )
    return dtype, shape, header


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array of its shape and native byte order."""
    path = Path(path)
    data = _read_bytes(path)
    dtype, shape, header = _check_header_and_size(path, data)
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True) if dtype.byteorder == ">" else arr.copy()
