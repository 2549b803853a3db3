"""Runs a command body and turns refusals into a one-line error and an exit code."""

from __future__ import annotations

from collections.abc import Callable

import typer

from vilokanam.cli.backend import CliError, store_error
from vilokanam.cli.output import err_console


def run(action: Callable[[], None]) -> None:
    """Call ``action``; a CliError or a store refusal prints ``error: …`` and exits non-zero."""
    from vilokanam.store import StoreError

    try:
        action()
    except CliError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except StoreError as exc:
        error = store_error(exc)
        err_console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(error.exit_code) from None
    except OSError as exc:  # the media storage refused (a permission, S3 away): nothing lost
        err_console.print(f"[red]error:[/red] media storage: {exc}; try again", highlight=False)
        raise typer.Exit(1) from None
