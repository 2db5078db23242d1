"""`SignInGate`: sign-ins run their password check (argon2id: about 170 ms of CPU and 64 MiB) in threads of
their own, never on the event loop, at most `slots` at once for the whole server and one at a time per source
address. A sign-in waits up to `wait_s` for a slot (first come, first served) and is then refused (429), so
anonymous sign-in traffic can fill neither the event loop nor the thread pool the API's handlers run in. The
threads run at a lower CPU priority (nice +10 on Linux), so on a small machine the API's threads come first.
Password checks are also rate-limited, per source address and for the whole server (moving windows of the
`limits` library): argon2id is memory-hard, and a stream of checks slows every other request on a small
machine through its CPU and memory traffic, whatever its priority; beyond the rates a sign-in is refused at
once (429), before any check. A quarter of the server's rate (rounded down) is kept for sign-ins from
an address the account has signed in from before (`known=True`, see `veil.jobs.admins`): other sign-ins
count against the whole rate *and* the rest of it, so outsiders from many addresses can use up no more than
three quarters and the owner's usual address still gets its turn (its own per-address rate still applies)."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import anyio
from limits import RateLimitItem, parse_many

from ..ratelimit import RateWindows

T = TypeVar("T")


class SignInBusy(Exception):
    """No slot for this sign-in now: answered 429 with Retry-After."""


def _lower_priority() -> None:
    try:
        me = threading.get_native_id()  # this thread only, on Linux
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + 10))
    except (AttributeError, OSError):  # elsewhere: the normal priority
        pass


class SignInGate:
    def __init__(
        self, slots: int, wait_s: float = 10, per_source: str = "10/minute", overall: str = "60/minute"
    ) -> None:
        self.slots, self.wait_s = slots, wait_s
        overall_items = parse_many(overall)
        self._rates = [(item, "source") for item in parse_many(per_source)]
        self._rates += [(item, "all") for item in overall_items]
        self._unknown = [(_less_reserve(item), "unknown") for item in overall_items]
        self._windows = RateWindows()
        self._threads = ThreadPoolExecutor(slots, thread_name_prefix="veil-signin", initializer=_lower_priority)
        self._busy: set[str] = set()  # sources with a sign-in in flight (touched on the event loop only)
        self._limiters: dict[int, anyio.CapacityLimiter] = {}  # one per event loop (tests start several)

    async def run(self, source: str, check: Callable[..., T], *args, known: bool = False) -> T:
        """`check(*args)` in a sign-in thread once a slot is free; SignInBusy when `source` has a sign-in in
        flight already, a rate is used up or no slot frees up within `wait_s`. `known`: the account has signed
        in from `source` before, so the reserved share of the server's rate is open to it."""
        if source in self._busy or not self._within_rates(source, known):
            raise SignInBusy()
        self._busy.add(source)
        try:
            loop = asyncio.get_running_loop()
            if id(loop) not in self._limiters:
                self._limiters[id(loop)] = anyio.CapacityLimiter(self.slots)
            limiter = self._limiters[id(loop)]
            acquired = False
            with anyio.move_on_after(self.wait_s):  # only the wait: a check that has started is never cut
                await limiter.acquire()
                acquired = True
            if not acquired:
                raise SignInBusy()
            try:
                return await loop.run_in_executor(self._threads, functools.partial(check, *args))
            finally:
                limiter.release()
        finally:
            self._busy.discard(source)

    def _within_rates(self, source: str, known: bool) -> bool:
        """Counts a password check against the rates; False (not counted) when one is used up."""
        rates = self._rates if known else self._rates + self._unknown
        return (
            self._windows.take([(item, (kind, source) if kind == "source" else (kind,)) for item, kind in rates])
            is None
        )


def _less_reserve(item: RateLimitItem) -> RateLimitItem:
    """`item` less the share kept for known addresses: a quarter, rounded down (none of a rate under 4)."""
    return type(item)(item.amount - item.amount // 4, item.multiples)
