"""The multi-task model: window fusion -> shared encoder -> class, area and mask heads.

`build_model(cfg)` returns a functional `keras.Model` (plain Keras 3, any backend):

- input ``image`` [B, H, W, 4] float32 in [0, 1], channels in `windows.WINDOW_NAMES` order; H and
  W any multiples of the encoder stride (``cfg.stride``).
- output ``class`` [B, 6] sigmoid probabilities in `schema.LABEL_NAMES` order (any + 5 types);
- output ``area`` [B, 1] the bleed area fraction in the transformed space of
  `fusion.targets.area_to_target` (``log1p(fraction * 1e3)``); invert with `target_to_area`;
- output ``mask`` [B, H, W, 1] sigmoid bleed probabilities from a decoder with skip connections;
- output ``mask_aux`` [B, H, W, K] (``cfg.deep_supervision`` = K > 0 only; training-only): the
  deep-supervision heads' probabilities from the decoder at strides 2 .. 2**K, upsampled;
  `inference_model` drops it.

The heads present are ``cfg.heads`` ("class" always). Outputs are float32 even under a mixed
precision policy.
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np

from data_build.schema import LABEL_NAMES
from data_build.windows import WINDOW_NAMES
from fusion.config import AUX_MASK, HEADS, ModelConfig
from fusion.layers import MaskWeightedPooling, TypeAttentionPooling, WindowAttentionFusion, make_norm

#: Name of the attention-fusion layer (its second output holds the window weights).
FUSION_LAYER = "window_fusion"
#: keras.applications backbones: constructor name and the layers used as skips, from stride 2
#: to stride 32 (the last is the bottleneck).
_BACKBONE_SKIPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resnet50": (
        "ResNet50",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    ),
    "efficientnetb0": (
        "EfficientNetB0",
        ("block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
         "block6a_expand_activation", "top_activation"),
    ),
}
_MAX_WIDTH_MULTIPLIER = 8


def _norm_act(x: Any, cfg: ModelConfig, name: str, activation: str = "silu") -> Any:
    suffix = "bn" if cfg.norm == "batch" else "gn"
    x = make_norm(cfg.norm, x.shape[-1], cfg.groups, f"{name}_{suffix}", cfg.bn_momentum)(x)
    return keras.layers.Activation(activation, name=f"{name}_act")(x)


def residual_block(x: Any, filters: int, cfg: ModelConfig, name: str, stride: int = 1) -> Any:
    """Pre-activation residual block: (norm, SiLU, conv3x3) x 2 + shortcut.

    Args:
      x: [B, H, W, C] features.
      filters: output channels.
      cfg: the model config (``norm``, ``groups``).
      name: layer-name prefix.
      stride: 2 halves H and W.

    Returns:
      [B, H / stride, W / stride, filters].
    """
    shortcut = x
    y = _norm_act(x, cfg, f"{name}_a")
    y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv_a")(y)
    y = _norm_act(y, cfg, f"{name}_b")
    y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv_b")(y)
    if stride != 1:
        # Average-pool then 1x1 conv (ResNet-D shortcut) rather than a strided 1x1 conv: it keeps
        # every input pixel, and TF 2.21's oneDNN backward pass of a strided 1x1 conv corrupts
        # the heap on CPU (segfaults at 128 px).
        shortcut = keras.layers.AveragePooling2D(stride, name=f"{name}_pool")(shortcut)
    if shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
    return keras.layers.Add(name=f"{name}_add")([shortcut, y])


def plain_block(x: Any, filters: int, cfg: ModelConfig, name: str, stride: int = 1) -> Any:
    """The plain U-Net's block: (conv3x3, norm, ReLU) x 2, after a 2x2 max-pool if `stride` is 2.

    Same arguments and shapes as `residual_block`.
    """
    if stride != 1:
        x = keras.layers.MaxPooling2D(stride, name=f"{name}_pool")(x)
    for part in ("a", "b"):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv_{part}")(x)
        x = _norm_act(x, cfg, f"{name}_{part}", activation="relu")
    return x


def block(x: Any, filters: int, cfg: ModelConfig, name: str, stride: int = 1) -> Any:
    """The configured block (``cfg.block``): `residual_block` or `plain_block`."""
    make = plain_block if cfg.block == "plain" else residual_block
    return make(x, filters, cfg, name, stride=stride)


def build_fusion(image: Any, cfg: ModelConfig) -> Any:
    """Window fusion: [B, H, W, 4] -> [B, H, W, width] features."""
    if cfg.fusion == "early":
        # Early fusion: the windows are just the input channels of the first convolution.
        return keras.layers.Conv2D(cfg.width, 3, padding="same", name="stem")(image)
    s = cfg.fusion_stride
    windows = image if s == 1 else keras.layers.AveragePooling2D(s, name="fusion_pool")(image)
    fused, _ = WindowAttentionFusion(
        cfg.fusion_width, key_dim=8, groups=cfg.groups, num_windows=len(WINDOW_NAMES),
        norm=cfg.norm, bn_momentum=cfg.bn_momentum, name=FUSION_LAYER,
    )(windows)
    fused = keras.layers.Conv2D(cfg.width, 3, padding="same", name="fusion_proj")(fused)
    if s == 1:
        return fused
    # The per-pixel attention is a quarter (or more) of a full-resolution step on CPU; run at
    # stride s it costs 1/s**2 of that. A plain stem over the stacked windows keeps full
    # resolution, so a bleed a few pixels wide is not averaged away before the encoder sees it.
    fused = keras.layers.UpSampling2D(s, interpolation="nearest", name="fusion_up")(fused)
    stem = keras.layers.Conv2D(cfg.width, 3, padding="same", name="stem")(image)
    return keras.layers.Add(name="fusion_add")([stem, fused])


def build_encoder(x: Any, cfg: ModelConfig) -> list[Any]:
    """Shared encoder (``cfg.block`` blocks).

    Args:
      x: [B, H, W, width] fused features.

    Returns:
      Features at strides 1, 2, ..., 2**depth; the last is the bottleneck.
    """
    features = []
    for b in range(cfg.blocks):
        x = block(x, cfg.width, cfg, f"enc0_{b}")
    features.append(x)
    for stage in range(1, cfg.depth + 1):
        filters = cfg.width * min(2**stage, _MAX_WIDTH_MULTIPLIER)
        x = block(x, filters, cfg, f"enc{stage}_0", stride=2)
        for b in range(1, cfg.blocks):
            x = block(x, filters, cfg, f"enc{stage}_{b}")
        features.append(x)
    return features


def build_backbone_encoder(x: Any, cfg: ModelConfig) -> list[Any]:
    """keras.applications encoder. Returns features at strides 1, 2, ..., 32."""
    ctor_name, skip_names = _BACKBONE_SKIPS[cfg.backbone]  # type: ignore[index]
    rgb = keras.layers.Conv2D(3, 1, name="to_rgb")(x)  # backbones take 3 channels
    backbone = getattr(keras.applications, ctor_name)(
        include_top=False, weights=cfg.backbone_weights, input_shape=(None, None, 3)
    )
    extractor = keras.Model(
        backbone.input, [backbone.get_layer(n).output for n in skip_names], name=cfg.backbone
    )
    return [x, *extractor(rgb)]


def build_decoder(features: list[Any], cfg: ModelConfig) -> tuple[Any, list[Any]]:
    """U-Net decoder: upsample x2, concatenate the skip, one block; back to stride 1.

    Returns:
      [B, H, W, width] features at full resolution, and the decoder's outputs at strides 2, 4,
      ... (the coarser first-decoded levels last): what deep supervision taps.
    """
    x = features[-1]
    levels: list[Any] = []
    for level in range(len(features) - 2, -1, -1):
        skip = features[level]
        filters = cfg.width * min(2**level, _MAX_WIDTH_MULTIPLIER)
        # Nearest (ops.repeat) works with unknown spatial sizes on every backend; bilinear does not.
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"dec{level}_up")(x)
        x = keras.layers.Concatenate(name=f"dec{level}_cat")([x, skip])
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"dec{level}_reduce")(x)
        x = block(x, filters, cfg, f"dec{level}")
        if level:
            levels.insert(0, x)
    if cfg.block == "plain":
        return x, levels  # already normalised and activated
    return _norm_act(x, cfg, "dec_out"), levels


def build_aux_masks(levels: list[Any], cfg: ModelConfig) -> Any:
    """Deep supervision: a 1x1 mask head on each of the first ``cfg.deep_supervision`` decoder
    levels below full resolution (strides 2, 4, ...), upsampled to full resolution.

    Args:
      levels: `build_decoder`'s coarser outputs, stride 2 first.

    Returns:
      [B, H, W, deep_supervision] float32 sigmoid probabilities, stride 2 first (the output
      ``AUX_MASK``; the loss is `fusion.losses.DeepSupervisionLoss`).
    """
    maps = []
    for i, x in enumerate(levels[: cfg.deep_supervision], start=1):
        stride = 2**i
        x = keras.layers.Conv2D(1, 1, name=f"aux{stride}_logits")(x)
        # Upsampling the logits (not the target) keeps one target array for every output.
        maps.append(keras.layers.UpSampling2D(stride, interpolation="nearest", name=f"aux{stride}_up")(x))
    logits = maps[0] if len(maps) == 1 else keras.layers.Concatenate(name="aux_cat")(maps)
    return keras.layers.Activation("sigmoid", dtype="float32", name=AUX_MASK)(logits)


def inference_model(model: keras.Model) -> keras.Model:
    """`model` without its training-only outputs (``AUX_MASK``): the same layers and weights.

    A model without them is returned as it is; calibration, export and prediction use this.
    """
    if AUX_MASK not in model.output_names:
        return model
    outputs = {n: model.get_layer(n).output for n in HEADS if n in model.output_names}
    return keras.Model(model.inputs, outputs, name=model.name)


def _validate(cfg: ModelConfig) -> None:
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a fusion.config.ModelConfig, got {type(cfg).__name__}")
    # ModelConfig validates itself; re-check the size here so a hand-made config that bypassed
    # __post_init__ (e.g. dataclasses.replace is fine, object.__setattr__ is not) still fails.
    if cfg.image_size % cfg.stride:
        raise ValueError(
            f"image_size must be a multiple of the encoder stride {cfg.stride}, got {cfg.image_size}"
        )


def mask_head(decoded: Any) -> Any:
    """Bleed probability per pixel [B, H, W, 1] (float32) from the decoder's features."""
    mask_logits = keras.layers.Conv2D(1, 1, name="mask_logits")(decoded)
    return keras.layers.Activation("sigmoid", dtype="float32", name="mask")(mask_logits)


