"""File access for `drop.discover`: a local folder through `os`/`pathlib`, a URL through Beam.

A local ROOT stays a `pathlib.Path` and every helper here calls the `os` function `drop` used
before, so local discovery is unchanged. A URL ROOT (``gs://bucket/drop``, any scheme Apache
Beam's `FileSystems` knows; ``--engine beam`` only) becomes a `UrlPath`: the drop is listed once
with ``FileSystems.match(ROOT/**)`` into a `UrlTree` (object stores have no folders: a folder is
a prefix of a listed file), and files are read with `FileSystems.open`.

`UrlPath` has only the part of `pathlib.Path` that `drop` uses (``/``, ``name``, ``is_dir``,
``is_file``, ``read_bytes``, ``str``) and deliberately no ``__fspath__``: an `os` call that was
not routed through this module fails loudly instead of looking for "gs:/..." on the local disk.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from data_build import locations


@dataclass
class UrlTree:
    """Every file under a URL root (relative name -> bytes) and the folders they imply."""

    root: str
    files: dict[str, int] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    #: folder -> {entry name: is a folder}
    index: dict[str, dict[str, bool]] = field(default_factory=dict)

    @classmethod
    def list(cls, root: str) -> UrlTree:
        """One recursive listing of `root` through `FileSystems.match`."""
        from apache_beam.io.filesystems import FileSystems

        root = root.rstrip("/")
        tree = cls(root)
        for meta in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list:
            rel = meta.path[len(root) + 1:] if meta.path.startswith(root + "/") else ""
            if not rel or rel.endswith("/"):  # a folder marker object of some object stores
                continue
            tree.files[rel] = int(meta.size_in_bytes)
            parts = rel.split("/")
            for depth in range(len(parts)):
                parent, name = "/".join(parts[:depth]), parts[depth]
                tree.index.setdefault(parent, {})[name] = depth < len(parts) - 1
                if depth:
                    tree.dirs.add(parent)
        if tree.files:  # object storage has no empty folders: no file, no drop
            tree.dirs.add("")
        _TREES[root] = tree  # the latest listing of this root answers its string URLs
        return tree

    def children(self, rel: str) -> list[tuple[str, bool]]:
        """(name, is_dir) of the entries directly in folder `rel`, sorted by name."""
        return sorted(self.index.get(rel, {}).items())


#: root URL -> its latest `UrlTree`: `os.DirEntry.path`-like strings lead back to their listing.
_TREES: dict[str, UrlTree] = {}


def _lookup(url: str) -> UrlPath:
    """The `UrlPath` a URL string names, in the listing of the root it lies under."""
    url = url.rstrip("/")
    for root, tree in _TREES.items():
        if url == root or url.startswith(root + "/"):
            return UrlPath(tree, url[len(root) + 1:])
    raise FileNotFoundError(2, "not under a listed drop", url)


@dataclass(frozen=True)
class UrlPath:
    """A file or folder under a listed URL root (the `pathlib.Path` subset `drop` uses)."""

    tree: UrlTree = field(repr=False, compare=False)
    rel: str = ""

    def __truediv__(self, name: str) -> UrlPath:
        return UrlPath(self.tree, f"{self.rel}/{name}" if self.rel else name)

    def __str__(self) -> str:
        return f"{self.tree.root}/{self.rel}" if self.rel else self.tree.root

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1] if self.rel else self.tree.root.rsplit("/", 1)[-1]

    def is_dir(self) -> bool:
        return self.rel in self.tree.dirs

    def is_file(self) -> bool:
        return self.rel in self.tree.files

    def read_bytes(self) -> bytes:
        return locations.read_bytes(str(self))


@dataclass(frozen=True)
class UrlEntry:
    """`os.DirEntry`'s part that `drop` uses, for an entry of a `UrlTree`."""

    parent: UrlPath
    name: str
    folder: bool

    @property
    def path(self) -> str:
        return str(self.parent / self.name)

    def is_dir(self) -> bool:
        return self.folder

    def is_file(self) -> bool:
        return not self.folder


