"""Screenshots of every admin panel page, for docs/admin/ and the README.

Starts a throw-away `veil serve` on 127.0.0.1, fills it through the real interfaces (the panel in Chromium,
the seed's sample client for jobs, a loopback callback receiver), then photographs each page at laptop
width and the main ones at phone width. PNGs are reduced to 256 colours to stay small.

    .venv/bin/python scripts/admin_screenshots.py --image photo.jpg --video clip.mp4 [--out docs/admin]

--image: a photo with a face (the README's pictures used scikit-image's public-domain `astronaut.png`);
--video: a video to cut a clip from (they used 3 s from 15.5 s of ../shared/data/videos/intel_car-detection.mp4).
Without them a generated picture is used and the video job is skipped. Needs the test extra (playwright) and
Debian's chromium. Jobs are spread over the last days (their dates moved in the database) so the usage chart
shows a history.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import seed_client  # noqa: E402  (the vendor's sample client, as a customer runs it)
from _live_server import launch_chromium, veil_command, veil_server  # noqa: E402
from veil.storage.testing import free_port  # noqa: E402

ADMIN, PASSWORD = "ops@example.com", "screenshots-only-1"
CONFIG = {"blur_face": True, "enable_lp": True, "slicing": False}
LAPTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}


class _Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def _run_job(key: str, path: Path, callback: str | None = None, config: dict = CONFIG) -> str:
    upload_url, job_id = seed_client.get_upload_url(api_key=key, file_name=str(path), model_config=config)
    if callback:
        requests.post(
            f"{seed_client.API_URL}/notify_on_job_status",
            headers={"access_token": key},
            json={"callback_url": callback, "job_id": job_id},
            timeout=10,
        ).raise_for_status()
    seed_client.upload_file(session_uri=upload_url, file_name=str(path))
    assert seed_client.approve_job(api_key=key, job_id=job_id)
    if config.get("review"):  # detected, then waiting for a reviewer (the seed's client would keep polling)
        while (
            requests.get(
                f"{seed_client.API_URL}/job_result/{job_id}", headers={"access_token": key}, timeout=10
            ).json()["state"]
            != "awaiting_review"
        ):
            time.sleep(0.5)
        return job_id
    tasks = seed_client.wait_for_job_to_complete(job_id=job_id, api_key=key)
    assert isinstance(tasks, list), f"job {job_id} did not complete: {tasks}"
    return job_id


def _cut(video: Path, start: float, seconds: float, dst: Path) -> Path:
    import av

    with av.open(str(video)) as inp, av.open(str(dst), "w") as out:
        src = inp.streams.video[0]
        rate = src.average_rate or Fraction(25)
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = src.width, src.height, "yuv420p"
        kept = 0
        for frame in inp.decode(src):
            if frame.time is not None and frame.time < start:
                continue
            if kept >= seconds * rate:
                break
            kept += 1
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
        out.mux(stream.encode())
    return dst


def _spread_over_days(db: Path, job_days: dict[str, int]) -> None:
    """Move each job (and its ledger lines and files) `days` back, so the usage chart has a history."""
    with sqlite3.connect(db) as conn:
        for job_id, days in job_days.items():
            shift = f"-{days} days"
            conn.execute(
                "UPDATE jobs SET "
                + ", ".join(
                    f"{c} = datetime({c}, :shift)"
                    for c in ("created_at", "uploaded_at", "approved_at", "started_at", "finished_at", "updated_at")
                )
                + " WHERE id = :job",
                {"shift": shift, "job": job_id},
            )
            conn.execute("UPDATE tasks SET finished_at = datetime(finished_at, ?) WHERE job_id = ?", (shift, job_id))
            conn.execute(
                "UPDATE credit_ledger SET created_at = datetime(created_at, ?) WHERE job_id = ?", (shift, job_id)
            )


def _review_pages(page, out: Path, key: str, photo: Path, clip: Path | None) -> None:
    """The review queue, a photo's and a video's review pages (a candidate toggled, a box drawn, a render
    compared), the Accounts page; at laptop and phone width."""
    from playwright.sync_api import expect

    photo_job = _run_job(key, photo, config={**CONFIG, "review": True})
    video_job = _run_job(key, clip, config={**CONFIG, "review": True, "lp_threshold": 0.6}) if clip else None
    page.goto("/admin/jobs?queue=review")
    _save(page, out / "review-queue.png")
    page.goto(f"/admin/jobs/{photo_job}/review")
    expect(page.locator("#cand-list .cand-row").first).to_be_visible()
    page.locator("#overlay g.c-drawn rect").first.click()
    _draw(page, (0.04, 0.05, 0.16, 0.2))
    page.wait_for_load_state("networkidle")
    _save(page, out / "review-photo.png", full_page=False)
    page.get_by_role("button", name="Render…").click()
    _save(page, out / "review-render.png", full_page=False)
    page.locator("#confirm-ok").click()
    expect(page.locator("#compare")).to_be_visible(timeout=120_000)
    page.wait_for_load_state("networkidle")
    page.locator("#compare").scroll_into_view_if_needed()
    _save(page, out / "review-compare.png", full_page=False)
    if video_job:
        page.goto(f"/admin/jobs/{video_job}/review")
        expect(page.locator("#cand-list")).to_be_attached()
        page.wait_for_load_state("networkidle")
        page.keyboard.press("n")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(500)
        _save(page, out / "review-video.png", full_page=False)
    page.goto("/admin/accounts")
    _save(page, out / "accounts.png")
    page.set_viewport_size(PHONE)
    page.goto(f"/admin/jobs/{photo_job}/review")
    expect(page.locator("#cand-list .cand-row").first).to_be_visible()
    _save(page, out / "phone-review-photo.png", full_page=False)
    if video_job:
        page.goto(f"/admin/jobs/{video_job}/review")
        page.wait_for_load_state("networkidle")
        _save(page, out / "phone-review-video.png", full_page=False)
    page.goto("/admin/jobs?queue=review")
    _save(page, out / "phone-review-queue.png", full_page=False)
    page.goto("/admin/accounts")
    _save(page, out / "phone-accounts.png", full_page=False)
    page.set_viewport_size(LAPTOP)


def _draw(page, fractions) -> None:
    """Drag a box over the review picture, at fractions of its width and height."""
    r = page.locator("#overlay").bounding_box()
    x1, y1, x2, y2 = (
        r["x"] + f * r["width"] if n % 2 == 0 else r["y"] + f * r["height"] for n, f in enumerate(fractions)
    )
    page.mouse.move(x1, y1)
    page.mouse.down()
    page.mouse.move(x2, y2, steps=5)
    page.mouse.up()


def _save(page, path: Path, full_page: bool = True) -> None:
    png = page.screenshot(full_page=full_page)
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    image.save(path, optimize=True)
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="a photo with a face")
    parser.add_argument("--video", type=Path, help="a video to cut a short clip from")
    parser.add_argument("--video-start", type=float, default=0.0, help="where the clip starts in --video (s)")
    parser.add_argument("--video-seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "admin")
    parser.add_argument("--review-only", action="store_true", help="only the review pages and Accounts")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import expect, sync_playwright

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        photo = tmp / "team-photo.jpg"
        if args.image:
            Image.open(args.image).convert("RGB").save(photo, quality=92)
        else:
            Image.linear_gradient("L").resize((640, 480)).convert("RGB").save(photo)
        env = {
            "VEIL_ADMIN_EMAIL": ADMIN,
            "VEIL_ADMIN_PASSWORD": PASSWORD,
            "VEIL_CALLBACK_ATTEMPTS": "2",
            "VEIL_CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
        (tmp / "data").mkdir()
        for email, role in (("ana@example.com", "reviewer"), ("contractor@example.com", "viewer")):  # Accounts
            subprocess.run(
                [*veil_command(), "admin", "create", email, "--role", role, "--data-dir", str(tmp / "data")],
                input=f"{PASSWORD}\n{PASSWORD}\n",
                text=True,
                check=True,
                capture_output=True,
            )
        with veil_server(tmp / "data", env) as base, sync_playwright() as p:
            seed_client.API_URL, seed_client.SLEEP_SECONDS = f"{base}/v1", 0.5
            browser = launch_chromium(p)
            page = browser.new_page(base_url=base, viewport=LAPTOP)
            page.goto("/admin/login")
            if not args.review_only:
                _save(page, args.out / "sign-in.png", full_page=False)
            page.get_by_label("Email").fill(ADMIN)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            clip = (
                _cut(args.video, args.video_start, args.video_seconds, tmp / "parking-lot.mp4") if args.video else None
            )
            if args.review_only:
                page.get_by_label("Name").fill("Review desk")
                page.get_by_label("Opening credits").fill("100")
                page.get_by_role("button", name="Create key").click()
                _review_pages(page, args.out, page.locator("#new-key").inner_text().strip(), photo, clip)
                browser.close()
                return

            keys = {}
            for name, credits in (("Mobile app", 500), ("Partner uploads", 120), ("Staging", 0)):
                page.goto("/admin/keys")
                page.get_by_label("Name").fill(name)
                page.get_by_label("Opening credits").fill(str(credits))
                page.get_by_role("button", name="Create key").click()
                keys[name] = page.locator("#new-key").inner_text().strip()
            _save(page, args.out / "keys.png")

            jobs = {
                _run_job(keys["Mobile app"], photo, f"{hook}/ok"): 5,
                _run_job(keys["Partner uploads"], photo, f"{hook}/down"): 3,
                _run_job(keys["Mobile app"], photo): 1,
            }
            image_job = _run_job(keys["Mobile app"], photo, f"{hook}/ok")
            video_job = None
            if args.video:
                video_job = _run_job(keys["Partner uploads"], clip, f"{hook}/ok")
                jobs[video_job] = 2
            _spread_over_days(tmp / "data" / "veil.db", jobs)
            requests.post(
                f"{base}/v1/create_upload_session",
                headers={"access_token": keys["Mobile app"]},
                timeout=10,
                json={
                    "file_name": "waiting-for-upload.jpg",
                    "file_size": 1000,
                    "model": "blur",
                    "model_config": CONFIG,
                },
            ).raise_for_status()

            page.goto("/admin/keys")
            page.get_by_role("link", name="Mobile app").click()
            page.get_by_label("Amount").fill("250")
            page.get_by_label("Reason").fill("Invoice 2026-041 paid")
            page.get_by_role("button", name="Book credits").click()
            expect(page.get_by_role("status")).to_be_visible()
            _save(page, args.out / "key.png")

            page.goto("/admin/jobs")
            _save(page, args.out / "jobs.png")
            page.goto(f"/admin/jobs/{image_job}")
            page.wait_for_load_state("networkidle")
            _save(page, args.out / "job-image.png")
            if video_job:
                page.goto(f"/admin/jobs/{video_job}")
                page.wait_for_load_state("networkidle")
                _save(page, args.out / "job-video.png")
            for slug, url in (
                ("usage", "/admin/usage?days=7"),
                ("deliveries", "/admin/deliveries"),
                ("system", "/admin/system"),
            ):
                page.goto(url)
                page.wait_for_load_state("networkidle")
                _save(page, args.out / f"{slug}.png")
            page.goto("/docs")
            expect(page.locator(".opblock").first).to_be_visible()
            _save(page, args.out / "docs.png", full_page=False)

            _review_pages(page, args.out, keys["Mobile app"], photo, clip)
            page.set_viewport_size(PHONE)
            page.goto("/admin/jobs")
            _save(page, args.out / "phone-jobs.png", full_page=False)
            page.goto(f"/admin/jobs/{image_job}")
            page.wait_for_load_state("networkidle")
            _save(page, args.out / "phone-job.png", full_page=False)
            browser.close()
    receiver.shutdown()
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
