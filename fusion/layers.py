"""Custom Keras 3 layers (backend-agnostic: keras.layers and keras.ops only).

`WindowAttentionFusion` is the "attention" window fusion: each of the 4 CT windows gets its own
convolutional stem; a query computed from all windows together scores each window's features
per pixel, and a softmax across the windows gives per-pixel weights that sum to 1. The fused
feature map is the weighted sum of the window features. The weights are the layer's second
output, so they can be inspected (`fusion.model.window_weights`).

`TypeAttentionPooling` is the optional per-label attention pooling of the class head
(``model.class_pooling = "attention"``); `MaskWeightedPooling` pools the decoder's features
under the model's own mask probabilities for it (``model.class_pooling = "mask"``).
"""
from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops


def group_count(channels: int, groups: int) -> int:
    """Largest divisor of `channels` that is <= `groups` (GroupNormalization needs a divisor)."""
    return math.gcd(channels, max(1, groups))


def make_norm(norm: str, channels: int, groups: int, name: str, momentum: float = 0.99) -> keras.layers.Layer:
    """The normalisation layer `norm` (`fusion.config.NORMS`) for `channels` features
    (`momentum`: BatchNormalization's moving statistics; unused by GroupNormalization).

    Raises:
      ValueError: `norm` is not "group" or "batch".
    """
    if norm == "batch":
        return keras.layers.BatchNormalization(momentum=momentum, name=name)
    if norm == "group":
        return GroupNorm(groups=group_count(channels, groups), name=name)
    raise ValueError(f"norm must be 'group' or 'batch', got {norm!r}")