def as_root(root: str | os.PathLike[str]) -> Path | UrlPath:
    """The drop root: a `Path`, or for a URL a `UrlPath` over one listing of the whole drop."""
    if locations.is_url(root):
        return UrlPath(UrlTree.list(str(root)))
    return Path(root)


def _url(path: Any) -> UrlPath | None:
    """`path` as a `UrlPath` when it is one or a URL string, else None (a local path)."""
    if isinstance(path, UrlPath):
        return path
    return _lookup(path) if isinstance(path, str) and locations.is_url(path) else None


def scandir(path: Any) -> list[Any]:
    """A folder's entries sorted by name (`os.scandir`'s, or `UrlEntry` for a URL)."""
    url = _url(path)
    if url is None:
        with os.scandir(path) as entries:
            return sorted(entries, key=lambda e: e.name)
    if not url.is_dir():
        raise FileNotFoundError(2, "no such folder", str(url))
    return [UrlEntry(url, name, folder) for name, folder in url.tree.children(url.rel)]


def lexists(path: Any) -> bool:
    """`os.path.lexists` (a `UrlPath`: a listed file or folder)."""
    url = _url(path)
    return os.path.lexists(path) if url is None else (url.is_file() or url.is_dir())


def listdir(path: Any) -> list[str]:
    """`os.listdir`'s names."""
    url = _url(path)
    return os.listdir(path) if url is None else [name for name, _ in url.tree.children(url.rel)]


def read_bytes(path: Any) -> bytes:
    """A file's bytes: `Path.read_bytes`, or `FileSystems` for a URL (a `UrlPath` or a string)."""
    url = _url(path)
    return url.read_bytes() if url is not None else locations.read_bytes(path)


def csv_source(path: Any) -> Any:
    """What `pandas.read_csv` should read: the local path itself, or a URL file's bytes."""
    url = _url(path)
    return path if url is None else io.BytesIO(url.read_bytes())


def text_handle(path: Any) -> Any:
    """An ``open(path, newline="", encoding="utf-8-sig", errors="replace")`` text handle."""
    options: dict[str, Any] = dict(newline="", encoding="utf-8-sig", errors="replace")
    url = _url(path)
    if url is None:
        return open(path, **options)
    return io.TextIOWrapper(io.BytesIO(url.read_bytes()), **options)


def as_path(entry_path: str) -> Path | UrlPath:
    """An entry's path (`os.DirEntry.path` / `UrlEntry.path`) as a `Path`, or the `UrlPath` a
    URL names."""
    return _lookup(entry_path) if locations.is_url(entry_path) else Path(entry_path)


def walk(root: Any, onerror: Callable[[OSError], None]) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(root, onerror=...)` top-down (the caller may prune `dirnames`); for a `UrlPath`
    from its listing."""
    url = _url(root)
    if url is None:
        yield from os.walk(root, onerror=onerror)
        return
    pending = [url]
    while pending:
        here = pending.pop(0)
        entries = url.tree.children(here.rel)
        dirnames = [name for name, folder in entries if folder]
        yield str(here), dirnames, [name for name, folder in entries if not folder]
        pending[:0] = [here / name for name in dirnames]  # depth first, in the caller's order


def filesystem_modules() -> list[str]:
    """Modules of the Beam `FileSystem` classes imported in this process ([] without Beam loaded),
    for `import_modules` in spawned processes: they would otherwise know only Beam's own."""
    import sys

    if "apache_beam.io.filesystem" not in sys.modules:
        return []
    from apache_beam.io.filesystem import FileSystem

    return sorted({cls.__module__ for cls in FileSystem.get_all_subclasses()})


def import_modules(names: list[str]) -> None:
    """Process-pool initializer: import `names` (a module that fails to import is left out; its
    URLs then fail as unreadable files, counted like any other)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
