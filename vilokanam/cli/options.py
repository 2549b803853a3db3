"""Options every operator command shares, and the choice of backend they imply."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vilokanam.cli.backend import Backend, CliError, LocalBackend, RemoteBackend
from vilokanam.config import ConfigError, Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (see docs/config.md).", exists=True),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar="VILOKANAM_SERVER",
        help="Use a remote server's API (http://host:8080) instead of the local database.",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="VILOKANAM_TOKEN", help="API bearer token for --server."),
]


def load(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None


def backend(config: Path | None, server: str | None, token: str | None) -> Backend:
    """The remote API when ``--server`` is given, else this machine's database."""
    if server:
        return RemoteBackend(server, token or "")
    if token:
        raise CliError("--token is only used with --server URL", 2)
    return LocalBackend(load(config))
