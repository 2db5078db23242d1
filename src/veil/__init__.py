"""Veil: find faces and licence plates in images, videos and archives, and make them unrecognisable."""

__version__ = "0.1.0"
