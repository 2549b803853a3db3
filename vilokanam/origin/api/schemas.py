"""Request and response bodies of the operator API (pydantic v2).

Requests forbid unknown fields and never coerce types (``"3"`` is not a price). The same models
give the OpenAPI document its schemas, so the document cannot drift from what is checked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from vilokanam.billing.cdnlogs.formats import (
    MAX_CLIENT,
    MAX_INT,
    MAX_METHOD,
    MAX_PATH,
    MAX_QUERY,
    MAX_REQUEST_ID,
    MAX_TIME,
    MAX_USER_AGENT,
    MIN_TIME,
)
from vilokanam.config.settings import Rung
from vilokanam.store.keys import SLUG_PATTERN, SLUG_RULE

Title = Annotated[str, Field(max_length=200)]
Category = Annotated[str, Field(max_length=64)]
Tag = Annotated[str, Field(min_length=1, max_length=32)]
Tags = Annotated[list[Tag], Field(max_length=20)]
Price = Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]
"""Integer planck per second watched; strict: ``1.5``, ``"3"`` and ``true`` are refused."""
SS58_PATTERN = r"^[1-9A-HJ-NP-Za-km-z]{32,64}$"
Address = Annotated[
    str, Field(pattern=SS58_PATTERN, description="Chain address (ss58, base58 characters)")
]
Record = Annotated[
    bool,
    Field(strict=True, description="Keep this channel's streams as VODs (null: recording.enabled)"),
]
RetentionDays = Annotated[
    int,
    Field(
        ge=0,
        le=36500,
        strict=True,
        description="Delete this channel's VODs after this many days, 0 keeps them "
        "(null: recording.retention_days)",
    ),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RungIn(Rung):
    """One rung of a channel's ladder override (same rules as ``transcode.ladder``)."""


def _check_slug(value: str) -> str:
    if not SLUG_PATTERN.fullmatch(value):
        raise PydanticCustomError("slug", SLUG_RULE)
    return value


def _check_ladder(ladder: list[RungIn] | None) -> list[RungIn] | None:
    if ladder is None:
        return None
    names = [rung.name for rung in ladder]
    if len(set(names)) != len(names) or "source" in names:
        raise PydanticCustomError("ladder", "rung names must be unique and not 'source'")
    return ladder


_SLUG_SCHEMA = {"pattern": SLUG_PATTERN.pattern, "minLength": 2, "maxLength": 63}


class ChannelCreate(_Request):
    slug: str = Field(json_schema_extra=_SLUG_SCHEMA, description=SLUG_RULE)
    title: Title = ""
    category: Category = ""
    tags: Tags = Field(default_factory=list)
    price_per_second: Price = 0
    ladder: list[RungIn] | None = Field(
        default=None, description="Rungs that replace the server's ladder (null: server ladder)"
    )
    record: Record | None = None
    vod_retention_days: RetentionDays | None = None

    @field_validator("slug")
    @classmethod
    def _slug_rule(cls, value: str) -> str:
        return _check_slug(value)

    @field_validator("ladder")
    @classmethod
    def _ladder_names(cls, value: list[RungIn] | None) -> list[RungIn] | None:
        return _check_ladder(value)


_NOT_NULL = ("title", "category", "tags", "price_per_second")


def _update_schema(schema: dict[str, Any]) -> None:
    """Only ``ladder`` may be null (it clears the override); the others may only be left out."""
    for name in _NOT_NULL:
        prop = schema["properties"][name]
        options = [o for o in prop.pop("anyOf") if o.get("type") != "null"]
        prop.pop("default", None)
        prop.update(options[0])


