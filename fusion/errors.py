"""The one exception base of `fusion`: every CLI of the package catches `FusionError`.

Library code raises a subclass whose message says what was wrong and what to do; only the CLI
turns it into a one-line error (`click.ClickException`). `data_build` has its own base,
`data_build.errors.DataBuildError`, which the `fusion` CLIs catch too (they read shards).
"""
from __future__ import annotations


class FusionError(Exception):
    """Base of every error `fusion` raises on purpose (bad shards, run folder, model, input)."""


class TrainError(FusionError, ValueError):
    """Training cannot start or finish with the given shards, run folder or settings."""
