"""Local paths and URLs (``gs://``, ``s3://`` ...) for `fusion-build`'s ROOT and ``--out``.

Pure Python (no Beam): the CLI must tell a URL from a path before it knows whether Apache Beam is
installed, e.g. to refuse ``--out gs://...`` with ``--engine local`` in one line.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

# Beam's own test (`FileSystems.get_scheme`): a scheme (RFC 3986 letters) before "://".
_URL = re.compile(r"^[a-zA-Z][-a-zA-Z0-9+.]*://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` (object storage, any Beam filesystem), False for a local path."""
    return isinstance(location, str) and _URL.match(location) is not None


def path_or_url(location: str | os.PathLike[str]) -> str | Path:
    """A URL stays a string (``Path`` would fold ``gs://b`` into ``gs:/b``); a path becomes a `Path`."""
    return location if is_url(location) else Path(location)
