"""GPU check of the fusion model on Keras' JAX backend: training under float32, mixed_bfloat16
and mixed_float16 (finite, falling loss; slices/s), then inference latency.

The model code is plain Keras 3, so it runs where TensorFlow is absent (the project's lent GPU
machines have JAX but no TensorFlow). Data are synthetic: random slices with bright blobs whose
mask, labels and area the model can learn; targets packed as `fusion.train` packs them.
Figures and the machine are in docs/benchmarks.md.

Run from the repo root on a machine with a GPU, jax[cuda] and keras:
    KERAS_BACKEND=jax python3 benchmarks/gpu_jax_check.py
Env: GPUCHECK_SITE (folder appended to sys.path AFTER site-packages, for keras/namex/optree),
     GPUCHECK_STEPS (steps per timed chunk), GPUCHECK_CHUNKS, GPUCHECK_SIZE, GPUCHECK_BUDGET_S,
     GPUCHECK_ALLOW_CPU=1 (local dry run), OUT (result.json goes there).
Writes the JSON after every section, so a timeout still leaves partial results.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback

T0 = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if os.environ.get("GPUCHECK_SITE"):
    sys.path.append(os.environ["GPUCHECK_SITE"])  # after site-packages: the device's jax wins
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

RESULT: dict = {"ok": False, "errors": []}
OUT = os.environ.get("OUT") or os.path.join(ROOT, "gpu-check-out")
BUDGET = float(os.environ.get("GPUCHECK_BUDGET_S", "230"))
SIZE = int(os.environ.get("GPUCHECK_SIZE", "256"))
BATCH = 16
STEPS = int(os.environ.get("GPUCHECK_STEPS", "10"))  # steps per timed chunk (one epoch)
CHUNKS = int(os.environ.get("GPUCHECK_CHUNKS", "5"))  # timed chunks after one warm-up epoch


def elapsed() -> float:
    return round(time.perf_counter() - T0, 1)


def dump() -> None:
    RESULT["elapsed_s"] = elapsed()
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "result.json"), "w") as f:
        json.dump(RESULT, f, indent=1, sort_keys=True, default=str)


def section(name):
    def wrap(fn):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            except Exception as err:  # record and go on with the next section
                RESULT["errors"].append({"section": name, "error": f"{type(err).__name__}: {err}",
                                         "trace": traceback.format_exc()[-3000:]})
                print(f"[{name}] FAILED: {err}", flush=True)
                return None
            finally:
                RESULT.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 1)
                dump()
        return run
    return wrap


# --- environment -----------------------------------------------------------------------------
import jax  # noqa: E402
import keras  # noqa: E402

from fusion.config import HEADS, preset  # noqa: E402
from fusion.losses import build_losses  # noqa: E402
from fusion.model import build_model  # noqa: E402
from fusion.targets import pack_targets  # noqa: E402

devs = jax.devices()
RESULT["env"] = {
    "python": sys.version.split()[0], "jax": jax.__version__, "keras": keras.__version__,
    "keras_file": keras.__file__, "jax_file": jax.__file__, "backend": keras.backend.backend(),
    "numpy": np.__version__, "devices": [str(d) for d in devs],
    "platform": devs[0].platform, "device_kind": getattr(devs[0], "device_kind", None),
}
print("jax.devices():", devs, flush=True)
print("env:", json.dumps(RESULT["env"]), flush=True)
ON_GPU = devs[0].platform in ("gpu", "cuda")
if not ON_GPU and os.environ.get("GPUCHECK_ALLOW_CPU") != "1":
    RESULT["errors"].append({"section": "env", "error": "no GPU device visible to jax"})
    dump()
    print(json.dumps(RESULT, sort_keys=True, default=str))
    sys.exit(2)

CFG = preset("demo").replace(model={"image_size": SIZE}, train={"batch_size": BATCH})
RESULT["config"] = {"preset": "demo", "model": CFG.to_dict()["model"], "loss": CFG.to_dict()["loss"],
                    "train": CFG.to_dict()["train"], "batch": BATCH, "steps_per_chunk": STEPS,
                    "timed_chunks": CHUNKS}


# --- synthetic, learnable data ---------------------------------------------------------------
def make_data(n: int, size: int, seed: int = 0):
    """Images [n, S, S, 4] in [0, 1] and packed targets (`fusion.targets.pack_targets`)."""
    rng = np.random.default_rng(seed)
    image = rng.random((n, size, size, 4), dtype=np.float32)
    # A bright blob in some slices: the mask, the labels and the area follow it.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    mask = np.zeros((n, size, size, 1), np.float32)
    bleed = rng.random(n) < 0.5
    for i in np.nonzero(bleed)[0]:
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.15)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        mask[i, ..., 0] = blob
        image[i, blob, 1] = np.clip(image[i, blob, 1] * 0.3 + 0.7, 0, 1)
    labels = np.zeros((n, 6), np.float32)
    labels[:, 0] = bleed
    kinds = rng.integers(1, 6, n)
    labels[np.arange(n), kinds] = bleed
    has_mask = (rng.random(n) < 0.7).astype(np.float32)
    batch = {"image": image, "labels": labels, "has_labels": np.ones(n, np.float32), "mask": mask,
             "has_mask": has_mask, "area_fraction": mask.mean(axis=(1, 2, 3)), "has_area": has_mask}
    return pack_targets(batch, HEADS)


# --- compile as fusion.train.compile_model does (its module imports TensorFlow) ---------------
def make_optimizer(cfg, steps_per_epoch: int):
    """fusion.train.make_optimizer, copied (backend-neutral part)."""
    t = cfg.train
    lr = t.learning_rate
    if t.schedule == "cosine":
        total = max(1, t.epochs * steps_per_epoch)
        warmup = min(t.warmup_epochs * steps_per_epoch, total - 1)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=t.learning_rate * (0.1 if warmup else 1.0),
            decay_steps=max(1, total - warmup), alpha=0.01,
            warmup_target=t.learning_rate if warmup else None, warmup_steps=warmup,
        )
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay, clipnorm=t.clipnorm)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def compiled_model(cfg):
    keras.utils.set_random_seed(cfg.train.seed)
    model = build_model(cfg.model)
    losses, weights = build_losses(cfg.loss, list(model.output_names))
    # train.compile_model: jit_compile = cfg.train.jit_compile or "GPU visible" (None here -> True)
    jit = cfg.train.jit_compile if cfg.train.jit_compile is not None else ON_GPU
    # steps_per_epoch = one timed chunk: the LR warms up over the first chunk (as in train.py,
    # warmup_epochs=1), then cosine-decays over cfg.train.epochs chunks.
    model.compile(optimizer=make_optimizer(cfg, STEPS), loss=losses, loss_weights=weights, jit_compile=jit)
    return model


class Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times, self.losses, self.parts = [time.perf_counter()], [], []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.losses.append(float(logs["loss"]))  # forces the device to finish the epoch
        self.parts.append({k: round(float(v), 5) for k, v in logs.items() if k.endswith("loss")})
        self.times.append(time.perf_counter())


def finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))


def train_policy(policy: str, x, y):
    return section(f"train_{policy}")(_train_policy)(policy, x, y)


def _train_policy(policy: str, x, y):
    keras.mixed_precision.set_global_policy(policy)
    out: dict = {"policy": policy}
    RESULT.setdefault("train", {})[policy] = out
    t = time.perf_counter()
    model = compiled_model(CFG)
    out["build_compile_s"] = round(time.perf_counter() - t, 2)
    out["params"] = int(model.count_params())
    out["optimizer"] = type(model.optimizer).__name__
    out["variable_dtypes"] = sorted({v.dtype for v in model.trainable_variables})
    # Step 1 alone: its loss is the loss at initialisation (computed before the update) and it
    # compiles the train step.
    t = time.perf_counter()
    h = model.fit(x[:BATCH], {k: v[:BATCH] for k, v in y.items()}, batch_size=BATCH, epochs=1,
                  verbose=0, shuffle=False)
    out["first_step_incl_compile_s"] = round(time.perf_counter() - t, 2)
    out["loss_initial"] = float(h.history["loss"][0])
    # 1 warm-up epoch + CHUNKS timed epochs of STEPS steps each, one fit call.
    timer = Timer()
    model.fit(x, y, batch_size=BATCH, epochs=1 + CHUNKS, verbose=0, shuffle=False, callbacks=[timer])
    chunk_s = np.diff(timer.times)
    timed = chunk_s[1:]
    sps = [STEPS * BATCH / s for s in timed]
    out["epoch_losses"] = [round(v, 5) for v in timer.losses]
    out["epoch_loss_parts_last"] = timer.parts[-1]
    out["chunk_s"] = [round(float(s), 4) for s in chunk_s]
    out["train_slices_per_s_median"] = round(statistics.median(sps), 1)
    out["train_step_ms_median"] = round(1000 * statistics.median(timed) / STEPS, 2)
    out["train_steps_total"] = 1 + STEPS * (1 + CHUNKS)
    out["loss_final"] = timer.losses[-1]
    out["losses_finite"] = finite([out["loss_initial"]] + timer.losses)
    out["loss_decreased"] = bool(out["losses_finite"] and timer.losses[-1] < out["loss_initial"]
                                 and timer.losses[-1] < timer.losses[0])
    # Outputs: symbolic dtypes and a jitted prediction on one batch.
    out["symbolic_outputs"] = {k: [str(t.dtype), list(t.shape)] for k, t in
                               zip(model.output_names, model.outputs)}
    pred = model.predict_on_batch(x[:BATCH])
    out["pred"] = {k: {"dtype": str(v.dtype), "shape": list(v.shape), "finite": finite(v),
                       "min": round(float(np.min(v)), 5), "max": round(float(np.max(v)), 5)}
                   for k, v in pred.items()}
    # Mask sanity on the synthetic blobs: Dice of the thresholded prediction on bleed slices.
    truth = y["mask"][:BATCH, ..., 0]
    p = (pred["mask"][..., 0] > 0.5).astype(np.float32)
    out["pred_mask_dice_batch0"] = round(float(2 * (p * truth).sum() / max(p.sum() + truth.sum(), 1)), 4)
    print(f"[{policy}] {json.dumps(out, default=str)}", flush=True)
    return model


def _median_latency(fn, reps: int, min_time: float = 1.0) -> float:
    fn()  # one more warm-up after the compile call
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < min_time and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@section("inference")
def inference(model):
    keras.mixed_precision.set_global_policy("float32")
    res: dict = {"policy": "float32", "note": (
        "predict_on_batch: numpy in, numpy out (host<->device copies included); "
        "device: jax.jit(stateless_call) on device-resident input, block_until_ready")}
    RESULT["inference"] = res
    fwd = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
    rng = np.random.default_rng(1)
    sizes = [int(v) for v in os.environ.get("GPUCHECK_INF_SIZES", "256,512").split(",")]
    for size in sizes:
        for batch in (1, 16):
            if elapsed() > BUDGET:
                res[f"{size}_b{batch}"] = "skipped: time budget"
                continue
            key = f"{size}_b{batch}"
            x = rng.random((batch, size, size, 4), dtype=np.float32)
            t = time.perf_counter()
            model.predict_on_batch(x)
            compile_s = time.perf_counter() - t
            lat = _median_latency(lambda x=x: model.predict_on_batch(x), reps=10)
            entry = {"predict_on_batch_compile_s": round(compile_s, 2),
                     "predict_on_batch_ms": round(1000 * lat, 3),
                     "predict_on_batch_ms_per_slice": round(1000 * lat / batch, 3)}
            xd = jax.device_put(x)
            # Read the variables now: Keras' jitted predict donates its state buffers.
            tv = [v.value for v in model.trainable_variables]
            ntv = [v.value for v in model.non_trainable_variables]
            t = time.perf_counter()
            jax.block_until_ready(fwd(tv, ntv, xd))
            entry["device_compile_s"] = round(time.perf_counter() - t, 2)
            dl = _median_latency(lambda tv=tv, ntv=ntv, xd=xd: jax.block_until_ready(fwd(tv, ntv, xd)), reps=20)
            entry["device_ms"] = round(1000 * dl, 3)
            entry["device_ms_per_slice"] = round(1000 * dl / batch, 3)
            entry["device_slices_per_s"] = round(batch / dl, 1)
            res[key] = entry
            print(f"[inference {key}] {entry}", flush=True)
            dump()


def main() -> None:
    x, y = make_data(STEPS * BATCH, SIZE)
    RESULT["data"] = {"x": list(x.shape), **{k: list(v.shape) for k, v in y.items()}}
    policies = [p for p in os.environ.get("GPUCHECK_POLICIES", "float32,mixed_bfloat16,mixed_float16").split(",") if p]
    f32 = None
    for policy in policies:
        if elapsed() > BUDGET:
            RESULT.setdefault("train", {})[policy] = "skipped: time budget"
            continue
        model = train_policy(policy, x, y)
        if policy == "float32":
            f32 = model
    keras.mixed_precision.set_global_policy("float32")
    if f32 is None and "float32" not in policies:
        f32 = compiled_model(CFG)  # inference only: an untrained float32 model
    if f32 is not None:
        inference(f32)  # layers keep the float32 policy they were built with
    tr = RESULT.get("train", {})
    RESULT["ok"] = bool(
        ON_GPU and not RESULT["errors"]
        and all(isinstance(tr.get(p), dict) and tr[p].get("losses_finite") and tr[p].get("loss_decreased")
                for p in ("float32", "mixed_bfloat16", "mixed_float16"))
    )
    dump()


if __name__ == "__main__":
    main()
    print("RESULT_JSON " + json.dumps(RESULT, sort_keys=True, default=str), flush=True)
