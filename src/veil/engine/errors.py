"""Errors a user can cause with their input. Their message names the problem in plain words."""


class MediaError(Exception):
    """The input file cannot be processed (unreadable, corrupt, truncated, unsupported)."""


class ModelsMissing(RuntimeError):
    """The detection models are not installed; `veil models install` fixes it."""


class NotMedia(MediaError):
    """The input's content is not an image or a video at all (a text file, a document): a folder's walk skips
    such files and lists them."""
