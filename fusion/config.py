"""Typed, frozen run configuration: model, losses, augmentation and training, with presets.

A run is reproduced from ``RUN/config.json`` alone: `RunConfig.to_json` writes every field and
`RunConfig.from_json` reads it back (unknown keys are refused, so a typo never passes silently).

Presets (`PRESETS`, `preset(name)`):

- ``fusion``     ours (the default): residual GroupNorm blocks over the stacked windows (early
                 fusion), every labelled slice trains the class head, mask and area losses on
                 the slices whose mask is known, weighted tasks (focal class loss, positive-
                 weighted BCE + Dice + batch Dice), deep supervision of the decoder at strides
                 2 and 4 (training only), augmentation, AdamW with a cosine schedule, batch 4.
- ``fusion-attention`` the default until 2026-11-30: window attention fusion at full
                 resolution, no deep supervision, the same recipe otherwise (higher type AUC on
                 the low-data proxy, equal Dice, 1.3x the step: over issue 10's time goal).
- ``peer-unet``  the peer's model: early fusion (stacked channels) U-Net trained only on slices
                 with a mask, all task weights equal.
- ``peer-cls``   the peer's classification-only CNN (early fusion, no decoder).
- ``plain-unet`` issue 10's baseline: a plain U-Net (stacked windows, conv-BatchNorm-ReLU
                 blocks) trained the peer's way (BCE + Dice, Adam 1e-3 constant, batch 8, no
                 augmentation, slices with a mask only).
- ``demo``       small and fast (96 px, narrow, plain blocks, early fusion): for ``make demo``
                 on two CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from data_build.files import atomic_write_text
from fusion.errors import FusionError

#: Model heads, in the order of the model's outputs.
HEADS: tuple[str, ...] = ("class", "area", "mask")
#: The training-only output of the deep-supervision heads (``model.deep_supervision``).
AUX_MASK = "mask_aux"
FUSIONS: tuple[str, ...] = ("early", "attention")
#: Normalisation layers: GroupNormalization, or BatchNormalization (issue 10's candidate).
NORMS: tuple[str, ...] = ("group", "batch")
#: Encoder/decoder blocks: pre-activation residual (ours) or the plain U-Net's two
#: conv-norm-ReLU (the peer-shaped baseline).
BLOCKS: tuple[str, ...] = ("residual", "plain")
CLASS_POOLINGS: tuple[str, ...] = ("global", "attention", "mask")
#: Resolutions the attention fusion may run at: full (1), half (2) or a quarter (4).
FUSION_STRIDES: tuple[int, ...] = (1, 2, 4)
#: Optional keras.applications backbones and their total stride.
BACKBONES: Mapping[str, int] = {"resnet50": 32, "efficientnetb0": 32}
CLASS_LOSSES: tuple[str, ...] = ("focal", "bce")
SCHEDULES: tuple[str, ...] = ("cosine", "plateau", "constant")
#: Validation losses the best checkpoint, early stopping and the plateau schedule can follow.
MONITORS: tuple[str, ...] = ("val_loss", "val_mask_loss", "val_class_loss")
#: tf.distribute strategies `fusion-train --strategy` offers (mirrored: all local GPUs).
STRATEGIES: tuple[str, ...] = ("default", "mirrored")


class ConfigError(FusionError, ValueError):
    """A configuration value is invalid, or a config file cannot be read."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture.

    Attributes:
      image_size: training input height = width in pixels; must be divisible by `stride`.
      fusion: "early" (the 4 windows stacked as channels) or "attention" (one stem per window,
        attention across windows giving per-pixel softmax weights over the 4 windows).
      width: channels of the first encoder stage; stage i has width * 2**i (capped at 8x).
      depth: number of stride-2 encoder stages; the encoder stride is 2**depth.
      blocks: residual blocks per stage.
      groups: GroupNormalization groups (reduced to a divisor of the channel count).
      norm: "group" (GroupNormalization, independent of the batch) or "batch"
        (BatchNormalization: cheaper on CPU; statistics of the batch in training).
      bn_momentum: momentum of BatchNormalization's moving mean and variance (with
        ``norm="batch"``): the statistics inference uses average the last ~1 / (1 - momentum)
        training batches. 0.9 (~10 steps; PyTorch's default, its ``momentum=0.1``), not Keras'
        0.99 (~100 steps), which lags weights that still move on a run of a few hundred steps:
        on the low-data proxy a BatchNorm U-Net trained step for step alike scored Dice 0.00
        (every mask empty) with 0.99 and 0.62 with 0.9 (docs/benchmarks.md, "BatchNorm's
        moving statistics").
      block: "residual" (pre-activation residual blocks, SiLU) or "plain" (two
        conv3x3-norm-ReLU per stage, max-pool down: the plain U-Net).
      fusion_width: channels of each per-window stem in attention fusion.
      fusion_stride: attention fusion runs on the windows average-pooled by this factor (1:
        full resolution; 2 or 4: a quarter or a sixteenth of the pixels); above 1 a
        full-resolution stem over the stacked windows is added to the upsampled fused features,
        so the edges of small and thin bleeds still reach the encoder at full resolution.
        Like `fusion_width`, unused by early fusion.
      backbone: None for the built-in residual encoder, or a keras.applications name
        ("resnet50", "efficientnetb0"); its stride is 32.
      backbone_weights: None (random init, default) or "imagenet" (downloads weights: needs
        internet access the first time).
      dropout: dropout before the class and area heads.
      heads: which of "class", "area", "mask" the model has ("class" is required).
      deep_supervision: decoder levels below full resolution that get an auxiliary mask head
        (0: none; 2: strides 2 and 4). Their maps, upsampled, are trained against the mask with
        the mask loss at weights 1/2, 1/4, ... (deep supervision, as nnU-Net); the heads are
        training-only: `fusion.model.inference_model` drops them before calibration and export.
      class_pooling: "global" (the class head reads globally pooled features) or "attention"
        (it also reads one attention-pooled vector per label from the decoder's features,
        `fusion.layers.TypeAttentionPooling`; needs the mask or area head's decoder), or "mask"
        (it also reads the decoder's features averaged under the model's own mask probabilities,
        `fusion.layers.MaskWeightedPooling`; needs the mask head).
    """

    image_size: int = 256
    fusion: str = "attention"
    width: int = 16
    depth: int = 4
    blocks: int = 1
    groups: int = 8
    norm: str = "group"
    bn_momentum: float = 0.9
    block: str = "residual"
    fusion_width: int = 8
    fusion_stride: int = 1
    backbone: str | None = None
    backbone_weights: str | None = None
    dropout: float = 0.1
    heads: tuple[str, ...] = HEADS
    class_pooling: str = "global"
    deep_supervision: int = 0

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and frozen-friendly.
        object.__setattr__(self, "heads", tuple(self.heads))
        _check(self.fusion in FUSIONS, f"model.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        _check(self.width >= 1, f"model.width must be >= 1, got {self.width}")
        _check(1 <= self.depth <= 6, f"model.depth must be in 1..6, got {self.depth}")
        _check(self.blocks >= 1, f"model.blocks must be >= 1, got {self.blocks}")
        _check(self.groups >= 1, f"model.groups must be >= 1, got {self.groups}")
        _check(self.norm in NORMS, f"model.norm must be one of {NORMS}, got {self.norm!r}")
        _check(0.0 <= self.bn_momentum < 1.0,
               f"model.bn_momentum must be in [0, 1), got {self.bn_momentum}")
        _check(self.block in BLOCKS, f"model.block must be one of {BLOCKS}, got {self.block!r}")
        _check(self.fusion_width >= 1, f"model.fusion_width must be >= 1, got {self.fusion_width}")
        _check(self.fusion_stride in FUSION_STRIDES,
               f"model.fusion_stride must be one of {FUSION_STRIDES}, got {self.fusion_stride!r}")
        _check(self.fusion_stride <= self.stride,
               f"model.fusion_stride {self.fusion_stride} exceeds the encoder stride {self.stride}: "
               f"image sizes would not divide; use a smaller fusion_stride or a deeper encoder")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        _check(self.class_pooling in CLASS_POOLINGS,
               f"model.class_pooling must be one of {CLASS_POOLINGS}, got {self.class_pooling!r}")
        _check(self.class_pooling == "global" or "mask" in self.heads or "area" in self.heads,
               "model.class_pooling 'attention' reads the decoder: it needs the mask or area head")
        _check(self.class_pooling != "mask" or "mask" in self.heads,
               "model.class_pooling 'mask' pools under the predicted mask: it needs the mask head")
        _check(
            self.backbone is None or self.backbone in BACKBONES,
            f"model.backbone must be None or one of {sorted(BACKBONES)}, got {self.backbone!r}",
        )
        _check(
            self.backbone_weights in (None, "imagenet"),
            f"model.backbone_weights must be None or 'imagenet', got {self.backbone_weights!r}",
        )
        _check(
            "class" in self.heads and set(self.heads) <= set(HEADS),
            f"model.heads must include 'class' and be a subset of {HEADS}, got {self.heads}",
        )
        _check(0 <= self.deep_supervision < self.depth_levels,
               f"model.deep_supervision must be in 0..{self.depth_levels - 1} (decoder levels below "
               f"full resolution at this depth), got {self.deep_supervision}: lower it "
               f"(fusion-train --deep-supervision, 0 turns it off) or deepen the encoder")
        _check(self.deep_supervision == 0 or "mask" in self.heads,
               "model.deep_supervision trains auxiliary mask heads: it needs the mask head (model.heads)")
        _check(
            self.image_size >= self.stride and self.image_size % self.stride == 0,
            f"model.image_size must be a positive multiple of the encoder stride {self.stride}, "
            f"got {self.image_size}",
        )

    @property
    def stride(self) -> int:
        """Total downsampling of the encoder: input sizes must be multiples of it."""
        return BACKBONES[self.backbone] if self.backbone else 2**self.depth

    @property
    def depth_levels(self) -> int:
        """Stride-2 stages of the encoder (``depth``, or 5 for a keras.applications backbone)."""
        return int(math.log2(self.stride))

    @property
    def outputs(self) -> tuple[str, ...]:
        """The training model's outputs: `heads`, plus ``AUX_MASK`` with deep supervision."""
        return self.heads + ((AUX_MASK,) if self.deep_supervision else ())


@dataclass(frozen=True)
class LossConfig:
    """Multi-task loss.

    Attributes:
      class_weight, area_weight, mask_weight: task weights of the total loss.
      class_loss: "focal" (binary focal, `focal_gamma`, `focal_alpha`) or "bce".
      class_pos_weight: weight of positive labels in the class loss (class imbalance), one
        value for all 6 labels or 6 values in LABEL_NAMES order.
      auto_pos_weight: replace `class_pos_weight` by sqrt(negatives / positives) per label from
        the training split's counts in the manifest, clipped to [1, 10] (rare types weigh more).
      mask_bce_weight, mask_dice_weight, mask_batch_dice_weight: parts of the mask loss: BCE,
        soft Dice per slice (mean over slices with a known mask) and soft Dice over all the
        batch's known masks together (guards against collapse to all-background).
      mask_pos_weight: weight of bleed pixels in the mask BCE (bleeds are a few % of a slice).
      area_delta: Huber delta in the transformed area space (see `fusion.losses`).
    """

    class_weight: float = 1.0
    area_weight: float = 0.5
    mask_weight: float = 1.0
    class_loss: str = "focal"
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    class_pos_weight: tuple[float, ...] = (1.0,)
    auto_pos_weight: bool = False
    mask_bce_weight: float = 1.0
    mask_dice_weight: float = 1.0
    mask_batch_dice_weight: float = 0.5
    mask_pos_weight: float = 5.0
    area_delta: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_pos_weight", tuple(float(v) for v in self.class_pos_weight))
        _check(
            self.class_loss in CLASS_LOSSES,
            f"loss.class_loss must be one of {CLASS_LOSSES}, got {self.class_loss!r}",
        )
        _check(
            len(self.class_pos_weight) in (1, 6) and min(self.class_pos_weight) > 0,
            f"loss.class_pos_weight must be 1 or 6 positive values, got {self.class_pos_weight}",
        )
        for name in ("class_weight", "area_weight", "mask_weight", "mask_bce_weight",
                     "mask_dice_weight", "mask_batch_dice_weight", "focal_gamma"):
            _check(getattr(self, name) >= 0, f"loss.{name} must be >= 0, got {getattr(self, name)}")
        _check(0 < self.focal_alpha < 1, f"loss.focal_alpha must be in (0, 1), got {self.focal_alpha}")
        _check(self.mask_pos_weight > 0, f"loss.mask_pos_weight must be > 0, got {self.mask_pos_weight}")
        _check(self.area_delta > 0, f"loss.area_delta must be > 0, got {self.area_delta}")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentation (`fusion.augment_numpy`), applied alike to image, HU and mask.

    Attributes:
      enabled: master switch.
      flip_left_right, flip_up_down: random flips (probability 0.5 each).
      rotation_deg: maximum absolute rotation in degrees.
      scale: maximum relative zoom, e.g. 0.1 for [0.9, 1.1].
      level_jitter_hu: maximum window level shift in HU (HU records; renders with
        `jitter_renders`): a scanner's calibration offset, a few HU.
      width_jitter: maximum relative window width change (likewise).
      jitter_renders: apply the window jitter to render records too, from the rendered grey
        (`fusion.augment_numpy`: exact inside each window; clipped pixels, and pixels within
        4 grey levels of 0 or 255 where JPEG ringing leaves them, keep their grey).
      noise_std: standard deviation of Gaussian noise added to the [0, 1] image.
      bleed_fade_prob: share of the slices with a traced mask whose bleed is faded towards the
        brain around it (`fusion.bleed_fade`): faint and iso-dense bleeds to learn from. Off
        (0) in every preset: at 0.3 on the low-data proxy it found none of the iso-dense
        subdurals and put a mask on 2.3-4.2x as many unseen normal slices (docs/benchmarks.md,
        "Bleed fading").
      bleed_fade_min: the least share of its contrast a faded bleed keeps (alpha is drawn
        uniform in [bleed_fade_min, 1]).
    """

    enabled: bool = True
    flip_left_right: bool = True
    flip_up_down: bool = False
    rotation_deg: float = 10.0
    scale: float = 0.1
    level_jitter_hu: float = 10.0
    width_jitter: float = 0.1
    jitter_renders: bool = False
    noise_std: float = 0.01
    bleed_fade_prob: float = 0.0
    bleed_fade_min: float = 0.2

    def __post_init__(self) -> None:
        _check(0 <= self.rotation_deg <= 180, f"augment.rotation_deg must be in [0, 180], got {self.rotation_deg}")
        _check(0 <= self.scale < 1, f"augment.scale must be in [0, 1), got {self.scale}")
        _check(self.level_jitter_hu >= 0, f"augment.level_jitter_hu must be >= 0, got {self.level_jitter_hu}")
        _check(0 <= self.width_jitter < 1, f"augment.width_jitter must be in [0, 1), got {self.width_jitter}")
        _check(self.noise_std >= 0, f"augment.noise_std must be >= 0, got {self.noise_std}")
        _check(0 <= self.bleed_fade_prob <= 1,
               f"augment.bleed_fade_prob must be in [0, 1], got {self.bleed_fade_prob}")
        _check(0 <= self.bleed_fade_min <= 1,
               f"augment.bleed_fade_min must be in [0, 1], got {self.bleed_fade_min}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data.

    Attributes:
      epochs: maximum epochs (early stopping may end sooner).
      batch_size: global batch size.
      learning_rate: peak AdamW learning rate.
      weight_decay: AdamW decoupled weight decay.
      schedule: "cosine" (decay over all steps after `warmup_epochs`), "plateau"
        (ReduceLROnPlateau on `monitor`) or "constant".
      warmup_epochs: linear warm-up length for "cosine".
      patience: early-stopping patience in epochs on `monitor` (0 disables).
      monitor: the validation loss that picks the best checkpoint (``RUN/best.keras``) and
        stops early: "val_loss" (all heads' weighted sum), "val_mask_loss" (the mask head
        alone; needs it) or "val_class_loss".
      seed: seeds weights, shuffling and augmentation.
      masked_only: train only on slices with a known mask (the peer's choice).
      steps_per_epoch: None for one pass over the training split.
      clipnorm: gradient clipping by global norm (None: off).
      jit_compile: XLA-compile the train step; None = only when a GPU is visible (on CPU the
        compile costs tens of seconds and rarely pays back on small runs).
      ema_momentum: None (off) or the momentum of an exponential moving average of the weights
        (Polyak averaging, Keras' ``use_ema``): validation, the best checkpoint, thresholds and
        the export use the averaged weights, training steps the raw ones. Its horizon is about
        1 / (1 - momentum) optimizer steps: 0.98 averages the last ~50.
    """

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: int = 1
    patience: int = 8
    seed: int = 0
    masked_only: bool = False
    steps_per_epoch: int | None = None
    clipnorm: float | None = 1.0
    jit_compile: bool | None = None
    monitor: str = "val_loss"
    ema_momentum: float | None = None

    def __post_init__(self) -> None:
        _check(self.ema_momentum is None or 0 < self.ema_momentum < 1,
               f"train.ema_momentum must be None (off) or in (0, 1), got {self.ema_momentum}")
        _check(self.monitor in MONITORS, f"train.monitor must be one of {MONITORS}, got {self.monitor!r}")
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.learning_rate > 0, f"train.learning_rate must be > 0, got {self.learning_rate}")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(self.patience >= 0, f"train.patience must be >= 0, got {self.patience}")
        _check(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            f"train.steps_per_epoch must be None or >= 1, got {self.steps_per_epoch}",
        )
        _check(self.clipnorm is None or self.clipnorm > 0, f"train.clipnorm must be None or > 0, got {self.clipnorm}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; written to ``RUN/config.json``."""

    preset: str = "fusion"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check(self.train.monitor != "val_mask_loss" or "mask" in self.model.heads,
               "train.monitor 'val_mask_loss' needs the mask head (model.heads); use 'val_loss'")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        """Build from a dict as written by `to_dict`; missing keys take defaults.

        Raises:
          ConfigError: unknown keys or invalid values.
        """
        return _from_dict(cls, data, "config")

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically to `path` (temporary file in the same folder, then rename)."""
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "RunConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
        return cls.from_json(text)

    def replace(self, **sections: Mapping[str, Any]) -> "RunConfig":
        """Copy with fields of sections replaced, e.g. ``replace(train={"epochs": 3})``.

        Raises:
          ConfigError: an unknown section or field, or an invalid value.
        """
        updated: dict[str, Any] = {}
        for name, changes in sections.items():
            current = getattr(self, name, None)
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"unknown config section {name!r}")
            merged = {**dataclasses.asdict(current), **dict(changes)}
            updated[name] = _from_dict(type(current), merged, name)
        return dataclasses.replace(self, **updated)


def _from_dict(cls: type, data: Mapping[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {sorted(unknown)}; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.{name} must be an object")
            value = _from_dict(default, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"invalid {where}: {err}") from None


def _default_presets() -> tuple[RunConfig, RunConfig]:
    """The default (`fusion`) and its window-attention variant (`fusion-attention`)."""
    # Batch 8 at a peak learning rate of 3e-3: twice the optimiser steps of batch 16 and a
    # faster climb. On the low-data proxy (realistic phantom, fold 0, 128 px, 40 epochs, seeds 0
    # and 1) it took Dice from 0.279 / 0.013 (12 of 23 empty masks on seed 1) to 0.536 / 0.599
    # with no empty mask; issue 10 saw the old recipe underfit real slices the same way
    # (docs/benchmarks.md, "Low-data proxy").
    # Early fusion: on the proxy's 4 folds (seed 0) the window attention (`fusion-attention`)
    # brought no Dice (0.698 against 0.719) and a higher pooled type AUC (0.682 against 0.634,
    # 3 folds of 4) for a quarter of the step (docs/benchmarks.md, "Which fusion and which
    # blocks"). Its epochs take 1.2-1.3x `plain-unet`'s on 2 idle cores with the 4-D
    # GroupNorm (issue 10's goal: 1.5x; "Training time against the plain U-Net").
    # Deep supervision at 2 levels: on the proxy's 4 folds it was ahead on 9 of 12 fold-seed
    # pairs (two seeds on one drop, one on the drop with mass effect; +0.018 Dice on average),
    # macro AUC +0.04 on all three, and its calibrated mask cut stays near 0.5; against it,
    # one or two more empty masks in 92 slices, mostly under 8 HU of contrast
    # (docs/benchmarks.md, "The proxy on the phantom with mass effect; deep supervision
    # becomes the default").
    # The best checkpoint and early stopping follow the mask loss (`val_mask_loss`): on ~10
    # validation slices the summed loss turns up with the class loss while the masks still
    # improve, and stopped half the proxy's runs at 25-30 epochs. On the proxy's 4 folds x 2
    # seeds: Dice 0.739 / 0.735 against 0.723 / 0.723 (the gains where `val_loss` had stopped
    # early), macro AUC 0.744 / 0.783 against 0.727 / 0.779, the same empty masks; runs go ~40
    # epochs, 1.27x `plain-unet`'s run (docs/benchmarks.md, "The checkpoint follows the mask
    # loss").
    # Batch 4 (2026-12-02): twice the optimiser steps of batch 8 for the same slices per epoch
    # (GroupNorm does not depend on the batch size). On the proxy's 4 folds x 2 seeds (the
    # phantom with the oblique skull): Dice 0.791 / 0.812 against 0.775 / 0.776, no fold worse,
    # macro AUC 0.766 / 0.755 against 0.705 / 0.737, the same cost per slice (1.22x against
    # 1.25x `plain-unet`'s step, per slice; docs/benchmarks.md, "Batch 4"). A drop of
    # thousands of slices on an accelerator wants a larger `--batch-size` for throughput.
    # `fusion-attention` keeps batch 8, the recipe it was measured with.
    fusion = RunConfig(
        preset="fusion", model=ModelConfig(fusion="early", deep_supervision=2),
        loss=LossConfig(auto_pos_weight=True),
        train=TrainConfig(batch_size=4, learning_rate=3e-3, monitor="val_mask_loss"),
    )
    fusion_attention = dataclasses.replace(fusion, preset="fusion-attention", model=ModelConfig(),
                                           train=dataclasses.replace(fusion.train, batch_size=8))
    return fusion, fusion_attention


def _baseline_presets() -> tuple[RunConfig, ...]:
    """The peer's recipes and the plain U-Net issue 10 measured on real slices."""
    peer_unet = RunConfig(
        preset="peer-unet",
        model=ModelConfig(fusion="early"),
        loss=LossConfig(
            class_weight=1.0, area_weight=1.0, mask_weight=1.0, class_loss="bce",
            mask_batch_dice_weight=0.0, mask_pos_weight=1.0,
        ),
        train=TrainConfig(masked_only=True),
    )
    peer_cls = RunConfig(
        preset="peer-cls",
        model=ModelConfig(fusion="early", heads=("class",)),
        loss=LossConfig(class_loss="bce", area_weight=0.0, mask_weight=0.0),
    )
    # The baseline issue 10 measured on real slices (Dice 0.450): stacked windows, BCE + Dice,
    # Adam (AdamW without decay) at a constant 1e-3, batch 8, no augmentation. BatchNorm at
    # `bn_momentum`'s default 0.9: with Keras' 0.99 its statistics lagged and it emptied every
    # proxy mask (0.000); with 0.9 it scores 0.652 / 0.501 there on seeds 0 / 1, the default
    # 0.729 / 0.732 (docs/benchmarks.md, "BatchNorm's moving statistics").
    plain_unet = RunConfig(
        preset="plain-unet",
        model=ModelConfig(fusion="early", norm="batch", block="plain"),
        loss=LossConfig(
            class_weight=1.0, area_weight=1.0, mask_weight=1.0, class_loss="bce",
            mask_batch_dice_weight=0.0, mask_pos_weight=1.0,
        ),
        augment=AugmentConfig(enabled=False),
        train=TrainConfig(batch_size=8, learning_rate=1e-3, weight_decay=0.0, schedule="constant",
                          warmup_epochs=0, clipnorm=None, masked_only=True),
    )
    return peer_unet, peer_cls, plain_unet


def _demo_preset() -> RunConfig:
    """`make demo`'s small, fast recipe."""
    # 96 px: with the realistic phantom the demo trains all 30 epochs, and at 128 px that took
    # 13 of its 18 minutes. On the demo's shards 96 px gave macro AUC 0.859 / Dice 0.841 where
    # 128 px gave 0.877 / 0.870; fewer epochs cost more (12 at 128 px: 0.745 / 0.606; 24 at
    # 96 px: 0.797 / 0.811, 3 of 25 bleeding test slices empty) (docs/benchmarks.md, "The
    # demo's time"). Plain GroupNorm blocks over the stacked windows (the fastest of the block
    # and fusion choices at 96 px): on the demo's shards test macro AUC 0.867 / Dice 0.893
    # against 0.849 / 0.871 with residual blocks and window attention at half resolution (one
    # seed each; the demo checks that the pipeline works, the 256 px proxy chooses the default).
    return RunConfig(
        preset="demo",
        model=ModelConfig(image_size=96, fusion="early", block="plain", width=8, depth=4,
                          groups=4, dropout=0.1),
        loss=LossConfig(auto_pos_weight=True),
        augment=AugmentConfig(rotation_deg=8.0, scale=0.08),
        train=TrainConfig(epochs=30, batch_size=8, learning_rate=3e-3, patience=8, warmup_epochs=1),
    )


def _presets() -> dict[str, RunConfig]:
    return {c.preset: c for c in (*_default_presets(), *_baseline_presets(), _demo_preset())}


PRESETS: Mapping[str, RunConfig] = _presets()
#: The preset `fusion-train` starts from.
DEFAULT_PRESET = "fusion"


def preset(name: str) -> RunConfig:
    """The preset config called `name`.

    Raises:
      ConfigError: unknown name (the message lists the known ones).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
