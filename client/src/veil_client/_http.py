"""HTTP with retries: a `requests.Session` per thread whose adapter carries urllib3's `Retry`.

Retried, with exponential backoff and jitter: connection errors, resets and timeouts, and the statuses
Azure Storage and the API document as transient (408, 429, 500, 502, 503 `ServerBusy`, 504); a
`Retry-After` header (429, 503) is honoured. Other 4xx are answers, never retried.
"""

from __future__ import annotations

import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from .errors import ClientError, CreditsRefused, KeyRefused, TooLarge, Unreachable

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class Http:
    """Thread-safe: each thread gets its own session (and connection pool) with the same retry policy."""

    def __init__(
        self,
        retries: int = 10,
        backoff: float = 0.2,
        backoff_max: float = 20.0,
        timeout: tuple[float, float] = (10.0, 300.0),
        pool: int = 16,
    ) -> None:
        self.retry = Retry(
            total=retries,
            backoff_factor=backoff,
            backoff_max=backoff_max,
            backoff_jitter=0.2,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # every method, POST too
            respect_retry_after_header=True,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        self.timeout, self.pool = timeout, pool
        self._local = threading.local()

    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            adapter = HTTPAdapter(max_retries=self.retry, pool_maxsize=self.pool)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        return session

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One request, retried per the policy; `Unreachable` when every try failed to get an answer."""
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("allow_redirects", False)
        try:
            return self.session().request(method, url, **kwargs)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError) as exc:
            raise Unreachable(f"{_where(url)} did not answer: {_reason(exc)}") from None


def check(response: requests.Response, what: str, ok: tuple[int, ...] = (200,)) -> requests.Response:
    """`response` if its status is in `ok`, else the error a person can act on, in one line."""
    if response.status_code in ok:
        return response
    message = f"{what}: HTTP {response.status_code}: {detail(response)}"
    error = {401: KeyRefused, 403: KeyRefused, 402: CreditsRefused, 413: TooLarge}.get(response.status_code)
    if response.status_code in RETRY_STATUSES:
        error = Unreachable
    raise (error or ClientError)(message)


def detail(response: requests.Response) -> str:
    if code := response.headers.get("x-ms-error-code"):
        return code
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    return " ".join(str(detail).split())[:300]


def _where(url: str) -> str:
    return url.split("?", 1)[0]


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("()'\" ")[:200]
