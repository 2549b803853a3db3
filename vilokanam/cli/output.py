"""Printing: a table for people, JSON with ``--json``, errors on stderr with the fix."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def when(value: str | None) -> str:
    """ISO timestamp → ``2026-11-24 20:15`` (UTC), or ``-``."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def bitrate(bits: float | None) -> str:
    if not bits:
        return "-"
    return f"{bits / 1e6:.2f} Mb/s" if bits >= 1e6 else f"{bits / 1e3:.0f} kb/s"


def show(value: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        typer.echo(json.dumps(value, indent=None))
    else:
        render(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], empty: str) -> None:
    if not rows:
        console.print(empty)
        return
    grid = Table(*(name for name, _ in columns))
    for row in rows:
        grid.add_row(*(_text(get(row)) for _, get in columns))
    console.print(grid)


def record(pairs: Sequence[tuple[str, Any]], heading: str | None = None) -> None:
    """One object as a two-column table."""
    if heading:
        console.print(heading)
    grid = Table(show_header=False)
    for name, value in pairs:
        grid.add_row(name, _text(value))
    console.print(grid)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)
