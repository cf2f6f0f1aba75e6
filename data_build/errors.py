"""The one exception base of `data_build`: every CLI of the package catches `DataBuildError`.

Library code raises a subclass whose message says what was wrong and what to do; only the CLI
turns it into a one-line error (`click.ClickException`).
"""
from __future__ import annotations


class DataBuildError(Exception):
    """Base of every error `data_build` raises on purpose (bad input, refused output, ...)."""
