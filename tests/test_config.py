"""Run config: JSON round trip, validation, presets."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fusion.config import (
    PRESETS,
    AugmentConfig,
    ConfigError,
    LossConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_json(name: str) -> None:
    cfg = preset(name)
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.preset == name


def test_save_and_load_file(tmp_path: Path) -> None:
    cfg = preset("demo").replace(train={"epochs": 3, "seed": 7}, model={"fusion": "early"})
    path = tmp_path / "run" / "config.json"
    cfg.save(path)
    assert RunConfig.load(path) == cfg
    assert json.loads(path.read_text())["train"]["epochs"] == 3
    # Atomic write leaves no temporary file behind.
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]


def test_missing_keys_take_defaults_and_tuples_survive() -> None:
    cfg = RunConfig.from_dict({"model": {"heads": ["class", "mask"], "image_size": 64}})
    assert cfg.model.heads == ("class", "mask")
    assert cfg.train == TrainConfig()
    assert cfg.loss == LossConfig()
    assert hash(cfg)  # frozen and hashable after JSON lists became tuples


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown keys in config.train"):
        RunConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="unknown config section"):
        RunConfig().replace(nonsense={"a": 1})


def test_invalid_json_and_values() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{")
    with pytest.raises(ConfigError, match="model.fusion"):
        ModelConfig(fusion="late")
    with pytest.raises(ConfigError, match="train.epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="augment.scale"):
        AugmentConfig(scale=1.5)
    with pytest.raises(ConfigError, match="class_pos_weight"):
        LossConfig(class_pos_weight=(1.0, 2.0))
    with pytest.raises(ConfigError, match="heads"):
        ModelConfig(heads=("mask",))


def test_image_size_must_be_multiple_of_stride() -> None:
    assert ModelConfig(image_size=64, depth=3).stride == 8
    with pytest.raises(ValueError, match="image_size"):
        ModelConfig(image_size=100, depth=4)
    with pytest.raises(ValueError, match="image_size.*stride 32"):
        ModelConfig(image_size=48, backbone="resnet50")


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="peer-unet"):
        preset("nope")


def test_presets_encode_the_documented_choices() -> None:
    # Early fusion won the proxy's trade-off (docs/benchmarks.md); the earlier default (window
    # attention) stays as fusion-attention, with the same recipe.
    default = preset("fusion").model
    assert (default.block, default.fusion, default.norm) == ("residual", "early", "group")
    # Deep supervision at strides 2 and 4 won the proxy on two drops (docs/benchmarks.md).
    assert default.deep_supervision == 2 and default.outputs[-1] == "mask_aux"
    before = preset("fusion-attention")
    assert (before.model.block, before.model.fusion) == ("residual", "attention")
    assert before.model.deep_supervision == 0
    assert (before.loss, before.augment) == (preset("fusion").loss, preset("fusion").augment)
    assert before.train == dataclasses.replace(preset("fusion").train, batch_size=8)  # as measured
    assert preset("demo").model.block == "plain" and preset("demo").model.fusion == "early"
    assert not preset("fusion").train.masked_only
    # The recipe that won the low-data proxy (docs/benchmarks.md): batch 4, peak LR 3e-3.
    assert (preset("fusion").train.batch_size, preset("fusion").train.learning_rate) == (4, 3e-3)
    peer = preset("peer-unet")
    assert peer.model.fusion == "early" and peer.train.masked_only
    assert peer.loss.class_weight == peer.loss.area_weight == peer.loss.mask_weight
    assert preset("peer-cls").model.heads == ("class",)
    # Issue 10's baseline: stacked windows, plain BatchNorm blocks, Adam 1e-3 constant, batch 8,
    # BCE + Dice, no augmentation.
    plain = preset("plain-unet")
    assert (plain.model.fusion, plain.model.norm, plain.model.block) == ("early", "batch", "plain")
    assert (plain.train.batch_size, plain.train.learning_rate, plain.train.schedule) == (8, 1e-3, "constant")
    assert plain.train.weight_decay == 0.0 and not plain.augment.enabled
    assert plain.loss.mask_batch_dice_weight == 0.0 and plain.loss.class_loss == "bce"
    demo = preset("demo")
    assert demo.model.image_size <= 128 and demo.model.width <= 16
    assert preset("fusion-attention").model.fusion_stride == 1


@pytest.mark.parametrize("field, value", [("norm", "layer"), ("block", "dense")])
def test_unknown_norm_or_block_is_refused(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"model.{field} must be one of"):
        ModelConfig(**{field: value})


def test_fusion_stride_is_checked() -> None:
    assert ModelConfig().fusion_stride == 1  # configs written before the option load as before
    assert ModelConfig(fusion_stride=2).fusion_stride == 2
    with pytest.raises(ConfigError, match="model.fusion_stride must be one of"):
        ModelConfig(fusion_stride=3)
    with pytest.raises(ConfigError, match="exceeds the encoder stride 2"):
        ModelConfig(depth=1, image_size=64, fusion_stride=4)
    # Like fusion_width, a setting of the attention fusion: early fusion (e.g. the demo preset
    # with --fusion early) leaves it unused rather than refusing the config.
    assert ModelConfig(fusion="early", fusion_stride=2).fusion_stride == 2


def test_monitor_is_checked_against_the_heads() -> None:
    assert TrainConfig().monitor == "val_loss"  # configs written before the option load as before
    with pytest.raises(ConfigError, match="train.monitor must be one of"):
        TrainConfig(monitor="val_dice")
    with pytest.raises(ConfigError, match="needs the mask head"):
        preset("peer-cls").replace(train={"monitor": "val_mask_loss"})
    assert preset("peer-cls").replace(train={"monitor": "val_class_loss"}).train.monitor == "val_class_loss"


def test_the_default_checkpoints_on_the_mask_loss() -> None:
    # The default preset picks its checkpoint and stops on the mask head's validation loss
    # (docs/benchmarks.md, "The checkpoint follows the mask loss"); taking the mask head away
    # says which setting to change instead of training without a checkpoint to pick.
    assert preset("fusion").train.monitor == "val_mask_loss"
    assert preset("fusion-attention").train.monitor == "val_mask_loss"
    with pytest.raises(ConfigError, match="needs the mask head .*use 'val_loss'"):
        preset("fusion").replace(model={"heads": ["class", "area"], "deep_supervision": 0})
    assert preset("fusion").replace(model={"heads": ["class", "area"], "deep_supervision": 0},
                                    train={"monitor": "val_loss"}).train.monitor == "val_loss"


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("demo").train.epochs = 3  # type: ignore[misc]


def test_ema_momentum_is_off_by_default_and_checked() -> None:
    assert TrainConfig().ema_momentum is None  # configs written before the option load as before
    assert TrainConfig(ema_momentum=0.98).ema_momentum == 0.98
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="train.ema_momentum must be None"):
            TrainConfig(ema_momentum=bad)
