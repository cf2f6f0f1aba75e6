"""Model factory: heads, both fusions, window weights, size validation, save/load."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from fusion.config import AUX_MASK, ConfigError, ModelConfig
from fusion.layers import GroupNorm, MaskWeightedPooling, TypeAttentionPooling, WindowAttentionFusion
from fusion.model import FUSION_LAYER, build_model, inference_model, window_weights

SIZE = 32


def tiny(**kwargs: object) -> ModelConfig:
    base = dict(image_size=SIZE, width=4, depth=2, fusion_width=4, groups=2)
    base.update(kwargs)
    return ModelConfig(**base)  # type: ignore[arg-type]


def images(n: int = 2, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 4), dtype=np.float32)


@pytest.mark.parametrize("fusion", ["early", "attention"])
def test_heads_have_documented_shapes(fusion: str) -> None:
    model = build_model(tiny(fusion=fusion))
    out = model(images(3), training=False)
    assert set(out) == {"class", "area", "mask"}
    assert tuple(out["class"].shape) == (3, 6)
    assert tuple(out["area"].shape) == (3, 1)
    assert tuple(out["mask"].shape) == (3, SIZE, SIZE, 1)
    for key in ("class", "mask"):
        values = np.asarray(out[key])
        assert values.min() >= 0.0 and values.max() <= 1.0, key  # sigmoid probabilities
        assert values.dtype == np.float32
    assert (FUSION_LAYER in [layer.name for layer in model.layers]) == (fusion == "attention")


@pytest.mark.parametrize("norm, block, fusion", [("batch", "residual", "attention"), ("batch", "plain", "early"),
                                                  ("group", "plain", "attention")])
def test_norm_and_block_options_build_and_round_trip(tmp_path: Path, norm: str, block: str, fusion: str) -> None:
    model = build_model(tiny(norm=norm, block=block, fusion=fusion))
    kinds = {type(layer).__name__ for layer in model._flatten_layers(include_self=False)}
    assert ("BatchNormalization" in kinds, "GroupNorm" in kinds) == (norm == "batch", norm == "group")
    assert ("MaxPooling2D" in kinds) == (block == "plain")
    x = images(2)
    out = model(x, training=False)
    assert tuple(out["mask"].shape) == (2, SIZE, SIZE, 1)
    if norm == "batch":  # training updates the moving statistics; inference reads them
        before = [np.asarray(v).copy() for v in model.non_trainable_weights]
        model(x, training=True)
        assert any(not np.allclose(a, np.asarray(b)) for a, b in zip(before, model.non_trainable_weights))
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(again(x, training=False)["mask"]),
                               np.asarray(model(x, training=False)["mask"]), atol=1e-6)


@pytest.mark.parametrize("fusion", ["early", "attention"])
def test_bn_momentum_reaches_every_batchnorm_and_sets_the_moving_average_step(fusion: str) -> None:
    model = build_model(tiny(norm="batch", fusion=fusion))  # the default: 0.9, not Keras' 0.99
    norms = [layer for layer in model._flatten_layers(include_self=False)
             if type(layer).__name__ == "BatchNormalization"]
    assert norms and {layer.momentum for layer in norms} == {0.9}
    x = images(2)
    first = next(layer for layer in model.layers if type(layer).__name__ == "BatchNormalization")
    mean_before = np.asarray(first.moving_mean).copy()
    # Its batch mean in training mode (norms before it use their batch statistics too), read
    # from a model that stops at its input.
    probe = keras.Model(model.inputs, first.input)
    batch_mean = np.asarray(probe(x, training=True)).reshape(-1, first.moving_mean.shape[0]).mean(0)
    model(x, training=True)
    np.testing.assert_allclose(np.asarray(first.moving_mean), 0.9 * mean_before + 0.1 * batch_mean,
                               rtol=1e-4, atol=1e-6)
    again = WindowAttentionFusion.from_config(WindowAttentionFusion(6, norm="batch", bn_momentum=0.8).get_config())
    assert again.bn_momentum == 0.8 and again.norms[0].momentum == 0.8


def test_bn_momentum_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="bn_momentum must be in"):
        ModelConfig(bn_momentum=1.0)


def _group_norm_pair(channels: int, groups: int, seed: int = 0) -> tuple[GroupNorm, keras.layers.Layer]:
    """Our GroupNorm and Keras' GroupNormalization with the same random gamma and beta."""
    ours, theirs = GroupNorm(groups=groups), keras.layers.GroupNormalization(groups=groups)
    rng = np.random.default_rng(seed)
    weights = [rng.normal(1.0, 0.5, channels).astype("float32"), rng.normal(0.0, 0.5, channels).astype("float32")]
    for layer in (ours, theirs):
        layer.build((None, 8, 8, channels))
        layer.set_weights(weights)
    return ours, theirs


