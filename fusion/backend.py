"""Which Keras backend a run uses, and the few choices that depend on it.

`fusion-train --backend` (or ``KERAS_BACKEND``) picks TensorFlow, JAX or PyTorch. Keras reads
``KERAS_BACKEND`` once, on its first import, so `select_backend` must run before anything
imports keras; this module imports neither keras nor a backend at its top.

Everything a training run does differently per backend lives here, as small functions:

- `select_precision`: mixed precision from the backend's own device list (bfloat16 on compute
  capability >= 8 or a TPU, float16 on older GPUs, float32 on CPU);
- `default_jit`: whether the train step is compiled when ``train.jit_compile`` is None;
- `start_run`: seeds, and keeps Keras from importing TensorFlow off its backend;
- `make_strategy`: ``tf.distribute`` on TensorFlow; on JAX and PyTorch only "default" (one
  device), "mirrored" is refused;
- `uses_tensorflow`: on False the run reads shards with `fusion.reader` (no TensorFlow import),
  skips TensorBoard events and writes no SavedModel (`fusion.train_data`, `fusion.callbacks`).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import Any, Iterator

from fusion.config import STRATEGIES
from fusion.errors import FusionError, TrainError

#: Backends `fusion-train --backend` accepts, default first.
BACKENDS: tuple[str, ...] = ("tensorflow", "jax", "torch")
#: The package each backend needs, and how to install it.
_PACKAGES = {
    "tensorflow": ("tensorflow", "pip install tensorflow==2.21.0"),
    "jax": ("jax", "pip install -e .[jax] (or jax[cuda12] on a GPU machine)"),
    "torch": ("torch", "pip install torch (see pytorch.org for the CUDA build)"),
}


class BackendError(FusionError, ValueError):
    """The requested Keras backend cannot be used in this process."""


def default_backend() -> str:
    """The ``KERAS_BACKEND`` environment variable, else "tensorflow"."""
    return os.environ.get("KERAS_BACKEND") or BACKENDS[0]


def select_backend(name: str) -> str:
    """Make `name` the Keras backend of this process. Returns it.

    Call before anything imports keras: Keras reads ``KERAS_BACKEND`` once, at import.

    Raises:
      BackendError: an unknown backend, its package is not installed, or keras is already
        loaded on another backend.
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown Keras backend {name!r}; choose one of {', '.join(BACKENDS)}")
    package, install = _PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise BackendError(
            f"the {name} backend needs the {package!r} package, which is not installed in this "
            f"Python ({sys.executable}): {install}, or choose another --backend"
        )
    if "keras" in sys.modules:
        loaded = sys.modules["keras"].backend.backend()
        if loaded != name:
            raise BackendError(
                f"keras is already loaded on the {loaded} backend in this process; start a new "
                f"process with KERAS_BACKEND={name}"
            )
    os.environ["KERAS_BACKEND"] = name
    return name


def current_backend() -> str:
    """The backend keras runs on (imports keras)."""
    import keras

    return keras.backend.backend()


def uses_tensorflow() -> bool:
    """True when keras runs on TensorFlow (TensorBoard events, SavedModel, tf.distribute)."""
    return current_backend() == "tensorflow"


def start_run(seed: int) -> None:
    """Seed Python, NumPy, Keras and the backend; off TensorFlow, keep Keras off it first.

    Keras 3 imports TensorFlow wherever it checks ``tensorflow.available`` (seeding, model
    serialisation, ...) whenever TensorFlow is installed, whatever the backend. On a machine with
    both, a JAX or PyTorch run would then load TensorFlow (and, on a GPU, its CUDA context).
    Marking Keras' lazy ``tensorflow`` module unavailable makes the run behave as on a machine
    without TensorFlow. It is Keras' own private flag (keras is pinned in setup.cfg); if a
    Keras version lacks it, nothing is changed.
    """
    import keras

    keep_keras_off_tensorflow()
    keras.utils.set_random_seed(int(seed))


def keep_keras_off_tensorflow() -> None:
    """Off the TensorFlow backend, mark Keras' lazy ``tensorflow`` module unavailable.

    Called by `start_run` and by `fusion-evaluate` / `fusion-predict` before they load a model
    (Keras' model loading also checks ``tensorflow.available``). No-op on TensorFlow.
    """
    if current_backend() == "tensorflow":
        return
    from keras.src.utils import module_utils

    lazy_tf = getattr(module_utils, "tensorflow", None)
    if lazy_tf is not None and getattr(lazy_tf, "module", None) is None and hasattr(lazy_tf, "_available"):
        lazy_tf._available = False


def gpu_capability() -> tuple[int, int] | None:
    """(major, minor) compute capability of the first accelerator, None on CPU.

    Asks the backend's own device list, so no other framework is imported. A TPU counts as
    (8, 0): it computes in bfloat16.
    """
    backend = current_backend()
    if backend == "tensorflow":
        from fusion.optim import gpu_capability as tf_capability

        return tf_capability()
    if backend == "jax":
        return _jax_capability()
    if backend == "torch":
        import torch

        return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    return None


def _jax_capability() -> tuple[int, int] | None:
    import jax

    device = jax.devices()[0]
    if device.platform == "tpu":
        return (8, 0)
    if device.platform != "gpu":
        return None
    # CUDA devices report e.g. "9.0"; ROCm devices do not: assume a bfloat16-capable one.
    major, _, minor = str(getattr(device, "compute_capability", "8.0")).partition(".")
    return (int(major or 8), int(minor or 0))


def precision_for(capability: tuple[int, int] | None) -> str:
    """Keras dtype policy: float32 on CPU, bfloat16 from compute capability 8, else float16."""
    if capability is None:
        return "float32"
    return "mixed_bfloat16" if capability[0] >= 8 else "mixed_float16"


def select_precision() -> str:
    """The mixed-precision policy for the backend's visible hardware."""
    return precision_for(gpu_capability())


def default_jit() -> bool:
    """Compile the train step when ``train.jit_compile`` is None.

    TensorFlow and PyTorch: only with a GPU (XLA / torch.compile cost tens of seconds and rarely
    pay back on CPU). JAX: always; its op-by-op mode is much slower than one XLA compile.
    """
    backend = current_backend()
    if backend == "jax":
        return True
    return gpu_capability() is not None


class DefaultStrategy:
    """One device, no distribution: what "default" means on JAX and PyTorch."""

    num_replicas_in_sync = 1

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        yield


def make_strategy(name: str) -> Any:
    """The distribution strategy object for `name`, with a ``scope()`` to build the model in.

    Raises:
      TrainError: an unknown strategy, or "mirrored" on a backend other than TensorFlow.
    """
    if name not in STRATEGIES:
        raise TrainError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    backend = current_backend()
    if backend == "tensorflow":
        from fusion.optim import make_strategy as tf_strategy

        return tf_strategy(name)
    if name != "default":
        raise TrainError(
            f"--strategy {name} is tf.distribute and needs --backend tensorflow; on {backend} "
            "train with --strategy default (one device)"
        )
    return DefaultStrategy()
