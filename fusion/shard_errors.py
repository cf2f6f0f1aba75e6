"""One line for a shard that fails while being read (training, evaluation): which file, where.

TensorFlow's reader says only "corrupted record at 4076" (a byte offset) with no file name, from
deep inside `Model.fit` or an evaluation loop. `describe_read_error` finds the shard whose size
or sha256 no longer matches the manifest and names it, with the offset and the next step.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from data_build.manifest import Manifest, ManifestError
from data_build.records import _sha256_file

_OFFSET = re.compile(r"corrupted record at (\d+)")
_FUNCTION_PREFIX = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


def _damaged_shard(shards_dir: Path, splits: Sequence[str] | None) -> str | None:
    """First listed shard (of `splits`, None = all) missing or differing from the manifest."""
    try:
        entries = [s for s in Manifest.load(shards_dir).shards if splits is None or s.split in splits]
    except ManifestError:
        return None
    for shard in entries:  # sizes first: instant
        path = shards_dir / shard.file
        if not path.is_file() or path.stat().st_size != shard.bytes:
            return shard.file
    for shard in entries:
        if _sha256_file(shards_dir / shard.file) != shard.sha256:
            return shard.file
    return None


def describe_read_error(
    shards_dir: str | os.PathLike[str], message: str, splits: Sequence[str] | None = None
) -> str:
    """One line for a TensorFlow error raised while reading the shards of `shards_dir`.

    Args:
      shards_dir: the fusion-build output folder being read.
      message: the error's message (``tf.errors.OpError.message``).
      splits: the splits being read ("train", "val" ...), None for all.

    Returns:
      "reading the shards of DIR failed: shard FILE is damaged (corrupted record at byte N);
      check them with fusion-verify DIR and rebuild" (what is known of it).
    """
    shards_dir = Path(shards_dir)
    first = _FUNCTION_PREFIX.sub("", message.strip().splitlines()[0] if message.strip() else "")
    first = first.split(" [Op:")[0]
    offset = _OFFSET.search(message)
    where = f" (corrupted record at byte {offset.group(1)})" if offset else f" ({first})"
    shard = _damaged_shard(shards_dir, splits)
    what = f"shard {shard} is damaged{where}" if shard else f"a shard could not be read{where}"
    which = f" the {'/'.join(splits)} shards of" if splits else ""
    return (f"reading{which} {shards_dir} failed: {what}; check them with fusion-verify "
            f"{shards_dir} and rebuild with fusion-build --resume")