@pytest.mark.parametrize("channels, groups", [(16, 8), (12, 3), (8, 1), (6, 6)])
def test_group_norm_equals_keras_group_normalization(channels: int, groups: int) -> None:
    """Same outputs as Keras' layer, features whose mean is far from 0 against their spread
    included (a one-pass E[x²] - E[x]² variance fails there), and the same gradients for the
    inputs and both weights."""
    ours, theirs = _group_norm_pair(channels, groups)
    rng = np.random.default_rng(1)
    x = (rng.normal(0.0, 1.0, (3, 9, 7, channels)) * rng.uniform(0.1, 3.0, channels)
         + rng.uniform(-20.0, 20.0, channels)).astype("float32")
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), atol=2e-4)
    assert ours.get_config() == {**theirs.get_config(), "name": ours.name}
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    weights_out = tf.constant(np.random.default_rng(2).normal(size=x.shape).astype("float32"))

    def gradients(layer: keras.layers.Layer) -> list[np.ndarray]:
        xv = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xv)
            loss = tf.reduce_sum(layer(xv) * weights_out)
        return [np.asarray(g) for g in tape.gradient(loss, [xv, *layer.trainable_weights])]

    for a, b in zip(gradients(ours), gradients(theirs)):
        np.testing.assert_allclose(a, b, atol=2e-3, rtol=1e-3)


def test_group_norm_under_mixed_precision_keeps_float32_statistics() -> None:
    ours, theirs = _group_norm_pair(8, 4)
    x = np.random.default_rng(3).normal(5.0, 2.0, (2, 6, 6, 8)).astype("float32")
    expected = np.asarray(theirs(x))
    half = GroupNorm(groups=4, dtype="mixed_float16")
    half.build((None, 6, 6, 8))
    half.set_weights(ours.get_weights())
    out = half(x.astype("float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(np.asarray(out, dtype="float32"), expected, atol=2e-2)


def test_group_norm_outside_its_fast_layout_is_keras_layer() -> None:
    """Channels first, or no centre / scale: Keras' own computation."""
    x = np.random.default_rng(4).normal(size=(2, 8, 5, 5)).astype("float32")
    ours, theirs = GroupNorm(groups=4, axis=1), keras.layers.GroupNormalization(groups=4, axis=1)
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(theirs(x)), atol=1e-5)
    plain = GroupNorm(groups=2, center=False)
    y = x.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(plain(y)),
                               np.asarray(keras.layers.GroupNormalization(groups=2, center=False)(y)), atol=1e-5)


def test_other_sizes_divisible_by_stride_are_accepted() -> None:
    model = build_model(tiny())
    out = model(images(1, size=48), training=False)  # 48 = 12 x stride 4
    assert tuple(out["mask"].shape) == (1, 48, 48, 1)


def test_window_weights_are_a_softmax_over_the_windows() -> None:
    model = build_model(tiny(fusion="attention"))
    weights = window_weights(model, images(2))
    assert weights.shape == (2, SIZE, SIZE, 4)
    assert weights.min() >= 0.0
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    # The weights depend on the image (attention, not a constant mix).
    assert np.abs(weights - weights.mean(axis=(1, 2), keepdims=True)).max() > 1e-4


