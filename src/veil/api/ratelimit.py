"""Per-key request rate limits of the public API (the vendor reference lists 429 on every route).

The `limits` library keeps moving windows per key, in memory (one API server) or in Redis (shared by
every API server of a scaled-out deployment); `VEIL_API_RATE_LIMIT` sets them ("20/second; 600/minute").
A key over its limit gets 429 with `Retry-After`; other keys are not touched.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter


class RateWindows:
    """Moving windows kept in one storage; `take` counts a request against several limits at once."""

    def __init__(self, storage_uri: str = "memory://") -> None:
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def take(self, limits: list[tuple[RateLimitItem, tuple[str, ...]]]) -> int | None:
        """None when every (limit, identifiers) has room, each then counted; else the whole seconds to wait
        for the first that has none (nothing is counted)."""
        for item, identifiers in limits:
            if not self.limiter.test(item, *identifiers):
                reset = self.limiter.get_window_stats(item, *identifiers).reset_time
                return max(1, math.ceil(reset - time.time()))
        for item, identifiers in limits:
            self.limiter.hit(item, *identifiers)
        return None


class KeyRateLimiter:
    def __init__(self, spec: str, storage_uri: str = "memory://") -> None:
        self.items = parse_many(spec)
        self.windows = RateWindows(storage_uri)

    def retry_after(self, key_id: str) -> int | None:
        """Counts a request of `key_id`: None when it is within every limit, else the whole seconds to wait
        (the request is then not counted)."""
        return self.windows.take([(item, ("v1", key_id)) for item in self.items])
