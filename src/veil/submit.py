"""`veil submit`: files and folders to a Veil (or vendor) server as jobs, through the `veil_client` library.

Exit status: 0 every file done; 1 a file failed; 3 the key was refused; 4 a job was refused for credits
(balance, or over --max-credits); 5 a file is over the upload limit; 6 the server did not answer.
The highest applies. Rerunning the same command resumes: finished files are skipped and jobs already
created are reused, so nothing is paid for twice.
"""

from __future__ import annotations

import sys
import threading
import tomllib
from collections import Counter
from pathlib import Path

import click
from tqdm import tqdm

EXIT_HELP = (
    "Exit status: 0 all done, 1 a file failed, 3 key refused, 4 refused for credits, "
    "5 over the upload limit, 6 server unreachable (the highest applies)."
)


def config_file() -> Path:
    """`VEIL_CLIENT_CONFIG`, else `$XDG_CONFIG_HOME/veil/client.toml` (`server = "..."`, `key = "..."`)."""
    from veil.settings import Settings, SettingsError, load

    try:
        return load(Settings).client_config
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def submit_options(func):
    options = [
        click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)),
        click.option(
            "--server",
            envvar="VEIL_SERVER",
            help="API URL, e.g. https://host/v1 (VEIL_SERVER, or `server` in the config file).",
        ),
        click.option(
            "--key",
            envvar="VEIL_API_KEY",
            help="API key; better from VEIL_API_KEY or `key` in the "
            "config file (VEIL_CLIENT_CONFIG, default ~/.config/veil/client.toml).",
        ),
        click.option(
            "-o",
            "--output-dir",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Outputs laid out like the inputs, and manifest.json (every file: job, cost, status).",
        ),
        click.option("--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Jobs in flight."),
        click.option("--max-credits", type=click.IntRange(min=0), help="Refuse (not approve) a job costing more."),
        click.option("--include", multiple=True, help="Only files matching this pattern (repeatable), e.g. '*.mp4'."),
        click.option("--exclude", multiple=True, help="Leave out files matching this pattern (repeatable)."),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            default=4,
            show_default=True,
            help="Upload blocks (4 to 16 MiB each) in flight, all files together.",
        ),
        click.option(
            "--checksum",
            type=click.Choice(["auto", "md5", "none"]),
            default="auto",
            show_default=True,
            help="A Content-MD5 on every block: auto sends it over plain HTTP across a network (HTTPS already "
            "checks every byte; nothing corrupts loopback).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_submit(
    config: dict,
    paths: tuple[Path, ...],
    server: str | None,
    key: str | None,
    output_dir: Path,
    jobs: int,
    max_credits: int | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    concurrency: int,
    checksum: str = "auto",
) -> None:
    from veil_client import Client, ClientError, run_batch, walk

    server, key = _credentials(server, key)
    try:
        files = walk(paths, include, exclude, skip=output_dir)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    if not files:
        raise click.ClickException("no input files (check --include / --exclude)")
    bars = _Bars(len(files))
    try:
        result = run_batch(
            Client(server, key, concurrency=concurrency, checksum={"auto": None, "md5": True, "none": False}[checksum]),
            files,
            output_dir,
            config,
            jobs=jobs,
            max_credits=max_credits,
            on_event=bars.event,
        )
    finally:
        bars.close()
    counts = Counter(entry.status for entry in result.entries)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    click.echo(
        f"{summary}; {sum(e.cost or 0 for e in result.entries if e.status == 'completed')} credits; "
        f"manifest: {output_dir / 'manifest.json'}"
    )
    fatal = next((e.error for e in result.entries if e.exit_status in (3, 6)), None)
    if fatal:
        click.echo(f"error: {fatal}", err=True)
    sys.exit(result.exit_status)


def _credentials(server: str | None, key: str | None) -> tuple[str, str]:
    path = config_file()
    stored: dict = {}
    if path.is_file() and not (server and key):
        try:
            stored = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise click.ClickException(f"{path}: {exc}") from None
    server, key = server or stored.get("server"), key or stored.get("key")
    if not server or not key:
        raise click.UsageError(f"give --server and the key (VEIL_API_KEY, --key, or {path})")
    return str(server), str(key)


class _Bars:
    """One bar per file in flight (its phase and percent) and one for the whole run."""

    def __init__(self, total: int) -> None:
        self.overall = tqdm(total=total, unit="file", desc="all files", disable=None)  # no bars off a terminal
        self.bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()

    def event(self, rel: str, phase: str, fraction: float) -> None:
        with self._lock:
            final = phase.split(":")[0] in (
                "completed",
                "failed",
                "refused",
                "skipped",
                "created",
                "uploaded",
                "approved",
                "pending",
            )
            bar = self.bars.get(rel)
            if final:
                if bar is not None:
                    bar.close()
                    del self.bars[rel]
                status, _, error = phase.partition(": ")
                tqdm.write(f"{status:9} {rel}{': ' + error if error else ''}", file=sys.stderr if error else None)
                self.overall.update()
                return
            if phase.startswith("cost: "):  # before approval
                tqdm.write(f"{'cost':9} {rel}: {phase[6:]}")
                return
            if bar is None:
                bar = self.bars[rel] = tqdm(
                    total=100, unit="%", leave=False, bar_format="{desc} {bar} {n}%", disable=None
                )
            bar.set_description_str(f"{rel} [{phase}]", refresh=False)
            bar.n = round(100 * fraction)
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.overall.close()
