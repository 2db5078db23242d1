"""Service SAS signing and verification (`veil.storage.sas`), checked byte for byte against the
official SDK's `generate_blob_sas` / `generate_container_sas` (notes §2)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import pytest

from veil.storage.sas import SasError, sign_blob_sas, string_to_sign, verify_blob_sas

sdk = pytest.importorskip("azure.storage.blob")

ACCOUNT = "devstoreaccount1"
KEY_B64 = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
KEY = base64.b64decode(KEY_B64)
EXPIRY = datetime(2030, 12, 1, 2, 27, 30, tzinfo=UTC)
START = datetime(2026, 11, 24, 2, 19, 32, tzinfo=UTC)
NOW = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"permission": "cw"},
        {"permission": "r", "start": START},
        {"permission": "wc", "start": START, "ip": "127.0.0.1-127.0.0.9", "protocol": "https,http"},
        {
            "permission": "r",
            "cache_control": "no-cache",
            "content_disposition": 'attachment; filename="a b+c.jpg"',
            "content_encoding": "identity",
            "content_language": "en",
            "content_type": "image/jpeg",
        },
    ],
)
@pytest.mark.parametrize("blob", ["0f1e2d3c.bin", "dir/sub dir/name+x ü.bin"])
def test_blob_sas_is_byte_identical_to_sdk(kwargs: dict, blob: str) -> None:
    ours = sign_blob_sas(account=ACCOUNT, key=KEY, container="uploads", blob=blob, expiry=EXPIRY, **kwargs)
    permission = kwargs["permission"]
    sdk_kwargs = {k: v for k, v in kwargs.items() if k != "permission"}
    theirs = sdk.generate_blob_sas(
        ACCOUNT,
        "uploads",
        blob,
        account_key=KEY_B64,
        permission=sdk.BlobSasPermissions.from_string(permission),
        expiry=EXPIRY,
        version="2026-10-06",
        **sdk_kwargs,
    )
    assert ours == theirs


def test_container_sas_is_byte_identical_to_sdk() -> None:
    ours = sign_blob_sas(account=ACCOUNT, key=KEY, container="outputs", blob=None, permission="r", expiry=EXPIRY)
    theirs = sdk.generate_container_sas(
        ACCOUNT, "outputs", account_key=KEY_B64, permission="r", expiry=EXPIRY, version="2026-10-06"
    )
    assert ours == theirs


def test_string_to_sign_matches_sdk_hook() -> None:
    seen: list[str] = []
    sdk.generate_blob_sas(
        ACCOUNT,
        "c1",
        "x y.bin",
        account_key=KEY_B64,
        permission="cw",
        expiry=EXPIRY,
        version="2026-10-06",
        sts_hook=seen.append,
    )
    query = sign_blob_sas(account=ACCOUNT, key=KEY, container="c1", blob="x y.bin", permission="cw", expiry=EXPIRY)
    fields = dict(parse_qsl(query))
    assert string_to_sign(fields, f"/blob/{ACCOUNT}/c1/x y.bin") == seen[0]
    assert len(seen[0].split("\n")) == 16  # 16 fields, empty ones kept


def _verify(query: str, blob: str = "b.bin", allowed: str = "r", now: datetime = NOW, **kwargs):
    return verify_blob_sas(
        dict(parse_qsl(query, keep_blank_values=True)),
        account=ACCOUNT,
        key=KEY,
        container="c1",
        blob=blob,
        allowed=allowed,
        now=now,
        **kwargs,
    )


def _sign(**kwargs) -> str:
    base = {"account": ACCOUNT, "key": KEY, "container": "c1", "blob": "b.bin", "permission": "r", "expiry": EXPIRY}
    return sign_blob_sas(**{**base, **kwargs})


def test_verify_accepts_own_and_sdk_tokens() -> None:
    grant = _verify(_sign(content_disposition='attachment; filename="x.jpg"'))
    assert grant.permission == "r"
    assert grant.overrides == {"Content-Disposition": 'attachment; filename="x.jpg"'}
    sdk_token = sdk.generate_blob_sas(ACCOUNT, "c1", "b.bin", account_key=KEY_B64, permission="cw", expiry=EXPIRY)
    assert _verify(sdk_token, allowed="w").permission == "cw"
    # A container SAS covers any blob of the container.
    assert _verify(_sign(blob=None), blob="other/name.bin").resource == "c"


def test_verify_rejects_tampering() -> None:
    query = _sign()
    for tampered in (
        query.replace("sp=r", "sp=rw"),  # escalated permission
        query.replace("se=2030", "se=2031"),  # extended expiry
        query + "&rscd=attachment",  # unsigned override
    ):
        with pytest.raises(SasError) as err:
            _verify(tampered, allowed="r")
        assert err.value.code == "AuthenticationFailed"
        assert "Signature did not match" in err.value.detail
    with pytest.raises(SasError, match="Signature did not match"):
        _verify(query, blob="another.bin")  # a SAS for another blob
    with pytest.raises(SasError, match="no shared access signature"):
        _verify("sv=2026-10-06")


def test_verify_time_window() -> None:
    with pytest.raises(SasError, match="time frame") as err:
        _verify(_sign(), now=EXPIRY)
    assert err.value.code == "AuthenticationFailed"
    with pytest.raises(SasError, match="time frame"):
        _verify(_sign(start=START), now=START - timedelta(seconds=1))
    assert _verify(_sign(start=START), now=START).permission == "r"


def test_verify_permission_letters() -> None:
    with pytest.raises(SasError) as err:
        _verify(_sign(permission="r"), allowed="w")
    assert err.value.code == "AuthorizationPermissionMismatch"
    assert _verify(_sign(permission="c"), allowed="cw").permission == "c"
    with pytest.raises(SasError) as err:
        _verify(_sign(permission="c"), allowed="w")  # `c` alone cannot Put Block (notes §2)
    assert err.value.code == "AuthorizationPermissionMismatch"


def test_verify_protocol_and_ip() -> None:
    with pytest.raises(SasError) as err:
        _verify(_sign(protocol="https"), scheme="http")
    assert err.value.code == "AuthorizationProtocolMismatch"
    query = _sign(ip="10.0.0.1-10.0.0.9")
    assert _verify(query, client_ip="10.0.0.5").permission == "r"
    with pytest.raises(SasError) as err:
        _verify(query, client_ip="127.0.0.1")
    assert err.value.code == "AuthorizationSourceIPMismatch"


def test_raw_plus_in_signature_arrives_as_space() -> None:
    # Find a token whose signature contains "+", then send it unencoded as a hand-built URL would.
    for minute in range(200):
        query = _sign(expiry=EXPIRY + timedelta(minutes=minute))
        sig = dict(parse_qsl(query))["sig"]
        if "+" in sig:
            break
    else:
        pytest.fail("no signature with '+' found")
    raw = query.split("&sig=")[0] + "&sig=" + sig  # '+' unencoded -> decoded as ' '
    assert " " in dict(parse_qsl(raw))["sig"]
    assert _verify(raw).permission == "r"


def test_sign_rejects_unknown_permission() -> None:
    with pytest.raises(ValueError, match="unknown SAS permission"):
        _sign(permission="rq")
