"""`veil doctor`: check that a process's configuration works (database, store with a SAS round trip,
broker, Service Bus, models, scratch space) and name what is wrong. Each check is one function
returning a short description of what works, or raising with what does not."""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from urllib.parse import urlsplit

from .db.session import make_engine
from .engine.weights import describe_models
from .jobs.service import OUTPUT_CONTAINER, build_store
from .settings import Settings

GiB = 1024**3
SERVED = "serve.json"


def record_address(settings: Settings) -> None:
    """`veil serve` notes where it listens (`<data_dir>/serve.json`), so that `veil doctor` on the same data
    dir probes that port, not the default."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / SERVED).write_text(json.dumps({"host": settings.host, "port": settings.port}))


def served_settings(settings: Settings) -> Settings:
    """`settings` with the host and port `veil serve` last listened on with this data dir, unless the
    address was given (VEIL_PUBLIC_URL, VEIL_HOST, VEIL_PORT or --host/--port)."""
    path = settings.data_dir / SERVED
    if settings.model_fields_set & {"public_url", "host", "port"} or not path.is_file():
        return settings
    try:
        served = json.loads(path.read_text())
        return settings.model_copy(update={"host": str(served["host"]), "port": int(served["port"])})
    except (ValueError, KeyError, TypeError):
        return settings


def run_checks(settings: Settings) -> Iterator[tuple[str, bool, str]]:
    """(check name, passed, detail) for every check that applies to these settings."""
    checks: list[tuple[str, Callable[[Settings], str]]] = [
        ("database", check_database),
        ("store", check_store),
        ("models", check_models),
        ("scratch space", check_scratch),
    ]
    if settings.worker == "celery":
        checks.insert(2, ("broker", check_broker))
    if settings.servicebus_connection_string:
        checks.insert(3, ("service bus", check_servicebus))
    for name, check in checks:
        try:
            yield name, True, check(settings)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the others
            yield name, False, f"{type(exc).__name__}: {exc}".strip()[:500]


def check_database(settings: Settings) -> str:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            try:
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except Exception:  # noqa: BLE001 - a new database: the first `veil serve` creates the schema
                version = None
    finally:
        engine.dispose()
    where = make_url(settings.db_url).render_as_string(hide_password=True)
    return f"{where} (schema {version or 'not created yet: the first veil serve creates it'})"


def check_store(settings: Settings) -> str:
    """Upload and download a small blob through signed URLs, as a client would."""
    import requests

    store = build_store(settings)
    name, body = f"doctor/{uuid.uuid4()}", uuid.uuid4().bytes * 64
    expires = timedelta(minutes=5)
    endpoint = urlsplit(store.signed_download_url(OUTPUT_CONTAINER, name, expires))
    try:  # first a plain connect: the SDK would retry a dead endpoint for minutes
        socket.create_connection(
            (endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)), timeout=5
        ).close()
    except OSError as exc:
        raise RuntimeError(
            f"the store's endpoint {endpoint.scheme}://{endpoint.netloc} is not reachable ({exc}); "
            "for the local store, is veil serve running at VEIL_PUBLIC_URL?"
        ) from None
    try:
        put = requests.put(
            store.signed_upload_url(OUTPUT_CONTAINER, name, expires),
            data=body,
            timeout=30,
            headers={"x-ms-blob-type": "BlockBlob"},
        )
        if put.status_code != 201:
            raise RuntimeError(f"upload with a signed URL answered {put.status_code}: {put.text[:200]}")
        got = requests.get(store.signed_download_url(OUTPUT_CONTAINER, name, expires), timeout=30)
        if got.status_code != 200 or got.content != body:
            raise RuntimeError(
                f"download with a signed URL answered {got.status_code}, "
                f"{'same' if got.content == body else 'different'} bytes"
            )
    except requests.ConnectionError as exc:
        raise RuntimeError(
            f"the store's endpoint is not reachable ({exc.request.url.split('?')[0]}); "
            "for the local store, is veil serve running at VEIL_PUBLIC_URL?"
        ) from None
    finally:
        try:
            store.delete(OUTPUT_CONTAINER, name)
        except Exception:  # noqa: BLE001 - reported by the round trip already
            pass
    return f"{settings.storage_backend}: upload and download with signed URLs work"


def check_broker(settings: Settings) -> str:
    from kombu import Connection  # lazy: Celery (and kombu) are optional (veil[celery])

    with Connection(settings.celery_broker_url, connect_timeout=5) as conn:
        conn.ensure_connection(max_retries=1)
    return Connection(settings.celery_broker_url).as_uri()  # password masked


def check_servicebus(settings: Settings) -> str:
    from azure.servicebus import ServiceBusClient  # lazy: optional (veil[azure])

    with (
        ServiceBusClient.from_connection_string(settings.servicebus_connection_string) as client,
        client.get_queue_receiver(settings.servicebus_queue, max_wait_time=5) as receiver,
    ):
        receiver.peek_messages(max_message_count=1)
    return f"queue {settings.servicebus_queue} readable"


def check_models(settings: Settings) -> str:

    models = describe_models()
    missing = [m for m in models if not m["installed"]]
    if missing:
        raise RuntimeError(f"missing {', '.join(str(m['path']) for m in missing)}: run `veil models install`")
    return ", ".join(f"{m['name']} ({m['source']})" for m in models)


def check_scratch(settings: Settings) -> str:
    work = settings.data_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    probe = work / f".doctor-{uuid.uuid4()}"
    probe.write_bytes(b"x")
    probe.unlink()
    free = shutil.disk_usage(work).free
    needed = 2 * settings.max_upload_bytes  # the input and its output (an archive also expands)
    if free < needed:
        raise RuntimeError(
            f"{work}: {free / GiB:.1f} GiB free, jobs may need {needed / GiB:.1f} GiB (twice VEIL_MAX_UPLOAD_BYTES)"
        )
    return f"{work}: writable, {free / GiB:.1f} GiB free"
