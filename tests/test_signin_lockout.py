"""Issue 18, finding 6: outsiders guessing from other addresses cannot lock the owner out of their usual address,
neither through the account-wide window of failures nor by filling the sign-in gate's server-wide rate; an
address the account has never signed in from stays locked, and guessing stays slow everywhere."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from _service_helpers import settings_for
from test_admin_auth import PASSWORD, _sign_in, clock, fresh_throttle  # noqa: F401 (fixtures)
from veil.api.app import create_app
from veil.api.panel.gate import SignInBusy, SignInGate
from veil.jobs import admins

EMAIL, OWNER = "ops@example.com", "198.51.100.7"
OUTSIDERS = ("203.0.113.1", "203.0.113.2", "203.0.113.3")


def _fill_the_account_window(db, clock) -> None:
    """Three outsider addresses guess, each trying again as soon as its back-off runs out, until the email's
    failures over all addresses fill the window (10 each: an address's own counts never stop it before)."""
    per_address = admins.ACCOUNT_WINDOW_FAILURES // len(OUTSIDERS)
    assert per_address <= admins.SOURCE_FREE_FAILURES  # so every try below is a counted failure
    start = clock.now
    free_at = dict.fromkeys(OUTSIDERS, clock.now)
    tries = dict.fromkeys(OUTSIDERS, 0)
    while sum(tries.values()) < admins.ACCOUNT_WINDOW_FAILURES:
        for address in OUTSIDERS:
            if tries[address] == per_address or free_at[address] > clock.now:
                continue
            tries[address] += 1
            try:
                assert admins.sign_in(db, EMAIL, "guess", 1, source=address) is None
            except admins.SignInLocked as locked:  # this failure started the address's back-off
                free_at[address] = clock.now + timedelta(seconds=locked.seconds)
        clock.advance(1)
    assert clock.now - start < admins.ACCOUNT_WINDOW  # every failure is still in the window


def test_outsiders_filling_the_account_window_do_not_lock_the_owners_usual_address(service, clock):
    db = service.db
    admins.create_admin(db, EMAIL, PASSWORD)
    assert admins.sign_in(db, EMAIL, PASSWORD, 1, source=OWNER) is not None  # the owner's usual address
    _fill_the_account_window(db, clock)

    with pytest.raises(admins.SignInLocked):  # a distributed guess still locks every unknown address
        admins.sign_in(db, EMAIL, PASSWORD, 1, source="192.0.2.50")
    for address in OUTSIDERS:
        with pytest.raises(admins.SignInLocked):
            admins.sign_in(db, EMAIL, PASSWORD, 1, source=address)
    assert admins.sign_in(db, EMAIL, PASSWORD, 1, source=OWNER) is not None  # was SignInLocked

    # The owner's address keeps its own counts: guessing from there backs off as from anywhere.
    for _ in range(admins.FREE_FAILURES):
        assert admins.sign_in(db, EMAIL, "guess", 1, source=OWNER) is None
    with pytest.raises(admins.SignInLocked):
        admins.sign_in(db, EMAIL, "guess", 1, source=OWNER)

    clock.advance(admins.ACCOUNT_WINDOW.total_seconds())  # the outsiders' failures leave the window
    assert admins.sign_in(db, EMAIL, PASSWORD, 1, source="192.0.2.50") is not None


def test_only_the_last_few_addresses_of_an_account_are_known(service, clock):
    db = service.db
    admins.create_admin(db, EMAIL, PASSWORD)
    addresses = [f"192.0.2.{n}" for n in range(admins.KNOWN_SOURCES + 1)]
    for address in addresses:
        assert admins.sign_in(db, EMAIL, PASSWORD, 1, source=address) is not None
    assert not admins.known_source(EMAIL, addresses[0])  # the oldest was forgotten
    assert all(admins.known_source(" OPS@example.com ", a) for a in addresses[1:])
    assert not admins.known_source("other@example.com", addresses[1])  # known for that account only
    _fill_the_account_window(db, clock)
    with pytest.raises(admins.SignInLocked):
        admins.sign_in(db, EMAIL, PASSWORD, 1, source=addresses[0])
    assert admins.sign_in(db, EMAIL, PASSWORD, 1, source=addresses[-1]) is not None


def test_the_gate_keeps_a_share_of_the_server_rate_for_known_addresses():
    gate = SignInGate(1, per_source="10/minute", overall="8/minute")  # 2 of 8 kept for known addresses

    async def attempt(source: str, known: bool = False) -> str:
        try:
            return await gate.run(source, lambda: "checked", known=known)
        except SignInBusy:
            return "refused"

    async def scenario() -> tuple[list[str], list[str]]:
        outsiders = [await attempt(f"203.0.113.{n}") for n in range(6) for _ in range(2)]
        return outsiders, [await attempt(OWNER, known=True) for _ in range(3)]

    outsiders, owner = asyncio.run(scenario())
    assert outsiders == ["checked"] * 6 + ["refused"] * 6  # outsiders get three quarters of the rate
    assert owner == ["checked", "checked", "refused"]  # the known address gets the rest, and no more


def test_the_panel_lets_the_owners_usual_address_through_while_outsiders_fill_the_rate(tmp_path):
    settings = settings_for(tmp_path, admin_email=EMAIL, admin_password=PASSWORD, admin_signin_rate_overall="8/minute")
    app = create_app(settings)
    with TestClient(app, client=(OWNER, 4000)) as owner:
        assert _sign_in(owner).status_code == 303  # A becomes a known address of the account
        outsiders = [TestClient(app, client=(f"203.0.113.{n}", 4000)) for n in range(6)]
        statuses = [_sign_in(client, "guess").status_code for client in outsiders for _ in range(2)]
        # Three quarters of the rate (6 of 8) are open to unknown addresses: the owner's first sign-in, from an
        # address not yet known, used one of them.
        assert statuses.count(401) == 5 and statuses.count(429) == 7
        assert _sign_in(TestClient(app, client=("192.0.2.50", 4000))).status_code == 429  # unknown: refused
        assert _sign_in(owner).status_code == 303  # was 429: the server-wide rate was full
