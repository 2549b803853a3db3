"""Typed settings: embedded defaults, overridden by a TOML file, overridden by env vars.

Every setting is read here and nowhere else. A bad value fails at start with a
:class:`ConfigError` that names the key (``rtmp.port``), the value, and what is allowed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "VILOKANAM_"

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0)]


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatabaseSettings(_Section):
    url: str = ""
    """SQLAlchemy URL; empty means SQLite at ``{data_dir}/vilokanam.db``."""


class RtmpSettings(_Section):
    host: str = "0.0.0.0"
    port: Port = 1935
    app: str = "live"
    chunk_size: Annotated[int, Field(ge=128, le=65536)] = 4096
    handshake_timeout: Seconds = 10.0
    idle_timeout: Seconds = 30.0
    reconnect_window: Annotated[float, Field(ge=0)] = 20.0


class HttpSettings(_Section):
    host: str = "0.0.0.0"
    port: Port = 8080
    cors_origin: str = "*"
    viewer_timeout: Seconds = 30.0
    """A viewer counts as watching while it fetched a playlist or segment this recently."""
    file_cache_mb: Annotated[int, Field(ge=0, le=65536)] = 256
    """Media files kept in memory for serving (segments never change), MiB; 0: off."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or networks of caches in front of this origin (nginx, a CDN's edges) whose
    ``X-Forwarded-For`` names the real client, for viewer counts."""

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)"
                ) from None
        return value


def _http_url(value: str, *, allow_empty: bool) -> str:
    if not value and allow_empty:
        return value
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


class ApiSettings(_Section):
    enabled: bool = True
    token: str = ""
    """Operator bearer token for ``/api/v1``. Empty: generated on first start and kept in
    ``{data_dir}/api-token`` (mode 0600)."""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("must be at least 16 characters (or empty to generate one)")
        return value


WEBHOOK_EVENTS = (
    "stream.started",
    "stream.ended",
    "stream.publish_rejected",
    "channel.key_rotated",
)
WebhookEvent = Literal[
    "stream.started", "stream.ended", "stream.publish_rejected", "channel.key_rotated"
]


class WebhookEndpoint(_Section):
    url: str
    events: list[WebhookEvent] = Field(default_factory=lambda: list(WEBHOOK_EVENTS))
    secret: str = ""
    """Signing secret for this endpoint; empty: ``webhooks.secret``."""

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value, allow_empty=False)


class WebhookSettings(_Section):
    secret: str = ""
    """HMAC-SHA256 signing secret shared with the receivers (env: VILOKANAM_WEBHOOKS_SECRET)."""
    endpoints: list[WebhookEndpoint] = Field(default_factory=list)
    timeout: Seconds = 5.0
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 10
    backoff_initial: Seconds = 1.0
    backoff_max: Seconds = 300.0

    @model_validator(mode="after")
    def _endpoints_are_distinct_and_signed(self) -> WebhookSettings:
        seen: set[str] = set()
        for endpoint in self.endpoints:
            if endpoint.url in seen:
                # Deliveries are keyed by URL alone, so a second entry could not have its own
                # secret or events.
                raise ValueError(
                    f"webhooks.endpoints lists {endpoint.url} more than once: give each URL "
                    "once, with all the events it wants"
                )
            seen.add(endpoint.url)
            if not (endpoint.secret or self.secret):
                raise ValueError(
                    f"endpoint {endpoint.url} has no signing secret: set webhooks.secret "
                    "(or VILOKANAM_WEBHOOKS_SECRET) or the endpoint's secret"
                )
        return self


class PublishHookSettings(_Section):
    url: str = ""
    """POSTed before every publish; a 2xx answer allows it, anything else refuses. Empty: off."""
    timeout: Seconds = 3.0

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value, allow_empty=True)


class HlsSettings(_Section):
    segment_format: Literal["fmp4", "mpegts"] = "fmp4"
    segment_duration: Annotated[float, Field(ge=0.5, le=30)] = 2.0
    window: Annotated[int, Field(ge=2, le=100)] = 6
    delete_margin: Annotated[int, Field(ge=0, le=100)] = 4
    keep_ended: Annotated[int, Field(ge=0, le=30 * 86400)] = 300
    """Seconds an ended stream that is not recorded keeps its last window (0: kept)."""


class Rung(_Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    height: Annotated[int, Field(ge=64, le=4320)]
    video_bitrate: Annotated[int, Field(ge=50_000, le=100_000_000)]

    @field_validator("height")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (H.264 4:2:0 needs even dimensions)")
        return value


def _default_ladder() -> list[Rung]:
    return [
        Rung(name="720p", height=720, video_bitrate=3_000_000),
        Rung(name="480p", height=480, video_bitrate=1_400_000),
        Rung(name="360p", height=360, video_bitrate=800_000),
    ]


class TranscodeSettings(_Section):
    source_rendition: bool = True
    ladder: list[Rung] = Field(default_factory=_default_ladder)
    x264_preset: Literal[
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"
    ] = "veryfast"
    x264_tune: Literal["zerolatency", "film", "animation", "none"] = "zerolatency"
    audio_bitrate: Annotated[int, Field(ge=32_000, le=512_000)] = 128_000
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 3

    @field_validator("ladder")
    @classmethod
    def _unique_names(cls, ladder: list[Rung]) -> list[Rung]:
        names = [rung.name for rung in ladder]
        if len(set(names)) != len(names) or "source" in names:
            raise ValueError("rung names must be unique and not 'source'")
        return ladder


class BillingSettings(_Section):
    token_secret: str = ""
    """HMAC key for playback tokens (env: VILOKANAM_BILLING_TOKEN_SECRET). Empty: generated on
    first start into ``{data_dir}/billing-secret`` (mode 0600)."""
    token_ttl: Annotated[int, Field(ge=60, le=7 * 86400)] = 6 * 3600
    """Seconds a playback token stays valid."""
    free_preview: Annotated[int, Field(ge=0, le=3600)] = 0
    """Seconds of each stream a viewer watches before billing starts."""
    platform_fee_bps: Annotated[int, Field(ge=0, le=10_000)] = 1000
    """Platform fee in basis points of each tick (1000 = 10 %); the rest goes to the creator."""
    flush_interval: Annotated[float, Field(ge=0.1, le=10)] = 1.0
    """Seconds between flushes of watched ticks from memory to the ledger."""
    settlement: Literal["local", "substrate"] = "local"
    """``local``: the ledger is the truth. ``substrate``: payouts are settled on chain."""
    settle_interval: Annotated[float, Field(ge=1, le=86400)] = 60.0
    """Seconds between settlement batches (``vilokanam billing settle`` forces one)."""


class ChainSettings(_Section):
    url: str = ""
    """Substrate node WebSocket URL (ws:// or wss://), for ``billing.settlement = "substrate"``."""
    ss58_format: Annotated[int, Field(ge=0, le=16383)] = 42
    escrow_seed_file: str = ""
    """File holding the escrow account's seed (mnemonic or ``//Dev`` URI); else the env var
    VILOKANAM_ESCROW_SEED. Never in the TOML file."""
    poll_interval: Annotated[float, Field(ge=0.1, le=600)] = 2.0
    """Seconds between looks at new finalized blocks (deposit watcher, settlement lookups)."""
    timeout: Annotated[float, Field(ge=1, le=600)] = 30.0
    """Seconds to wait for a submitted batch to be included before looking it up."""

    @field_validator("url")
    @classmethod
    def _ws(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("ws", "wss"):
            raise ValueError("must be a ws:// or wss:// URL")
        return value


class S3Settings(_Section):
    """Object storage for ``storage = "s3"``: AWS S3 or any S3-compatible store (MinIO, R2,
    Wasabi). Credentials come from the standard AWS chain (env, ~/.aws, instance role)."""

    bucket: str = ""
    prefix: str = ""
    """Key prefix inside the bucket (``"vilokanam/"``); keys are ``{prefix}streams/{id}/…``."""
    region: str = ""
    endpoint_url: str = ""
    """Empty: AWS. Else the S3-compatible endpoint (``http://127.0.0.1:9000`` for MinIO)."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    public_base_url: str = ""
    """The CDN (or public bucket URL) in front of the bucket; master playlists point at it."""
    upload_concurrency: Annotated[int, Field(ge=1, le=64)] = 8
    retry_initial: Annotated[float, Field(ge=0.05, le=60)] = 0.5
    retry_max: Annotated[float, Field(ge=0.1, le=600)] = 10.0
    timeout: Annotated[float, Field(ge=1, le=300)] = 10.0
    """Connect and read timeout of one S3 request (seconds)."""
    spool_max_mb: Annotated[int, Field(ge=16, le=1_048_576)] = 2048
    """Segments waiting for S3 (while it is down) kept on local disk, at most this many MiB;
    past it the oldest waiting segments are dropped (logged, counted in /metrics)."""
    shutdown_grace: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """At shutdown, wait this long for uploads still queued."""

    @field_validator("endpoint_url", "public_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value, allow_empty=True).rstrip("/")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        return f"{value}/" if value else ""


class RecordingSettings(_Section):
    enabled: bool = False
    """Keep every segment of a stream and turn it into a VOD at ``/vod/{stream_id}/`` when it
    ends (a channel's ``record`` overrides this)."""
    retention_days: Annotated[int, Field(ge=0, le=36500)] = 0
    """Delete VODs older than this many days (0: keep; a channel's ``vod_retention_days``
    overrides this)."""
    thumbnail_interval: Annotated[float, Field(ge=5, le=3600)] = 30.0
    """Seconds between poster thumbnails (``/live/{slug}/thumbnail.jpg``) while live."""
    thumbnail_width: Annotated[int, Field(ge=64, le=3840)] = 640


class Settings(_Section):
    data_dir: Path = Path("./vilokanam-data")
    public_host: str = ""
    """Host name put in printed URLs; empty means this machine's address as seen by clients."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    rtmp: RtmpSettings = Field(default_factory=RtmpSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    hls: HlsSettings = Field(default_factory=HlsSettings)
    transcode: TranscodeSettings = Field(default_factory=TranscodeSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    publish_hook: PublishHookSettings = Field(default_factory=PublishHookSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    chain: ChainSettings = Field(default_factory=ChainSettings)
    storage: Literal["local", "s3"] = "local"
    """Where segments and playlists go: the local media folder, or S3 (see ``[s3]``)."""
    s3: S3Settings = Field(default_factory=S3Settings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)

    @model_validator(mode="after")
    def _ports_differ(self) -> Settings:
        if self.rtmp.port == self.http.port and self.rtmp.host == self.http.host:
            raise ValueError("rtmp.port and http.port must differ")
        if self.billing.settlement == "substrate" and not self.chain.url:
            raise ValueError('billing.settlement = "substrate" needs chain.url (ws://…)')
        if self.storage == "s3" and not self.s3.bucket:
            raise ValueError('storage = "s3" needs s3.bucket (and s3.endpoint_url for non-AWS)')
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'vilokanam.db'}"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"


_SECTIONS = {
    name
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)
}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``VILOKANAM_RTMP_PORT=1936`` into ``{"rtmp": {"port": "1936"}}``.

    Values that look like JSON lists/objects (the ladder) are parsed as JSON.
    """
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name.startswith(ENV_PREFIX + "REQUIRE"):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name}: not valid JSON ({exc})") from exc
        section = max((s for s in _SECTIONS if key.startswith(s + "_")), key=len, default="")
        rest = key[len(section) + 1 :]
        if section and rest:
            overrides.setdefault(section, {})[rest] = value
        elif key in Settings.model_fields:
            overrides[key] = value
        # Other VILOKANAM_* variables (test switches, secrets) belong to other readers.
    return overrides


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown setting (see docs/config.md for the allowed keys)"
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{key}: {message}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    path: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load defaults ← TOML file ← ``VILOKANAM_*`` env vars, validated."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
