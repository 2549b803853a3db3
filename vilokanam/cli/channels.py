"""``vilokanam channel …``: create, list, show, update, delete, rotate and revoke keys."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from vilokanam.cli import output
from vilokanam.cli.options import ConfigOption, JsonOption, ServerOption, TokenOption, backend
from vilokanam.cli.runner import run

channel_app = typer.Typer(help="Create and manage channels and their stream keys.")

SlugArgument = Annotated[str, typer.Argument(help="Channel URL name: a-z, 0-9, '-'")]
TitleOption = Annotated[str | None, typer.Option("--title", "-t", help="Display title.")]
CategoryOption = Annotated[str | None, typer.Option("--category", help="Category, e.g. music.")]
TagOption = Annotated[
    list[str] | None, typer.Option("--tag", help="A tag; repeat for several.", show_default=False)
]
PriceOption = Annotated[
    int | None,
    typer.Option("--price", help="Price per second watched, in planck (integer; 0 = free)."),
]
RecordOption = Annotated[
    bool | None,
    typer.Option(
        "--record/--no-record",
        help="Keep this channel's streams as VODs, or not (default: recording.enabled).",
        show_default=False,
    ),
]
RetentionOption = Annotated[
    int | None,
    typer.Option(
        "--vod-retention-days",
        help="Delete this channel's VODs after N days; 0 keeps them.",
        show_default=False,
    ),
]
LadderOption = Annotated[
    str | None,
    typer.Option(
        "--ladder",
        help='Ladder override as JSON: [{"name":"540p","height":540,"video_bitrate":2000000}]',
    ),
]

CHANNEL_COLUMNS: list[output.Column] = [
    ("slug", lambda c: c["slug"]),
    ("title", lambda c: c["title"]),
    ("category", lambda c: c["category"] or "-"),
    ("price/s", lambda c: c["price_per_second"]),
    ("key", lambda c: "active" if c["key_active"] else "revoked"),
    ("live", lambda c: c["live"]),
    ("playback URL", lambda c: c["playback_url"]),
]


def _ladder(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="--ladder") from None


def _show_channel(channel: dict[str, Any], heading: str | None = None) -> None:
    ladder = channel.get("ladder")
    rungs = ", ".join(f"{r['name']} ({r['video_bitrate'] // 1000} kb/s)" for r in ladder or [])
    output.record(
        [
            ("slug", channel["slug"]),
            ("title", channel["title"]),
            ("category", channel["category"] or "-"),
            ("tags", channel["tags"]),
            ("price per second", f"{channel['price_per_second']} planck"),
            ("payout address", channel.get("payout_address") or "-"),
            ("record", _override(channel.get("record"))),
            ("VOD retention", _retention(channel.get("vod_retention_days"))),
            ("ladder", rungs or "server default"),
            ("stream key", "active" if channel["key_active"] else "revoked"),
            ("key rotated", output.when(channel["key_rotated_at"])),
            ("created", output.when(channel["created_at"])),
            ("live", channel["live"]),
            ("OBS server", channel["rtmp_url"]),
            ("playback URL", channel["playback_url"]),
            ("watch page", channel["watch_url"]),
        ],
        heading,
    )


def _override(value: bool | None) -> str:
    return "server default" if value is None else ("yes" if value else "no")


def _retention(days: int | None) -> str:
    if days is None:
        return "server default"
    return "kept" if days == 0 else f"{days} days"


def _show_key(info: dict[str, Any], heading: str) -> None:
    output.record(
        [
            ("OBS server", info["rtmp_url"]),
            ("Stream key", info["stream_key"]),
            ("Watch", info["playback_url"]),
        ],
        heading,
    )


@channel_app.command("create")
def create(
    slug: SlugArgument,
    title: TitleOption = None,
    category: CategoryOption = None,
    tag: TagOption = None,
    price: PriceOption = None,
    ladder: LadderOption = None,
    record: RecordOption = None,
    vod_retention_days: RetentionOption = None,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a channel and print its stream key (shown only now)."""
    body: dict[str, Any] = {"slug": slug}
    for name, value in [
        ("title", title),
        ("category", category),
        ("tags", tag),
        ("price_per_second", price),
        ("ladder", _ladder(ladder)),
        ("record", record),
        ("vod_retention_days", vod_retention_days),
    ]:
        if value is not None:
            body[name] = value

    def act() -> None:
        created = backend(config, server, token).create_channel(body)
        output.show(
            created,
            as_json,
            lambda c: _show_key(c, "Channel created. The stream key is shown only once:"),
        )

    run(act)


