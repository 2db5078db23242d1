"""Issue 9, findings 6, 7 and 10 through the service: names bounded in bytes and output names unique within
a job, no server path in any message, unusable or oversized input refused at pricing (job failed, nothing
charged), and what the worker writes."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from _archives import write_archive
from _service_helpers import jpeg_bytes, settings_for
from veil.jobs.keys import create_key, get_key
from veil.jobs.names import output_name, safe_name
from veil.jobs.runner import process_job
from veil.jobs.service import INPUT_CONTAINER, OUTPUT_CONTAINER, build_service

NO_DETECTION = {"blur_face": False, "enable_lp": False}  # the worker runs without the models


@pytest.fixture()
def svc(tmp_path):
    service = build_service(settings_for(tmp_path / "data"))
    yield service
    service.close()


def _upload(svc, data: bytes, name: str, credits: int = 100):
    """Create and upload a job, price it; returns (key id, job)."""
    _, key = create_key(svc.db, credits)
    job = svc.create_job(key.id, name, len(data), model_config=NO_DETECTION).job
    svc.store.write(INPUT_CONTAINER, job.input_blob, io.BytesIO(data))
    svc.on_blob_created(INPUT_CONTAINER, job.input_blob, len(data))
    svc.price_job(job.id)
    return key.id, svc.get_job(job.id)


def _assert_refused_free(svc, key_id: str, job, *words: str) -> None:
    assert job.status == "failed", (job.status, job.description)
    for word in words:
        assert word in job.description, job.description
    assert str(svc.settings.data_dir) not in job.description and "/tmp" not in job.description
    assert svc.approve(key_id, job.id) == "already"
    assert get_key(svc.db, key_id).credits == 100 and svc.get_job(job.id).charged_credits == 0


def _archive(tmp_path, members: dict[str, bytes], fmt: str = "zip") -> bytes:
    return write_archive(tmp_path / f"in.{fmt}", fmt, list(members.items())).read_bytes()


# ----------------------------------------------------------------------------- finding 6: names
def test_names_are_bounded_in_bytes_and_keep_their_extension() -> None:
    assert len(safe_name("é" * 300).encode()) <= 200
    long = safe_name("é" * 300 + ".jpeg")
    assert long.endswith(".jpeg") and len(long.encode()) <= 200
    assert safe_name("a\u202e.jpg") == "a.jpg" and safe_name("../../x/..\\y.png") == "y.png"
    assert len(output_name("é" * 300 + ".jpeg").encode()) < 255


def test_long_unicode_file_name_is_priced_and_approved(svc) -> None:
    key_id, job = _upload(svc, jpeg_bytes(), "é" * 300)
    assert job.status == "awaiting_approval" and job.total_cost == 1, job.description
    assert svc.approve(key_id, job.id) == "approved"
    process_job(job.id, svc)
    report = svc.report(svc.get_job(job.id))
    assert report["job_status"] == 100, report
    assert len(report["tasks"][0]["output_file"].encode()) < 255


def test_output_names_are_unique_within_a_job(svc, tmp_path) -> None:
    photo = jpeg_bytes()
    names = ["a?.jpg", "a*.jpg", "a\u202e.jpg", "A.jpg", "a_anonymized.jpg"]
    key_id, job = _upload(svc, _archive(tmp_path, {n: photo for n in names}), "set.zip")
    assert svc.approve(key_id, job.id) == "approved"
    process_job(job.id, svc)
    report = svc.report(svc.get_job(job.id))
    assert report["job_status"] == 100, report
    outputs = [t["output_file"] for t in report["tasks"]]
    assert [t["input_file"] for t in report["tasks"]] == names
    assert len({o.casefold() for o in outputs}) == len(names), outputs
    assert outputs[0] == "a_anonymized.jpg" and all(o.endswith(".jpg") and "/" not in o for o in outputs)
    for task in svc.get_job(job.id).tasks:
        assert svc.store.exists(OUTPUT_CONTAINER, task.output_blob)


def test_archive_member_name_over_255_bytes_is_refused_without_a_server_path(svc, tmp_path) -> None:
    key_id, job = _upload(svc, _archive(tmp_path, {"a.jpg": jpeg_bytes(), "é" * 130 + ".jpg": jpeg_bytes()}), "set.zip")
    _assert_refused_free(svc, key_id, job, "set.zip", "longer than 255 bytes")


# ----------------------------------------------------------------------------- finding 7: unusable input
def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 24), (i * 80, 0, 0)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


@pytest.mark.parametrize(
    "name,data,words",
    [
        ("notes.jpg", b"hello, not a picture\n" * 50, ("notes.jpg", "not an image or a video")),
        ("cut.jpg", jpeg_bytes(640, 480)[:-2000], ("cut.jpg", "corrupt or truncated")),
        ("anim.gif", _animated_gif(), ("anim.gif", "GIF", "MP4")),
    ],
)
def test_unusable_input_fails_at_pricing_and_costs_nothing(svc, name: str, data: bytes, words) -> None:
    key_id, job = _upload(svc, data, name)
    _assert_refused_free(svc, key_id, job, *words)


# ----------------------------------------------------------------------------- finding 10: big pictures
def _png_header(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + iend


def test_image_over_the_pixel_limit_fails_at_pricing(svc) -> None:
    key_id, job = _upload(svc, _png_header(11_000, 11_000), "huge.png")
    _assert_refused_free(svc, key_id, job, "huge.png", "image too large", "at most 120 MP")


def test_pixel_limit_is_a_setting(tmp_path) -> None:
    service = build_service(settings_for(tmp_path, max_image_pixels=64 * 48 - 1))
    try:
        key_id, job = _upload(service, jpeg_bytes(64, 48), "photo.jpg")
        _assert_refused_free(service, key_id, job, "image too large: 64 x 48 pixels")
    finally:
        service.close()


def test_cli_refuses_an_image_over_the_pixel_limit(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from veil.cli import main

    (tmp_path / "bomb.png").write_bytes(_png_header(11_000, 11_000))
    result = CliRunner().invoke(main, ["anonymize", str(tmp_path / "bomb.png"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "image too large: 11000 x 11000 pixels" in result.output
    (tmp_path / "small.jpg").write_bytes(jpeg_bytes(64, 48))
    monkeypatch.setenv("VEIL_MAX_IMAGE_PIXELS", "1000")
    result = CliRunner().invoke(main, ["anonymize", str(tmp_path / "small.jpg"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "image too large: 64 x 48 pixels (0.00307 MP; at most 0.001 MP)" in result.output
    assert not list((tmp_path / "out").iterdir())
