"""Azure service SAS (account-key signed): signing and server-side verification.

Implements `notes/azure-blob-protocol.md` §2 for `sv` ≥ 2020-12-06: the string-to-sign is these 16
fields joined by `\\n`, no trailing newline, absent fields empty:

    sp, st, se, canonicalizedResource, si, sip, spr, sv, sr, snapshotTime, ses,
    rscc, rscd, rsce, rscl, rsct

`canonicalizedResource` is `/blob/<account>/<container>[/<decoded blob name>]`; every value is the
URL-decoded query value, exactly as sent (dates are never re-formatted);
`sig = base64(HMAC-SHA256(account key, utf8(string_to_sign)))`. `sign_blob_sas` produces the same
query string as `azure.storage.blob.generate_blob_sas` byte for byte (tests/test_sas.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from urllib.parse import quote

# The version azure-storage-blob 12.31 signs with (notes §0); any sv ≥ 2020-12-06 verifies.
SAS_VERSION = "2026-10-06"
_MIN_VERSION = "2020-12-06"
_PERMISSION_ORDER = "racwdxyltfmei"  # the order Azure requires for `sp` letters
# (query name, SDK keyword) of the response-header overrides, in string-to-sign order.
_OVERRIDES = (
    ("rscc", "cache_control"),
    ("rscd", "content_disposition"),
    ("rsce", "content_encoding"),
    ("rscl", "content_language"),
    ("rsct", "content_type"),
)
OVERRIDE_HEADERS = {
    "rscc": "Cache-Control",
    "rscd": "Content-Disposition",
    "rsce": "Content-Encoding",
    "rscl": "Content-Language",
    "rsct": "Content-Type",
}


class SasError(Exception):
    """A request's SAS does not grant it. `code` is the Azure error code to answer with (403)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class SasGrant:
    """What a verified SAS allows."""

    permission: str
    resource: str  # "b" (one blob) or "c" (a whole container)
    overrides: dict[str, str]  # response header name -> value, from the signed rsc* fields


def format_time(value: datetime | date) -> str:
    """The SDK's SAS time format, `%Y-%m-%dT%H:%M:%SZ`, in UTC."""
    if isinstance(value, datetime):
        if value.utcoffset() is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime(value.year, value.month, value.day).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_resource(account: str, container: str, blob: str | None) -> str:
    path = f"/blob/{account}/{container}"
    return f"{path}/{blob}" if blob else path


def string_to_sign(fields: Mapping[str, str], resource: str) -> str:
    """The 16-field string-to-sign (notes §2) for decoded query `fields` and `resource`."""
    values = [
        fields.get("sp", ""),
        fields.get("st", ""),
        fields.get("se", ""),
        resource,
        fields.get("si", ""),
        fields.get("sip", ""),
        fields.get("spr", ""),
        fields.get("sv", ""),
        fields.get("sr", ""),
        "",  # snapshotTime: snapshot/version SAS are not supported
        fields.get("ses", ""),
        *(fields.get(name, "") for name, _ in _OVERRIDES),
    ]
    return "\n".join(values)


def compute_signature(key: bytes, text: str) -> str:
    return base64.b64encode(hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()).decode()


def sign_blob_sas(
    *,
    account: str,
    key: bytes,
    container: str,
    blob: str | None,
    permission: str,
    expiry: datetime | date,
    start: datetime | date | None = None,
    ip: str | None = None,
    protocol: str | None = None,
    cache_control: str | None = None,
    content_disposition: str | None = None,
    content_encoding: str | None = None,
    content_language: str | None = None,
    content_type: str | None = None,
    version: str = SAS_VERSION,
) -> str:
    """A service SAS query string (no leading `?`) for one blob (`sr=b`) or, with `blob=None`, a
    whole container (`sr=c`). `key` is the raw (base64-decoded) account key. Parameter order and
    quoting are the SDK's (`st, se, sp, sip, spr, sv, sr, rscc..rsct, sig`; `quote`, safe `/`)."""
    fields: dict[str, str] = {}
    if start is not None:
        fields["st"] = format_time(start)
    fields["se"] = format_time(expiry)
    fields["sp"] = _ordered_permission(permission)
    if ip:
        fields["sip"] = ip
    if protocol:
        fields["spr"] = protocol
    fields["sv"] = version
    fields["sr"] = "b" if blob else "c"
    overrides = (cache_control, content_disposition, content_encoding, content_language, content_type)
    for (name, _), value in zip(_OVERRIDES, overrides):
        if value:
            fields[name] = value
    resource = canonical_resource(account, container, blob)
    fields["sig"] = compute_signature(key, string_to_sign(fields, resource))
    return "&".join(f"{name}={quote(value)}" for name, value in fields.items())