class ChannelUpdate(_Request):
    """Fields present in the JSON change; absent ones stay. ``"ladder": null`` clears it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_update_schema)

    title: Title | None = None
    category: Category | None = None
    tags: Tags | None = None
    price_per_second: Price | None = None
    ladder: list[RungIn] | None = None
    payout_address: Address | None = Field(
        default=None, description="Where settlement pays the creator (null: keep in the ledger)"
    )
    record: Record | None = None
    vod_retention_days: RetentionDays | None = None

    @field_validator(*_NOT_NULL, mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise PydanticCustomError("null", "may not be null (leave the field out to keep it)")
        return value

    @field_validator("ladder")
    @classmethod
    def _ladder_names(cls, value: list[RungIn] | None) -> list[RungIn] | None:
        return _check_ladder(value)

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, as keyword arguments for ``Store.update_channel``."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class RungOut(BaseModel):
    name: str
    height: int
    video_bitrate: int


class ChannelOut(BaseModel):
    id: int
    slug: str
    title: str
    category: str
    tags: list[str]
    price_per_second: int
    ladder: list[RungOut] | None
    payout_address: str | None = Field(
        default=None, description="The creator's chain address that settlement pays"
    )
    record: bool | None = Field(
        default=None, description="Recording override (null: the server's recording.enabled)"
    )
    vod_retention_days: int | None = Field(
        default=None, description="VOD retention override in days, 0 keeps (null: the server's)"
    )
    key_active: bool = Field(description="False once the key was revoked (rotate to re-enable)")
    key_rotated_at: datetime
    created_at: datetime
    updated_at: datetime
    live: bool
    rtmp_url: str = Field(description="RTMP server URL to publish to (the key goes after it)")
    playback_url: str
    watch_url: str


class ChannelCreated(ChannelOut):
    stream_key: str = Field(description="Shown only in this response")


class StreamKeyOut(BaseModel):
    channel: str
    stream_key: str
    rtmp_url: str
    playback_url: str


class RenditionOut(BaseModel):
    name: str
    width: int | None
    height: int | None
    frame_rate: float | None
    bandwidth: int | None
    fps: float | None = Field(description="Frames encoded per second (None if not known yet)")
    speed: float | None = Field(description="Encoding speed relative to real time")


class LiveStreamOut(BaseModel):
    channel: str
    stream_id: int
    state: Literal["live", "reconnecting"]
    publisher: str | None = Field(description="host:port of the publisher; null while waiting")
    started_at: datetime
    uptime_seconds: float
    viewers: int
    peak_viewers: int
    ingest_bitrate: int = Field(description="Bits per second received over the last seconds")
    width: int | None
    height: int | None
    fps: float | None = Field(description="Frame rate of the source")
    segments: int
    dropped_frames: int
    renditions: list[RenditionOut]
    playback_url: str


class SessionOut(BaseModel):
    id: int
    channel: str
    state: Literal["starting", "live", "ended"]
    started_at: datetime
    live_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None = Field(description="Until now for a session not yet ended")
    segments: int
    peak_viewers: int
    publisher: str
    end_reason: str | None
    recording_location: str | None


class VodQuery(BaseModel):
    """Query parameters of ``GET /vods``."""

    channel: str | None = Field(default=None, description="Only this channel's VODs")
    limit: int = Field(default=50, ge=1, le=500)
    before: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="VODs with a smaller id"
    )


class VodOut(BaseModel):
    id: int = Field(description="The stream session id; the VOD is served at /vod/{id}/")
    channel: str
    title: str = Field(description="The channel's title")
    started_at: datetime
    ended_at: datetime | None
    duration: float = Field(description="Seconds of media")
    segments: int = Field(description="Media segments per rendition")
    size_bytes: int = Field(description="Bytes of every rendition's segments")
    renditions: list[str]
    storage: str = Field(description="Where its media is: local or s3")
    created_at: datetime
    expires_at: datetime | None = Field(description="When retention deletes it (null: kept)")
    url: str = Field(description="The VOD's master playlist")
    thumbnail_url: str | None = Field(description="Its poster JPEG (null: none was made)")


class StatusOut(BaseModel):
    version: str
    uptime_seconds: float
    database: Literal["sqlite", "postgresql"]
    channels: int
    sessions: int
    live_streams: int
    publishers: int
    viewers: int
    rtmp_url: str
    http_url: str


class KickOut(BaseModel):
    channel: str
    kicked: bool


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the bad field, e.g. ladder.0.height")
    message: str


class ErrorOut(BaseModel):
    error: str = Field(description="Machine-readable code: not_found, conflict, validation_error…")
    detail: Any = Field(description="A message, or for validation_error a list of FieldError")


class HistoryQuery(BaseModel):
    """Query parameters of ``GET /history``."""

    channel: str | None = Field(default=None, description="Only this channel's sessions")
    limit: int = Field(default=50, ge=1, le=500)
    before: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="Sessions with a smaller id"
    )


class RotateQuery(BaseModel):
    """Query parameters of ``POST /channels/{slug}/rotate-key``."""

    kick: bool = Field(default=False, description="Also disconnect the current publisher")


# -- billing ---------------------------------------------------------------------------------
Amount = Annotated[int, Field(gt=0, le=2**63 - 1, strict=True)]
"""A positive whole number of planck; strict: ``1.5``, ``"3"`` and ``true`` are refused."""


class ViewerCreate(_Request):
    name: str = Field(json_schema_extra=_SLUG_SCHEMA, description=SLUG_RULE)
    address: Address | None = Field(
        default=None, description="The address the viewer deposits from (credited on chain)"
    )

    @field_validator("name")
    @classmethod
    def _name_rule(cls, value: str) -> str:
        return _check_slug(value)


class ViewerOut(BaseModel):
    id: int
    name: str
    address: str | None
    created_at: datetime


class ViewerCreated(ViewerOut):
    viewer_key: str = Field(description="The viewer's API key (vk_…), shown only in this response")


class BalanceOut(BaseModel):
    viewer_id: int
    viewer: str | None = None
    balance: int = Field(description="Planck available, after what was watched and not flushed")
    pending_spend: int = Field(description="Planck watched but not yet posted to the ledger")
    seconds_watched: int
    spent: int = Field(description="Planck paid for watching, in total")
    sessions: list[dict[str, Any]]


class DepositIn(_Request):
    amount: Amount
    reference: str | None = Field(
        default=None,
        min_length=1,
        max_length=120,
        description="Idempotency key: a second deposit with the same reference is not credited",
    )


class DepositOut(BaseModel):
    viewer: str
    amount: int
    credited: bool = Field(description="False when this reference was already deposited")
    balance: int


class PlaybackOut(BaseModel):
    url: str = Field(description="Signed master playlist URL: works in any HLS player")
    token: str
    expires_at: datetime


class EarningsQuery(BaseModel):
    """Query parameters of ``GET /channels/{slug}/earnings``."""

    since: datetime | None = Field(default=None, description="Only ticks posted from then (ISO)")


class EarningsOut(BaseModel):
    channel: str
    channel_id: int
    since: datetime | None
    seconds: int
    gross: int = Field(description="Planck viewers paid")
    fees: int = Field(description="The platform's fee out of gross")
    net: int = Field(description="gross - fees: the creator's earnings")
    settled: int
    unsettled: int


class LedgerQuery(BaseModel):
    """Query parameters of ``GET /ledger``."""

    stream: int | None = Field(default=None, ge=1, le=2**63 - 1, description="Stream session id")
    viewer: str | None = Field(default=None, description="Viewer name")
    channel: str | None = Field(default=None, description="Channel slug")
    limit: int = Field(default=100, ge=1, le=1000)


class PostingOut(BaseModel):
    account: str
    amount: int


class LedgerEntryOut(BaseModel):
    id: int
    key: str
    kind: Literal["deposit", "watch", "payout"]
    viewer_id: int | None
    channel_id: int | None
    session_id: int | None
    seconds: int
    amount: int
    batch_id: str | None
    created_at: datetime
    postings: list[PostingOut]


class MeOut(BalanceOut):
    """The viewer's own live counter."""


