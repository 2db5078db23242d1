"""`veil anonymize` over many inputs: files, folders and archives, one progress bar, one line per problem.

- **Folders** are walked as `veil submit` walks them (`veil_client.batch.walk`: recursive, sorted, hidden
  files left out, `--include` / `--exclude` patterns on the path inside the folder or the file name); the
  outputs keep the layout under the output folder. Files whose content is not an image, a video or an
  archive are skipped and listed at the end (given by name, they are an error).
- **Archives** (zip, tar, 7z, rar; by content, never by name) are taken apart as the service takes an upload
  apart (`veil.jobs.archive.expand_archive`, with its rules: root-level files only, no nested archives,
  bomb limits): one output per member, in a folder named after the archive (`pics.zip` -> `out/pics/`),
  as `veil submit` lays out a job's outputs. An archive is never handed to the engine as media.
- **Errors** a user can cause (a corrupt file, a refused archive, an output folder that cannot be written)
  are one line each and the batch goes on; the exit status is 1 when any file failed.
- **Photos side by side**: with more than one input, photos are anonymized in `workers` processes (default:
  one per physical core), each running ONNX Runtime on one thread: two single-threaded processes do about
  1.6 times the photos a second of one process on two threads (`bench/bench_photos.py`). Videos run one at a
  time in this process (their pipeline keeps the cores busy itself). A worker that dies (killed, out of memory)
  breaks the pool: a new one takes the photos then in hand once more, and the rest.
- **Signals**: SIGTERM unwinds like Ctrl-C, so no temporary `.NAME.<hex>.part` file is left behind; the
  exit status is 130 after SIGINT, 143 after SIGTERM. Photo workers ignore both and finish the photo in hand
  (an output is written whole or not at all); the photos not yet started are not.
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
from tqdm import tqdm

from .engine.config import MediaLimits, ModelConfig
from .engine.errors import MediaError, ModelsMissing, NotMedia

Progress = Callable[[float], None]
_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"  # no rate: "1895%/s" says nothing


def regions(count: int) -> str:
    return f"{count} region{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Options:
    """What `veil anonymize` does to each file."""

    config: ModelConfig
    limits: MediaLimits
    jobs: int = 1  # worker processes for one video (segments)
    segment_seconds: float = 60.0
    summaries: bool = False  # --report: a summary per file
    floor: float = 0.1  # --report: candidates kept down to this score
    workers: int = 1  # processes anonymizing photos side by side


@dataclass
class Batch:
    """One `veil anonymize` run: call `run(inputs)`, then read `failures`, `skipped` and `summaries`."""

    output_dir: Path
    options: Options
    failures: int = 0
    skipped: list[str] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)
    _written: set[Path] = field(default_factory=set)
    _several: bool = False  # more than one file in this run: photos go to the workers
    _ordered: list[tuple[float, dict]] = field(default_factory=list)  # summaries by the file's place in the run

    def run(self, inputs: list[tuple[Path, str, bool]]) -> None:
        """`inputs` from `find_inputs`: (file, its path under the output folder, found in a folder)."""
        from .jobs.archive import is_archive

        with _Bar(len(inputs)) as bar, _Photos(self.options.workers) as photos:
            self._bar, self._photos, self._several = bar, photos, len(inputs) > 1
            for unit, (src, rel, walked) in enumerate(inputs):
                try:
                    packed = is_archive(src)
                except OSError as exc:
                    self._error(str(src), _os_message(exc))
                    continue
                if packed:
                    self._archive(src, self.output_dir / rel, unit)
                else:
                    self._file(src, str(src), self.output_dir / rel, unit, 1.0, walked)
            self._collect(everything=True)
        self.summaries = [summary for _, summary in sorted(self._ordered, key=lambda item: item[0])]

    def _archive(self, src: Path, dst: Path, unit: int) -> None:
        from .jobs.archive import ArchiveError, expand_archive

        folder = dst.parent / _stem(dst.name)
        with tempfile.TemporaryDirectory(prefix="veil-archive-") as tmp:
            try:
                members = expand_archive(src, Path(tmp))
            except ArchiveError as exc:
                self._error(str(src), str(exc))
                return
            except OSError as exc:
                self._error(str(src), _os_message(exc))
                return
            if not members:
                self._error(str(src), "the archive holds no files")
                return
            self._several = self._several or len(members) > 1
            for n, member in enumerate(members):
                self._file(
                    member,
                    f"{src}/{member.name}",
                    folder / member.name,
                    unit + n / len(members),
                    1 / len(members),
                    False,
                )
            self._collect(everything=True)  # its members are read from the temporary folder

    def _file(self, src: Path, label: str, dst: Path, start: float, share: float, walked: bool) -> None:
        self._bar.start(label, start, share)
        try:
            if dst.resolve() == src.resolve():
                raise MediaError("the output would overwrite the input; choose another --output-dir")
            if dst in self._written:
                raise MediaError(f"another input named {src.name} was already written to {dst}")
            _check_writable(dst.parent)
        except (MediaError, OSError) as exc:
            self._failed(label, walked, exc)
            return
        self._written.add(dst)  # claimed now (a photo in a worker), given back if it fails
        if self._several and self._photos.workers > 1 and not _is_video(src):
            self._photos.submit(anonymize_one, (src, dst, self.options), (label, src, dst, walked, start, share, 0))
            self._collect()
            return
        try:
            outcome = anonymize_one(src, dst, self.options, self._bar.progress)
        except Exception as exc:  # noqa: BLE001 - said in one line; the other files still run
            self._failed(label, walked, exc, dst)
            return
        self._succeeded(label, dst, outcome, start)

    def _collect(self, everything: bool = False) -> None:
        """Report the photos the workers finished (`everything`: wait for all, retries included)."""
        while finished := self._photos.finished(everything):
            for (label, src, dst, walked, start, share, tries), future in finished:
                try:
                    outcome = future.result()
                except BrokenProcessPool:  # a worker died (killed, out of memory): the photos then in hand, again
                    if tries:
                        self._failed(label, walked, RuntimeError("its worker process died twice (out of memory?)"), dst)
                    else:
                        retry = (label, src, dst, walked, start, share, 1)
                        self._photos.submit(anonymize_one, (src, dst, self.options), retry)
                    continue
                except Exception as exc:  # noqa: BLE001 - as above, from a worker process
                    self._failed(label, walked, exc, dst)
                    continue
                self._bar.reach(start + share)
                self._succeeded(label, dst, outcome, start)
            if not everything:
                return

    def _succeeded(self, label: str, dst: Path, outcome: tuple[int, list[str], dict | None], order: float) -> None:
        count, notes, summary = outcome
        if summary is not None:  # in the order of the inputs, whichever worker finished first
            self._ordered.append((order, {"file": label, "output": str(dst), **summary}))
        tqdm.write(f"{label} -> {dst} ({regions(count)} redacted)")
        for note in notes:
            tqdm.write(f"  note: {note}")

    def _failed(self, label: str, walked: bool, exc: Exception, dst: Path | None = None) -> None:
        if dst is not None:
            self._written.discard(dst)
        if isinstance(exc, ModelsMissing):
            raise click.ClickException(str(exc)) from None
        if isinstance(exc, NotMedia):
            if walked:
                self.skipped.append(label)
            else:
                self._error(label, str(exc))
        elif isinstance(exc, MediaError):
            self._error(label, str(exc))
        elif isinstance(exc, OSError):  # an output folder that cannot be written, a disk that is full
            self._error(label, _os_message(exc))
        else:  # a fault of ours with this file: the others still run
            self._error(label, f"internal error: {type(exc).__name__}: {exc}")

    def _error(self, label: str, message: str) -> None:
        self.failures += 1
        tqdm.write(f"error: {label}: {message}", file=sys.stderr)


def anonymize_one(
    src: Path, dst: Path, opts: Options, progress: Progress | None = None
) -> tuple[int, list[str], dict | None]:
    """Anonymize one file: (regions drawn, notes, its summary with --report). Runs in a photo worker too."""
    from .engine.anonymize import anonymize
    from .engine.file_report import anonymize_with_summary, summarize
    from .engine.probe import media_kind
    from .engine.segments import anonymize_split

    summary = None
    if opts.jobs > 1 and media_kind(src) == "video":
        report = anonymize_split(src, dst, opts.config, opts.segment_seconds, opts.jobs, progress, opts.limits)
        summary = summarize(report, None, opts.config) if opts.summaries else None
    elif opts.summaries:
        report, summary = anonymize_with_summary(src, dst, opts.config, progress, opts.limits, opts.floor)
    else:
        report = anonymize(src, dst, opts.config, progress=progress, limits=opts.limits)
    return report.detection_count, list(report.notes), summary


def _is_video(src: Path) -> bool:
    from .engine.probe import media_kind

    try:
        return media_kind(src) == "video"
    except Exception:  # noqa: BLE001 - not media, unreadable: the worker that takes it says so
        return False


class _Photos:
    """Photo worker processes (none with `workers` 1), started with the first photo; `finished` hands back
    what they completed, waiting while 2 x `workers` photos are in hand (or for all of them)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: dict[Future, tuple] = {}

    def submit(self, fn, args: tuple, context: tuple) -> None:
        if self._pool is not None:
            try:
                self._pending[self._pool.submit(fn, *args)] = context
                return
            except BrokenProcessPool:  # a worker died: a new pool takes this photo and those after it
                self._pool.shutdown(wait=False)
        spawn = multiprocessing.get_context("spawn")  # not fork: this process may hold threads already
        self._pool = ProcessPoolExecutor(self.workers, mp_context=spawn, initializer=_photo_worker)
        self._pending[self._pool.submit(fn, *args)] = context

    def finished(self, everything: bool = False) -> list[tuple[tuple, Future]]:
        done_now: list[tuple[tuple, Future]] = []
        while self._pending:
            block = everything or len(self._pending) >= 2 * self.workers
            done = wait(self._pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)[0]
            if not done:
                break
            done_now += [(self._pending.pop(f), f) for f in done]
        return done_now

    def __enter__(self) -> _Photos:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:  # on an error or a signal: the photos not started are dropped
            self._pool.shutdown(wait=True, cancel_futures=True)


