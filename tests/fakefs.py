"""A test-only Beam `FileSystem` for the ``fakefs://`` scheme: object-storage URLs for tests.

``fakefs:///tmp/x/out`` is the local folder ``/tmp/x/out``, reached only through Beam's
`FileSystems` (which picks a filesystem by the URL's scheme, as it picks GCS for ``gs://``), so
a build given ``--out fakefs://...`` proves that nothing on that path goes through `os`/`pathlib`.

Beam finds `FileSystem` subclasses among the imported ones; `data_build.beam_engine` lists every
registered one in ``--beam_plugins`` so that DirectRunner's worker processes import this module
too (run with ``PYTHONPATH`` = the repository root, as the tests are).

Importing this module needs Apache Beam.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

from apache_beam.io.filesystem import FileMetadata, FileSystem
from apache_beam.io.localfilesystem import LocalFileSystem

SCHEME = "fakefs"
PREFIX = f"{SCHEME}://"


def url(path: str | os.PathLike[str]) -> str:
    """Local absolute path -> its ``fakefs://`` URL."""
    return PREFIX + os.path.abspath(os.fspath(path))


def local(path: str) -> str:
    """``fakefs://`` URL -> the local path it stands for (other strings unchanged)."""
    return path[len(PREFIX):] if path.startswith(PREFIX) else path


def _meta(meta: FileMetadata) -> FileMetadata:
    return FileMetadata(url(meta.path), meta.size_in_bytes, meta.last_updated_in_seconds)


class FakeFileSystem(LocalFileSystem):
    """`LocalFileSystem` behind ``fakefs://`` URLs: every path in and out is translated."""

    def __init__(self, pipeline_options: Any) -> None:
        super().__init__(pipeline_options)
        self._disk = LocalFileSystem(pipeline_options)

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return url(os.path.join(local(basepath), *paths))

    def split(self, path: str) -> tuple[str, str]:
        head, tail = self._disk.split(local(path))
        return url(head), tail

    def mkdirs(self, path: str) -> None:
        self._disk.mkdirs(local(path))

    def _list(self, dir_or_prefix: str) -> Iterator[FileMetadata]:
        for meta in self._disk._list(local(dir_or_prefix)):
            yield _meta(meta)

    def create(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._disk.create(local(path), *args, **kwargs)

    def open(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._disk.open(local(path), *args, **kwargs)

    def copy(self, sources: list[str], destinations: list[str]) -> None:
        self._disk.copy([local(p) for p in sources], [local(p) for p in destinations])

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        self._disk.rename([local(p) for p in sources], [local(p) for p in destinations])

    def exists(self, path: str) -> bool:
        return self._disk.exists(local(path))

    def size(self, path: str) -> int:
        return self._disk.size(local(path))

    def last_updated(self, path: str) -> float:
        return self._disk.last_updated(local(path))

    def checksum(self, path: str) -> str:
        return self._disk.checksum(local(path))

    def metadata(self, path: str) -> FileMetadata:
        return _meta(self._disk.metadata(local(path)))

    def delete(self, paths: list[str]) -> None:
        self._disk.delete([local(p) for p in paths])


assert issubclass(FakeFileSystem, FileSystem)
