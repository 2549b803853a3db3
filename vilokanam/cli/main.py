"""The ``vilokanam`` command: run the server and manage channels. No business logic here."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vilokanam.config import ConfigError, Settings, load_settings
from vilokanam.config.urls import urls_for
from vilokanam.store import Store, StoreError

app = typer.Typer(
    help="Vilokanam live-streaming server: RTMP in, HLS ladder out.", no_args_is_help=True
)
channel_app = typer.Typer(help="Create and manage channels and their stream keys.")
app.add_typer(channel_app, name="channel")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (see docs/config.md).", exists=True),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _store(settings: Settings) -> Store:
    return Store(settings.database_url)


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@app.command()
def serve(
    config: ConfigOption = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
) -> None:
    """Run the server: RTMP ingest, transcoding, HLS origin."""
    settings = _settings(config)
    level = (log_level or settings.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise _fail(ValueError(f"--log-level {log_level!r}: use debug, info, warning or error"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    from vilokanam.app import serve_forever  # the server's imports are not needed otherwise

    try:
        asyncio.run(serve_forever(settings))
    except OSError as exc:
        raise _fail(
            OSError(f"{exc} (is another server using the port? set rtmp.port / http.port)")
        ) from None


@channel_app.command("create")
def channel_create(
    slug: Annotated[str, typer.Argument(help="URL name: a-z, 0-9, '-'")],
    title: Annotated[str, typer.Option("--title", "-t", help="Display title")] = "",
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a channel and print its stream key (shown only now)."""
    settings = _settings(config)
    try:
        channel, key = _store(settings).create_channel(slug, title)
    except StoreError as exc:
        raise _fail(exc) from None
    urls = urls_for(settings)
    info = {
        "slug": channel.slug,
        "stream_key": key,
        "rtmp_url": urls.rtmp_server,
        "playback_url": urls.playback(channel.slug),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    _print_key_table(info, "Channel created. The stream key is shown only once:")


@channel_app.command("list")
def channel_list(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List channels."""
    settings = _settings(config)
    store = _store(settings)
    channels = store.list_channels()
    urls = urls_for(settings)
    rows = [
        {
            "slug": c.slug,
            "title": c.title,
            "created_at": c.created_at.isoformat(timespec="seconds"),
            "key_rotated_at": c.key_rotated_at.isoformat(timespec="seconds"),
            "playback_url": urls.playback(c.slug),
        }
        for c in channels
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("slug", "title", "created", "key rotated", "playback URL")
    for row in rows:
        table.add_row(
            row["slug"],
            row["title"],
            row["created_at"][:16].replace("T", " "),
            row["key_rotated_at"][:16].replace("T", " "),
            row["playback_url"],
        )
    console.print(table if rows else "No channels yet: `vilokanam channel create SLUG`.")


@channel_app.command("rotate-key")
def channel_rotate_key(slug: str, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Give a channel a new stream key; the old key stops working at once."""
    settings = _settings(config)
    try:
        key = _store(settings).rotate_key(slug)
    except StoreError as exc:
        raise _fail(exc) from None
    urls = urls_for(settings)
    info = {
        "slug": slug,
        "stream_key": key,
        "rtmp_url": urls.rtmp_server,
        "playback_url": urls.playback(slug),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    _print_key_table(info, "New stream key (the old one no longer works; shown only once):")


def _print_key_table(info: dict[str, str], heading: str) -> None:
    console.print(heading)
    table = Table(show_header=False)
    table.add_row("OBS server", info["rtmp_url"])
    table.add_row("Stream key", info["stream_key"])
    table.add_row("Watch", info["playback_url"])
    console.print(table)


def main() -> None:  # pragma: no cover - console script entry
    app()
