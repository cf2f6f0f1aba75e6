"""The hand-written Example encoder agrees with TensorFlow's own protobuf and parser."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from data_build import schema


def _sample_values() -> dict[str, object]:
    """A non-default value for every field (so a dropped field cannot pass unnoticed)."""
    values: dict[str, object] = {}
    for i, f in enumerate(schema.FIELDS):
        if f.dtype == "bytes":
            one: object = f"{f.key}-value-\u00e9".encode() + bytes([0, 255, i])
        elif f.dtype == "int64":
            one = [-(2**40), 7][i % 2] + i  # negative int64s use 10-byte varints
        else:
            one = 0.5 + i * 1.25
        values[f.key] = one if f.length is None else [one] * f.length
    values["labels"] = [1, 0, 1, 0, 0, 1]
    values["pixel_spacing"] = [0.488281, 0.25]
    values["position"] = [-125.0, -120.5, 62.75]
    return values


def _tf_example(values: dict[str, object]) -> tf.train.Example:
    feature = {}
    for f in schema.FIELDS:
        v = values[f.key]
        items = [v] if f.length is None else list(v)  # type: ignore[arg-type]
        if f.dtype == "bytes":
            feature[f.key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=items))
        elif f.dtype == "int64":
            feature[f.key] = tf.train.Feature(int64_list=tf.train.Int64List(value=items))
        else:
            feature[f.key] = tf.train.Feature(float_list=tf.train.FloatList(value=items))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def test_hand_encoding_equals_tf_protobuf() -> None:
    values = _sample_values()
    hand = schema.encode_example(values)
    assert tf.train.Example.FromString(hand) == _tf_example(values)


def test_every_field_survives_the_real_parser() -> None:
    values = _sample_values()
    parsed = tf.io.parse_single_example(schema.encode_example(values), schema.feature_spec())
    assert set(parsed) == {f.key for f in schema.FIELDS}
    for f in schema.FIELDS:
        got = parsed[f.key].numpy()
        if f.dtype == "float":
            np.testing.assert_allclose(got, np.float32(values[f.key]), err_msg=f.key)
        else:
            assert np.array_equal(got, np.asarray(values[f.key])), f.key


def test_missing_keys_take_defaults_and_decode_example_matches() -> None:
    record = schema.decode_example(schema.encode_example({"id": "ID_1", "labels": [0, 1, 0, 0, 0, 0]}))
    assert record["id"] == b"ID_1"
    assert record["labels"] == [0, 1, 0, 0, 0, 0]
    assert record["mask"] == b"" and record["has_mask"] == 0
    assert record["pixel_spacing"] == [0.0, 0.0]


def test_bad_values_raise_schema_error() -> None:
    with pytest.raises(schema.SchemaError, match="unknown"):
        schema.encode_example({"nope": 1})
    with pytest.raises(schema.SchemaError, match="labels"):
        schema.encode_example({"labels": [1, 0]})
    with pytest.raises(schema.SchemaError, match="height"):
        schema.encode_example({"height": "tall"})
