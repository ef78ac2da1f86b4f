"""Reader and writer for the IDX format of (Fashion-)MNIST, gzip-compressed or raw.

Format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``0x00 0x00 <type> <ndim>``, then
``ndim`` big-endian uint32 dimensions, then the data in C order, big-endian. Type codes:
``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mmexp.errors import DatasetNotFoundError

from .base import DatasetFormatError

__all__ = ["read_idx", "read_idx_header", "write_idx", "IDX_DTYPES"]

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == _GZIP_MAGIC else open(path, "rb")  # type: ignore[return-value]


def _parse_header(f: BinaryIO, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) < 4:
        raise DatasetFormatError(f"{path} is not an IDX file: it has fewer than 4 bytes (truncated or empty)")
    if magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES or not 1 <= magic[3] <= 8:
        raise DatasetFormatError(
            f"{path} is not an IDX file: bad magic number 0x{magic.hex()} (expected 0x0000TTNN with type TT in "
            f"{{{', '.join(f'{k:02x}' for k in IDX_DTYPES)}}}); the file is corrupt or of another format"
        )
    ndim = magic[3]
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DatasetFormatError(f"{path} is truncated: the IDX header announces {ndim} dimensions but ends early")
    return IDX_DTYPES[magic[2]], tuple(struct.unpack(f">{ndim}I", raw))


def read_idx_header(path: str | os.PathLike) -> tuple[np.dtype, tuple[int, ...]]:
    """``(dtype, shape)`` of an IDX file without reading its data."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"IDX file {path} does not exist")
    try:
        with _open(path) as f:
            return _parse_header(f, path)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetFormatError(f"cannot read IDX file {path}: {type(e).__name__}: {e}") from e


def read_idx(path: str | os.PathLike, max_items: int | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` detected by content, not name) into a native-endian array.

    Args:
        path: the file.
        max_items: read only the first ``max_items`` entries along the first dimension (fast
            access to the head of big files).

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetFormatError: bad magic number, truncated data, or corrupt gzip stream (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"IDX file {path} does not exist")
    try:
        with _open(path) as f:
            dtype, shape = _parse_header(f, path)
            n = shape[0] if max_items is None else min(int(max_items), shape[0])
            shape = (n, *shape[1:])
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * dtype.itemsize
            data = bytearray(f.read(nbytes))  # writable, so torch.from_numpy does not warn
    except DatasetFormatError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetFormatError(f"cannot read IDX file {path} (corrupt or truncated): {type(e).__name__}: {e}") from e
    if len(data) != nbytes:
        raise DatasetFormatError(
            f"{path} is truncated: the header announces shape {shape} ({nbytes} bytes of data) "
            f"but only {len(data)} bytes follow; re-download the file"
        )
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    arr = read_idx(path)
    arr.setflags(write=False)
    return arr


def read_idx_cached(path: str | os.PathLike) -> np.ndarray:
    """:func:`read_idx` of the whole file, cached per process (keyed by path, mtime and size) so
    building train and val splits decodes a big ``.gz`` only once. The array is read-only."""
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError(f"IDX file {p} does not exist")
    st = p.stat()
    return _read_idx_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``compress`` or the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).astype(IDX_DTYPES[code], copy=False).tobytes()
    compress = path.name.endswith(".gz") if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb", compresslevel=6) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path