# -- CDN access logs (``vilokanam billing ingest-logs``) -------------------------------------
class CdnFetchIn(_Request):
    """One request parsed from a CDN access log line. A batch's fetches are validated one by
    one: an invalid one is skipped (counted in ``summary.skipped`` as ``invalid {field}``)."""

    at: float = Field(
        ge=MIN_TIME,
        lt=MAX_TIME,
        allow_inf_nan=False,
        description="Unix seconds (UTC) of the request, from the log line (lines older than 30 "
        "days or more than 5 minutes ahead are skipped as 'too old' / 'in the future')",
    )
    method: str = Field(max_length=MAX_METHOD)
    path: str = Field(max_length=MAX_PATH, description="URL path, percent-decoded")
    query: str = Field(default="", max_length=MAX_QUERY, description="Raw query string (token)")
    status: int = Field(ge=0, le=999)
    bytes: int = Field(default=0, ge=0, le=MAX_INT)
    client: str = Field(default="", max_length=MAX_CLIENT)
    user_agent: str = Field(default="", max_length=MAX_USER_AGENT)
    request_id: str = Field(default="", max_length=MAX_REQUEST_ID)


CdnSource = Annotated[
    str,
    Field(
        min_length=3,
        max_length=255,
        description="The log file's identity: a digest of its first line, ':', its name",
    ),
]
MAX_CDN_FETCHES = 10_000
"""Fetches per batch at most (more: 422; a body over 1 MiB: 413)."""
CdnCount = Annotated[int, Field(ge=0, le=MAX_INT)]