def build_model(cfg: ModelConfig) -> keras.Model:
    """Build the multi-task model described in the module docstring.

    Args:
      cfg: the model section of the run config.

    Returns:
      An uncompiled functional keras.Model named "fusion" with outputs named by task.

    Raises:
      ValueError: cfg.image_size not divisible by the encoder stride (or another bad value).
    """
    _validate(cfg)
    image = keras.Input(shape=(None, None, len(WINDOW_NAMES)), name="image")
    x = build_fusion(image, cfg)
    if cfg.backbone:
        features = build_backbone_encoder(x, cfg)
    else:
        features = build_encoder(x, cfg)
    bottleneck = features[-1]
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(bottleneck)
    pooled_max = keras.layers.GlobalMaxPooling2D(name="pool_max")(bottleneck)
    summary = keras.layers.Concatenate(name="summary")([pooled, pooled_max])
    summary = keras.layers.Dropout(cfg.dropout, name="summary_dropout")(summary)

    outputs: dict[str, Any] = {}
    decoded = None
    class_in = summary
    if "mask" in cfg.heads or "area" in cfg.heads:
        decoded, levels = build_decoder(features, cfg)
        # Types differ by where and how thin the blood is (sulci, ventricles, convexity): the
        # full-resolution decoder features, pooled, carry that better than the bottleneck alone.
        dense_avg = keras.layers.GlobalAveragePooling2D(name="dense_pool")(decoded)
        dense_max = keras.layers.GlobalMaxPooling2D(name="dense_pool_max")(decoded)
        class_in = keras.layers.Concatenate(name="class_in")([summary, dense_avg, dense_max])
    if cfg.class_pooling == "mask":  # the class head reads the mask, so it is built first
        outputs["mask"] = mask_head(decoded)
        under_mask = MaskWeightedPooling(name="mask_pool")([decoded, outputs["mask"]])
        class_in = keras.layers.Concatenate(name="class_in_mask")([class_in, under_mask])
    logits = keras.layers.Dense(len(LABEL_NAMES), name="class_logits")(class_in)
    if cfg.class_pooling == "attention" and decoded is not None:
        per_label = TypeAttentionPooling(len(LABEL_NAMES), name="type_attention")(decoded)
        logits = keras.layers.Add(name="class_logits_sum")([logits, per_label])
    outputs["class"] = keras.layers.Activation("sigmoid", dtype="float32", name="class")(logits)
    if "mask" in cfg.heads and "mask" not in outputs:
        outputs["mask"] = mask_head(decoded)
    if "area" in cfg.heads:
        # Area sees the full-resolution decoder features (where the bleed is) and the summary.
        area = keras.layers.Concatenate(name="area_in")([summary, dense_avg])
        area = keras.layers.Dense(32, activation="silu", name="area_hidden")(area)
        area = keras.layers.Dense(1, name="area_linear")(area)
        outputs["area"] = keras.layers.Activation("linear", dtype="float32", name="area")(area)
    if cfg.deep_supervision:
        outputs[AUX_MASK] = build_aux_masks(levels, cfg)
    ordered = {k: outputs[k] for k in ("class", "area", "mask", AUX_MASK) if k in outputs}
    return keras.Model(image, ordered, name="fusion")


def window_weights(model: keras.Model, images: Any, batch_size: int = 8) -> np.ndarray:
    """Per-pixel attention weights over the 4 windows.

    Args:
      model: a model from `build_model` with ``fusion="attention"`` (or loaded from .keras).
      images: [B, H, W, 4] float32 in [0, 1].
      batch_size: prediction batch size.

    Returns:
      [B, H, W, 4] float32 weights in `WINDOW_NAMES` order, summing to 1 at every pixel (with
      ``fusion_stride`` s > 1, each s x s block of pixels shares its pooled pixel's weights).

    Raises:
      ValueError: the model has no attention fusion layer.
    """
    try:
        layer = model.get_layer(FUSION_LAYER)
    except ValueError:
        raise ValueError(
            "model has no attention window fusion (built with fusion='early'?): no window weights"
        ) from None
    probe = keras.Model(model.input, layer.output[1], name="window_weights")
    weights = np.asarray(probe.predict(images, batch_size=batch_size, verbose=0), dtype=np.float32)
    stride = np.shape(images)[1] // weights.shape[1]  # fusion_stride: weights of pooled pixels
    return np.repeat(np.repeat(weights, stride, axis=1), stride, axis=2) if stride > 1 else weights
