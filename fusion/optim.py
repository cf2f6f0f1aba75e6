"""How a model is optimised on the hardware at hand: precision policy, AdamW with its schedule,
compilation with the masked losses, and the distribution strategy."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

from fusion import backend
from fusion.config import STRATEGIES, RunConfig
from fusion.errors import TrainError
from fusion.losses import build_losses

if TYPE_CHECKING:
    import tensorflow as tf


def gpu_capability() -> tuple[int, int] | None:
    """(major, minor) compute capability of TensorFlow's first GPU, None without one."""
    import tensorflow as tf  # only on the TensorFlow backend (`fusion.backend`)

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    major, minor = tuple(details.get("compute_capability") or (0, 0))[:2]
    return int(major), int(minor)


def select_precision() -> str:
    """Mixed precision policy for TensorFlow's visible hardware: float32 on CPU."""
    return backend.precision_for(gpu_capability())


def make_optimizer(cfg: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """AdamW with the configured schedule (bias and normalisation weights not decayed), keeping
    a moving average of the weights when ``train.ema_momentum`` is set (`fusion.callbacks`
    swaps it in for validation and checkpoints)."""
    t = cfg.train
    lr: Any = t.learning_rate
    if t.schedule == "cosine":
        total = max(1, t.epochs * steps_per_epoch)
        warmup = min(t.warmup_epochs * steps_per_epoch, total - 1)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=t.learning_rate * (0.1 if warmup else 1.0),
            decay_steps=max(1, total - warmup),
            alpha=0.01,
            warmup_target=t.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    ema = {} if t.ema_momentum is None else {"use_ema": True, "ema_momentum": t.ema_momentum}
    optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay, clipnorm=t.clipnorm,
                                       **ema)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def compile_model(model: keras.Model, cfg: RunConfig, steps_per_epoch: int) -> keras.Model:
    """Compile with the masked losses keyed by output name and AdamW."""
    losses, weights = build_losses(cfg.loss, list(model.output_names))
    jit = cfg.train.jit_compile
    if jit is None:
        jit = backend.default_jit()
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=losses, loss_weights=weights,
                  jit_compile=jit)
    return model


def make_strategy(name: str) -> tf.distribute.Strategy:
    """tf.distribute strategy `name` (TensorFlow backend; `fusion.backend.make_strategy` picks)."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise TrainError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
