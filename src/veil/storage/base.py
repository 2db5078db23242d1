"""The `BlobStore` protocol: what the service needs from blob storage.

Two implementations pass the same contract suite (`tests/test_blob_store_contract.py`):
`LocalBlobStore` (files on disk, served by Veil's own Azure-compatible endpoint, `veil.api.blob`)
and `AzureBlobStore` (Azure Blob Storage or Azurite through `azure-storage-blob`).

Clients never talk to the store's Python API: they get signed URLs (service SAS, see
`veil.storage.sas`) and speak the Azure Blob protocol to whichever endpoint the URL names.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import quote

UPLOAD_PERMISSION = "cw"  # `c` alone cannot Put Block (notes §2, pitfall 13)
DOWNLOAD_PERMISSION = "r"


class BlobNotFoundError(FileNotFoundError):
    """The named blob does not exist (or is not committed yet)."""

    def __init__(self, container: str, name: str) -> None:
        super().__init__(f"blob not found: {container}/{name}")
        self.container = container
        self.name = name


@runtime_checkable
class BlobStore(Protocol):
    def signed_upload_url(self, container: str, name: str, expires_in: timedelta) -> str:
        """A blob URL with a write SAS (`sp=cw`): Put Blob, or Put Block + Put Block List."""
        ...

    def signed_download_url(self, container: str, name: str, expires_in: timedelta, filename: str | None = None) -> str:
        """A blob URL with a read SAS (`sp=r`); `filename` signs a `Content-Disposition: attachment`
        override (`rscd`) so browsers save the file under that name."""
        ...

    def upload_sas_parts(self, container: str, name: str, expires_in: timedelta) -> dict[str, str]:
        """The pieces an Azure SDK client needs: `account_url`, `container`, `blob`, `sas_token`
        (`BlobClient(account_url, container, blob, credential=sas_token)`)."""
        ...

    def exists(self, container: str, name: str) -> bool: ...

    def size(self, container: str, name: str) -> int:
        """Committed size in bytes; raises `BlobNotFoundError`."""
        ...

    def open_read(self, container: str, name: str) -> BinaryIO:
        """A readable binary stream over the committed blob; raises `BlobNotFoundError`."""
        ...

    def write(self, container: str, name: str, src: BinaryIO | Path) -> int:
        """Store `src` (a file path or a binary stream) as the blob, replacing it atomically.
        Returns the size written."""
        ...

    def delete(self, container: str, name: str) -> bool:
        """Delete the blob (and its uncommitted blocks). Returns False when it did not exist."""
        ...

    def list(self, container: str, prefix: str = "") -> list[str]:
        """Names of committed blobs in `container` starting with `prefix`, sorted."""
        ...

    def freeze(self, container: str, name: str) -> None:
        """Take an infinite lease on the committed blob: writes through any SAS are refused from now on
        (412 LeaseIdMissing); `delete` still works."""
        ...

    def frozen(self, container: str, name: str) -> bool: ...


def attachment_disposition(filename: str) -> str:
    """`Content-Disposition: attachment` naming `filename` safely (RFC 6266: an ASCII `filename`
    plus `filename*` when the name is not plain ASCII)."""
    cleaned = "".join(ch for ch in filename if ch.isprintable() and ch not in '"\\/') or "download"
    ascii_name = cleaned.encode("ascii", "replace").decode().replace("?", "_")
    value = f'attachment; filename="{ascii_name}"'
    if ascii_name != cleaned:
        value += f"; filename*=UTF-8''{quote(cleaned, safe='')}"
    return value