def verify_blob_sas(
    query: Mapping[str, str],
    *,
    account: str,
    key: bytes,
    container: str,
    blob: str,
    allowed: str,
    now: datetime | None = None,
    scheme: str = "http",
    client_ip: str | None = None,
) -> SasGrant:
    """Check that the decoded `query` of a request to `container/blob` carries a valid service SAS
    granting at least one of the permission letters in `allowed` (e.g. "r", "w", "cw").

    Order (notes §2): signature (constant-time), then `se`/`st`, then `spr`/`sip`, then permissions.
    Raises `SasError` with `AuthenticationFailed` (missing, malformed, tampered, expired, not yet
    valid), `AuthorizationProtocolMismatch`, `AuthorizationSourceIPMismatch` or
    `AuthorizationPermissionMismatch`."""
    fail = "AuthenticationFailed"
    sig = query.get("sig")
    if not sig:
        raise SasError(fail, "The request carries no shared access signature (sig is missing).")
    for required in ("sv", "sr", "sp", "se"):
        if not query.get(required):
            raise SasError(fail, f"The shared access signature is missing the required field '{required}'.")
    if query["sv"] < _MIN_VERSION:
        raise SasError(fail, f"Signed version {query['sv']} is not supported (need {_MIN_VERSION} or later).")
    if query["sr"] == "b":
        resource = canonical_resource(account, container, blob)
    elif query["sr"] == "c":
        resource = canonical_resource(account, container, None)
    else:
        raise SasError(fail, f"Signed resource '{query['sr']}' is not supported (only 'b' and 'c').")
    if query.get("si"):
        raise SasError(fail, "Stored access policies (si) are not supported.")

    text = string_to_sign(query, resource)
    expected = compute_signature(key, text).encode()
    # A raw `+` in a hand-built URL arrives as a space after query decoding (pitfall 12).
    given = sig.replace(" ", "+").encode()
    if not hmac.compare_digest(expected, given):
        shown = text.replace("\n", "\\n")
        raise SasError(fail, f"Signature did not match. String to sign used was {shown}")

    current = now or datetime.now(UTC)
    expiry = _parse_time(query["se"], "se")
    start = _parse_time(query["st"], "st") if query.get("st") else None
    if current >= expiry or (start is not None and current < start):
        raise SasError(
            fail,
            "Signed expiry time or start time is not valid: Signature not valid in the specified time "
            f"frame: Start [{query.get('st', '')}] - Expiry [{query['se']}] - Current [{format_time(current)}]",
        )
    if query.get("spr") and scheme not in query["spr"].split(","):
        raise SasError("AuthorizationProtocolMismatch", f"This request is not authorized using protocol {scheme}.")
    if query.get("sip") and client_ip and not _ip_allowed(client_ip, query["sip"]):
        raise SasError("AuthorizationSourceIPMismatch", f"This request is not authorized from IP {client_ip}.")
    if not any(letter in query["sp"] for letter in allowed):
        raise SasError(
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        )
    overrides = {OVERRIDE_HEADERS[name]: query[name] for name, _ in _OVERRIDES if query.get(name)}
    return SasGrant(permission=query["sp"], resource=query["sr"], overrides=overrides)


def _ordered_permission(permission: str) -> str:
    unknown = set(permission) - set(_PERMISSION_ORDER)
    if unknown:
        raise ValueError(f"unknown SAS permission letters: {''.join(sorted(unknown))}")
    return "".join(letter for letter in _PERMISSION_ORDER if letter in permission)


def _parse_time(value: str, name: str) -> datetime:
    """Accepts the ISO 8601 forms Azure accepts: `YYYY-MM-DD`, `...THH:MMZ`, `...THH:MM:SSZ`, with
    optional fractional seconds."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:  # Azure allows 7 fractional digits; Python takes at most 6
        head, _, tail = text.partition(".")
        digits = "".join(ch for ch in tail if ch.isdigit())
        text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise SasError("AuthenticationFailed", f"The value of '{name}' ({value}) is not a valid time.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _ip_allowed(client_ip: str, sip: str) -> bool:
    try:
        ip = ipaddress.ip_address(client_ip)
        low, _, high = sip.partition("-")
        return ipaddress.ip_address(low) <= ip <= ipaddress.ip_address(high or low)
    except ValueError:
        return False