def _photo_worker() -> None:
    from .settings import engine_settings, override_engine_settings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the batch decides
    if engine_settings().ort_threads is None:  # one thread each: the workers share the cores
        override_engine_settings(ort_threads=1)


def detect_all(inputs: tuple[Path, ...], json_out: Path, config: ModelConfig, limits: MediaLimits) -> int:
    """`veil detect --json`: every input's detections as {"items": [...]} in `json_out` ("-": standard
    output), a failed input as {"file", "error"}; returns how many failed."""
    from .engine.anonymize import detect_file

    items, failures = [], 0
    for src in tqdm(inputs, unit="file", disable=len(inputs) < 2, file=sys.stderr):
        try:
            report = detect_file(src, config, limits=limits)
        except ModelsMissing as exc:
            raise click.ClickException(str(exc)) from None
        except MediaError as exc:
            failures += 1
            tqdm.write(f"error: {src}: {exc}", file=sys.stderr)
            items.append({"file": str(src), "error": str(exc)})
            continue
        items.append(report.to_json(str(src)))
    text = json.dumps({"items": items})
    if str(json_out) == "-":
        click.echo(text)
    else:
        json_out.write_text(text)
        click.echo(f"wrote {json_out} ({len(items)} files)")
    return failures


def find_inputs(
    paths: tuple[Path, ...], include: tuple[str, ...], exclude: tuple[str, ...], output_dir: Path
) -> list[tuple[Path, str, bool]]:
    """(file, its path under the output folder, found in a folder) for the files and folders given; the
    output folder itself is never walked."""
    from veil_client.batch import walk
    from veil_client.errors import ClientError

    found = []
    for path in paths:
        if not path.is_dir():
            found.append((path, path.name, False))
            continue
        try:
            found += [(file, rel, True) for file, rel in walk([path], include, exclude, skip=output_dir)]
        except ClientError as exc:
            raise click.ClickException(str(exc)) from None
    if not found:
        raise click.ClickException("no input files (check --include / --exclude)")
    return found


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that every `finally` removes what it would leave."""


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """Run a command so that SIGINT exits 130 and SIGTERM 143, after the temporary files are gone."""

    def terminate(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except _Terminated:
        click.echo("terminated", err=True)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(128 + signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Bar:
    """One bar for the whole batch, in files: a file's progress moves it within that file's share, the
    description names the file (`2/5 clips/a.mp4`); redrawn when the whole percent changes."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.bar = tqdm(total=count, bar_format=_BAR, leave=False, file=sys.stderr)
        self.begin, self.share, self.shown = 0.0, 1.0, -1

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def start(self, label: str, begin: float, share: float) -> None:
        self.begin, self.share, self.shown = begin, share, -1
        self.bar.set_description_str(
            label if self.count == 1 else f"{int(begin) + 1}/{self.count} {label}", refresh=False
        )
        self.progress(0.0)

    def progress(self, fraction: float) -> None:
        self.reach(self.begin + self.share * min(max(fraction, 0.0), 1.0))

    def reach(self, value: float) -> None:
        """The bar at `value` files (a photo from a worker: never moved back)."""
        value = max(value, self.bar.n)
        percent = int(100 * value / self.count)
        if percent != self.shown:
            self.shown = percent
            self.bar.n = value
            self.bar.refresh()


def _stem(name: str) -> str:
    """`pics.zip` -> `pics`, `pics.tar.gz` -> `pics`."""
    stem = Path(name).stem
    return Path(stem).stem if Path(stem).suffix.lower() == ".tar" else stem


def _check_writable(folder: Path) -> None:
    """OSError naming the folder when no file can be created in it (read-only, not permitted)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write into {folder}: {exc.strerror}") from None


def _os_message(exc: OSError) -> str:
    if exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return exc.strerror or str(exc)
