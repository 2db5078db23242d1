"""`SignInGate`: sign-ins run their password check (argon2id: about 170 ms of CPU and 64 MiB) in a worker
thread, never on the event loop, at most `slots` at once for the whole server and one at a time per source
address. A sign-in waits up to `wait_s` for a slot (first come, first served) and is then refused (429), so
anonymous sign-in traffic can fill neither the event loop nor the thread pool the API's handlers run in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class SignInBusy(Exception):
    """No slot for this sign-in now: answered 429 with Retry-After."""


class SignInGate:
    def __init__(self, slots: int, wait_s: float = 10) -> None:
        self.slots, self.wait_s = slots, wait_s
        self._busy: set[str] = set()  # sources with a sign-in in flight (touched on the event loop only)
        self._limiters: dict[int, anyio.CapacityLimiter] = {}  # one per event loop (tests start several)

    async def run(self, source: str, check: Callable[..., T], *args) -> T:
        """`check(*args)` in a worker thread once a slot is free; SignInBusy when `source` has a sign-in in
        flight already or no slot frees up within `wait_s`."""
        if source in self._busy:
            raise SignInBusy()
        self._busy.add(source)
        try:
            limiter = self._limiters.setdefault(id(asyncio.get_running_loop()), anyio.CapacityLimiter(self.slots))
            acquired = False
            with anyio.move_on_after(self.wait_s):  # only the wait: a check that has started is never cut
                await limiter.acquire()
                acquired = True
            if not acquired:
                raise SignInBusy()
            try:
                return await anyio.to_thread.run_sync(check, *args)
            finally:
                limiter.release()
        finally:
            self._busy.discard(source)
