"""`AzureBlobStore`: the `BlobStore` protocol on Azure Blob Storage (or Azurite) through the
official `azure-storage-blob` SDK (the `azure` extra). SAS tokens are account-key service SAS made
by the SDK's `generate_blob_sas` (notes §2); clients upload and download straight to the account.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from veil.storage.base import DOWNLOAD_PERMISSION, UPLOAD_PERMISSION, BlobNotFoundError, attachment_disposition

_CHUNK = 4 * 1024 * 1024
_TOMBSTONE = "veildeleted"  # metadata of the empty, still leased blob a frozen blob's delete leaves


class AzureBlobStore:
    """Blob storage on an Azure storage account, from a connection string
    (`DefaultEndpointsProtocol=...;AccountName=...;AccountKey=...;BlobEndpoint=...`) or from
    `account_url` + `account_key` (base64, as the portal shows it). Containers are created on first
    use. `api_version` pins the REST version (Azurite lags behind the SDK, notes §0)."""

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        account_url: str | None = None,
        account_key: str | None = None,
        api_version: str | None = None,
    ) -> None:
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise RuntimeError("AzureBlobStore needs azure-storage-blob: pip install 'veil[azure]'") from None
        options = {"max_single_get_size": _CHUNK, "max_chunk_get_size": _CHUNK, "max_block_size": _CHUNK}
        if api_version:
            options["api_version"] = api_version
        if connection_string:
            self._service = BlobServiceClient.from_connection_string(connection_string, **options)
        elif account_url and account_key:
            from urllib.parse import urlsplit

            name = (
                urlsplit(account_url).hostname.split(".")[0]
                if ".core." in account_url
                else urlsplit(account_url).path.strip("/").split("/")[0]
            )
            credential = {"account_name": name, "account_key": account_key}
            self._service = BlobServiceClient(account_url, credential=credential, **options)
        else:
            raise ValueError("AzureBlobStore needs a connection string, or account_url and account_key")
        credential = self._service.credential
        if not getattr(credential, "account_key", None):
            raise ValueError("AzureBlobStore needs an account key (to sign SAS URLs)")
        self.account = credential.account_name
        self._key = credential.account_key
        self._ready: set[str] = set()

    # --- BlobStore protocol ------------------------------------------------------------------

    def signed_upload_url(self, container: str, name: str, expires_in: timedelta) -> str:
        self._ensure_container(container)
        return f"{self._blob(container, name).url}?{self._sas(container, name, UPLOAD_PERMISSION, expires_in)}"

    def signed_download_url(self, container: str, name: str, expires_in: timedelta, filename: str | None = None) -> str:
        disposition = attachment_disposition(filename) if filename else None
        sas = self._sas(container, name, DOWNLOAD_PERMISSION, expires_in, content_disposition=disposition)
        return f"{self._blob(container, name).url}?{sas}"

    def upload_sas_parts(self, container: str, name: str, expires_in: timedelta) -> dict[str, str]:
        self._ensure_container(container)
        return {
            "account_url": self._service.url.split("?")[0].rstrip("/"),
            "container": container,
            "blob": name,
            "sas_token": self._sas(container, name, UPLOAD_PERMISSION, expires_in),
        }

    def exists(self, container: str, name: str) -> bool:
        return self._properties(container, name) is not None

    def size(self, container: str, name: str) -> int:
        props = self._properties(container, name)
        if props is None:
            raise BlobNotFoundError(container, name)
        return props.size

    def open_read(self, container: str, name: str) -> BinaryIO:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            downloader = self._blob(container, name).download_blob()
        except ResourceNotFoundError:
            raise BlobNotFoundError(container, name) from None
        if _TOMBSTONE in (downloader.properties.metadata or {}):
            raise BlobNotFoundError(container, name)
        return io.BufferedReader(_DownloadReader(downloader), _CHUNK)

    def write(self, container: str, name: str, src: BinaryIO | Path) -> int:
        self._ensure_container(container)
        client = self._blob(container, name)
        if isinstance(src, (str, Path)):
            with open(src, "rb") as f:
                client.upload_blob(f, length=Path(src).stat().st_size, overwrite=True)
        else:
            client.upload_blob(src, overwrite=True)
        return client.get_blob_properties().size

    def delete(self, container: str, name: str) -> bool:
        props = self._properties(container, name)
        if props is None:
            return False
        client = self._blob(container, name)
        if props.lease.state == "leased":
            # A frozen name stays frozen (Azure has no lease without a blob): an empty blob under the same
            # lease keeps old upload URLs out until `cleanup` removes it once they have expired.
            client.upload_blob(b"", overwrite=True, lease=self._lease_id(container, name), metadata={_TOMBSTONE: "1"})
        else:
            client.delete_blob(delete_snapshots="include")
        return True

    def freeze(self, container: str, name: str) -> None:
        """An infinite lease whose id only this store can derive: every write through a SAS is then
        refused by Azure with 412 LeaseIdMissing, also after `delete`."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._blob(container, name).acquire_lease(lease_duration=-1, lease_id=self._lease_id(container, name))
        except ResourceNotFoundError:
            pass

    def frozen(self, container: str, name: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._blob(container, name).get_blob_properties().lease.state == "leased"
        except ResourceNotFoundError:
            return False

    def list(self, container: str, prefix: str = "") -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            blobs = self._service.get_container_client(container).list_blobs(
                name_starts_with=prefix or None, include=["metadata"]
            )
            return sorted(b.name for b in blobs if _TOMBSTONE not in (b.metadata or {}))
        except ResourceNotFoundError:
            return []

    def cleanup(self, older_than: timedelta) -> int:
        """Remove what `delete` left of frozen blobs more than `older_than` ago (their upload URLs have
        expired). Returns blobs removed."""
        cutoff = datetime.now(UTC) - older_than
        removed = 0
        for container in self._service.list_containers():
            for blob in self._service.get_container_client(container.name).list_blobs(include=["metadata"]):
                if _TOMBSTONE in (blob.metadata or {}) and blob.last_modified <= cutoff:
                    self._blob(container.name, blob.name).delete_blob(lease=self._lease_id(container.name, blob.name))
                    removed += 1
        return removed

    # --- internals ---------------------------------------------------------------------------

    def _blob(self, container: str, name: str):
        return self._service.get_blob_client(container, name)

    def _sas(self, container: str, name: str, permission: str, expires_in: timedelta, **overrides) -> str:
        from azure.storage.blob import generate_blob_sas

        expiry = datetime.now(UTC) + expires_in
        return generate_blob_sas(
            self.account, container, name, account_key=self._key, permission=permission, expiry=expiry, **overrides
        )

    def _properties(self, container: str, name: str):
        """The blob's properties, or None when it does not exist (or is a deleted frozen blob)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._blob(container, name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return None if _TOMBSTONE in (props.metadata or {}) else props

    def _lease_id(self, container: str, name: str) -> str:
        """A GUID derived from the account key: a SAS holder cannot guess it to write anyway."""
        digest = hmac.new(self._key.encode(), f"lease/{container}/{name}".encode(), hashlib.sha256).digest()
        return str(uuid.UUID(bytes=digest[:16]))

    def _ensure_container(self, container: str) -> None:
        if container in self._ready:
            return
        from azure.core.exceptions import ResourceExistsError

        try:
            self._service.create_container(container)
        except ResourceExistsError:
            pass
        self._ready.add(container)


class _DownloadReader(io.RawIOBase):
    """A raw binary stream over an SDK download (`StorageStreamDownloader.read`), chunk by chunk."""

    def __init__(self, downloader) -> None:
        self._downloader = downloader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._downloader.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