class CdnBatchIn(_Request):
    """Consecutive complete lines of one log file (bytes ``start`` to ``end``, uncompressed)
    with the media requests among them; the file's cursor moves to ``end`` once they are fed.
    One invalid fetch never refuses the batch (it would stall the file): it is skipped."""

    source: CdnSource
    start: CdnCount
    end: CdnCount
    lines: CdnCount
    bad_lines: CdnCount = Field(default=0, description="Lines not in the log's format")
    other: CdnCount = Field(default=0, description="Requests of anything but media")
    fetches: list[CdnFetchIn] = Field(default_factory=list, max_length=MAX_CDN_FETCHES)
    _invalid: dict[str, int] = PrivateAttr(default_factory=dict)
    """Fetches skipped as invalid, by reason (``invalid {field}``)."""

    @model_validator(mode="wrap")
    @classmethod
    def _skip_invalid_fetches(
        cls, data: Any, handler: ModelWrapValidatorHandler[CdnBatchIn]
    ) -> CdnBatchIn:
        invalid: dict[str, int] = {}
        if isinstance(data, dict):
            fetches = data.get("fetches")
            if isinstance(fetches, list) and len(fetches) <= MAX_CDN_FETCHES:
                kept = []
                for item in fetches:
                    try:
                        kept.append(CdnFetchIn.model_validate(item))
                    except ValidationError as exc:
                        errors = exc.errors()
                        where = errors[0]["loc"][0] if errors and errors[0]["loc"] else "fetch"
                        reason = f"invalid {where}"
                        invalid[reason] = invalid.get(reason, 0) + 1
                data = {**data, "fetches": kept}
        batch = handler(data)
        batch._invalid = invalid
        return batch

    def invalid_fetches(self) -> dict[str, int]:
        """The fetches skipped as invalid, by reason."""
        return dict(self._invalid)


class CdnCursorQuery(BaseModel):
    """Query parameters of ``GET /billing/cdn-cursor``."""

    source: CdnSource


class CdnCursorOut(BaseModel):
    source: str
    offset: int = Field(description="Bytes of the file read and fed (at a line end)")
    lines: int
    fetches: int = Field(description="Segment requests found so far")
    renamed_from: str | None = Field(
        default=None, description="The cursor of the same file under an older name it resumes"
    )


class CdnSummaryOut(BaseModel):
    lines: int
    bad_lines: int
    other: int
    segments: int
    playlists: int
    billed: int = Field(description="Segment fetches of priced channels fed to billing")
    ticks: int = Field(description="Whole seconds newly due from them (0 when read before)")
    free: int = Field(description="Segment fetches of free channels (viewer counts only)")
    skipped: dict[str, int] = Field(description="Media requests not billed, by reason")


class CdnBatchOut(BaseModel):
    cursor: CdnCursorOut
    summary: CdnSummaryOut
