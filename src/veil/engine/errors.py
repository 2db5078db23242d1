"""Errors a user can cause with their input. Their message names the problem in plain words."""


class MediaError(Exception):
    """The input file cannot be processed (unreadable, corrupt, truncated, unsupported)."""


class ModelsMissing(RuntimeError):
    """The detection models are not installed; `veil models install` fixes it."""
