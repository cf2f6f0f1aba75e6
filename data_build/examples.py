"""Decode `tf.train.Example` bytes without TensorFlow: the twin of `schema.encode_example`.

The decoder is driven by `schema.FIELDS`, like the writer and the tf.data parser
(`schema.feature_spec`), and returns what `tf.io.parse_single_example(serialized,
schema.feature_spec())` returns, as NumPy values: a scalar bytes field as ``bytes``, a scalar
int64 / float field as ``np.int64`` / ``np.float32``, a vector field as an ``int64`` /
``float32`` array of its length. A field absent from the record takes its default.

Protocol buffer wire format, as far as an Example needs it::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }   // entries: key = 1, value = 2
    Feature   { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                        Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }   // little-endian float32
    Int64List { repeated int64 value = 1 [packed]; }   // varints, negatives as 10-byte
                                                       // two's complement (no zigzag: that
                                                       // is sint64's encoding, not int64's)

Packed and unpacked repeated numbers are both accepted (a parser must, and other writers emit
either); a repeated map key keeps its last value, as protobuf merges them (and TensorFlow too).
Unknown fields are skipped, as protobuf does; TensorFlow's fast Example parser refuses them
inside `Features`, and no writer of ours emits any.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from data_build.schema import FIELDS, FIELDS_BY_KEY, Field, SchemaError

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_DTYPE_OF_KIND = {1: "bytes", 2: "float", 3: "int64"}  # Feature oneof field number -> dtype


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise SchemaError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise SchemaError("varint longer than 10 bytes")


def _fields(buf: bytes, start: int, end: int) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field in buf[start:end].

    A length-delimited value is a (start, end) pair into `buf`, so nested messages and
    multi-kB JPEG payloads are not copied until needed.
    """
    out = []
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            value = (pos, pos + length)
            pos += length
        elif wire == _I32:
            value, pos = (pos, pos + 4), pos + 4
        elif wire == _I64:
            value, pos = (pos, pos + 8), pos + 8
        else:
            raise SchemaError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise SchemaError("field runs past the end of its message")
        out.append((number, wire, value))
    return out


def _int64(value: int) -> int:
    """A decoded varint as a signed int64 (two's complement)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _values(buf: bytes, kind: int, span: tuple[int, int]) -> list[Any]:
    """The values of one BytesList / FloatList / Int64List message at buf[span]."""
    values: list[Any] = []
    for number, wire, value in _fields(buf, *span):
        if number != 1:
            continue  # not `value`: an unknown field
        if kind == 1 and wire == _LEN:
            values.append(bytes(buf[value[0]:value[1]]))
        elif kind == 2 and wire == _LEN:  # packed floats
            values.extend(np.frombuffer(buf, "<f4", (value[1] - value[0]) // 4, value[0]).tolist())
        elif kind == 2 and wire == _I32:
            values.append(float(np.frombuffer(buf, "<f4", 1, value[0])[0]))
        elif kind == 3 and wire == _LEN:  # packed varints
            pos, end = value
            while pos < end:
                item, pos = _varint(buf, pos)
                values.append(_int64(item))
        elif kind == 3 and wire == _VARINT:
            values.append(_int64(value))
        else:
            raise SchemaError(f"value of wire type {wire} in a {_DTYPE_OF_KIND[kind]} list")
    return values


def _feature_span(buf: bytes, span: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
    """(oneof kind 1/2/3, span of its list) of a Feature message; None for an empty Feature."""
    found = None
    for number, wire, value in _fields(buf, *span):
        if number in _DTYPE_OF_KIND and wire == _LEN:
            found = (number, value)  # a oneof: the last one set wins
    return found


def _finish(field: Field, values: list[Any]) -> Any:
    """Check a field's values against the schema and give them parse_single_example's types."""
    expected = 1 if field.length is None else field.length
    if len(values) != expected:
        raise SchemaError(f"{field.key}: expected {expected} value(s), got {len(values)}")
    if field.dtype == "bytes":
        return values[0] if field.length is None else np.array(values, dtype=object)
    array = np.array(values, dtype=np.int64 if field.dtype == "int64" else np.float32)
    return array[0] if field.length is None else array


def parse_example(serialized: bytes) -> dict[str, Any]:
    """One serialised `tf.train.Example` -> {key: value} for every field of `schema.FIELDS`.

    Args:
      serialized: the record's bytes (e.g. from `data_build.tfrecord.read_records`).

    Returns:
      Every schema key: ``bytes`` for scalar bytes fields, ``np.int64`` / ``np.float32`` for
      scalar numbers, int64 / float32 arrays of the field's length for vectors; defaults for
      absent keys. Keys that are not in the schema are ignored, as the tf.data parser does.

    Raises:
      SchemaError: bytes that are not an Example, a feature of another dtype than the schema
        declares, or a vector of the wrong length.
    """
    buf = bytes(serialized)
    found: dict[str, tuple[int, tuple[int, int]] | None] = {}
    for number, wire, features in _fields(buf, 0, len(buf)):
        if number != 1 or wire != _LEN:
            continue
        for entry_number, entry_wire, entry in _fields(buf, *features):
            if entry_number != 1 or entry_wire != _LEN:
                continue
            key, feature = None, None
            for part, part_wire, value in _fields(buf, *entry):
                if part == 1 and part_wire == _LEN:
                    key = buf[value[0]:value[1]].decode("utf-8", "replace")
                elif part == 2 and part_wire == _LEN:
                    feature = value
            if key in FIELDS_BY_KEY:
                found[key] = _feature_span(buf, feature) if feature is not None else None
    out: dict[str, Any] = {}
    for field in FIELDS:
        spec = found.get(field.key)
        if spec is None:
            default = field.default
            out[field.key] = _finish(field, [default] if field.length is None else list(default))
            continue
        kind, span = spec
        if _DTYPE_OF_KIND[kind] != field.dtype:
            raise SchemaError(f"{field.key}: a {_DTYPE_OF_KIND[kind]} feature, the schema says {field.dtype}")
        out[field.key] = _finish(field, _values(buf, kind, span))
    return out
