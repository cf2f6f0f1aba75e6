"""Local paths and URLs (``gs://``, ``s3://`` ...) for `fusion-build`'s ROOT and ``--out``.

Pure Python (no Beam): the CLI must tell a URL from a path before it knows whether Apache Beam is
installed, e.g. to refuse ``--out gs://...`` with ``--engine local`` in one line.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import BinaryIO

# Beam's own test (`FileSystems.get_scheme`): a scheme (RFC 3986 letters) before "://".
_URL = re.compile(r"^[a-zA-Z][-a-zA-Z0-9+.]*://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (object storage, any Beam filesystem), False for a local path."""
    return isinstance(location, str) and _URL.match(location) is not None


def path_or_url(location: str | os.PathLike[str]) -> str | Path:
    """A URL stays a string (``Path`` would fold ``gs://b`` into ``gs:/b``); a path becomes a `Path`."""
    return location if is_url(location) else Path(location)


def open_binary(location: str | os.PathLike[str]) -> BinaryIO:
    """Open a local file, or a URL through Apache Beam's `FileSystems`, for reading bytes.

    A local path is opened with `open` (no Beam); a URL needs Beam and its scheme's filesystem
    (imported here only then: only `--engine beam` hands URLs to the converter).

    Raises:
      FileNotFoundError: no such file (local or URL), so callers report "missing-...".
      OSError: any other failure to open (Beam's `BeamIOError` is an `OSError`; a scheme
        without a filesystem in this install is reported as one too).
    """
    if not is_url(location):
        return open(location, "rb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    try:
        if not FileSystems.exists(location):
            raise FileNotFoundError(errno.ENOENT, "no such file", location)
        return FileSystems.open(location, compression_type=CompressionTypes.UNCOMPRESSED)
    except ValueError as err:  # FileSystems: no filesystem for this scheme
        raise OSError(errno.EPROTONOSUPPORT, str(err).splitlines()[0], location) from None


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The whole file at `location` (`open_binary`'s rules and errors)."""
    with open_binary(location) as handle:
        return handle.read()
