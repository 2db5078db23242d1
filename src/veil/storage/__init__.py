"""Blob storage: the `BlobStore` protocol, the embedded `LocalBlobStore` (served by
`veil.api.blob`), `AzureBlobStore` (`veil.storage.azure`, needs the `azure` extra) and service SAS
signing (`veil.storage.sas`)."""

from veil.storage.base import BlobNotFoundError, BlobStore
from veil.storage.local import LocalBlobStore

__all__ = ["BlobNotFoundError", "BlobStore", "LocalBlobStore"]
