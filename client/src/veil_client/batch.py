"""Many files as many jobs: folder walking, N jobs in flight, a manifest that is also the state a rerun
resumes from (finished files skipped, jobs already created reused, so nothing is paid for twice)."""

from __future__ import annotations

import fnmatch
import json
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .client import Client, Job
from .errors import ClientError, CreditsRefused, KeyRefused, Unreachable
from .transfer import session_uri_of

STATE_DIR = ".veil-submit"  # under the output folder: upload journals, download parts, the manifest's temp file
MANIFEST = "manifest.json"
Event = Callable[[str, str, float], None]  # (input, phase, fraction done): upload, pricing, processing, ...


@dataclass
class Entry:
    """One input file in the manifest."""

    input: str  # relative to the folder it was found in ("/"-separated), or the file's name
    size: int
    job_id: str | None = None
    status: str = "pending"  # pending, created, uploaded, approved, completed, failed, refused
    cost: int | None = None
    outputs: list[str] = field(default_factory=list)  # relative to the output folder
    error: str | None = None
    exit_status: int = 0


def walk(
    paths: Iterable[Path], include: Iterable[str] = (), exclude: Iterable[str] = (), skip: Path | None = None
) -> list[tuple[Path, str]]:
    """(file, relative name) for files and folders (recursively, sorted). A pattern matches the relative
    name or the file name (`*.jpg`, `day1/*`); `include` keeps only matches, `exclude` drops them. `skip`
    (the output folder) and hidden files are left out."""
    include, exclude = list(include), list(exclude)
    found: dict[str, Path] = {}
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
            if skip is not None and path.resolve().is_relative_to(skip.resolve()):
                continue
            if any(part.startswith(".") for part in Path(rel).parts):
                continue
            if include and not _matches(rel, include) or _matches(rel, exclude):
                continue
            if rel in found and found[rel] != path:
                raise ClientError(f"two inputs would share the output path {rel}: {found[rel]} and {path}")
            found[rel] = path
    return [(path, rel) for rel, path in found.items()]


def _matches(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], p) for p in patterns)


class Manifest:
    """`manifest.json` in the output folder, rewritten whole (atomically) after every change."""

    def __init__(self, out: Path) -> None:
        self.path, self.state = out / MANIFEST, out / STATE_DIR
        self._lock = threading.Lock()
        try:
            rows = json.loads(self.path.read_text())["files"]
        except FileNotFoundError:
            rows = []
        self.entries = {row["input"]: Entry(**row) for row in rows}

    def save(self, entry: Entry) -> None:
        with self._lock:
            self.entries[entry.input] = entry
            self.state.mkdir(parents=True, exist_ok=True)
            temp = self.state / (MANIFEST + ".tmp")
            rows = [asdict(e) for _, e in sorted(self.entries.items())]
            temp.write_text(json.dumps({"files": rows}, indent=1))
            os.replace(temp, self.path)


@dataclass
class BatchResult:
    entries: list[Entry]
    exit_status: int  # the highest of the entries' (0: every file done)


def run_batch(
    client: Client,
    files: list[tuple[Path, str]],
    out: Path,
    model_config: dict | None = None,
    *,
    jobs: int = 4,
    max_credits: int | None = None,
    on_event: Event | None = None,
) -> BatchResult:
    """Process `files` (from `walk`) with `jobs` jobs in flight; outputs under `out` laid out like the inputs
    (an archive's outputs in a folder named after it). A wrong key or a server that is down stops the run."""
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(client, Manifest(out), out, model_config or {}, max_credits, on_event or (lambda *a: None))
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="veil-job") as pool:
        entries = list(pool.map(lambda item: run.one(*item), files))
    done = [e for e in entries if e is not None]
    return BatchResult(done, max([e.exit_status for e in done] + [run.fatal]))


