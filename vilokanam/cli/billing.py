"""``vilokanam viewer …`` (paying viewers, playback URLs) and ``vilokanam billing …`` (balances,
deposits, earnings, the ledger, settlement)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from vilokanam.cli import output
from vilokanam.cli.cdnlogs import ingest_logs
from vilokanam.cli.options import ConfigOption, JsonOption, ServerOption, TokenOption, backend
from vilokanam.cli.runner import run

viewer_app = typer.Typer(help="Paying viewers: create them, list them, issue playback URLs.")
billing_app = typer.Typer(help="Balances, deposits, creators' earnings, the ledger, settlement.")

ViewerArgument = Annotated[str, typer.Argument(help="Viewer name: a-z, 0-9, '-'")]
ChannelArgument = Annotated[str, typer.Argument(help="Channel slug")]

VIEWER_COLUMNS: list[output.Column] = [
    ("id", lambda v: v["id"]),
    ("name", lambda v: v["name"]),
    ("address", lambda v: v["address"]),
    ("created", lambda v: output.when(v["created_at"])),
]
LEDGER_COLUMNS: list[output.Column] = [
    ("id", lambda e: e["id"]),
    ("when", lambda e: output.when(e["created_at"])),
    ("kind", lambda e: e["kind"]),
    ("stream", lambda e: e["session_id"]),
    ("seconds", lambda e: e["seconds"] or "-"),
    ("amount", lambda e: e["amount"]),
    ("settled", lambda e: e["batch_id"] is not None if e["kind"] == "watch" else None),
    ("postings", lambda e: [f"{p['account']} {p['amount']:+d}" for p in e["postings"]]),
]


# -- viewers -----------------------------------------------------------------------------------
@viewer_app.command("create")
def viewer_create(
    name: ViewerArgument,
    address: Annotated[
        str | None, typer.Option("--address", help="Chain address (ss58) the viewer pays from.")
    ] = None,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a viewer and print its viewer key (shown only now)."""
    body: dict[str, Any] = {"name": name}
    if address is not None:
        body["address"] = address

    def render(viewer: dict[str, Any]) -> None:
        output.record(
            [
                ("name", viewer["name"]),
                ("address", viewer["address"]),
                ("viewer key", viewer["viewer_key"]),
            ],
            "Viewer created. The viewer key is shown only once:",
        )

    run(lambda: output.show(backend(config, server, token).create_viewer(body), as_json, render))


@viewer_app.command("list")
def viewer_list(
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """List viewers."""
    run(
        lambda: output.show(
            backend(config, server, token).list_viewers(),
            as_json,
            lambda rows: output.table(
                rows, VIEWER_COLUMNS, "No viewers yet: `vilokanam viewer create NAME`."
            ),
        )
    )


@viewer_app.command("token")
def viewer_token(
    viewer: ViewerArgument,
    channel: ChannelArgument,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a signed playback URL of CHANNEL for VIEWER (works in any HLS player)."""
    run(
        lambda: output.show(
            backend(config, server, token).viewer_token(viewer, channel),
            as_json,
            lambda info: output.console.print(info["url"], soft_wrap=True, highlight=False),
        )
    )


# -- billing -----------------------------------------------------------------------------------
@billing_app.command("balance")
def balance(
    viewer: ViewerArgument,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A viewer's balance and what they watched (seconds, amount spent)."""

    def render(info: dict[str, Any]) -> None:
        output.record(
            [
                ("viewer", info.get("viewer") or info["viewer_id"]),
                ("balance", f"{info['balance']} planck"),
                ("pending spend", f"{info['pending_spend']} planck"),
                ("seconds watched", info["seconds_watched"]),
                ("spent", f"{info['spent']} planck"),
                ("sessions", len(info["sessions"])),
            ]
        )

    run(lambda: output.show(backend(config, server, token).balance(viewer), as_json, render))


@billing_app.command("deposit")
def deposit(
    viewer: ViewerArgument,
    amount: Annotated[int, typer.Argument(help="Planck to credit (a positive integer).")],
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Idempotency key: the same reference credits once."),
    ] = None,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Credit a viewer on the local ledger."""

    def render(info: dict[str, Any]) -> None:
        done = "Credited" if info["credited"] else "Already credited (same reference)"
        output.console.print(
            f"{done}: {info['amount']} planck to {info['viewer']}; balance {info['balance']}."
        )

    run(
        lambda: output.show(
            backend(config, server, token).deposit(viewer, amount, reference), as_json, render
        )
    )


@billing_app.command("earnings")
def earnings(
    channel: ChannelArgument,
    since: Annotated[
        str | None, typer.Option("--since", help="Only from this time (ISO 8601).")
    ] = None,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """A channel's earnings: seconds watched, gross, platform fees, net, settled."""

    def render(info: dict[str, Any]) -> None:
        output.record(
            [
                ("channel", info["channel"]),
                ("since", output.when(info["since"]) if info["since"] else "the beginning"),
                ("seconds watched", info["seconds"]),
                ("gross", f"{info['gross']} planck"),
                ("platform fees", f"{info['fees']} planck"),
                ("net", f"{info['net']} planck"),
                ("settled", f"{info['settled']} planck"),
                ("unsettled", f"{info['unsettled']} planck"),
            ]
        )

    run(
        lambda: output.show(
            backend(config, server, token).earnings(channel, since), as_json, render
        )
    )


@billing_app.command("ledger")
def ledger(
    stream: Annotated[int | None, typer.Option("--stream", help="Stream session id.")] = None,
    viewer: Annotated[str | None, typer.Option("--viewer", help="Viewer name.")] = None,
    channel: Annotated[str | None, typer.Option("--channel", help="Channel slug.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (1-1000).")] = 100,
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ledger entries with their postings, newest first."""
    run(
        lambda: output.show(
            backend(config, server, token).ledger(stream, viewer, channel, limit),
            as_json,
            lambda rows: output.table(rows, LEDGER_COLUMNS, "No ledger entries."),
        )
    )


@billing_app.command("settle")
def settle(
    config: ConfigOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Settle the unsettled ticks now (needs the running server)."""

    def render(summary: Any) -> None:
        if isinstance(summary, dict):
            output.record(list(summary.items()), "Settlement:")
        else:
            output.console.print(str(summary))

    run(lambda: output.show(backend(config, server, token).settle(), as_json, render))


billing_app.command("ingest-logs")(ingest_logs)  # vilokanam/cli/cdnlogs.py
