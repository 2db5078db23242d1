"""Issue #21 acceptance: review in the admin panel, in a real browser (Playwright driving Debian's Chromium)
against a real `veil serve`, jobs sent by the seed's sample client with `"review": true`.

A reviewer draws a box over an unblurred region of a photo and toggles a candidate off, renders, and the
downloaded output is blurred in the box and unchanged where the candidate was; on a video, a box on two
frames covers every frame between them (checked on the output's decoded frames); the keyboard steps frames
and places to look; roles: a reviewer gets 403 on Keys, Usage and System, a viewer cannot render; two
reviewers on one job see the claim.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

import seed_client
from _browser import browser  # noqa: F401  (a fixture)
from _live_server import CHROMIUM, veil_command, veil_server
from conftest import under_ci

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
expect = playwright_api.expect
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not under_ci(),
        reason="Debian's chromium is not installed (scripts/test-services.sh does it)",
    ),
]

ADMIN, REVIEWER, SECOND, VIEWER = "ops@example.com", "ana@example.com", "ben@example.com", "vic@example.com"
PASSWORD = "review-password-1"
REVIEW = {"review": True, "blur_face": True, "enable_lp": False, "slicing": False}
PHOTO = "dlib_faces/images/dlib_2008_001322.jpg"


def _veil(data: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [*veil_command(), *args, "--data-dir", str(data)], input=stdin, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory, detection_models):
    data = tmp_path_factory.mktemp("veil-review")
    for email, role in ((REVIEWER, "reviewer"), (SECOND, "reviewer"), (VIEWER, "viewer")):
        assert f"created {role} {email}" in _veil(
            data, "admin", "create", email, "--role", role, stdin=f"{PASSWORD}\n{PASSWORD}\n"
        )
    key = _veil(data, "keys", "create", "--credits", "50", "--name", "review test").strip().splitlines()[-1]
    with veil_server(data, {"VEIL_ADMIN_EMAIL": ADMIN, "VEIL_ADMIN_PASSWORD": PASSWORD}) as base:
        seed_client.API_URL = f"{base}/v1"
        yield base, key


@pytest.fixture
def signed_in(browser, server):
    contexts = []

    def sign_in(email: str):
        ctx = browser.new_context(base_url=server[0], viewport={"width": 1280, "height": 900}, accept_downloads=True)
        ctx.set_default_timeout(20_000)
        refused = []
        ctx.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        contexts.append((ctx, refused))
        page = ctx.new_page()
        page.goto("/admin/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile("/admin/(keys|jobs)"))
        return page

    yield sign_in
    for ctx, refused in contexts:
        ctx.close()
        assert not refused, refused


def _submit(key: str, path: Path, tmp_path: Path, config: dict = REVIEW) -> str:
    os.chdir(tmp_path)  # the seed's client writes next to the working directory
    upload_url, job_id = seed_client.get_upload_url(api_key=key, file_name=str(path), model_config=config)
    seed_client.upload_file(session_uri=upload_url, file_name=str(path))
    assert seed_client.approve_job(api_key=key, job_id=job_id)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = _result(key, job_id)["state"]
        if state == "awaiting_review":
            return job_id
        assert state not in ("failed", "cancelled"), state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not awaiting review in time")


def _photo_job(key: str, shared_data: Path, photo: Path) -> tuple[Path, str]:
    photo.write_bytes((shared_data / PHOTO).read_bytes())
    return photo, _submit(key, photo, photo.parent)


def _result(key: str, job_id: str) -> dict:
    return requests.get(f"{seed_client.API_URL}/job_result/{job_id}", headers={"access_token": key}, timeout=10).json()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _video(photo: Path, path: Path, frames: int = 40) -> Path:
    """A 320x240 clip panning slowly over the photo (its faces, and foliage in the top left corner)."""
    import av

    picture = np.asarray(Image.open(photo).convert("RGB"))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"crf": "12"}
        for i in range(frames):
            crop = Image.fromarray(np.ascontiguousarray(picture[20 + i : 320 + i, 60 + i : 460 + i])).resize((320, 240))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(crop), format="rgb24")))
        out.mux(stream.encode(None))
    return path


def _frames(data: bytes) -> list[np.ndarray]:
    import av

    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24").astype(np.int16) for f in container.decode(video=0)]


def _screen(page, box) -> tuple[float, float, float, float]:
    """An image-pixel box in page coordinates (the overlay's viewBox is the picture's pixels)."""
    r = page.locator("#overlay").bounding_box()
    w, h = (float(v) for v in page.locator("#overlay").get_attribute("viewBox").split()[2:])
    return (
        r["x"] + box[0] / w * r["width"],
        r["y"] + box[1] / h * r["height"],
        r["x"] + box[2] / w * r["width"],
        r["y"] + box[3] / h * r["height"],
    )


def _drag(page, box) -> None:
    x1, y1, x2, y2 = _screen(page, box)
    page.mouse.move(x1, y1)
    page.mouse.down()
    page.mouse.move((x1 + x2) / 2, (y1 + y2) / 2, steps=3)
    page.mouse.move(x2, y2, steps=3)
    page.mouse.up()


def _render(page, key: bool = False) -> None:
    if key:
        page.keyboard.press("r")  # the keyboard's render
    else:
        page.get_by_role("button", name="Render…").click()
    dialog = page.locator("#confirm")
    expect(dialog).to_be_visible()
    dialog.locator("#confirm-ok").click()
    expect(page.locator("#compare")).to_be_visible(timeout=180_000)  # shown once the render completed


def test_reviewer_fixes_a_photo_and_renders(server, signed_in, shared_data, tmp_path):
    base, key = server
    photo, job_id = _photo_job(key, shared_data, tmp_path / "crowd.jpg")

    page = signed_in(REVIEWER)
    assert page.url.endswith("/admin/jobs?queue=review")  # a reviewer starts at the review queue
    expect(page.locator("#nav-review .count")).not_to_have_text("0")
    page.get_by_role("link", name="crowd.jpg").first.click()
    expect(page.get_by_role("heading", name=re.compile("crowd.jpg"))).to_be_visible()
    expect(page.locator("#claim")).to_contain_text("You are reviewing this job")
    expect(page.locator("#cand-list .cand-row").first).to_be_visible()

    # the candidate list: closest to the threshold first
    scores = [float(s) for s in page.locator("#cand-list .cand-row .mono").all_inner_texts()]
    assert scores == sorted(scores, key=lambda s: abs(s - 0.5))

    # toggle the surest face off; draw a box over a corner with no face
    surest = page.locator("#overlay g.c-drawn").evaluate_all(
        "gs => gs.map(g => [g.dataset.id, ...['x', 'y', 'width', 'height'].map(a => +g.firstChild.getAttribute(a))])"
    )
    surest.sort(key=lambda row: -row[3] * row[4])
    face_id, fx, fy, fw, fh = surest[0]
    face = page.locator(f'#overlay g[data-id="{face_id}"]')
    face.locator("rect").click()  # a click toggles it (and selects it)
    expect(face).to_have_class(re.compile("c-removed"))
    page.keyboard.press("t")  # the keyboard: t toggles the selected candidate, Delete removes it
    expect(face).to_have_class(re.compile("c-drawn"))
    page.keyboard.press("Delete")
    expect(face).to_have_class(re.compile("c-removed"))
    page.keyboard.press("l")  # the kind of the next box: l plate, f face
    expect(page.locator("[data-kind=plate]")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("f")
    expect(page.locator("[data-kind=face]")).to_have_attribute("aria-pressed", "true")
    corner = [10, 10, 90, 70]
    _drag(page, corner)
    expect(page.locator("#overlay g.c-added")).to_have_count(1)
    expect(page.locator("#pending")).to_contain_text("2 unsent changes")

    _render(page)
    done = _result(key, job_id)
    assert done["job_status"] == 100 and done["credits_charged"] == 1  # the first render is included
    output = _pixels(requests.get(done["tasks"][0]["download_link"], timeout=30).content)
    source = _pixels(photo.read_bytes())
    x1, y1, x2, y2 = corner
    drawn, before = output[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4], source[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4]
    assert np.abs(drawn - before).mean() > 4 and drawn.std() < before.std() * 0.8  # blurred in the drawn box
    fx, fy, fw, fh = (int(v) for v in (fx, fy, fw, fh))
    kept = np.abs(output[fy : fy + fh, fx : fx + fw] - source[fy : fy + fh, fx : fx + fw]).mean()
    assert kept < 3, kept  # unchanged (but for JPEG re-encoding) where the toggled face is

    # the job page records who rendered, with the edits
    page.goto(f"/admin/jobs/{job_id}")
    expect(page.locator("#review-log")).to_contain_text(
        f"{REVIEWER} render: 2 edits (file 0: remove {face_id}; add face on frame 0)"
    )


def _frame_is(page, index: int) -> None:
    expect(page.locator("#frame-label")).to_have_text(re.compile(rf"^{index} ·"))


def test_reviewer_covers_a_span_of_video_frames_with_the_keyboard(server, signed_in, shared_data, tmp_path):
    base, key = server
    clip = _video(shared_data / PHOTO, tmp_path / "pan.mp4")
    job_id = _submit(key, clip, tmp_path)
    page = signed_in(REVIEWER)
    page.goto(f"/admin/jobs/{job_id}/review")
    _frame_is(page, 0)
    marks = page.request.get(f"/admin/jobs/{job_id}/review/0/timeline.json?face=0.5&plate=0.5").json()["marks"]
    assert marks, "the clip has a candidate just below the threshold"
    expect(page.locator("#timeline")).to_have_attribute("data-marks", str(len(marks)))

    # places to look, then frames, from the keyboard
    page.keyboard.press("n")
    _frame_is(page, marks[0])
    page.keyboard.press("p")
    _frame_is(page, marks[0])  # nothing to look at before it
    page.keyboard.press("Shift+ArrowLeft")
    _frame_is(page, max(0, marks[0] - 10))
    for _ in range(5 - max(0, marks[0] - 10)):
        page.keyboard.press("ArrowRight")
    _frame_is(page, 5)

    # a box on frame 5 and on frame 30 covers every frame between them
    corner = [8, 4, 100, 48]  # foliage, well above the faces
    _drag(page, corner)
    expect(page.locator("#overlay g.c-added.key")).to_have_count(1)
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowRight")
    _frame_is(page, 25)
    expect(page.locator("#overlay g.c-added")).to_have_count(0)  # one key frame: no span yet
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    _frame_is(page, 30)
    _drag(page, corner)  # the selected box gets a second key frame
    page.keyboard.press("Shift+ArrowLeft")
    _frame_is(page, 20)
    expect(page.locator("#overlay g.c-added:not(.key)")).to_have_count(1)  # interpolated between them

    # Shift+T removes the selected candidate's whole track: on the next frame too
    expect(page.locator("#timeline-note")).to_contain_text(re.compile(r"\d+ tracks?$"))
    row = page.locator("#cand-list .cand-row", has_text="track").first
    track = re.search(r"track (\d+)", row.inner_text()).group(1)
    row.click()
    page.keyboard.press("Shift+T")
    same_track = page.locator("#cand-list .cand-row", has_text=f"track {track}")
    for steps in range(1, 6):  # the next frame the detector ran on
        page.keyboard.press("ArrowRight")
        _frame_is(page, 20 + steps)
        page.wait_for_load_state("networkidle")
        if same_track.count():
            break
    expect(same_track.locator(".chip")).to_have_text("removed")
    for _ in range(steps):
        page.keyboard.press("ArrowLeft")
    _frame_is(page, 20)
    _render(page, key=True)
    page.keyboard.press("ArrowRight")  # before and after follow the frame shown
    expect(page.locator("#compare-after")).to_have_attribute("src", re.compile(r"after\.jpg\?frame=21&"))
    before, after = (
        _pixels(page.request.get(f"/admin/jobs/{job_id}/review/0/{which}.jpg?frame=21").body())
        for which in ("before", "after")
    )

    done = _result(key, job_id)
    assert done["job_status"] == 100, done["job_status_description"]
    output = _frames(requests.get(done["tasks"][0]["download_link"], timeout=30).content)
    source = _frames(clip.read_bytes())
    assert len(output) == len(source) == 40
    x1, y1, x2, y2 = corner
    inner = (slice(y1 + 4, y2 - 4), slice(x1 + 4, x2 - 4))
    # the region's contrast: about 0.25 of the input's where blurred, 0.6 to 1 where not
    blurred = [output[i][inner].std() < source[i][inner].std() * 0.45 for i in range(40)]
    assert all(blurred[5:31]), [i for i in range(5, 31) if not blurred[i]]
    assert not any(blurred[:5]) and not any(blurred[31:]), [i for i in range(31, 40) if blurred[i]]
    assert after[inner].std() < before[inner].std() * 0.45  # the page's "after" is the output's frame 21


def test_roles_reviewer_and_viewer(server, signed_in, shared_data, tmp_path):
    base, key = server
    photo, job_id = _photo_job(key, shared_data, tmp_path / "roles.jpg")

    reviewer = signed_in(REVIEWER)
    for page_path in ("/admin/keys", "/admin/usage", "/admin/system", "/admin/deliveries", "/admin/accounts"):
        assert reviewer.goto(page_path).status == 403, page_path
    expect(reviewer.get_by_role("heading", name="Not for your role")).to_be_visible()
    assert reviewer.get_by_role("navigation", name="Main").get_by_role("link", name="Keys").count() == 0

    viewer = signed_in(VIEWER)
    viewer.goto(f"/admin/jobs/{job_id}/review")
    expect(viewer.locator("#cand-list .cand-row").first).to_be_visible()
    expect(viewer.get_by_role("button", name="Render…")).to_be_disabled()
    expect(viewer.get_by_text("Read only: your role (viewer)")).to_be_visible()
    token = viewer.locator("input[name=csrf_token]").first.input_value()
    refused = viewer.request.post(
        f"/admin/jobs/{job_id}/render", data="{}", headers={"X-CSRF-Token": token, "Content-Type": "application/json"}
    )
    assert refused.status == 403 and _result(key, job_id)["state"] == "awaiting_review"

    # an admin changes the viewer's role on the Accounts page; the last admin keeps theirs
    admin = signed_in(ADMIN)
    admin.goto("/admin/accounts")
    admin.get_by_label(f"Role of {VIEWER}").select_option("reviewer")
    admin.get_by_role("row", name=re.compile(VIEWER)).get_by_role("button", name="Save").click()
    expect(admin.get_by_role("status")).to_have_text("Role saved.")
    expect(admin.get_by_label(f"Role of {VIEWER}")).to_have_value("reviewer")
    admin.get_by_label(f"Role of {ADMIN}").select_option("viewer")
    admin.get_by_role("row", name=re.compile(ADMIN)).get_by_role("button", name="Save").click()
    expect(admin.get_by_role("alert")).to_contain_text("is the last admin")
    admin.get_by_label(f"Role of {VIEWER}").select_option("viewer")
    admin.get_by_role("row", name=re.compile(VIEWER)).get_by_role("button", name="Save").click()
    expect(admin.get_by_role("status")).to_have_text("Role saved.")


def test_two_reviewers_see_the_claim(server, signed_in, shared_data, tmp_path):
    base, key = server
    photo, job_id = _photo_job(key, shared_data, tmp_path / "claimed.jpg")
    ana, ben = signed_in(REVIEWER), signed_in(SECOND)
    ana.goto(f"/admin/jobs/{job_id}/review/0")
    expect(ana.locator("#claim")).to_have_text("You are reviewing this job: others see that.")
    ben.goto(f"/admin/jobs/{job_id}/review/0")
    expect(ben.locator("#claim")).to_contain_text(f"{REVIEWER} is reviewing this job")
    ben.goto("/admin/jobs?queue=review")
    expect(ben.locator(f'tr[data-job="{job_id}"]')).to_contain_text(f"{REVIEWER} is reviewing")
    ana.goto("/admin/jobs?queue=review")  # leaving the page releases the claim (a request sent as it closes)
    for _ in range(40):
        if "free" in ana.locator(f'tr[data-job="{job_id}"]').inner_text():
            break
        time.sleep(0.25)
        ana.reload()
    expect(ana.locator(f'tr[data-job="{job_id}"]')).to_contain_text("free")
    ben.goto(f"/admin/jobs/{job_id}/review/0")
    expect(ben.locator("#claim")).to_have_text("You are reviewing this job: others see that.")

    # a render the job's document cannot serve is refused with the field named, nothing queued
    token = ben.locator("input[name=csrf_token]").first.input_value()
    bad = ben.request.post(
        f"/admin/jobs/{job_id}/render",
        headers={"X-CSRF-Token": token},
        data={"edits": {"0": [{"op": "add", "kind": "face", "frames": {"0": [0, 0, 9000, 10]}}]}},
    )
    assert bad.status == 422 and bad.json()["error"].startswith("edits › 0 › 0 › frames › 0: the box must lie inside")
    no_token = ben.request.post(f"/admin/jobs/{job_id}/render", data={})
    assert no_token.status == 403 and _result(key, job_id)["state"] == "awaiting_review"


def test_an_archive_is_reviewed_file_by_file(server, signed_in, shared_data, tmp_path):
    import zipfile

    base, key = server
    photo = (shared_data / PHOTO).read_bytes()
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("first.jpg", photo)
        z.writestr("second.jpg", photo)
    job_id = _submit(key, archive, tmp_path)
    page = signed_in(REVIEWER)
    page.goto(f"/admin/jobs/{job_id}/review")
    expect(page.get_by_role("heading", name=re.compile("first.jpg"))).to_be_visible()
    page.get_by_role("link", name="Next file →").click()
    expect(page.get_by_role("heading", name=re.compile("second.jpg"))).to_be_visible()
    expect(page.locator("#picture")).to_have_js_property("complete", True)
    assert page.locator("#picture").evaluate("img => img.naturalWidth") > 0  # the file, out of the archive
    corner = [10, 10, 90, 70]
    _drag(page, corner)
    page.get_by_role("link", name="← Previous file").click()  # the unsent box stays with its file
    expect(page.get_by_role("heading", name=re.compile("first.jpg"))).to_be_visible()
    _render(page)
    done = _result(key, job_id)
    assert done["job_status"] == 100
    first, second = (_pixels(requests.get(t["download_link"], timeout=30).content) for t in done["tasks"])
    source = _pixels(photo)
    x1, y1, x2, y2 = corner
    inner = (slice(y1 + 4, y2 - 4), slice(x1 + 4, x2 - 4))
    assert second[inner].std() < source[inner].std() * 0.8  # the box drawn on the second file
    assert np.abs(first[inner] - source[inner]).mean() < 3  # not on the first