@dataclass
class _Run:
    client: Client
    manifest: Manifest
    out: Path
    config: dict
    max_credits: int | None
    event: Event
    fatal: int = 0  # set by a KeyRefused or Unreachable: files not started yet are left alone

    def one(self, src: Path, rel: str) -> Entry | None:
        if self.fatal:
            return None
        entry = self.manifest.entries.get(rel)
        if entry and entry.status == "completed" and all((self.out / o).is_file() for o in entry.outputs):
            self.event(rel, "skipped", 1.0)
            return entry
        size = src.stat().st_size
        if entry is None or entry.size != size or entry.status == "failed":
            entry = Entry(rel, size)
        entry.error, entry.exit_status = None, 0
        try:
            self._advance(src, entry)
        except CreditsRefused as exc:
            self._finish(entry, "refused", exc)
        except (KeyRefused, Unreachable) as exc:
            self.fatal = exc.exit_status
            self._finish(entry, entry.status, exc)
        except ClientError as exc:
            self._finish(entry, "failed", exc)
        except OSError as exc:  # the input vanished or cannot be read; the output folder is not writable
            self._finish(entry, "failed", ClientError(f"{rel}: {exc}"))
        return entry

    def _advance(self, src: Path, entry: Entry) -> None:
        rel, save = entry.input, self.manifest.save
        journal = self.manifest.state / "uploads" / f"{entry.job_id}.jsonl"
        if entry.status == "created" and session_uri_of(journal) is None:
            entry.status = "pending"  # killed between create and the first block: that job is never approved
        if entry.status == "pending":
            job = self.client.create(src, self.config, file_name=Path(rel).name)
            entry.job_id, entry.status = job.id, "created"
            save(entry)
            journal = self.manifest.state / "uploads" / f"{job.id}.jsonl"
        else:
            job = self.client.job(entry.job_id or "", session_uri_of(journal))
        if entry.status == "created":
            done = _Fraction(entry.size, lambda f: self.event(rel, "upload", f))
            job.upload(src, journal, done.add)
            entry.status = "uploaded"
            save(entry)
        if entry.status in ("uploaded", "refused"):
            self.event(rel, "pricing", 0.0)
            entry.cost = job.priced()
            save(entry)
            self.event(rel, f"cost: {entry.cost} credits", 0.0)
            if self.max_credits is not None and entry.cost > self.max_credits:
                raise CreditsRefused(f"costs {entry.cost} credits, over --max-credits {self.max_credits}; not approved")
            self.event(rel, "approve", 0.0)
            job.approve()
            entry.status = "approved"
            save(entry)
        report = job.wait(lambda status: self.event(rel, "processing", status / 100))
        self._download(job, report, entry)

    def _download(self, job: Job, report: dict, entry: Entry) -> None:
        folder = self.out / Path(entry.input).parent
        if len(report.get("tasks", [])) != 1:  # an archive: its outputs in a folder of its own
            folder = folder / Path(entry.input).stem
        total = sum(1 for t in report.get("tasks", []) if t.get("download_link"))
        self.event(entry.input, "download", 0.0)
        paths = job.download(folder, report, part_dir=self.manifest.state / "parts")
        self.event(entry.input, "download", 1.0 if total else 0.0)
        entry.outputs = [p.relative_to(self.out).as_posix() for p in paths]
        failed = [
            f"{t['input_file']}: {t.get('error') or t.get('status')}"
            for t in report.get("tasks", [])
            if t.get("status", "completed") != "completed"
        ]
        if failed:
            raise ClientError(f"{len(failed)} of {len(report['tasks'])} files failed: " + "; ".join(failed))
        self._finish(entry, "completed", None)

    def _finish(self, entry: Entry, status: str, error: ClientError | None) -> None:
        entry.status = status
        entry.error = None if error is None else str(error)
        entry.exit_status = 0 if error is None else error.exit_status
        self.manifest.save(entry)
        self.event(entry.input, status if error is None else f"{status}: {error}", 1.0)


class _Fraction:
    """Adds up transferred bytes from several threads into a fraction of `total`."""

    def __init__(self, total: int, report: Callable[[float], None]) -> None:
        self.total, self.report, self.done = max(total, 1), report, 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            self.report(min(self.done / self.total, 1.0))