@channel_app.command("list")
def list_(
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List channels."""

    def act() -> None:
        channels = backend(config, server, token).list_channels()
        output.show(
            channels,
            as_json,
            lambda rows: output.table(
                rows, CHANNEL_COLUMNS, "No channels yet: `vilokanam channel create SLUG`."
            ),
        )

    run(act)


@channel_app.command("show")
def show(
    slug: SlugArgument,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one channel (never its key)."""
    run(
        lambda: output.show(
            backend(config, server, token).get_channel(slug), as_json, _show_channel
        )
    )


@channel_app.command("update")
def update(
    slug: SlugArgument,
    title: TitleOption = None,
    category: CategoryOption = None,
    tag: TagOption = None,
    clear_tags: Annotated[bool, typer.Option("--clear-tags", help="Remove all tags.")] = False,
    price: PriceOption = None,
    ladder: LadderOption = None,
    clear_ladder: Annotated[
        bool, typer.Option("--clear-ladder", help="Use the server's ladder again.")
    ] = False,
    payout_address: Annotated[
        str | None,
        typer.Option("--payout-address", help="Creator's ss58 address that settlement pays."),
    ] = None,
    record: RecordOption = None,
    record_default: Annotated[
        bool, typer.Option("--record-default", help="Follow the server's recording.enabled again.")
    ] = False,
    vod_retention_days: RetentionOption = None,
    vod_retention_default: Annotated[
        bool,
        typer.Option(
            "--vod-retention-default", help="Follow the server's recording.retention_days again."
        ),
    ] = False,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Change a channel's title, category, tags, price, ladder, payout address or recording."""
    changes: dict[str, Any] = {}
    if title is not None:
        changes["title"] = title
    if category is not None:
        changes["category"] = category
    if tag or clear_tags:
        changes["tags"] = [] if clear_tags else tag
    if price is not None:
        changes["price_per_second"] = price
    if ladder is not None or clear_ladder:
        changes["ladder"] = None if clear_ladder else _ladder(ladder)
    if payout_address is not None:
        changes["payout_address"] = payout_address or None
    if record is not None and record_default:
        raise typer.BadParameter("give --record/--no-record or --record-default, not both")
    if record is not None or record_default:
        changes["record"] = record
    if vod_retention_days is not None and vod_retention_default:
        raise typer.BadParameter("give --vod-retention-days or --vod-retention-default, not both")
    if vod_retention_days is not None or vod_retention_default:
        changes["vod_retention_days"] = vod_retention_days
    if not changes:
        raise typer.BadParameter(
            "nothing to change: give --title, --category, --tag, --price, --ladder, "
            "--payout-address, --record/--no-record/--record-default or --vod-retention-days"
        )

    def act() -> None:
        channel = backend(config, server, token).update_channel(slug, changes)
        output.show(channel, as_json, lambda c: _show_channel(c, "Channel updated:"))

    run(act)


@channel_app.command("delete")
def delete(
    slug: SlugArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete a channel and its history; a live stream on it is stopped first."""
    if not yes:
        typer.confirm(f"Delete channel {slug!r} and its stream history?", abort=True)

    def act() -> None:
        channel = backend(config, server, token).delete_channel(slug)
        output.show(channel, as_json, lambda c: output.console.print(f"Deleted {c['slug']}."))

    run(act)


@channel_app.command("rotate-key")
def rotate_key(
    slug: SlugArgument,
    kick: Annotated[
        bool, typer.Option("--kick", help="Also disconnect the current publisher.")
    ] = False,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give a channel a new stream key; the old key stops working for new publishes."""

    def act() -> None:
        info = backend(config, server, token).rotate_key(slug, kick)
        output.show(
            info,
            as_json,
            lambda i: _show_key(
                i, "New stream key (the old one no longer works; shown only once):"
            ),
        )

    run(act)


@channel_app.command("revoke-key")
def revoke_key(
    slug: SlugArgument,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Revoke a channel's stream key (a leaked key): publishing stops until `rotate-key`."""

    def act() -> None:
        channel = backend(config, server, token).revoke_key(slug)
        output.show(
            channel,
            as_json,
            lambda c: output.console.print(
                f"Key of {c['slug']} revoked; any live stream was stopped. "
                f"`vilokanam channel rotate-key {c['slug']}` issues a new key."
            ),
        )

    run(act)
