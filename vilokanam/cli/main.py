"""The ``vilokanam`` command: run the server, manage channels and streams. No business logic.

Operator commands work on the local database, or on a remote server's REST API with
``--server URL --token T``; both print the same tables (``--json`` for scripts).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer

from vilokanam.cli import output
from vilokanam.cli.billing import billing_app, viewer_app
from vilokanam.cli.channels import channel_app
from vilokanam.cli.options import (
    ConfigOption,
    JsonOption,
    ServerOption,
    TokenOption,
    backend,
    load,
)
from vilokanam.cli.output import err_console
from vilokanam.cli.runner import run
from vilokanam.cli.streams import history_app, stream_app
from vilokanam.cli.vod import vod_app
from vilokanam.config import ConfigError, Settings, load_settings
from vilokanam.logs import setup_logging

app = typer.Typer(
    help="Vilokanam live-streaming server: RTMP in, HLS ladder out.", no_args_is_help=True
)
db_app = typer.Typer(help="Database migrations.")
app.add_typer(channel_app, name="channel")
app.add_typer(stream_app, name="stream")
app.add_typer(history_app, name="history")
app.add_typer(vod_app, name="vod")
app.add_typer(viewer_app, name="viewer")
app.add_typer(billing_app, name="billing")
app.add_typer(db_app, name="db")


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@app.command()
def serve(
    config: ConfigOption = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="text (human-readable) or json (one object per line)")
    ] = None,
) -> None:
    """Run the server: RTMP ingest, transcoding, HLS origin."""
    settings = _settings(config)
    level = (log_level or settings.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise _fail(ValueError(f"--log-level {log_level!r}: use debug, info, warning or error"))
    fmt = (log_format or settings.log_format).lower()
    if fmt not in ("text", "json"):
        raise _fail(ValueError(f"--log-format {log_format!r}: use text or json"))
    setup_logging(level, "json" if fmt == "json" else "text")
    from vilokanam.app import serve_forever  # the server's imports are not needed otherwise

    try:
        asyncio.run(serve_forever(settings))
    except OSError as exc:
        raise _fail(
            OSError(f"{exc} (is another server using the port? set rtmp.port / http.port)")
        ) from None


@app.command()
def status(
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Server status: version, uptime, database, channels, live streams, viewers."""

    def render(info: dict[str, Any]) -> None:
        output.record(
            [
                ("version", info["version"]),
                ("uptime", output.duration(info["uptime_seconds"])),
                ("database", info["database"]),
                ("channels", info["channels"]),
                ("stream sessions", info["sessions"]),
                ("live streams", info["live_streams"]),
                ("publishers", info["publishers"]),
                ("viewers", info["viewers"]),
                ("RTMP (OBS server)", info["rtmp_url"]),
                ("HTTP", info["http_url"]),
            ]
        )

    run(lambda: output.show(backend(config, server, token).status(), as_json, render))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply database migrations (the server also does this at start)."""

    def act() -> None:
        from vilokanam.store.migrate import upgrade

        settings = load(config)
        applied = upgrade(settings.database_url)
        output.console.print(
            f"Applied {', '.join(applied)}." if applied else "The database is up to date."
        )

    run(act)


@db_app.command("status")
def db_status(config: ConfigOption = None) -> None:
    """Show the database's migration revision."""

    def act() -> None:
        from vilokanam.store.migrate import current, head

        settings = load(config)
        now, latest = current(settings.database_url), head()
        state = "up to date" if now == latest else f"behind: run `vilokanam db upgrade` ({latest})"
        output.console.print(f"revision {now or 'none'}: {state}")

    run(act)


def main() -> None:  # pragma: no cover - console script entry
    app()
