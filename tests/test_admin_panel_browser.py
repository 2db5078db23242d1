"""Issue #13 acceptance: the admin panel in a real browser (Playwright driving Debian's Chromium) against
a real `veil serve`, with the seed's sample client as the API user.

One server and one browser for the module; the operator journey is one test because each step needs
the one before (the key it created, the job it ran).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

import seed_client
from _browser import browser  # noqa: F401  (a fixture)
from _live_server import CHROMIUM, veil_command, veil_server
from _service_helpers import jpeg_bytes
from conftest import under_ci

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not under_ci(),
        reason="Debian's chromium is not installed (scripts/test-services.sh does it)",
    ),
]

ADMIN, PASSWORD = "ops@example.com", "panel-password-1"
SECOND, SECOND_PASSWORD = "second@example.com", "another-password-2"
FAST = {"blur_face": True, "enable_lp": False, "slicing": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory, detection_models):
    data = tmp_path_factory.mktemp("veil-panel")
    made = subprocess.run(
        [*veil_command(), "admin", "create", SECOND, "--data-dir", str(data)],
        input=f"{SECOND_PASSWORD}\n{SECOND_PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    with veil_server(data, {"VEIL_ADMIN_EMAIL": ADMIN, "VEIL_ADMIN_PASSWORD": PASSWORD}) as base:
        yield base


@pytest.fixture
def context(browser, server):
    ctx = browser.new_context(base_url=server, viewport={"width": 1280, "height": 900}, accept_downloads=True)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    ctx.set_default_timeout(20_000)
    refused = []  # issue 18: the Content-Security-Policy must not refuse anything the panel itself loads
    ctx.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    yield ctx
    ctx.close()
    assert not refused, refused


def _sign_in(page, email: str, password: str) -> None:
    page.goto("/admin/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_wrong_password_is_refused_and_backs_off(context):
    page = context.new_page()
    for _ in range(2):
        _sign_in(page, SECOND, "not the password")
        playwright_api.expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    _sign_in(page, SECOND, "not the password")  # the third failure in a row locks the account a while
    playwright_api.expect(page.get_by_role("alert")).to_contain_text("Too many failed sign-ins: wait 5 s")
    assert "/admin/login" in page.url and not any(c["name"] == "veil_admin" for c in context.cookies())


def test_operator_journey(context, server, tmp_path, monkeypatch):
    page = context.new_page()
    _sign_in(page, ADMIN, PASSWORD)
    playwright_api.expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    session = next(c for c in context.cookies() if c["name"] == "veil_admin")
    assert session["httpOnly"] and session["sameSite"] == "Lax"

    # create a key and copy it
    page.get_by_label("Name").fill("Browser test")
    page.get_by_label("Opening credits").fill("10")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", key)
    page.get_by_role("button", name="Copy").click()
    playwright_api.expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key

    # the seed's client runs a job with that key; the jobs table follows it live to 100 %
    monkeypatch.setattr(seed_client, "API_URL", f"{server}/v1")
    monkeypatch.chdir(tmp_path)
    photo = tmp_path / "tiny.jpg"
    photo.write_bytes(jpeg_bytes(96, 64))
    upload_url, job_id = seed_client.get_upload_url(api_key=key, file_name=str(photo), model_config=FAST)
    page.goto("/admin/jobs")  # the job waits for its upload; from here on only the page's polling updates it
    row = page.locator(f'tr[data-job="{job_id}"]')
    playwright_api.expect(row.locator(".progress-label")).to_have_text("0 %")
    seed_client.upload_file(session_uri=upload_url, file_name=str(photo))
    assert seed_client.approve_job(api_key=key, job_id=job_id)
    playwright_api.expect(row.locator(".progress-label")).to_have_text("100 %", timeout=120_000)
    playwright_api.expect(row.locator(".badge")).to_have_text("completed")
    assert row.locator(".progress-fill").evaluate("fill => fill.style.width") == "100%"  # set by admin.js

    # the job page: download the output
    row.get_by_role("link", name="tiny.jpg").click()
    playwright_api.expect(page.get_by_role("heading", name=re.compile("tiny.jpg"))).to_be_visible()
    with page.expect_download() as download:
        page.get_by_role("link", name=re.compile("tiny_anonymized.jpg")).click()
    saved = tmp_path / "downloaded.jpg"
    download.value.save_as(saved)
    assert Image.open(saved).size == (96, 64)
    assert page.locator("img[alt='Anonymized output']").evaluate("img => img.naturalWidth") > 0

    # add credits with a reason: the ledger shows it, with who booked it
    page.get_by_role("link", name="Browser test").click()
    page.get_by_label("Amount").fill("25")
    page.get_by_label("Reason").fill("invoice 2026-041")
    page.get_by_role("button", name="Book credits").click()
    line = page.locator("#ledger tbody tr").first
    playwright_api.expect(line).to_contain_text("+25")
    playwright_api.expect(line).to_contain_text("invoice 2026-041")
    playwright_api.expect(line).to_contain_text(f"admin:{ADMIN}")

    # usage: the charts (Chart.js from /admin/static, under the CSP) are drawn
    page.goto("/admin/usage")
    playwright_api.expect(page.locator("#chart-credits")).to_have_attribute("style", re.compile("height"))
    assert page.locator("#chart-credits").evaluate("c => c.width") > 0
    page.go_back()

    # revoke it: the client is refused with 401
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke key").click()
    playwright_api.expect(page.get_by_role("status")).to_contain_text("Key revoked")
    with pytest.raises(Exception, match="revoked API key"):
        seed_client.get_upload_url(api_key=key, file_name=str(photo), model_config=FAST)
    assert requests.get(f"{server}/v1/jobs", headers={"access_token": key}, timeout=10).status_code == 401


def test_form_posted_without_its_csrf_token_is_refused(context):
    page = context.new_page()
    _sign_in(page, ADMIN, PASSWORD)
    playwright_api.expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    # the browser sends the session cookie, as it would for a forged cross-site post, but no token
    forged = context.request.post("/admin/keys", form={"name": "forged", "credits": "1000"})
    assert forged.status == 403 and "Form refused" in forged.text()
    page.reload()
    playwright_api.expect(page.locator("table")).not_to_contain_text("forged")


def test_docs_render_with_the_network_outside_loopback_blocked(context):
    blocked = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.goto("/docs")
    playwright_api.expect(page.locator(".opblock").first).to_be_visible()
    assert page.locator(".opblock").count() >= 8  # the public API's operations, listed
    assert page.locator(".opblock-summary-path", has_text="/v1/create_upload_session").count() == 1
    assert not blocked, f"/docs tried to reach the network: {blocked}"
