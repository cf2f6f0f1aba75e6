"""TFRecord framing without TensorFlow: read and write shards byte for byte as TensorFlow does.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little-endian) | uint32 masked CRC32C of the 8 length bytes
    | length bytes of data        | uint32 masked CRC32C of the data

(`tensorflow/core/lib/io/record_writer.cc`). Both CRCs are checked on every read, so a
corrupt or truncated shard raises `CorruptRecordError` naming the file and byte offset
instead of yielding damaged bytes.

CRC32C comes from `google-crc32c` (Google's C library; hardware CRC32C where the CPU has it):
a pure-Python CRC costs milliseconds per 150 kB record, about the cost of decoding the record's
four JPEGs. Where its C extension is missing, the package falls back to its own pure-Python
code, which is correct but slow (`CRC_IMPLEMENTATION` says which one runs).
"""
from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

import google_crc32c

from data_build.files import ordinary_mode

#: "c" when google-crc32c's C extension runs, "python" for its slow pure-Python fallback.
CRC_IMPLEMENTATION: str = google_crc32c.implementation
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_FOOTER = struct.Struct("<I")  # masked CRC of the data
HEADER_BYTES = _HEADER.size  # 12
FOOTER_BYTES = _FOOTER.size  # 4


class CorruptRecordError(ValueError):
    """A shard's framing is broken: a truncated record, or a CRC that does not match."""


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC32C of `data`: rotate right by 15 bits, add a constant (uint32).

    The mask keeps a CRC of bytes that embed CRCs from being trivially zero
    (`tensorflow/core/lib/hash/crc32c.h`).
    """
    crc = google_crc32c.value(bytes(data) if isinstance(data, memoryview) else data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record's bytes as written to a TFRecord file (header, data, footer)."""
    length = struct.pack("<Q", len(data))
    return (
        length + struct.pack("<I", masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))
    )


def _corrupt(path: str | os.PathLike[str], offset: int, what: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"{path}: corrupt record at byte offset {offset} ({what}). The shard is damaged or was "
        f"cut short: run `fusion-verify {Path(path).parent}` and rebuild the shards it names "
        "(fusion-build --resume rewrites them)."
    )


def _read_header(handle: BinaryIO, path: str | os.PathLike[str], offset: int) -> int | None:
    """The data length of the record at `offset`; None at a clean end of file."""
    header = handle.read(HEADER_BYTES)
    if not header:
        return None
    if len(header) < HEADER_BYTES:
        raise _corrupt(path, offset, f"truncated header: {len(header)} of {HEADER_BYTES} bytes")
    length, crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != crc:
        raise _corrupt(path, offset, "length CRC32C mismatch")
    return length


def _read_body(handle: BinaryIO, path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    data = handle.read(length)
    footer = handle.read(FOOTER_BYTES)
    if len(data) < length or len(footer) < FOOTER_BYTES:
        raise _corrupt(path, offset, f"truncated: the header promises {length} data bytes")
    if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
        raise _corrupt(path, offset, "data CRC32C mismatch")
    return data


def read_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """Every record of one TFRecord file, in order, each checked against both CRCs.

    Raises:
      CorruptRecordError: a truncated record or a CRC mismatch (names file and byte offset).
    """
    offset = 0
    with open(path, "rb") as handle:
        while True:
            length = _read_header(handle, path, offset)
            if length is None:
                return
            yield _read_body(handle, path, offset, length)
            offset += HEADER_BYTES + length + FOOTER_BYTES


def index_records(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """(byte offset, data length) of every record, from the headers alone (data is skipped).

    The length CRCs are checked; data CRCs are checked later, by `read_record_at`.

    Raises:
      CorruptRecordError: a broken header, or a record running past the end of the file.
    """
    size = os.path.getsize(path)
    out: list[tuple[int, int]] = []
    offset = 0
    with open(path, "rb") as handle:
        while True:
            length = _read_header(handle, path, offset)
            if length is None:
                return out
            end = offset + HEADER_BYTES + length + FOOTER_BYTES
            if end > size:
                raise _corrupt(path, offset, f"truncated: the header promises {length} data bytes")
            out.append((offset, length))
            handle.seek(end)
            offset = end


def read_record_at(
    fd: int, path: str | os.PathLike[str], offset: int, length: int | None = None
) -> bytes:
    """The record at byte `offset` of an open TFRecord file (both CRCs checked).

    Uses `os.pread`, which moves no shared file position, so worker processes forked with an
    open descriptor can read from it at once.

    Args:
      fd: an OS file descriptor open for reading.
      path: the file's path, for error messages.
      offset: byte offset of the record's header (from `index_records`).
      length: the record's data length when known (one read instead of two).

    Raises:
      CorruptRecordError: as `read_records`.
    """
    if length is None:
        header = os.pread(fd, HEADER_BYTES, offset)
        if len(header) < HEADER_BYTES:
            raise _corrupt(path, offset, f"truncated header: {len(header)} of {HEADER_BYTES} bytes")
        length = _HEADER.unpack(header)[0]
    size = HEADER_BYTES + length + FOOTER_BYTES
    chunk = os.pread(fd, size, offset)
    if len(chunk) < HEADER_BYTES:
        raise _corrupt(path, offset, f"truncated header: {len(chunk)} of {HEADER_BYTES} bytes")
    stored_length, crc = _HEADER.unpack_from(chunk)
    if masked_crc32c(chunk[:8]) != crc:
        raise _corrupt(path, offset, "length CRC32C mismatch")
    if stored_length != length or len(chunk) < size:
        raise _corrupt(path, offset, f"truncated or changed: expected {length} data bytes")
    data = chunk[HEADER_BYTES:HEADER_BYTES + length]
    if masked_crc32c(data) != _FOOTER.unpack_from(chunk, HEADER_BYTES + length)[0]:
        raise _corrupt(path, offset, "data CRC32C mismatch")
    return data


class TFRecordWriter:
    """Write one TFRecord file atomically: to a temporary name, renamed over `path` on close.

    The bytes equal `tf.io.TFRecordWriter`'s (no compression). A writer left by an exception
    (or `abort`) removes its temporary file, so `path` is either whole or untouched.

    Example::

        with TFRecordWriter(out / "train-00000-of-00001.tfrecord") as writer:
            writer.write(schema.encode_example(values))
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        os.fchmod(fd, ordinary_mode())  # mkstemp's 0600 would make the shard private to its owner
        self._handle: BinaryIO | None = os.fdopen(fd, "wb")
        self.records = 0

    def write(self, data: bytes) -> None:
        """Append one record (serialised bytes, e.g. a `tf.train.Example`)."""
        if self._handle is None:
            raise ValueError(f"{self.path}: write after close")
        self._handle.write(frame(data))
        self.records += 1

    def close(self) -> None:
        """Flush, fsync and rename the temporary file to `path`."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        try:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Drop what was written; `path` is left as it was."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
