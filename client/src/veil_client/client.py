"""`Client(url, key)` and `Job`: the vendor's routes (create_upload_session, approve_job, job_result), plus
Veil's cancel and render where the server offers them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import transfer
from ._http import Http, check, detail
from .errors import ClientError, JobFailed, NotOffered

COMPLETED, FAILED = 100, 200  # the seed's job_status codes (0 waiting, 1-99 percent)


def backoff(first: float = 0.5, factor: float = 1.5, most: float = 5.0) -> Iterator[float]:
    """Polling pauses: `first`, growing by `factor`, never above `most` seconds."""
    pause = first
    while True:
        yield pause
        pause = min(pause * factor, most)


class Client:
    """A server speaking the vendor's API. `url` is its API root, as the seed's `API_URL`
    (`https://host/v1`); a bare `http://host:port` gets `/v1` added. Safe to share between threads.
    `concurrency`: upload blocks in flight, all uploads together; `block_size`: None picks 4 to 16 MiB by the
    file's size; `checksum`: a Content-MD5 on every block (None: over plain HTTP across a network only, see
    `transfer.wants_checksum`)."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        concurrency: int = transfer.CONCURRENCY,
        block_size: int | None = None,
        checksum: bool | None = None,
        http: Http | None = None,
    ) -> None:
        url = url.rstrip("/")
        self.url = url if url.count("/") > 2 else url + "/v1"
        self.key = key
        self.concurrency, self.block_size, self.checksum = concurrency, block_size, checksum
        self.http = http or Http(pool=max(16, concurrency))
        self.block_slots = threading.BoundedSemaphore(concurrency)  # blocks in flight, all uploads together

    def call(self, method: str, route: str, what: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """One API call with the key; its JSON body (`check` raises on any other status)."""
        response = self.http.request(method, self.url + route, headers={"access_token": self.key}, **kwargs)
        return check(response, what, ok).json()

    def create(self, path: str | os.PathLike, model_config: dict | None = None, file_name: str | None = None) -> Job:
        """A job for `path` (create_upload_session); its upload URL is `job.session_uri`."""
        path = Path(path)
        body = {
            "file_name": file_name or path.name,
            "file_size": path.stat().st_size,
            "content_type": "octet-stream",
            "model": "blur",
            "model_config": model_config or {},
        }
        answer = self.call("POST", "/create_upload_session", f"create a job for {path.name}", json=body)
        return Job(self, answer["job_id"], answer["session_uri"])

    def submit(
        self,
        path: str | os.PathLike,
        model_config: dict | None = None,
        *,
        journal: Path | None = None,
        progress: transfer.Progress | None = None,
    ) -> Job:
        """Create a job for `path` and upload it (blocks in parallel, resumable through `journal`)."""
        job = self.create(path, model_config)
        job.upload(path, journal, progress)
        return job

    def job(self, job_id: str, session_uri: str | None = None) -> Job:
        return Job(self, job_id, session_uri)


@dataclass
class Job:
    client: Client
    id: str
    session_uri: str | None = None
    cost: int | None = field(default=None, compare=False)

    def upload(
        self, path: str | os.PathLike, journal: Path | None = None, progress: transfer.Progress | None = None
    ) -> int:
        """Upload the input (see `transfer.upload`); returns the bytes this call sent."""
        if self.session_uri is None:
            raise ClientError(f"job {self.id}: no upload URL (it was created elsewhere)")
        c = self.client
        return transfer.upload(
            c.http,
            self.session_uri,
            Path(path),
            journal,
            concurrency=c.concurrency,
            block_size=c.block_size,
            checksum=c.checksum,
            progress=progress,
            slots=c.block_slots,
        )

    def report(self) -> dict:
        """The JobReport (job_result)."""
        return self.client.call("GET", f"/job_result/{self.id}", f"job {self.id}")

    def priced(self, timeout: float = 600) -> int:
        """Wait until the server knows the cost (it prices the upload once committed); return it."""
        deadline = time.monotonic() + timeout
        for pause in backoff(0.2):
            report = self.report()
            self._raise_if_failed(report)
            cost = report.get("job_total_credit_cost", report.get("total_credit_cost"))
            if cost is not None:
                self.cost = int(cost)
                return self.cost
            if time.monotonic() > deadline:
                raise ClientError(f"job {self.id}: not priced after {timeout:.0f} s")
            time.sleep(pause)
        raise AssertionError("unreachable")

    def approve(self, timeout: float = 600) -> None:
        """Approve (reserving the cost); waits while the upload is incomplete (302). `CreditsRefused` on 402."""
        deadline = time.monotonic() + timeout
        for pause in backoff(0.2):
            response = self.client.http.request(
                "POST", f"{self.client.url}/approve_job/{self.id}", headers={"access_token": self.client.key}
            )
            if response.status_code == 302 and time.monotonic() < deadline:
                time.sleep(pause)
                continue
            check(response, f"approve job {self.id}", ok=(200, 202))
            if response.status_code == 202:  # already approved, or refused before approval (report says)
                self._raise_if_failed(self.report())
            return

    def wait(self, progress: Callable[[int], None] | None = None, timeout: float | None = None) -> dict:
        """Poll job_result (with backoff) until the job completes; its report. `JobFailed` if it failed.
        `progress(job_status)` is called with each new status (0 waiting, 1-99 percent)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        for pause in backoff():
            report = self.report()
            self._raise_if_failed(report)
            if report["job_status"] == COMPLETED:
                return report
            if progress and report["job_status"] != last:
                progress(last := report["job_status"])
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"job {self.id}: not finished after {timeout:.0f} s")
            time.sleep(pause)
        raise AssertionError("unreachable")

    def download(
        self,
        directory: str | os.PathLike,
        report: dict | None = None,
        part_dir: Path | None = None,
        progress: transfer.Progress | None = None,
    ) -> list[Path]:
        """Download every output into `directory` (each through a resumable part file in `part_dir`, default
        `directory`/.parts); returns their paths. Tasks that failed are skipped (their `error` says why)."""
        report = report or self.report()
        directory = Path(directory)
        part_dir = part_dir or directory / ".parts"
        paths = []
        for task in report.get("tasks", []):
            if not task.get("download_link"):
                continue
            name = Path(task["output_file"]).name  # a bare name, whatever the server sent
            dest = directory / name
            transfer.download(
                self.client.http,
                task["download_link"],
                dest,
                part_dir / f"{self.id}-{task.get('task_id', name)}.part",
                progress=progress,
            )
            paths.append(dest)
        return paths

    def cancel(self) -> dict:
        """Cancel (Veil's extension; refunds what was not processed); the report. `NotOffered` on a server
        without it."""
        return self._extension(f"/jobs/{self.id}/cancel", "job cancel", ok=(200,))

    def render(self, model_config: dict | None = None, edits: dict[str, list[dict]] | None = None) -> dict:
        """Draw the outputs again from the job's detections, without detecting (Veil's render_job): `model_config`
        overrides (thresholds, style, ...), `edits` per task index (docs/detections.md). Then `wait()` and
        `download()` as for the job. `NotOffered` on a server without it; `CreditsRefused` on 402."""
        body = {"model_config": model_config or {}, "edits": edits or {}}
        return self._extension(f"/render_job/{self.id}", "render", ok=(202,), json=body)

    def _extension(self, route: str, what: str, ok: tuple[int, ...], **kwargs: Any) -> dict:
        response = self.client.http.request(
            "POST", self.client.url + route, headers={"access_token": self.client.key}, **kwargs
        )
        if response.status_code in (404, 405) and detail(response) in ("Not Found", "Method Not Allowed"):
            raise NotOffered(f"this server offers no {what}")  # the framework's answer for an unknown route
        return check(response, f"{what} of job {self.id}", ok).json()

    def _raise_if_failed(self, report: dict) -> None:
        if report["job_status"] == FAILED:
            raise JobFailed(f"job {self.id}: {report.get('job_status_description') or 'failed'}")


__all__ = ["Client", "Job", "backoff"]
