"""Issue 9, finding 9: malformed or out-of-range request values are a 422 naming the field, never a 500,
and a credit change that cannot be stored leaves nothing behind."""

from __future__ import annotations

import pytest

from _service_helpers import app_client, new_key
from veil.jobs.credits import ledger

BALANCE_MAX = 2**63 - 1  # PostgreSQL BIGINT
ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture()
def client(tmp_path):
    with app_client(tmp_path) as http:
        yield http


def _post_raw(http, url: str, text: str, headers: dict):
    return http.post(
        url, content=text.encode("utf-8", "surrogatepass"), headers={"content-type": "application/json", **headers}
    )


@pytest.mark.parametrize(
    "body,field",
    [
        ('{"file_name": "a.jpg", "model_config": {"blur_threshold": NaN}}', "blur_threshold"),
        ('{"file_name": "a.jpg", "model_config": {"lp_threshold": Infinity}}', "lp_threshold"),
        ('{"file_name": "a.jpg", "file_size": NaN}', "file_size"),
        ('{"file_name": "a.jpg", "file_size": -Infinity}', "file_size"),
        ('{"file_name": "a\\ud800.jpg"}', "file_name"),
        ('{"file_name": "a.jpg", "file_size": "10"}', "file_size"),
        ('{"file_name": "a.jpg", "file_size": 9223372036854775808}', "file_size"),
        ('{"file_name": "a.jpg", "model_config": {"blur_face": "yes"}}', "blur_face"),
        ('{"file_name": "a.jpg", "model_config": {"enable_lp": 1}}', "enable_lp"),
        ('{"file_name": "a.jpg", "model_config": {"video_crf": false}}', "video_crf"),
        ('{"file_name": "a.jpg", "model_config": {"blur_threshold": "0.5"}}', "blur_threshold"),
        ('{"file_name": 5}', "file_name"),
    ],
)
def test_bad_values_are_422_naming_the_field(client, body: str, field: str) -> None:
    r = _post_raw(client, "/v1/create_upload_session", body, {"access_token": new_key(client.svc)})
    assert r.status_code == 422, r.text
    assert any(field in detail["loc"] for detail in r.json()["detail"]), r.text


def test_good_values_still_pass(client) -> None:
    body = '{"file_name": "a.jpg", "file_size": 10, "model_config": {"blur_threshold": 1, "video_crf": 0}}'
    r = _post_raw(client, "/v1/create_upload_session", body, {"access_token": new_key(client.svc)})
    assert r.status_code == 200, r.text


def test_direct_upload_model_config_is_strict_too(client) -> None:
    key = new_key(client.svc)
    r = client.put(
        "/v1/direct_upload",
        params={"file_name": "a.jpg", "model_config": '{"blur_face": "yes"}'},
        headers={"access_token": key, "x-ms-blob-type": "BlockBlob"},
        content=b"x",
    )
    assert r.status_code == 422 and "blur_face" in r.text
    r = client.put(
        "/v1/direct_upload",
        params={"file_name": "a.jpg", "model_config": '{"blur_threshold": NaN}'},
        headers={"access_token": key, "x-ms-blob-type": "BlockBlob"},
        content=b"x",
    )
    assert r.status_code == 422 and "blur_threshold" in r.text


def test_huge_offsets_are_422(client) -> None:
    r = client.get("/v1/jobs", params={"offset": 2**70}, headers={"access_token": new_key(client.svc)})
    assert r.status_code == 422 and "offset" in r.text
    assert client.get("/admin/api/jobs", params={"offset": 2**70}, headers=ADMIN).status_code == 422
    largest = client.get("/v1/jobs", params={"offset": 2**63 - 1}, headers={"access_token": new_key(client.svc)})
    assert largest.status_code == 200 and largest.json()["jobs"] == []


def test_admin_credit_amounts_are_bounded(client) -> None:
    r = client.post("/admin/api/keys", json={"credits": 2**63}, headers=ADMIN)
    assert r.status_code == 422 and "credits" in r.text
    key_id = client.post("/admin/api/keys", json={"credits": 0, "name": "k"}, headers=ADMIN).json()["id"]
    r = client.post(f"/admin/api/keys/{key_id}/credits", json={"amount": 2**63}, headers=ADMIN)
    assert r.status_code == 422 and "amount" in r.text
    r = client.post(f"/admin/api/keys/{key_id}/credits", json={"amount": "5"}, headers=ADMIN)
    assert r.status_code == 422 and "amount" in r.text


def test_balance_never_leaves_the_bigint_range(client) -> None:
    key_id = client.post("/admin/api/keys", json={"credits": 2**62}, headers=ADMIN).json()["id"]
    r = client.post(f"/admin/api/keys/{key_id}/credits", json={"amount": 2**62}, headers=ADMIN)
    assert r.status_code == 409 and "exceed" in r.json()["detail"]
    keys = client.get("/admin/api/keys", headers=ADMIN)
    assert keys.status_code == 200
    balance = next(k["credits"] for k in keys.json() if k["id"] == key_id)
    assert balance == 2**62 and isinstance(balance, int)
    assert (
        client.post(f"/admin/api/keys/{key_id}/credits", json={"amount": BALANCE_MAX - 2**62}, headers=ADMIN).json()[
            "credits"
        ]
        == BALANCE_MAX
    )
    assert client.post(f"/admin/api/keys/{key_id}/credits", json={"amount": 1}, headers=ADMIN).status_code == 409
    # the opening balance and the one top-up that fitted: refused changes left no ledger row
    assert [e.amount for e in ledger(client.svc.db, key_id)] == [2**62, BALANCE_MAX - 2**62]
