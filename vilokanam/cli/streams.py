"""``vilokanam stream …`` (live streams) and ``vilokanam history …`` (past sessions)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vilokanam.cli import output
from vilokanam.cli.options import ConfigOption, JsonOption, ServerOption, TokenOption, backend
from vilokanam.cli.runner import run

stream_app = typer.Typer(help="Live streams: viewers, bitrate, renditions; kick a publisher.")
history_app = typer.Typer(help="Past and current stream sessions.")

LIVE_COLUMNS: list[output.Column] = [
    ("channel", lambda s: s["channel"]),
    ("id", lambda s: s["stream_id"]),
    ("state", lambda s: s["state"]),
    ("viewers", lambda s: s["viewers"]),
    ("bitrate", lambda s: output.bitrate(s["ingest_bitrate"])),
    ("resolution", lambda s: _resolution(s)),
    ("fps", lambda s: s["fps"]),
    ("uptime", lambda s: output.duration(s["uptime_seconds"])),
    ("publisher", lambda s: s["publisher"]),
]

SESSION_COLUMNS: list[output.Column] = [
    ("id", lambda s: s["id"]),
    ("channel", lambda s: s["channel"]),
    ("state", lambda s: s["state"]),
    ("started", lambda s: output.when(s["started_at"])),
    ("ended", lambda s: output.when(s["ended_at"])),
    ("duration", lambda s: output.duration(s["duration_seconds"])),
    ("peak viewers", lambda s: s["peak_viewers"]),
    ("segments", lambda s: s["segments"]),
    ("end reason", lambda s: s["end_reason"]),
]


def _resolution(stream: dict[str, Any]) -> str:
    if stream.get("width") and stream.get("height"):
        return f"{stream['width']}x{stream['height']}"
    return "-"


def _show_stream(stream: dict[str, Any]) -> None:
    output.record(
        [
            ("channel", stream["channel"]),
            ("stream id", stream["stream_id"]),
            ("state", stream["state"]),
            ("publisher", stream["publisher"]),
            ("started", output.when(stream["started_at"])),
            ("uptime", output.duration(stream["uptime_seconds"])),
            ("viewers (peak)", f"{stream['viewers']} ({stream['peak_viewers']})"),
            ("ingest bitrate", output.bitrate(stream["ingest_bitrate"])),
            ("source", f"{_resolution(stream)} @ {stream['fps'] or '-'} fps"),
            ("segments", stream["segments"]),
            ("dropped frames", stream["dropped_frames"]),
            ("playback URL", stream["playback_url"]),
        ]
    )
    output.table(
        stream["renditions"],
        [
            ("rendition", lambda r: r["name"]),
            ("size", lambda r: f"{r['width']}x{r['height']}" if r.get("width") else "audio"),
            ("bandwidth", lambda r: output.bitrate(r["bandwidth"])),
            ("fps", lambda r: r["fps"]),
            ("speed", lambda r: f"{r['speed']:.2f}x" if r.get("speed") is not None else "-"),
        ],
        "No renditions yet (the first segment is being cut).",
    )


@stream_app.command("list")
def list_(
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Live streams with viewers, bitrate, resolution and uptime."""

    def act() -> None:
        streams = backend(config, server, token).live_streams()
        output.show(
            streams, as_json, lambda rows: output.table(rows, LIVE_COLUMNS, "Nothing is live.")
        )

    run(act)


@stream_app.command("show")
def show(
    slug: str,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One live stream with its renditions."""
    run(
        lambda: output.show(backend(config, server, token).live_stream(slug), as_json, _show_stream)
    )


@stream_app.command("kick")
def kick(
    slug: str,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Disconnect a channel's publisher (it may reconnect; `channel revoke-key` stops it)."""

    def act() -> None:
        result = backend(config, server, token).kick(slug)
        output.show(
            result,
            as_json,
            lambda r: output.console.print(
                f"Publisher of {r['channel']} disconnected."
                if r["kicked"]
                else f"{r['channel']} has no publisher connected."
            ),
        )

    run(act)


@history_app.command("list")
def history(
    channel: Annotated[str | None, typer.Option("--channel", help="Only this channel.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-500).")] = 50,
    before: Annotated[
        int | None, typer.Option("--before", help="Sessions older than this id (paging).")
    ] = None,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stream sessions, newest first: start, end, duration, peak viewers."""

    def act() -> None:
        sessions = backend(config, server, token).history(channel, limit, before)
        output.show(
            sessions,
            as_json,
            lambda rows: output.table(rows, SESSION_COLUMNS, "No stream sessions yet."),
        )

    run(act)


@history_app.command("show")
def session(
    session_id: Annotated[int, typer.Argument(help="Stream session id")],
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One stream session."""

    def render(s: dict[str, Any]) -> None:
        output.record(
            [
                ("id", s["id"]),
                ("channel", s["channel"]),
                ("state", s["state"]),
                ("publisher", s["publisher"]),
                ("started", output.when(s["started_at"])),
                ("live from", output.when(s["live_at"])),
                ("ended", output.when(s["ended_at"])),
                ("duration", output.duration(s["duration_seconds"])),
                ("segments", s["segments"]),
                ("peak viewers", s["peak_viewers"]),
                ("end reason", s["end_reason"]),
                ("recording", s["recording_location"] or "not recorded"),
            ]
        )

    run(lambda: output.show(backend(config, server, token).session(session_id), as_json, render))