@pytest.mark.parametrize("stride", [2, 4])
def test_lower_resolution_fusion_keeps_a_full_resolution_path(tmp_path: Path, stride: int) -> None:
    model = build_model(tiny(fusion_stride=stride))
    names = {layer.name for layer in model.layers}
    assert {"fusion_pool", "fusion_up", "stem", "fusion_add", FUSION_LAYER} <= names
    x = images(2)
    out = model(x, training=False)
    assert tuple(out["mask"].shape) == (2, SIZE, SIZE, 1)
    # The fusion layer sees the pooled windows; its weights come back one per input pixel,
    # shared by each stride x stride block.
    fused = keras.Model(model.input, model.get_layer(FUSION_LAYER).output[0])(x)
    assert tuple(fused.shape) == (2, SIZE // stride, SIZE // stride, 4)
    weights = window_weights(model, x)
    assert weights.shape == (2, SIZE, SIZE, 4)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    blocks = weights.reshape(2, SIZE // stride, stride, SIZE // stride, stride, 4)
    assert np.abs(blocks - blocks[:, :, :1, :, :1]).max() == 0.0
    # One pixel changed within a pooled block reaches the output through the full-resolution
    # stem: a different pixel of the same block gives a different mask.
    a, b = x.copy(), x.copy()
    a[0, 8, 8] += 0.5
    b[0, 8, 9] += 0.5
    assert not np.allclose(np.asarray(model(a)["mask"]), np.asarray(model(b)["mask"]))
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(again(x, training=False)["mask"]), np.asarray(out["mask"]), atol=1e-6)


def test_early_fusion_ignores_the_fusion_stride() -> None:
    names = {layer.name for layer in build_model(tiny(fusion="early", fusion_stride=2)).layers}
    assert "stem" in names and not {"fusion_pool", "fusion_add", FUSION_LAYER} & names


def test_window_weights_need_attention_fusion() -> None:
    with pytest.raises(ValueError, match="no attention window fusion"):
        window_weights(build_model(tiny(fusion="early")), images(1))


def test_size_not_divisible_by_stride_is_rejected() -> None:
    with pytest.raises(ValueError, match="image_size"):
        build_model(tiny(image_size=36, depth=3))


def test_classification_only_model() -> None:
    model = build_model(tiny(heads=("class",)))
    out = model(images(1), training=False)
    assert set(out) == {"class"}
    assert not any("dec" in layer.name for layer in model.layers)  # no decoder


def test_keras_save_load_round_trip(tmp_path: Path) -> None:
    model = build_model(tiny(fusion="attention"))
    x = images(2)
    before = model(x, training=False)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    after = loaded(x, training=False)
    for key in before:
        np.testing.assert_allclose(np.asarray(after[key]), np.asarray(before[key]), atol=1e-6)
    np.testing.assert_allclose(window_weights(loaded, x), window_weights(model, x), atol=1e-6)


def test_fusion_layer_config_round_trip() -> None:
    layer = WindowAttentionFusion(6, key_dim=4, groups=3, name="f")
    clone = WindowAttentionFusion.from_config(layer.get_config())
    assert (clone.filters, clone.key_dim, clone.groups, clone.num_windows) == (6, 4, 3, 4)
    assert clone.norm == "group"  # the default, also for layers saved before the option
    assert WindowAttentionFusion.from_config({**layer.get_config(), "norm": "batch"}).norm == "batch"
    with pytest.raises(ValueError, match="norm must be"):
        WindowAttentionFusion(6, norm="layer")
    with pytest.raises(ValueError, match="4 channels"):
        clone.build((None, 8, 8, 3))


def test_optional_keras_applications_backbone() -> None:
    model = build_model(ModelConfig(image_size=64, backbone="resnet50", width=4, groups=2))
    out = model(images(1, size=64), training=False)
    assert tuple(out["class"].shape) == (1, 6)
    assert tuple(out["mask"].shape) == (1, 64, 64, 1)
    assert model.count_params() > 20_000_000  # really ResNet50 inside


def test_type_attention_pooling_reads_each_labels_own_place(tmp_path: Path) -> None:
    layer = TypeAttentionPooling(2, name="t")
    x = np.zeros((1, 8, 8, 3), np.float32)
    x[0, 1, 1] = [5.0, 0.0, 1.0]  # a feature only at one pixel (channel 0) ...
    x[0, 6, 6] = [0.0, 5.0, 1.0]  # ... and another only at another (channel 1)
    layer.build(x.shape)
    # Label 0 attends to channel 0 and reads channel 0; label 1 the same with channel 1.
    layer.score_kernel.assign(np.array([[4.0, 0.0], [0.0, 4.0], [0.0, 0.0]], np.float32))
    layer.read_kernel.assign(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32))
    logits = np.asarray(layer(x))
    assert logits.shape == (1, 2) and logits.dtype == np.float32
    # Global average pooling would give 5 / 64 = 0.08; attention nearly finds the full 5.
    assert logits[0, 0] > 4.9 and logits[0, 1] > 4.9
    clone = TypeAttentionPooling.from_config(layer.get_config())
    assert clone.num_labels == 2
    with pytest.raises(ValueError, match="num_labels"):
        TypeAttentionPooling(0)


