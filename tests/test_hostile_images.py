"""Hostile render JPEGs: CMYK, damaged in the middle with an intact EOI, padding after EOI
(issue #12 D3, D4, D12). Build (`convert.make_example`) and verify (`records._check_record`)
must agree with the training reader's decoder (`tf.io.decode_jpeg(channels=1)`)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import render_case
from PIL import Image

from data_build import convert, records, schema
from data_build.cases import Skip
from data_build.windows import WINDOW_NAMES


def _replace_window(case: object, data: bytes) -> str:
    path = case.render_paths[WINDOW_NAMES[1]]  # type: ignore[attr-defined]
    Path(path).write_bytes(data)
    return path


def _cmyk_jpeg(size: int = 32) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (size, size, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def _damaged_middle(data: bytes) -> bytes:
    broken = bytearray(data)
    middle = len(broken) // 2
    broken[middle : middle + 200] = b"\x00" * 200
    assert broken.endswith(b"\xff\xd9")  # the EOI survives
    return bytes(broken)


def _record_values(case: object) -> dict:
    converted = convert.make_example(case)  # type: ignore[arg-type]
    assert not isinstance(converted, Skip), converted
    import tensorflow as tf

    parsed = tf.io.parse_single_example(converted.serialized, schema.feature_spec())
    values = {k: v.numpy() for k, v in parsed.items()}
    values["id"], values["source"] = values["id"].decode(), values["source"].decode()
    return values


def test_cmyk_render_is_a_corrupt_image_skip_as_the_reader_cannot_decode_it(tmp_path: Path) -> None:
    import tensorflow as tf

    data = _cmyk_jpeg()
    with pytest.raises(tf.errors.InvalidArgumentError):  # what the training reader does with it
        tf.io.decode_jpeg(data, channels=1)
    case = render_case(tmp_path, "ID_cmyk", size=32)
    path = _replace_window(case, data)
    skip = convert.make_example(case)
    assert isinstance(skip, Skip) and skip.reason == "corrupt-image" and skip.path == path
    assert "CMYK" in skip.detail


def test_verify_flags_a_cmyk_render_in_a_record(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_cmyk", size=32)
    values = _record_values(case)
    values[schema.image_key(WINDOW_NAMES[1])] = _cmyk_jpeg()
    problems = records._check_record(values, 0)
    assert any("CMYK" in p for p in problems)


def test_jpeg_damaged_in_the_middle_is_a_corrupt_image_skip(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_damaged", size=64)
    data = Path(case.render_paths[WINDOW_NAMES[1]]).read_bytes()
    _replace_window(case, _damaged_middle(data))
    skip = convert.make_example(case)
    assert isinstance(skip, Skip) and skip.reason == "corrupt-image"
    assert "Corrupt JPEG data" in skip.detail


def test_verify_flags_a_jpeg_damaged_in_the_middle(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_damaged", size=64)
    values = _record_values(case)
    key = schema.image_key(WINDOW_NAMES[1])
    values[key] = _damaged_middle(values[key])
    assert any("Corrupt JPEG data" in p for p in records._check_record(values, 0))


def test_padding_after_eoi_is_accepted_by_build_and_verify(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_padded", size=32)
    path = case.render_paths[WINDOW_NAMES[1]]
    _replace_window(case, Path(path).read_bytes() + b"\x00" * 4096)
    values = _record_values(case)
    assert records._check_record(values, 0) == []


def test_truncated_jpeg_is_still_a_corrupt_image_skip(tmp_path: Path) -> None:
    case = render_case(tmp_path, "ID_truncated", size=64)
    data = Path(case.render_paths[WINDOW_NAMES[1]]).read_bytes()
    _replace_window(case, data[: len(data) * 3 // 4])
    skip = convert.make_example(case)
    assert isinstance(skip, Skip) and skip.reason == "corrupt-image"
