"""Job-status callbacks: signed POSTs of the JobReport, retried with backoff, sent in the background.

Every delivery is a `POST` with the JobReport as a JSON body and these headers:

    Content-Type: application/json
    X-Veil-Timestamp: <unix seconds when this attempt was signed>
    X-Veil-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + raw body, keyed with the secret>
    X-Veil-Delivery: <uuid, the same for every retry of one notification: use it to drop duplicates>

How a receiver verifies a callback (this module's `verify` does exactly this):

1. Take the raw request body bytes (before any JSON parsing) and the `X-Veil-Timestamp` header.
2. Compute `hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()`.
3. Compare it with the hex after `sha256=` in `X-Veil-Signature` using a constant-time comparison
   (`hmac.compare_digest`), and reject timestamps more than 5 minutes from the receiver's clock
   (replay protection). Each retry is signed afresh, so a late retry still verifies.

Delivery is retried on connection errors, timeouts, 5xx, 408 and 429 (honouring a numeric
`Retry-After`), with exponential backoff: `backoff`, `2*backoff`, `4*backoff`, ... capped at
`max_backoff`. Any other answer (2xx success, 3xx, other 4xx) ends the delivery. Redirects are not
followed: a callback URL must answer itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Veil-Signature"
TIMESTAMP_HEADER = "X-Veil-Timestamp"
DELIVERY_HEADER = "X-Veil-Delivery"
MAX_URL_LENGTH = 2048
_RETRY_STATUS = {408, 429}


class InvalidCallbackURL(ValueError):
    """The callback URL cannot be used; the message says why."""


def new_secret() -> str:
    """A fresh random signing secret (43 URL-safe characters) to hand to the callback's owner."""
    return secrets.token_urlsafe(32)


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>." + body` keyed with `secret`."""
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_headers(body: bytes, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The `X-Veil-Timestamp` and `X-Veil-Signature` headers for `body`, signed now by default."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: f"sha256={sign(body, secret, ts)}"}


def verify(body: bytes, secret: str, signature: str | None, timestamp: str | None,
           tolerance_s: float = 300, now: float | None = None) -> bool:
    """True when `signature` (the X-Veil-Signature value) matches `body` and `timestamp`, and the
    timestamp is within `tolerance_s` seconds of `now`."""
    if not signature or not timestamp or not signature.startswith("sha256="):
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(signature.removeprefix("sha256="), sign(body, secret, ts))


def validate_callback_url(url: str) -> str:
    """Return `url` if it is an absolute http(s) URL with a host; raise InvalidCallbackURL otherwise."""
    if not isinstance(url, str) or not url:
        raise InvalidCallbackURL("callback URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidCallbackURL(f"callback URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidCallbackURL("callback URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidCallbackURL(f"callback URL is malformed: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidCallbackURL(f"callback URL must use http or https, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise InvalidCallbackURL("callback URL has no host")
    if parts.username or parts.password:
        raise InvalidCallbackURL("callback URL must not contain a user name or password")
    return url


def encode_payload(payload: dict) -> bytes:
    """The exact body bytes that are signed and sent (compact JSON; datetimes etc. as strings)."""
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def deliver(url: str, payload: dict, secret: str, attempts: int = 5, backoff: float = 1.0,
            max_backoff: float = 60.0, timeout: float = 10.0,
            stop: threading.Event | None = None) -> bool:
    """POST `payload` to `url`, signed with `secret`, retrying transient failures.

    Returns True once the receiver answers 2xx, False when it refuses or every attempt failed
    (or `stop` was set while waiting to retry). Never raises for network problems.
    """
    validate_callback_url(url)
    body = encode_payload(payload)
    delivery_id = str(uuid.uuid4())
    stop = stop or threading.Event()
    for attempt in range(1, attempts + 1):
        headers = {"Content-Type": "application/json", "User-Agent": "Veil-Callback/1",
                   DELIVERY_HEADER: delivery_id, **signature_headers(body, secret)}
        delay = min(backoff * 2 ** (attempt - 1), max_backoff)
        try:
            response = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status_code < 300:
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in _RETRY_STATUS:
                log.warning("callback %s refused (%s); not retrying", url, problem)
                return False
            delay = min(max(delay, _retry_after(response)), max_backoff)
        log.info("callback %s attempt %d/%d failed (%s)", url, attempt, attempts, problem)
        if attempt < attempts and stop.wait(delay):
            break
    log.warning("callback %s gave up after %d attempts", url, attempt)
    return False


def _retry_after(response: requests.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", 0))
    except ValueError:  # an HTTP date: fall back to our own backoff
        return 0.0


class CallbackDispatcher:
    """Sends callbacks on background threads so an API request never waits for a receiver.

    `submit` returns at once; `close()` stops waiting retries and, with `wait=True`, lets the
    attempts in flight finish.
    """

    def __init__(self, workers: int = 4, attempts: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0, timeout: float = 10.0) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="veil-callback")
        self._stop = threading.Event()
        self._options = dict(attempts=attempts, backoff=backoff, max_backoff=max_backoff, timeout=timeout)

    def submit(self, url: str, payload: dict, secret: str) -> Future[bool]:
        """Queue one delivery; the future resolves to `deliver`'s result (never raises)."""
        validate_callback_url(url)
        return self._pool.submit(self._run, url, payload, secret)

    def _run(self, url: str, payload: dict, secret: str) -> bool:
        try:
            return deliver(url, payload, secret, stop=self._stop, **self._options)
        except Exception:  # a bug must not kill the pool thread silently
            log.exception("callback to %s failed unexpectedly", url)
            return False

    def close(self, wait: bool = True) -> None:
        self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> CallbackDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
