"""The package API of `data_build` and `fusion`: names imported on first use (PEP 562).

Both packages expose the functions their commands wrap without importing them up front, so
``import data_build`` never loads TensorFlow and ``import fusion`` loads it only when a
function that needs it is called. One implementation serves both ``__init__`` modules.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def package_version() -> str:
    """The installed distribution's version; "0+unknown" in a source tree never pip-installed."""
    from importlib import metadata

    try:
        return metadata.version("fusion")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def lazy_exports(
    package: str, table: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for `package`.

    Args:
      package: the package's name, for the AttributeError message.
      table: public name -> "module:attribute".
      namespace: the package's ``globals()``; a loaded name is cached there.
    """

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = table[name].split(":")
        value = getattr(importlib.import_module(module), attr)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
