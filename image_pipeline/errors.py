"""Errors of the image pipeline: permanent ones must not be retried, the others may be."""

from __future__ import annotations


class PipelineError(RuntimeError):
    """A step failed; retrying may help (network cut, registry hiccup)."""


class PermanentError(PipelineError):
    """Retrying cannot help: bad input, corrupt data, refused credentials."""
