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
followed: a callback URL must answer itself. Each attempt has one deadline for everything (connect,
TLS, sending, the answer's status line and headers), so a receiver that trickles bytes is cut there.

Server-side request forgery: a callback may only reach public internet addresses (not loopback,
private, link-local such as 169.254.169.254, unspecified, multicast or reserved ranges, in any
spelling: `[::1]`, `2130706433`, `0x7f.1`, `::ffff:127.0.0.1`), unless the operator allows a network
(`allowed` below; `VEIL_CALLBACK_ALLOWED_NETWORKS`). The URL is checked when it is registered, and
each attempt resolves the host once, checks every address and connects to the checked one (the
original host name still goes in `Host` and TLS SNI), so DNS rebinding cannot switch it afterwards.

`CallbackDispatcher` sends deliveries on its own threads, fairly between keys: each key has a
bounded queue and may hold only a few of the threads, so one tenant's dead receivers delay nobody
else; `close()` never waits for a receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..settings import Network

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Veil-Signature"
TIMESTAMP_HEADER = "X-Veil-Timestamp"
DELIVERY_HEADER = "X-Veil-Delivery"
MAX_URL_LENGTH = 2048
_RETRY_STATUS = {408, 429}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def verify(
    body: bytes,
    secret: str,
    signature: str | None,
    timestamp: str | None,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
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


# ---------------------------------------------------------------------------------- addresses
def _reached(address: Address) -> Address:
    """The IPv4 address an IPv4-mapped (`::ffff:a.b.c.d`) or 6to4 IPv6 address really reaches."""
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped or address.sixtofour or address
    return address


def address_problem(address: Address, allowed: Iterable[Network] = ()) -> str | None:
    """None when a callback may connect to `address`, else what kind of address it is."""
    address = _reached(address)
    if any(address in network for network in allowed):
        return None
    for kind in ("loopback", "link_local", "unspecified", "private", "multicast", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


def _literal_address(host: str) -> Address | None:
    """The address `host` spells, in any form a resolver accepts (`127.1`, `0x7f000001`, `017700000001`)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _refuse(host: str, address: Address, problem: str) -> InvalidCallbackURL:
    address = _reached(address)
    shown = host if str(address) == host else f"{host} ({address})"
    return InvalidCallbackURL(
        f"callback URL points at {shown}, and {problem} addresses are not allowed: "
        f"callbacks may only go to public internet addresses"
    )


def validate_callback_url(url: str, allowed: Iterable[Network] = ()) -> str:
    """Return `url` if it is an absolute http(s) URL whose host is a name or a public address (or one in
    `allowed`); raise InvalidCallbackURL naming the problem otherwise. Names are resolved at delivery."""
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
    if parts.port == 0:
        raise InvalidCallbackURL("callback URL's port must not be 0")
    if parts.username or parts.password:
        raise InvalidCallbackURL("callback URL must not contain a user name or password")
    host = _ascii_host(parts.hostname)
    name = host.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):  # RFC 6761: always loopback
        addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    else:
        addresses = [a for a in [_literal_address(host)] if a is not None]
    for address in addresses:
        if problem := address_problem(address, allowed):
            raise _refuse(host, address, problem)
    return url


def _ascii_host(hostname: str) -> str:
    try:
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidCallbackURL("callback URL's host name is not valid") from None


def _resolve(host: str, port: int, allowed: Iterable[Network]) -> list[tuple[int, tuple]]:
    """Every address `host` resolves to, each checked; InvalidCallbackURL if any is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if problem := address_problem(address, allowed):
            raise _refuse(host, address, problem)
    return [(family, sockaddr) for family, *_, sockaddr in infos]


# ---------------------------------------------------------------------------------- one attempt
class _Deadline:
    """The socket http.client reads and writes through: every operation gets only what is left of the
    attempt's time, so a receiver trickling its answer cannot stretch the attempt past the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the attempt's deadline passed")
        self.sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._arm()
        self.sock.sendall(data)

    def recv_into(self, buffer, nbytes: int = 0) -> int:
        self._arm()
        return self.sock.recv_into(buffer, nbytes)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]  # the deadline wrapper stands in for a socket

    def fileno(self) -> int:
        return self.sock.fileno()

    def _decref_socketios(self) -> None:
        pass

    def close(self) -> None:
        self.sock.close()


def _connect(addresses: list[tuple[int, tuple]], deadline: float) -> socket.socket:
    error: OSError = OSError("no address to connect to")
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))  # connect() is bounded as a whole
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allowed: Iterable[Network],
    ssl_context: ssl.SSLContext | None,
) -> tuple[int, str | None]:
    """One POST, everything within `timeout` seconds, to an address checked after resolution.
    Returns (status, Retry-After); raises OSError (incl. timeouts) or InvalidCallbackURL."""
    deadline = time.monotonic() + timeout
    parts = urlsplit(url)
    host, https = _ascii_host(parts.hostname or ""), parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    sock = None
    try:
        sock = _connect(_resolve(host, port, allowed), deadline)
        if https:  # SNI and certificate checked against the URL's host, not the address
            sock.settimeout(max(deadline - time.monotonic(), 0.001))  # the handshake is bounded as a whole
            sock = (ssl_context or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
        conn = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(host, port)
        conn.sock = _Deadline(sock, deadline)  # type: ignore[assignment]  # already connected: never re-resolved
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()  # status line and headers only: the body is never read
        return response.status, response.getheader("Retry-After")
    except http.client.HTTPException as exc:
        raise OSError(f"bad answer: {type(exc).__name__}: {exc}") from None
    except TimeoutError:  # every step's timeout is what was left of the attempt's time
        raise TimeoutError(f"no complete answer within the attempt's deadline ({timeout:g} s)") from None
    finally:
        if sock is not None:
            sock.close()


# ---------------------------------------------------------------------------------- one delivery
def encode_payload(payload: dict) -> bytes:
    """The exact body bytes that are signed and sent (compact JSON; datetimes etc. as strings)."""
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


@dataclass
class Outcome:
    """How a delivery ended: delivered (2xx), refused (not retried), failed (gave up), dropped (never sent)."""

    status: str
    attempts: int = 0
    status_code: int | None = None
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.status == "delivered"


def deliver(
    url: str,
    payload: dict,
    secret: str,
    attempts: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
    allowed: Iterable[Network] = (),
    delivery_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    on_retry: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """POST `payload` to `url`, signed with `secret`, retrying transient failures; each attempt ends
    after `timeout` seconds whatever the receiver does. Stops retrying once `stop` is set.
    `on_retry` hears of each failed attempt that will be retried (an Outcome with status "queued").
    Never raises for network problems or refused addresses."""
    allowed = tuple(allowed)
    body = encode_payload(payload)
    delivery_id = delivery_id or str(uuid.uuid4())
    stop = stop or threading.Event()
    outcome = Outcome("failed")
    try:
        validate_callback_url(url, allowed)
    except InvalidCallbackURL as exc:
        return Outcome("failed", 0, error=str(exc))
    for attempt in range(1, attempts + 1):
        outcome.attempts = attempt
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Veil-Callback/1",
            DELIVERY_HEADER: delivery_id,
            **signature_headers(body, secret),
        }
        delay = min(backoff * 2 ** (attempt - 1), max_backoff)
        try:
            status, retry_after = _post(url, body, headers, timeout, allowed, ssl_context)
        except InvalidCallbackURL as exc:  # resolved to an address that is not allowed
            log.warning("callback %s not sent: %s", url, exc)
            outcome.error = str(exc)
            return outcome
        except OSError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        else:
            outcome.status_code, outcome.error = status, f"HTTP {status}"
            if 200 <= status < 300:
                outcome.status, outcome.error = "delivered", ""
                return outcome
            if status < 500 and status not in _RETRY_STATUS:
                log.warning("callback %s refused (HTTP %d); not retrying", url, status)
                outcome.status = "refused"
                return outcome
            delay = min(max(delay, _seconds(retry_after)), max_backoff)
        log.info("callback %s attempt %d/%d failed (%s)", url, attempt, attempts, outcome.error)
        if attempt == attempts or stop.is_set():
            break
        if on_retry is not None:
            on_retry(Outcome("queued", attempt, outcome.status_code, outcome.error))
        if stop.wait(delay):
            break
    log.warning("callback %s gave up after %d attempts", url, outcome.attempts)
    return outcome


def _seconds(retry_after: str | None) -> float:
    try:
        return float(retry_after or 0)
    except ValueError:  # an HTTP date: fall back to our own backoff
        return 0.0


# ---------------------------------------------------------------------------------- many deliveries
@dataclass
class _Item:
    key: str
    url: str
    payload: dict
    secret: str
    delivery_id: str | None
    on_done: Callable[[Outcome], None] | None


class CallbackDispatcher:
    """Sends callbacks on its own daemon threads so no request, pricing or shutdown waits for a receiver.

    Fair between keys: each key has a queue of at most `queue_per_key` deliveries (`submit` refuses
    more) and at most `per_key` of the `workers` threads; the threads take keys in turn. `on_done` hears
    the Outcome of each failed attempt to be retried ("queued") and the final one. `close()` drops what is
    still queued (reporting it as "dropped"), stops retries and returns at once; an attempt in flight ends
    by its own deadline.
    """

    def __init__(
        self,
        workers: int = 4,
        per_key: int | None = None,
        queue_per_key: int = 100,
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        allowed: Iterable[Network] = (),
    ) -> None:
        self._per_key = per_key or max(1, workers // 4)
        self._queue_per_key = queue_per_key
        self._queues: dict[str, deque[_Item]] = {}  # insertion order = whose turn it is
        self._busy: dict[str, int] = {}
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._attempts, self._backoff, self._max_backoff = attempts, backoff, max_backoff
        self._timeout, self._allowed = timeout, tuple(allowed)
        self._workers, self._started = workers, False

    def submit(
        self,
        key: str,
        url: str,
        payload: dict,
        secret: str,
        delivery_id: str | None = None,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> bool:
        """Queue one delivery for `key`; False (nothing queued) when the key's queue is full or closed."""
        with self._lock:
            queue = self._queues.get(key, deque())
            if self._stop.is_set() or len(queue) >= self._queue_per_key:
                return False
            queue.append(_Item(key, url, payload, secret, delivery_id, on_done))
            self._queues[key] = queue
            if not self._started:  # threads on first use: most services never send a callback
                self._started = True
                for n in range(self._workers):
                    threading.Thread(target=self._work, name=f"veil-callback-{n}", daemon=True).start()
            self._lock.notify()
        return True

    def _next(self) -> _Item | None:
        with self._lock:
            while not self._stop.is_set():
                key = next((k for k in self._queues if self._busy.get(k, 0) < self._per_key), None)
                if key is None:
                    self._lock.wait()
                    continue
                queue = self._queues.pop(key)
                item = queue.popleft()
                if queue:
                    self._queues[key] = queue  # back of the line
                self._busy[key] = self._busy.get(key, 0) + 1
                return item
        return None

    def _work(self) -> None:
        while (item := self._next()) is not None:
            try:
                outcome = deliver(
                    item.url,
                    item.payload,
                    item.secret,
                    stop=self._stop,
                    delivery_id=item.delivery_id,
                    on_retry=item.on_done,
                    attempts=self._attempts,
                    backoff=self._backoff,
                    max_backoff=self._max_backoff,
                    timeout=self._timeout,
                    allowed=self._allowed,
                )
            except Exception as exc:  # a bug must not kill the thread silently
                log.exception("callback to %s failed unexpectedly", item.url)
                outcome = Outcome("failed", error=f"internal error: {type(exc).__name__}")
            with self._lock:
                self._busy[item.key] -= 1
                if not self._busy[item.key]:
                    del self._busy[item.key]
                self._lock.notify_all()  # the key may be eligible again
            _report(item, outcome)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            dropped = [item for queue in self._queues.values() for item in queue]
            self._queues.clear()
            self._lock.notify_all()
        for item in dropped:
            _report(item, Outcome("dropped", error="the service shut down before sending it"))

    def __enter__(self) -> CallbackDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _report(item: _Item, outcome: Outcome) -> None:
    if item.on_done is not None:
        try:
            item.on_done(outcome)
        except Exception:  # noqa: BLE001 - e.g. the database went away during shutdown
            log.warning("recording the callback to %s failed", item.url, exc_info=True)
