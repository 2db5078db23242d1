"""Issue 18, the panel as an outsider and a signed-in admin would attack it: query parameters out of bounds,
download names, security headers, and sign-in traffic that must not stall the API or lock the owner out."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from test_admin_auth import _panel, _sign_in
from veil.db.models import Job
from veil.jobs.keys import create_key


def test_query_parameters_are_bounded_and_answered_with_a_page(tmp_path):
    """Finding 4: these were 500s (integer and date overflow, a header that cannot be encoded)."""
    with _panel(tmp_path) as client:
        assert client.get("/admin/jobs?page=1000000000000000000000", follow_redirects=False).status_code == 303
        _sign_in(client)
        for address, name in (("/admin/jobs?page=1000000000000000000000", "page"),
                              ("/admin/deliveries?page=1000000000000000000000", "page"),
                              ("/admin/jobs?until=9999-12-31", "until"),
                              ("/admin/jobs?since=10000-01-01", "since"),
                              ("/admin/usage.csv?key=中文字", "key"),
                              ("/admin/usage.csv?key=a%0d%0aSet-Cookie:%20x=1", "key"),
                              ("/admin/usage?days=100000000000000000000", "days")):
            r = client.get(address)
            assert r.status_code == 422 and "Invalid address" in r.text and name in r.text, (address, r.text)
            assert r.headers["content-type"].startswith("text/html")
        assert client.get("/admin/jobs?until=9999-12-30&since=&page=3").status_code == 200
        assert client.get("/admin/jobs?status=nonsense&kind=").status_code == 200  # unknown choices show all
        _, row = create_key(client.app.state.service.db, 0, "app")
        csv = client.get(f"/admin/usage.csv?key={row.id}&days=7")
        assert csv.status_code == 200 and csv.text.startswith("day,credits_spent")
        assert csv.headers["content-disposition"] == f'attachment; filename="veil-usage-{row.id[:8]}-7d.csv"'


def test_bad_panel_parameters_reach_no_handler_without_a_session(tmp_path):
    with TestClient(_panel(tmp_path).app) as client:
        r = client.get("/admin/usage.csv?key=中文字", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login")


def test_panel_pages_send_security_headers_and_hold_no_inline_script_or_style(tmp_path):
    """Finding 8: a CSP the panel's own files pass (no inline script or style), no framing, no sniffing."""
    with _panel(tmp_path) as client:
        pages = [client.get("/admin/login")]
        _sign_in(client)
        _, key = create_key(client.app.state.service.db, 0, "app")
        with client.app.state.service.db.begin() as session:  # a row with a progress bar
            session.add(Job(key_id=key.id, file_name="a.jpg", input_blob="a.jpg", status="running"))
        pages += [client.get(f"/admin/{name}") for name in ("keys", "jobs", "usage", "deliveries", "system", "nope")]
        pages += [client.get("/admin/static/admin.js"), client.get("/admin/jobs?page=0")]
        for page in pages:
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "style-src 'self'" in csp and "'unsafe-inline'" not in csp
            assert "frame-ancestors 'none'" in csp and page.headers["x-frame-options"] == "DENY"
            assert page.headers["x-content-type-options"] == "nosniff"
            if page.headers["content-type"].startswith("text/html"):
                scripts = re.findall(r"<script([^>]*)>", page.text)
                assert all("src=" in attrs or 'type="application/json"' in attrs for attrs in scripts), scripts
                assert not re.search(r"\sstyle=|<style|\son[a-z]+=", page.text)
        assert "content-security-policy" not in client.get("/docs").headers  # Swagger UI has its own inline script
