"""The record schema, declared once.

Every feature of a shard is listed in `FIELDS`. The writer (`encode_example`) and the parser
(`feature_spec`, used by `fusion.data`) are both generated from that list, so they cannot drift.

The writer encodes the `tf.train.Example` protocol buffer by hand (a few varints and
length-delimited fields). That keeps TensorFlow out of the build's worker processes, which
then cost tens of MB each instead of hundreds; a test checks the bytes against
`tf.train.Example` and `tf.io.parse_single_example`.

Bump `SCHEMA_VERSION` whenever a field is added, removed or changes meaning.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from data_build.errors import DataBuildError
from data_build.windows import WINDOW_NAMES

SCHEMA_VERSION = 1

#: Label order of the `labels` feature and of the model's class head.
LABEL_NAMES: tuple[str, ...] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
#: The five hemorrhage types (labels without "any").
TYPE_NAMES: tuple[str, ...] = LABEL_NAMES[1:]
#: Render folder types of the drop. "multi" = several types; "normal" = no bleed.
FOLDER_TYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "multi",
    "normal",
    "subarachnoid",
    "subdural",
)

#: HU are stored as uint16 = HU + HU_OFFSET in a 16-bit PNG (lossless for any int16 HU).
HU_OFFSET = 32768


@dataclass(frozen=True)
class Field:
    """One feature of a record.

    Attributes:
      key: feature key in the tf.train.Example.
      dtype: "bytes", "int64" or "float".
      length: None for a scalar, n for a fixed-length vector.
      doc: meaning and units.
    """

    key: str
    dtype: str
    length: int | None
    doc: str

    @property
    def default(self) -> Any:
        zero = {"bytes": b"", "int64": 0, "float": 0.0}[self.dtype]
        return zero if self.length is None else [zero] * self.length


def image_key(window_name: str) -> str:
    """Feature key of one window's JPEG bytes."""
    return f"image/{window_name}"


FIELDS: tuple[Field, ...] = (
    Field("id", "bytes", None, "slice id, e.g. ID_0002081b6"),
    Field("patient_id", "bytes", None, "DICOM PatientID, '' when unknown"),
    Field("study_id", "bytes", None, "DICOM StudyInstanceUID, '' when unknown"),
    Field("series_id", "bytes", None, "DICOM SeriesInstanceUID, '' when unknown"),
    Field("source", "bytes", None, "'render' (four JPEG windows) or 'dicom' (HU PNG)"),
    Field("folder_type", "bytes", None, "render folder type (see FOLDER_TYPES), '' for DICOM"),
    Field("height", "int64", None, "image height in pixels (full resolution)"),
    Field("width", "int64", None, "image width in pixels (full resolution)"),
    *(
        Field(image_key(w), "bytes", None, f"{w} render: original JPEG bytes; '' for DICOM")
        for w in WINDOW_NAMES
    ),
    Field("image/hu", "bytes", None, "HU as 16-bit PNG of HU + HU_OFFSET; '' for renders"),
    Field("labels", "int64", len(LABEL_NAMES), "0/1 per LABEL_NAMES"),
    Field("has_labels", "int64", None, "1 when labels are known"),
    Field("mask", "bytes", None, "bleed mask, 8-bit PNG 0/255, height x width; '' if unknown"),
    Field("has_mask", "int64", None, "1 when the mask is known (normal slices: known empty)"),
    Field("mask_source", "bytes", None, "correct | majority | tracing | normal | ''"),
    Field("area_pixels", "float", None, "bleed area in pixels at full resolution"),
    Field("area_mm2", "float", None, "bleed area in mm^2 (0 when spacing unknown)"),
    Field("has_area", "int64", None, "1 when area_pixels is known (= has_mask)"),
    Field("has_area_mm2", "int64", None, "1 when area_mm2 is known (mask and spacing known)"),
    Field("pixel_spacing", "float", 2, "row, column spacing in mm; 0, 0 when unknown"),
    Field("has_spacing", "int64", None, "1 when pixel_spacing is known"),
    Field("position", "float", 3, "ImagePositionPatient in mm; 0s when unknown"),
    Field("has_position", "int64", None, "1 when position is known"),
)

FIELDS_BY_KEY: Mapping[str, Field] = {f.key: f for f in FIELDS}


class SchemaError(DataBuildError, ValueError):
    """A record's values do not fit the schema."""


# --- writer ----------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 is encoded as its two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delimited(field_number: int, payload: bytes) -> bytes:
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def _feature(field: Field, value: Any) -> bytes:
    values = [value] if field.length is None else list(value)
    if field.length is not None and len(values) != field.length:
        raise SchemaError(f"{field.key}: expected {field.length} values, got {len(values)}")
    if field.dtype == "bytes":
        items = b"".join(
            _delimited(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values
        )
        return _delimited(1, items)  # Feature.bytes_list = 1
    if field.dtype == "float":
        packed = struct.pack(f"<{len(values)}f", *(float(v) for v in values))
        return _delimited(2, _delimited(1, packed))  # Feature.float_list = 2, packed
    packed = b"".join(_varint(int(v)) for v in values)
    return _delimited(3, _delimited(1, packed))  # Feature.int64_list = 3, packed


def encode_example(values: Mapping[str, Any]) -> bytes:
    """Serialise one record as `tf.train.Example` bytes.

    Args:
      values: feature key -> value. Missing keys take the field's default; unknown keys raise.

    Returns:
      The serialised Example.

    Raises:
      SchemaError: an unknown key or a value of the wrong length or type.
    """
    unknown = set(values) - set(FIELDS_BY_KEY)
    if unknown:
        raise SchemaError(f"unknown feature keys: {sorted(unknown)}")
    entries = []
    for field in FIELDS:
        value = values.get(field.key, field.default)
        if isinstance(value, np.ndarray):
            value = value.tolist()
        try:
            feature = _feature(field, value)
        except (TypeError, ValueError, struct.error) as err:
            raise SchemaError(f"{field.key}: {err}") from err
        entry = _delimited(1, field.key.encode("utf-8")) + _delimited(2, feature)
        entries.append(_delimited(1, entry))  # Features.feature map entry
    return _delimited(1, b"".join(entries))  # Example.features = 1


# --- parser ----------------------------------------------------------------------------------


def feature_spec() -> dict[str, Any]:
    """`tf.io.parse_example` spec for every field (imports TensorFlow)."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    return {
        f.key: tf.io.FixedLenFeature(
            [] if f.length is None else [f.length], dtypes[f.dtype], default_value=f.default
        )
        for f in FIELDS
    }


def decode_example(serialized: bytes) -> dict[str, Any]:
    """Parse one record into Python values (for verify, tests and tools; imports TensorFlow)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    out: dict[str, Any] = {}
    for field in FIELDS:
        value = parsed[field.key].numpy()
        if field.length is None:
            value = value.item() if hasattr(value, "item") else value
        else:
            value = value.tolist()
        out[field.key] = value
    return out