@keras.saving.register_keras_serializable(package="fusion")
class GroupNorm(keras.layers.GroupNormalization):
    """Keras' GroupNormalization computed in 4-D: same weights, config and outputs (to float32
    rounding); forward and backward cost 0.5-0.9x Keras' on TensorFlow's CPU kernels, the more
    the larger the feature map (benchmarks/bench_group_norm.py).

    Keras reshapes [B, H, W, C] to [B, H, W, G, C/G] and reduces and broadcasts in 5-D, which
    those kernels are slow at. Here the means per (sample, channel) are reduced over H and W in
    4-D and pooled into groups on the small [B, C] tensors; the centred features are squared
    for the variance (two passes, as `tf.nn.moments`: no E[x²] - E[x]² cancellation when a
    group's mean is large against its spread) and normalised with one multiply-add by
    [B, 1, 1, C] factors. Other layouts (``axis`` not last, not 4-D, ``center`` or ``scale``
    off) use Keras' code.
    """

    def call(self, inputs: Any) -> Any:
        if len(inputs.shape) != 4 or self.axis not in (-1, 3) or not (self.center and self.scale):
            return super().call(inputs)
        channels = inputs.shape[-1]
        grouped, per_channel = (-1, self.groups, channels // self.groups), (-1, 1, 1, channels)
        x = ops.cast(inputs, "float32")  # statistics in float32 under mixed precision, as Keras

        def group_mean(values: Any) -> Any:  # [B, H, W, C] -> the group's mean, [B, G, 1]
            return ops.mean(ops.reshape(ops.mean(values, axis=(1, 2)), grouped), axis=-1, keepdims=True)

        centred = x - ops.reshape(ops.repeat(group_mean(x), channels // self.groups, axis=-1), per_channel)
        inv = ops.rsqrt(group_mean(ops.square(centred)) + self.epsilon)  # [B, G, 1]
        scale = ops.reshape(inv * ops.reshape(ops.cast(self.gamma, "float32"), grouped[1:]), per_channel)
        out = centred * scale + ops.reshape(ops.cast(self.beta, "float32"), per_channel)
        return ops.cast(out, self.compute_dtype)


@keras.saving.register_keras_serializable(package="fusion")
class WindowAttentionFusion(keras.layers.Layer):
    """Per-window stems + attention across windows.

    Input: image [B, H, W, N] float in [0, 1] (N windows, 4 in this project).
    Outputs: ``[fused, weights]``: fused [B, H, W, filters], weights [B, H, W, N] (softmax over
    the windows at every pixel).

    Args:
      filters: channels of each window's stem and of the fused output.
      key_dim: size of the attention query/key vectors.
      groups: GroupNormalization groups of the stems.
      num_windows: N, the channels of the input image.
      norm: "group" (GroupNormalization) or "batch" (BatchNormalization) in the stems.
      bn_momentum: BatchNormalization's momentum (with ``norm="batch"``); Keras' 0.99 by default
        so a layer saved before the option loads as it was saved. `fusion.model` passes
        ``ModelConfig.bn_momentum`` (0.9).
    """

    def __init__(
        self,
        filters: int,
        key_dim: int = 8,
        groups: int = 4,
        num_windows: int = 4,
        norm: str = "group",
        bn_momentum: float = 0.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if filters < 1 or key_dim < 1 or num_windows < 1:
            raise ValueError(
                f"filters, key_dim and num_windows must be >= 1, got {filters}, {key_dim}, {num_windows}"
            )
        self.filters = filters
        self.key_dim = key_dim
        self.groups = groups
        self.num_windows = num_windows
        self.norm = norm
        self.bn_momentum = bn_momentum
        # One stem per window: each window's intensities mean different tissues, so the first
        # filters are not shared.
        self.stems = [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"stem_{i}")
            for i in range(num_windows)
        ]
        self.norms = [make_norm(norm, filters, groups, f"stem_norm_{i}", bn_momentum) for i in range(num_windows)]
        self.query = keras.layers.Conv2D(key_dim, 1, name="query")
        self.key = keras.layers.Dense(key_dim, name="key")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] != self.num_windows:
            raise ValueError(
                f"WindowAttentionFusion expects {self.num_windows} channels (one per window), "
                f"got input shape {tuple(input_shape)}"
            )
        spatial = tuple(input_shape[:-1])
        for stem, norm in zip(self.stems, self.norms):
            stem.build(spatial + (1,))
            norm.build(spatial + (self.filters,))
        self.query.build(spatial + (self.filters * self.num_windows,))
        self.key.build(spatial + (self.num_windows, self.filters))
        self.built = True

    def call(self, image: Any) -> list[Any]:
        feats = [
            keras.activations.silu(norm(stem(image[..., i : i + 1])))
            for i, (stem, norm) in enumerate(zip(self.stems, self.norms))
        ]  # N x [B, H, W, F]
        stacked = ops.stack(feats, axis=-2)  # [B, H, W, N, F]
        query = self.query(ops.concatenate(feats, axis=-1))  # [B, H, W, D]
        keys = self.key(stacked)  # [B, H, W, N, D]
        scores = ops.sum(keys * ops.expand_dims(query, -2), axis=-1)  # [B, H, W, N]
        scores = scores / math.sqrt(self.key_dim)
        weights = ops.softmax(scores, axis=-1)  # [B, H, W, N], sums to 1 over windows
        fused = ops.sum(stacked * ops.expand_dims(weights, -1), axis=-2)  # [B, H, W, F]
        return [fused, weights]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> list[tuple[int | None, ...]]:
        spatial = tuple(input_shape[:-1])
        return [spatial + (self.filters,), spatial + (self.num_windows,)]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            key_dim=self.key_dim,
            groups=self.groups,
            num_windows=self.num_windows,
            norm=self.norm,
            bn_momentum=self.bn_momentum,
        )
        return config


@keras.saving.register_keras_serializable(package="fusion")
class TypeAttentionPooling(keras.layers.Layer):
    """One spatial attention map per output label, then one linear score per label.

    Global pooling sums a slice into one vector, so a small bleed beside a larger one of another
    type is easily drowned. Here each label k scores every pixel, a softmax over the pixels
    gives its attention map a_k, the features are pooled under a_k, and a linear read-out of
    that pooled vector gives label k's logit: each type can look at its own place (sulci and
    cisterns, the inner table, the ventricles).

    Input: features [B, H, W, C]. Output: logits [B, K] (float32).

    Args:
      num_labels: K.
    """

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        k = self.num_labels
        self.score_kernel = self.add_weight(shape=(channels, k), initializer="glorot_uniform", name="score_kernel")
        self.score_bias = self.add_weight(shape=(k,), initializer="zeros", name="score_bias")
        self.read_kernel = self.add_weight(shape=(k, channels), initializer="glorot_uniform", name="read_kernel")
        self.read_bias = self.add_weight(shape=(k,), initializer="zeros", name="read_bias")
        self.built = True

    def call(self, features: Any) -> Any:
        x = ops.cast(features, "float32")
        channels = ops.shape(x)[-1]
        flat = ops.reshape(x, (ops.shape(x)[0], -1, channels))  # [B, N, C]
        scores = ops.matmul(flat, ops.cast(self.score_kernel, "float32")) + ops.cast(self.score_bias, "float32")
        attention = ops.softmax(scores, axis=1)  # [B, N, K]: each label's map sums to 1
        pooled = ops.einsum("bnk,bnc->bkc", attention, flat)  # [B, K, C]
        read = ops.cast(self.read_kernel, "float32")
        return ops.sum(pooled * read[None], axis=-1) + ops.cast(self.read_bias, "float32")

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.num_labels)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(num_labels=self.num_labels)
        return config


@keras.saving.register_keras_serializable(package="fusion")
class MaskWeightedPooling(keras.layers.Layer):
    """The mean of features under a probability map: what the bleed's pixels look like.

    A bleed's type is told by where it lies and its shape (crescent at the inner table,
    lens, ventricles, sulci), but a small bleed is a few hundred of 65k pixels and global
    pooling averages it away. The map is the model's own mask output, so the pooled vector
    describes the predicted bleed; no gradient flows into the map (the mask learns from the
    mask loss only). ``sum(f * p) / (sum(p) + 1)``: a slice with no predicted bleed pools to
    about zero.

    Input: [features [B, H, W, C], probabilities [B, H, W, 1]]. Output: [B, C] (float32).
    """

    def call(self, inputs: Any) -> Any:
        features, probabilities = inputs
        x = ops.cast(features, "float32")
        weights = ops.stop_gradient(ops.cast(probabilities, "float32"))
        total = ops.sum(weights, axis=(1, 2))  # [B, 1]
        return ops.sum(x * weights, axis=(1, 2)) / (total + 1.0)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        features, _ = input_shape
        return (features[0], features[-1])
