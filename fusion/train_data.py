"""The data of a training run: one reader and one augmentation for every Keras backend.

`fusion.reader.ShardSequence` (NumPy + OpenCV, no TensorFlow import) with
`fusion.augment_numpy`, in reader threads, feeds `model.fit` on TensorFlow, JAX and PyTorch
alike: it costs less CPU per slice than the tf.data reader (`fusion.data`) did on TensorFlow
(docs/benchmarks.md, "Reading without TensorFlow"), so by issue 11's rule it serves all
three. ``train.masked_only`` keeps the records whose slice has a mask (`SubsetSequence`).
``--cache DIR``: the same reader from `fusion.decoded_cache`, the records decoded once before
the first epoch; augmentation still applies per epoch on top.

Importing this module imports keras: select the backend first (`fusion.backend`).
"""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from data_build.examples import parse_example
from fusion import backend
from fusion.config import RunConfig
from fusion.errors import TrainError
from fusion.reader import ShardSequence, SplitRecords

log = logging.getLogger(__name__)

#: Most reader threads per ShardSequence (cv2 decodes release the GIL).
MAX_READER_WORKERS = 8


@dataclass(frozen=True)
class RunData:
    """The three inputs of a run.

    Attributes:
      train: (image [B, S, S, 4] float32, packed targets) batches, shuffled per epoch (seeded)
        and augmented.
      val_fit: validation (image, packed targets) batches for `model.fit` (val_loss).
      val_batches: validation reader dicts (docs/design.md "Reader output") for
        `fusion.train.validate`, in manifest order.
    """

    train: Any
    val_fit: Any
    val_batches: Iterable[Mapping[str, Any]]


def reader_workers() -> int:
    """Reader threads per dataset: the host's cores, at most `MAX_READER_WORKERS`."""
    return max(1, min(MAX_READER_WORKERS, os.cpu_count() or 1))


def make_run_data(shards_dir: Path, cfg: RunConfig, cache_dir: Path | None = None) -> RunData:
    """The run's inputs from `fusion.reader` on any backend (see the module docstring).

    Args:
      cache_dir: ``--cache``: read train and val through `fusion.decoded_cache` (built first
        when missing or stale).

    Raises:
      TrainError: ``train.steps_per_epoch`` above one pass over the train split.
      fusion.decoded_cache.CacheError: the cache cannot be built (disk, DICOM shards).
    """
    t, m = cfg.train, cfg.model
    caches: dict[str, Any] = {}
    if cache_dir is not None:
        from fusion.decoded_cache import open_caches

        caches = open_caches(cache_dir, shards_dir, ("train", "val"), m.image_size, workers=reader_workers(),
                             progress=sys.stderr.isatty())
    common = {"image_size": m.image_size, "batch_size": t.batch_size, "heads": m.outputs}
    augment = cfg.augment if cfg.augment.enabled else None
    train = SubsetSequence(shards_dir, "train", shuffle=True, seed=t.seed, augment=augment,
                           workers=reader_workers(), cache=caches.get("train"), **common)
    if t.masked_only:
        train.restrict(masked_indices(train.records))
    if t.steps_per_epoch is not None and t.steps_per_epoch > len(train):
        # tf.data repeats the split for steps_per_epoch; a PyDataset epoch is one pass at most.
        raise TrainError(
            f"train.steps_per_epoch {t.steps_per_epoch} is more than one pass over the train split "
            f"({len(train)} batches of {t.batch_size}); on the {backend.current_backend()} backend set "
            f"it to at most {len(train)}, or null for whole passes"
        )
    return RunData(
        train=train,
        val_fit=ShardSequence(shards_dir, "val", workers=reader_workers(), cache=caches.get("val"), **common),
        val_batches=val_reader(shards_dir, cfg, caches.get("val")),
    )


def val_reader(shards_dir: Path, cfg: RunConfig, cache: Any = None) -> ShardSequence:
    """The validation split as reader dicts, in manifest order: what `fusion.train.validate`
    calibrates and scores on (training, and ``--export-only --recalibrate``)."""
    return ShardSequence(shards_dir, "val", as_dicts=True, cache=cache, image_size=cfg.model.image_size,
                         batch_size=cfg.train.batch_size, heads=cfg.model.heads)


def masked_indices(records: SplitRecords) -> np.ndarray:
    """[K] int64 indices of the records whose slice has a known mask.

    Parses every record once (no pixel decoding): ``train.masked_only`` costs one read of the
    train split before the first epoch.
    """
    keep = [i for i in range(len(records)) if int(parse_example(records.record(i))["has_mask"]) > 0]
    log.info("masked_only: training on %d of %d train slices (those with a mask)", len(keep), len(records))
    return np.asarray(keep, np.int64)


class SubsetSequence(ShardSequence):
    """A `ShardSequence` over some of its split's records (all until `restrict`).

    Shuffling, augmentation and batching are ShardSequence's, over the kept records only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: [K] int64 record indices the sequence reads, in manifest order.
        self.subset = np.arange(len(self.records), dtype=np.int64)

    def restrict(self, indices: np.ndarray) -> SubsetSequence:
        """Keep only the records at `indices`. Returns self."""
        self.subset = np.asarray(indices, np.int64)
        self._order = None
        return self

    def __len__(self) -> int:
        n = len(self.subset)
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)

    def order(self) -> np.ndarray:
        """[K] record indices of the current epoch: the kept ones, seeded-permuted if shuffling."""
        if self._order is None or self._order[0] != self.epoch:
            n = len(self.subset)
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (self.epoch, self.subset[perm])
        return self._order[1]
