"""``vilokanam vod …``: recorded streams (VODs): list, show, delete."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vilokanam.cli import output
from vilokanam.cli.options import ConfigOption, JsonOption, ServerOption, TokenOption, backend
from vilokanam.cli.runner import run

vod_app = typer.Typer(help="Recorded streams (VODs): list, show, delete.")

VodIdArgument = Annotated[int, typer.Argument(help="VOD id (its stream session id)", min=1)]

VOD_COLUMNS: list[output.Column] = [
    ("id", lambda v: v["id"]),
    ("channel", lambda v: v["channel"]),
    ("started", lambda v: output.when(v["started_at"])),
    ("duration", lambda v: output.duration(v["duration"])),
    ("size", lambda v: size(v["size_bytes"])),
    ("renditions", lambda v: v["renditions"]),
    ("expires", lambda v: output.when(v["expires_at"]) if v["expires_at"] else "never"),
    ("URL", lambda v: v["url"]),
]


def size(count: int) -> str:
    """Bytes as people read them: ``512 B``, ``3.4 MB``, ``1.2 GB``."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _show_vod(vod: dict[str, Any], heading: str | None = None) -> None:
    output.record(
        [
            ("id", vod["id"]),
            ("channel", vod["channel"]),
            ("title", vod["title"]),
            ("started", output.when(vod["started_at"])),
            ("ended", output.when(vod["ended_at"])),
            ("duration", output.duration(vod["duration"])),
            ("segments", vod["segments"]),
            ("size", size(vod["size_bytes"])),
            ("renditions", vod["renditions"]),
            ("storage", vod["storage"]),
            ("recorded", output.when(vod["created_at"])),
            ("expires", output.when(vod["expires_at"]) if vod["expires_at"] else "never"),
            ("playback URL", vod["url"]),
            ("thumbnail", vod["thumbnail_url"]),
        ],
        heading,
    )


@vod_app.command("list")
def list_(
    channel: Annotated[str | None, typer.Option("--channel", help="Only this channel.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-500).")] = 50,
    before: Annotated[
        int | None, typer.Option("--before", help="VODs older than this id (paging).")
    ] = None,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recorded streams, newest first: duration, size, expiry, playback URL."""

    def act() -> None:
        vods = backend(config, server, token).list_vods(channel, limit, before)
        output.show(
            vods,
            as_json,
            lambda rows: output.table(
                rows,
                VOD_COLUMNS,
                "No VODs yet (recording.enabled, or `channel update SLUG --record`).",
            ),
        )

    run(act)


@vod_app.command("show")
def show(
    vod_id: VodIdArgument,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """One VOD."""
    run(lambda: output.show(backend(config, server, token).get_vod(vod_id), as_json, _show_vod))


@vod_app.command("delete")
def delete(
    vod_id: VodIdArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a VOD's media and its entry (the stream stays in the history)."""
    if not yes:
        typer.confirm(f"Delete VOD {vod_id} and its media?", abort=True)

    def act() -> None:
        vod = backend(config, server, token).delete_vod(vod_id)
        output.show(vod, as_json, lambda v: output.console.print(f"Deleted VOD {v['id']}."))

    run(act)