def test_attention_class_pooling_builds_saves_and_needs_a_decoder(tmp_path: Path) -> None:
    model = build_model(tiny(class_pooling="attention"))
    assert "type_attention" in [layer.name for layer in model.layers]
    x = images(2)
    before = model(x, training=False)
    model.save(tmp_path / "m.keras")
    after = keras.saving.load_model(tmp_path / "m.keras")(x, training=False)
    np.testing.assert_allclose(np.asarray(after["class"]), np.asarray(before["class"]), atol=1e-6)
    with pytest.raises(ValueError, match="class_pooling"):
        tiny(class_pooling="attention", heads=("class",))
    with pytest.raises(ValueError, match="class_pooling"):
        tiny(class_pooling="max")


def test_mask_weighted_pooling_describes_the_predicted_bleed() -> None:
    features = np.zeros((2, 8, 8, 2), np.float32)
    features[:, 2:4, 2:4] = [3.0, -1.0]  # the bleed's pixels look like this ...
    features[:, 5:, 5:] = [0.0, 7.0]  # ... the rest of the slice otherwise
    probabilities = np.zeros((2, 8, 8, 1), np.float32)
    probabilities[0, 2:4, 2:4] = 1.0  # slice 0: bleed predicted on those 4 pixels; slice 1: none
    pooled = np.asarray(MaskWeightedPooling()([features, probabilities]))
    assert pooled.shape == (2, 2) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled[0], [3.0 * 4 / 5, -1.0 * 4 / 5], rtol=1e-6)  # sum / (4 + 1)
    np.testing.assert_allclose(pooled[1], [0.0, 0.0])  # nothing predicted: about zero
    # Global average pooling would mix in the rest of the slice: 7 * 9 / 64 in channel 1.


def test_mask_class_pooling_builds_saves_and_leaves_the_mask_to_its_loss(tmp_path: Path) -> None:
    model = build_model(tiny(class_pooling="mask", deep_supervision=1))
    assert "mask_pool" in [layer.name for layer in model.layers]
    x = images(2)
    before = model(x, training=False)
    model.save(tmp_path / "m.keras")
    after = keras.saving.load_model(tmp_path / "m.keras")(x, training=False)
    for key in ("class", "mask"):
        np.testing.assert_allclose(np.asarray(after[key]), np.asarray(before[key]), atol=1e-6)
    assert sorted(inference_model(model).output_names) == ["area", "class", "mask"]
    with pytest.raises(ValueError, match="needs the mask head"):
        tiny(class_pooling="mask", heads=("class", "area"))
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    # The class loss reaches the decoder through the pooled features, not the mask's own 1x1 conv.
    head, reader = model.get_layer("mask_logits").kernel, model.get_layer("class_logits").kernel
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True)["class"])
    to_head, to_reader = tape.gradient(loss, [head.value, reader.value])
    assert to_head is None and to_reader is not None  # no path into the mask head; one into the class head


def test_deep_supervision_adds_a_training_output_that_inference_drops(tmp_path: Path) -> None:
    model = build_model(tiny(depth=3, deep_supervision=2))
    x = images(2)
    out = model(x, training=False)
    assert set(out) == {"class", "area", "mask", AUX_MASK}
    aux = np.asarray(out[AUX_MASK])
    assert aux.shape == (2, SIZE, SIZE, 2) and aux.min() >= 0.0 and aux.max() <= 1.0
    # Channel k is a stride-2**(k+1) map upsampled: constant on its 2**(k+1) blocks.
    for k, stride in enumerate((2, 4)):
        blocks = aux[0, :, :, k].reshape(SIZE // stride, stride, SIZE // stride, stride)
        assert np.ptp(blocks, axis=(1, 3)).max() < 1e-6
    path = tmp_path / "best.keras"
    model.save(path)
    served = inference_model(keras.saving.load_model(path))
    assert sorted(served.output_names) == ["area", "class", "mask"]
    again = served(x, training=False)
    for key in ("class", "area", "mask"):  # the same layers and weights
        np.testing.assert_allclose(np.asarray(again[key]), np.asarray(out[key]), atol=1e-6)
    plain = build_model(tiny())
    assert inference_model(plain) is plain  # nothing to drop
    assert AUX_MASK not in plain.output_names


@pytest.mark.parametrize("bad, match", [({"deep_supervision": 2}, "0..1"),
                                        ({"deep_supervision": 1, "heads": ("class", "area")}, "mask head")])
def test_deep_supervision_needs_coarser_levels_and_a_mask_head(bad: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny(**bad)
