"""A client written from the vendor's reference pages (Public API 0.6.0: Direct Upload, Approve Job, Get Job
Result), not from Veil's code, against a real `veil serve`.

What the pages say, and what this client therefore does: `PUT /direct_upload/{file_name}?model=blur` with
every option as its own query parameter in Python spelling (`enable_lp=True`), the `x-ms-blob-type:
BlockBlob` header and the file as the body; the 307 is followed by `requests`; "Job_id will be returned in
the header". `POST /approve_job/{job_id}` until it is approved, the cost in `total_credit_cost`; `GET
/get_job_result/{job_id}` until `job_status` is 100; download each task's `download_link`.
"""

from __future__ import annotations

import io
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from _live_server import veil_command, veil_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PLATE_PHOTO = "openalpr_plates/images/eu_eu1.jpg"
PLATE_BOX = (396, 340, 599, 386)  # its labelled plate


@pytest.fixture(scope="module")
def api(tmp_path_factory, detection_models, shared_data) -> Iterator[tuple[str, str]]:
    data = tmp_path_factory.mktemp("veil-data")
    created = subprocess.run(
        [*veil_command(), "keys", "create", "--credits", "1000", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    with veil_server(data) as base:
        yield f"{base}/v1", created.stdout.strip().splitlines()[-1].strip()


# ----------------------------------------------------------------------------- the reference client
def direct_upload(api_url: str, key: str, path: Path, model: str = "blur", **options) -> requests.Response:
    params = {"model": model, **{name: str(value) for name, value in options.items()}}  # True -> "True"
    with open(path, "rb") as body:
        return requests.put(
            f"{api_url}/direct_upload/{path.name}",
            params=params,
            data=body,
            timeout=120,
            headers={"access_token": key, "x-ms-blob-type": "BlockBlob"},
        )


def job_id_of(response: requests.Response) -> str:
    """The job id from the header of the direct upload's answer (the 307, before `requests` followed it)."""
    first = response.history[0] if response.history else response
    return first.headers["job_id"]


def approve_job(api_url: str, key: str, job_id: str) -> dict:
    for _ in range(200):
        response = requests.post(f"{api_url}/approve_job/{job_id}", headers={"access_token": key}, timeout=60)
        if response.status_code in (200, 202):
            return response.json()
        assert response.status_code == 302, response.text  # waiting for the upload to complete
        time.sleep(0.3)
    raise AssertionError("never approved")


def get_job_result(api_url: str, key: str, job_id: str) -> dict:
    for _ in range(1200):
        response = requests.get(f"{api_url}/get_job_result/{job_id}", headers={"access_token": key}, timeout=60)
        response.raise_for_status()
        result = response.json()
        if result["job_status"] in (100, 200):
            return result
        time.sleep(0.3)
    raise AssertionError("never finished")


def download(task: dict) -> bytes:
    response = requests.get(task["download_link"], timeout=120)
    response.raise_for_status()
    return response.content


# ----------------------------------------------------------------------------- the tests
def _plate_change(original: Image.Image, output: Image.Image) -> float:
    x0, y0, x1, y1 = PLATE_BOX
    a = np.asarray(original.convert("RGB"), dtype=float)[y0:y1, x0:x1]
    b = np.asarray(output.convert("RGB"), dtype=float)[y0:y1, x0:x1]
    return float(np.abs(a - b).mean())


def test_direct_upload_of_a_photo_with_options_as_query_parameters(api, shared_data, tmp_path):
    api_url, key = api
    photo = tmp_path / "car.jpg"
    photo.write_bytes((shared_data / PLATE_PHOTO).read_bytes())
    response = direct_upload(
        api_url, key, photo, enable_lp=True, blur_threshold=0.5, lp_track=True, slicing=False, mask_blur=True
    )
    assert response.status_code == 201 and [r.status_code for r in response.history] == [307]
    job_id = job_id_of(response)
    approved = approve_job(api_url, key, job_id)
    assert approved["total_credit_cost"] == 1 == approved["job_total_credit_cost"]
    result = get_job_result(api_url, key, job_id)
    assert result["job_status"] == 100, result["job_status_description"]
    assert result["total_credit_cost"] == 1
    assert result["model_config"]["enable_lp"] is True and result["model_config"]["slicing"] is False
    output = Image.open(io.BytesIO(download(result["tasks"][0])))
    assert _plate_change(Image.open(photo), output) > 10  # the plate is blurred


def test_direct_upload_of_a_zip_honours_options_that_turn_things_off(api, shared_data, tmp_path):
    """`enable_lp=False&mask_blur=False&blur_threshold=0.3` reach the job (they were silently dropped):
    the plate in the archive's photo is left as it was."""
    api_url, key = api
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(shared_data / PLATE_PHOTO, "car.jpg")
    response = direct_upload(api_url, key, archive, enable_lp=False, mask_blur=False, blur_threshold=0.3)
    assert response.status_code == 201
    job_id = job_id_of(response)
    approve_job(api_url, key, job_id)
    result = get_job_result(api_url, key, job_id)
    assert result["job_status"] == 100, result["job_status_description"]
    config = result["model_config"]
    assert (config["enable_lp"], config["mask_blur"], config["blur_threshold"]) == (False, False, 0.3)
    output = Image.open(io.BytesIO(download(result["tasks"][0])))
    assert _plate_change(Image.open(shared_data / PLATE_PHOTO), output) < 4  # JPEG re-encoding only


@pytest.mark.parametrize(
    ("params", "loc", "says"),
    [
        ({"enable_lpp": "True"}, "enable_lpp", "unknown parameter"),
        ({"blur_threshold": "2"}, "blur_threshold", "less than or equal to 1"),
        ({"enable_lp": "perhaps"}, "enable_lp", "valid boolean"),
        ({"model": "syn"}, "model", "offers: blur"),
    ],
    ids=["misspelt option", "value out of range", "not a boolean", "model=syn"],
)
def test_a_wrong_option_or_model_is_a_422_naming_it(api, tmp_path, params, loc, says):
    api_url, key = api
    response = requests.put(
        f"{api_url}/direct_upload/a.jpg",
        params={"model": "blur", **params},
        data=b"x" * 100,
        headers={"access_token": key, "x-ms-blob-type": "BlockBlob"},
        allow_redirects=False,
        timeout=60,
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]  # the shape of every validation error: its loc names the parameter
    assert error["loc"][-1] == loc and says in error["msg"], error
    assert "job_id" not in response.headers


def test_syn_is_refused_on_every_route_that_takes_a_model(api):
    api_url, key = api
    body = {"file_name": "a.jpg", "file_size": 10, "model": "syn"}
    for route in ("create_upload_session", "start_upload"):
        response = requests.post(f"{api_url}/{route}", json=body, headers={"access_token": key}, timeout=60)
        assert response.status_code == 422, response.text
        [error] = response.json()["detail"]
        assert error["loc"][-1] == "model" and "offers: blur" in error["msg"]
