"""Settings, engine and service: every field is a `VEIL_<NAME>` environment variable (listed in
docs/configuration.md, generated from this module).
Nothing else in Veil reads the environment.

The embedded store's account key, when not set, is generated once and kept in
`<data_dir>/secrets.json`; the callback signing secret, when not set, is generated once and kept in the
database, so every process of a deployment signs with the same one.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3
_S = TypeVar("_S", bound="EngineSettings")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def _default_model_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "veil" / "models"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """`"10.0.0.0/8, 127.0.0.1"` → networks; ValueError naming a bad entry."""
    networks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (write e.g. 10.0.0.0/8 or fd00::/8)") from None
    return tuple(networks)


class EngineSettings(BaseSettings):
    """The engine's tuning, the same for `veil anonymize` and the service's workers (`engine_settings()`)."""

    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="ignore")

    execution_provider: Literal["auto", "cpu", "cuda", "openvino"] = Field(
        "auto",
        description="Inference runtime: `auto` (CUDA if present, else OpenVINO bfloat16 on CPUs that "
        "compute bfloat16 natively, else ONNX Runtime's CPU provider), `cpu`, `cuda` or `openvino`.",
    )
    openvino_precision: Literal["auto", "f32", "bf16"] = Field(
        "auto", description="OpenVINO inference precision (`auto`: bf16 where the CPU computes it natively)."
    )
    ort_threads: int | None = Field(
        None, ge=0, description="ONNX Runtime intra-op threads (0: its own choice); unset: the physical cores."
    )
    model_dir: Path = Field(
        default_factory=_default_model_dir,
        json_schema_extra={"shown_default": "~/.cache/veil/models"},
        description="Where the models are kept (default `$XDG_CACHE_HOME/veil/models`, i.e. `~/.cache/veil/models`).",
    )
    x264_preset: Literal[X264_PRESETS] = Field("veryfast", description="x264 preset of video output.")  # type: ignore[valid-type]
    video_face_side: int = Field(
        640,
        ge=64,
        le=8192,
        description="Longest side of a video scan's face detector input (small videos are upscaled to it).",
    )
    video_plate_side: int = Field(
        960,
        ge=64,
        le=8192,
        description="Longest side of a video scan's plate detector input, at least 2/3 of the frame's.",
    )
    video_detect_fps: float = Field(
        4.0,
        gt=0,
        le=240,
        description="Face detector runs a second of video (tracked faces; the tracker bridges the frames between).",
    )
    video_plate_detect_fps: float = Field(
        15.0, gt=0, le=240, description="Plate detector runs a second of video (tracked plates)."
    )
    video_face_scan_fps: float = Field(2.0, gt=0, le=240, description="Scans for new faces a second of video.")
    video_plate_scan_fps: float = Field(
        5.0,
        gt=0,
        le=240,
        description="Scans for new plates a second of video "
        "(motion-gated; at 3: 1 leaked plate-frame on the bench clip).",
    )
    video_tile_fps: float = Field(1.0, gt=0, le=240, description="With slicing, tiles added to a scan a second.")
    video_full_scan_fps: float = Field(0.5, gt=0, le=240, description="Whole-frame scans a second, whatever changed.")


class SettingsError(ValueError):
    """A VEIL_* variable with a value Veil cannot use; the message names it (one line per bad variable)."""


def load(cls: type[_S] = None, **values) -> _S:  # type: ignore[assignment]
    """`cls(**values)` (default `Settings`), raising SettingsError that names each bad VEIL_* variable."""
    cls = cls or Settings
    try:
        return cls(**values)
    except ValidationError as exc:
        lines = [f"VEIL_{'_'.join(str(p) for p in e['loc'][:1]).upper()}: {e['msg']}" for e in exc.errors()]
        raise SettingsError("; ".join(lines)) from None


_ENGINE_OVERRIDES: dict[str, object] = {}


def engine_settings() -> EngineSettings:
    """The engine's settings as the environment gives them now (under this process's overrides); a bad value
    raises naming the setting."""
    return load(EngineSettings, **_ENGINE_OVERRIDES)


def override_engine_settings(**values: object) -> None:
    """Engine settings for this process only, over the environment's (a photo worker process of `veil
    anonymize` runs ONNX Runtime on one thread)."""
    _ENGINE_OVERRIDES.update(values)


class Settings(EngineSettings):
    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="ignore")

    data_dir: Path = Field(
        default_factory=lambda: _default_data_dir(),
        json_schema_extra={"shown_default": "~/.local/share/veil"},
        description="Where the database, blobs and secrets live; the same for every command wherever it runs "
        "(`veil serve`, `veil keys create`, `veil doctor`; the platform's user data dir, ~/.local/share/veil on "
        "Linux). Earlier versions defaulted to `./data`: set `VEIL_DATA_DIR=./data` to keep using it.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default SQLite at <data_dir>/veil.db. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db.",
    )
    host: str = Field("127.0.0.1", description="Address `veil serve` binds.")
    port: int = Field(8000, description="Port `veil serve` binds.")
    public_url: str | None = Field(
        None,
        description="Base URL clients reach the service at (signed URLs point here); default http://<host>:<port>.",
    )
    storage_backend: Literal["local", "azure"] = Field(
        "local",
        description="`local`: blobs on disk under <data_dir>/blobs, served by Veil itself; "
        "`azure`: an Azure Storage account (or Azurite).",
    )
    storage_account: str = Field("veil", description="Storage account name (signed into every SAS).")
    storage_key: str | None = Field(
        None, description="Storage account key (base64); generated and persisted for the local store."
    )
    azure_connection_string: str | None = Field(
        None,
        description="Azure Storage connection string (azure backend; or use VEIL_AZURE_BLOB_URL + VEIL_STORAGE_KEY).",
    )
    azure_blob_url: str | None = Field(
        None,
        description="Blob endpoint of the Azure account, e.g. https://acct.blob.core.windows.net "
        "or http://127.0.0.1:10000/devstoreaccount1 (azure backend only).",
    )
    azure_api_version: str | None = Field(
        None, description="Pin the Blob REST version (Azurite lags behind the SDK, e.g. 2026-06-06)."
    )
    admin_token: str | None = Field(None, description="Bearer token for the /admin API; unset disables it.")
    admin_email: str | None = Field(
        None,
        description="With VEIL_ADMIN_PASSWORD: an admin panel account created at start-up if missing "
        "(for automated set-ups; otherwise `veil admin create EMAIL`).",
    )
    admin_password: str | None = Field(None, description="Password of VEIL_ADMIN_EMAIL's account (10+ characters).")
    admin_session_hours: float = Field(12, gt=0, description="How long an admin panel sign-in lasts.")
    admin_signin_concurrency: int = Field(
        1,
        ge=1,
        description="Admin panel sign-ins checked at once (argon2id: ~170 ms of CPU, 64 MiB each; one "
        "per source address); others wait up to 10 s, then 429.",
    )
    admin_signin_rate: str = Field(
        "10/minute",
        description="Password checks one source address may cause (moving window; `N/second`, "
        "`N/minute`, `;` between several); beyond it sign-ins from there get 429 at once.",
    )
    admin_signin_rate_overall: str = Field(
        "60/minute",
        description="Password checks for the whole server (argon2id slows every other request on a "
        "small machine); beyond it sign-ins get 429 at once.",
    )
    worker: Literal["embedded", "celery", "none"] = Field(
        "embedded",
        description="`embedded`: worker threads inside `veil serve`; `celery`: send jobs to "
        "`veil worker` processes; `none`: API only.",
    )
    worker_concurrency: int = Field(
        1,
        ge=1,
        description="Jobs processed at once by one worker process "
        "(embedded worker or `veil worker`); above 1, also the processes a long video's segments run in.",
    )
    worker_poll_seconds: float = Field(1.0, gt=0, description="How often idle embedded workers look for jobs.")
    celery_broker_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Celery broker (API and workers, VEIL_WORKER=celery)."
    )
    celery_visibility_timeout: int = Field(
        12 * 3600,
        ge=60,
        description="Seconds before the broker redelivers a message no worker acknowledged "
        "(acknowledged when the job ends); longer than any job. Dead workers' jobs are retaken through "
        "the job lease, not this.",
    )
    celery_transport_options: dict = Field(
        {}, description="Extra Celery broker transport options (JSON), over the visibility timeout."
    )
    job_lease_seconds: float = Field(
        30.0,
        ge=3,
        description="A running job's lease; its worker renews it every third of this. A job whose "
        "lease ran out (dead worker) is queued again.",
    )
    sweep_seconds: float = Field(
        5.0, gt=0, description="How often every API and worker process looks for expired leases and unsent jobs."
    )
    redispatch_seconds: float = Field(
        300.0,
        gt=0,
        description="A queued job no worker took for this long is sent to the queue again "
        "(a job whose send failed is re-sent at the next sweep).",
    )
    upload_poll_seconds: float = Field(
        2.0,
        ge=0,
        description="How often the API checks the store for committed uploads when the store "
        "sends no events (Azure without Event Grid, Azurite); 0 turns polling off.",
    )
    housekeeping_seconds: float = Field(600.0, gt=0, description="How often stale upload sessions expire.")
    log_http: bool = Field(False, description="Log every Azure SDK / HTTP client request (noisy).")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`text`: one line per record naming its job; `json`: one JSON object per line with "
        "`job_id` and `key_id` fields (service commands).",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="`veil worker`: serve this process's Prometheus metrics "
        "on this port (`veil serve` has them at /metrics); unset: none.",
    )
    metrics_token: str | None = Field(
        None, description="When set, `/metrics` answers only requests with `Authorization: Bearer <this>`."
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM, `veil serve` and `veil worker` take no more work and give the file (or "
        "segment) in progress this long to finish; what cannot finish is handed back at once (lease released, "
        "resumed by another worker) and logged.",
    )
    events_secret: str | None = Field(
        None,
        description="Secret of the Event Grid webhook (/events/blob-created?secret=...); unset disables the route.",
    )
    servicebus_connection_string: str | None = Field(
        None,
        description="Service Bus namespace receiving the storage account's Blob Created events "
        "(`veil events`, or a thread of `veil serve`).",
    )
    servicebus_queue: str = Field("veil-uploads", description="Service Bus queue of Blob Created events.")
    servicebus_in_serve: bool = Field(
        True, description="`veil serve` consumes the Service Bus queue itself when a connection string is set."
    )
    max_upload_bytes: int = Field(
        4 * GiB - 1,
        description="Largest accepted upload (413 above it): 4294967295 bytes, the vendor reference's limit.",
    )
    upload_sas_seconds: int = Field(7 * 24 * 3600, description="Lifetime of upload URLs (7 days).")
    approval_timeout_seconds: int = Field(
        7 * 24 * 3600,
        gt=0,
        description="An upload not approved within this time fails and its file is deleted (7 days).",
    )
    upload_idle_timeout_seconds: float = Field(
        30.0, gt=0, description="An upload request whose body stalls this long is answered 408 and closed."
    )
    upload_min_bytes_per_second: int = Field(
        16 * 1024, gt=0, description="Slowest accepted upload body on average (after the idle allowance)."
    )
    max_concurrent_uploads_per_key: int = Field(
        16, ge=1, description="Upload requests (Put Block / Put Blob) one API key may have in flight (503 above)."
    )
    api_rate_limit: str = Field(
        "20/second; 600/minute",
        description="Requests one API key may make to /v1 (moving windows, `N/second`, "
        "`N/minute`, `N/hour`, `;` between several); beyond them 429 with Retry-After. Uploads to the blob "
        "endpoint are bounded by max_concurrent_uploads_per_key instead.",
    )
    api_rate_limit_storage: str = Field(
        "memory://",
        description="Where the rate-limit counters live: `memory://` (one API server) or a Redis "
        "URL shared by every API server (`redis://host:6379/1`).",
    )
    max_json_body_bytes: int = Field(
        64 * 1024, gt=0, description="Largest JSON request body of the API (413 above it)."
    )
    download_sas_seconds: int = Field(24 * 3600, description="Lifetime of download links (24 h).")
    max_image_pixels: int = Field(
        120_000_000,
        ge=1,
        description="Largest image, in pixels, that is decoded (refused at pricing above; "
        "also `veil anonymize`). 120 MP takes any 35 mm or 100 MP medium-format photo; about 1.6 GB to process.",
    )
    max_video_frame_pixels: int = Field(
        8192 * 4320, ge=1, description="Largest video frame, in pixels (DCI 8K); refused at pricing above."
    )
    video_segment_seconds: float = Field(
        60.0,
        ge=0,
        description="Videos longer than 1.5 times this are split at keyframes into segments of about "
        "this many seconds, processed in parallel (`veil anonymize --jobs N`; workers with worker_concurrency > 1) "
        "and joined without re-encoding; 0 never splits.",
    )
    render_price_fraction: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="A render of a completed job (POST /v1/render_job) costs this fraction of "
        "the job's price, at least 1 credit; a job's first render after review is included in its price.",
    )
    detections_floor: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Photos: detections documents keep every candidate down to this calibrated "
        "score, so a reviewer can lower a threshold after the fact (videos: down to the threshold minus 0.2).",
    )
    video_segment_max_overhead: float = Field(
        0.25,
        gt=0,
        description="In the service, a video gets so few segments that the frames their overlaps "
        "analyse a second time stay within this fraction of its frames (longer segments than "
        "video_segment_seconds otherwise); at most 256 segments in any case.",
    )
    price_per_image: int = Field(1, ge=0, description="Credits per image.")
    price_per_video_minute: int = Field(5, ge=0, description="Credits per started minute of video.")
    price_per_archive_file: int = Field(
        0, ge=0, description="Extra credits per file inside an archive (on top of its image/video price)."
    )
    price_minimum_per_job: int = Field(1, ge=0, description="The least any job costs.")
    price_video_fps: int = Field(
        60,
        ge=1,
        description="Frames a second one video minute covers: a video is "
        "priced on the longer of its header's duration, its frames' timestamp span and its "
        "frame count at this rate (a header cannot make a long video cheap).",
    )
    callback_secret: str | None = Field(
        None,
        description="HMAC key signing callback bodies; when unset, generated once and kept in the "
        "database (the same for every process).",
    )
    callback_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Total time one callback attempt may take (connect, TLS, sending, the answer's "
        "headers), however slowly the receiver trickles.",
    )
    callback_attempts: int = Field(5, ge=1, description="Delivery attempts per callback (exponential backoff).")
    callback_workers: int = Field(
        8,
        ge=1,
        description="Threads sending callbacks (apart from the ones pricing uploads); one key uses at "
        "most a quarter of them.",
    )
    callback_queue_per_key: int = Field(
        100, ge=1, description="Deliveries one key may have waiting; more are dropped (recorded as `dropped`)."
    )
    callback_max_per_key: int = Field(
        20,
        ge=1,
        description="Callback registrations one key may have active (its key-wide ones plus those of "
        "its unfinished jobs); 422 beyond.",
    )
    callback_allowed_networks: str = Field(
        "",
        description="Comma-separated networks callbacks may reach besides public addresses, for receivers on "
        "an internal network (e.g. `10.0.0.0/8,fd00::/8`; `0.0.0.0/0,::/0` allows every address).",
    )
    client_config: Path = Field(
        default_factory=lambda: _default_client_config(),
        json_schema_extra={"shown_default": "~/.config/veil/client.toml"},
        description='`veil submit`\'s config file (TOML: `server = "..."`, `key = "..."`), read when '
        "--server or the key is not given (default `$XDG_CONFIG_HOME/veil/client.toml`).",
    )

    @field_validator("callback_allowed_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        parse_networks(value)  # a ValueError naming the bad entry stops the start-up
        return value

    @field_validator("api_rate_limit", "admin_signin_rate", "admin_signin_rate_overall")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many

        parse_many(value)  # a ValueError naming the bad limit stops the start-up
        return value

    # ----------------------------------------------------------------- derived values
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'veil.db').resolve()}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def account_key(self) -> bytes:
        return base64.b64decode(self.storage_key or self._secret("storage_key", _new_b64_key))

    @property
    def callback_networks(self) -> tuple[Network, ...]:
        """callback_allowed_networks parsed."""
        return parse_networks(self.callback_allowed_networks)

    def _secret(self, name: str, make) -> str:
        path = self.data_dir / "secrets.json"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stored = json.loads(path.read_text()) if path.exists() else {}
        if name not in stored:
            stored[name] = make()
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stored, indent=1))
            os.chmod(tmp, 0o600)
            tmp.replace(path)
        return stored[name]


def _default_data_dir() -> Path:
    import platformdirs

    return platformdirs.user_data_path("veil")


def _default_client_config() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser() / "veil" / "client.toml"


def _new_b64_key() -> str:
    return base64.b64encode(secrets.token_bytes(64)).decode()


_SECRET_WORDS = ("key", "token", "secret", "password", "connection_string")


def effective(settings: EngineSettings) -> list[tuple[str, str, str]]:
    """(variable, value, where it came from) for every setting, secrets masked: what `veil config` prints."""
    rows = []
    for name in type(settings).model_fields:
        variable = f"VEIL_{name.upper()}"
        value = getattr(settings, name)
        shown = "—" if value is None else str(value)
        if value is not None and any(word in name for word in _SECRET_WORDS):
            shown = "****"
        rows.append((variable, shown, "environment" if variable in os.environ else "default"))
    return rows
