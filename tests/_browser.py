"""The browser tests' Chromium (Debian's, driven by Playwright): one per test module."""

from __future__ import annotations

import pytest

from _live_server import launch_chromium


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()
