"""The billing REST API and the billing CLI (remote and local) against a running server.

Every response is checked against the served OpenAPI document (see ``tests.integration.test_api``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import ServerThread, make_settings
from tests.integration.test_api import TOKEN, Api
from tests.media import http_get
from vilokanam.billing.tokens import verify
from vilokanam.cli.main import app

pytestmark = pytest.mark.e2e

SECRET = "billing-api-secret-0123456789abcdef"
ADDRESS = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
runner = CliRunner()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    data: Path = tmp_path_factory.mktemp("billing-api")
    thread = ServerThread(
        make_settings(data, api={"token": TOKEN}, billing={"token_secret": SECRET})
    ).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def api(server: ServerThread) -> Api:
    api = Api(server.http_base)
    api.ok("POST", "/channels", {"slug": "show", "price_per_second": 3}, 201)
    return api


def invalid(api: Api, method: str, path: str, body: Any) -> list[str]:
    status, payload = api.error(method, path, body)
    assert (status, payload["error"]) == (422, "validation_error"), payload
    return [item["field"] for item in payload["detail"]]


def test_viewers_are_created_once_listed_and_found(api: Api) -> None:
    status, created, headers = api("POST", "/viewers", {"name": "vera", "address": ADDRESS})
    assert status == 201 and headers["Location"] == "/api/v1/viewers/vera"
    assert created["viewer_key"].startswith("vk_") and created["address"] == ADDRESS
    got = api.ok("GET", "/viewers/vera")
    assert "viewer_key" not in got and got["id"] == created["id"]
    assert "vera" in [v["name"] for v in api.ok("GET", "/viewers")]
    assert api.error("POST", "/viewers", {"name": "vera"}) == (
        409,
        {"error": "conflict", "detail": "a viewer with name 'vera' already exists"},
    )
    assert api.error("GET", "/viewers/nobody")[1]["error"] == "not_found"
    assert invalid(api, "POST", "/viewers", {"name": "Bad Name"}) == ["name"]
    assert invalid(api, "POST", "/viewers", {"name": "ok-name", "address": "0OIl"}) == ["address"]
    assert invalid(api, "POST", "/viewers", {"name": "ok-name", "x": 1}) == ["x"]


def test_deposits_are_strict_integers_and_idempotent_by_reference(api: Api) -> None:
    api.ok("POST", "/viewers", {"name": "dora"}, 201)
    for amount in (0, -5, 1.5, "3", True, None):
        assert invalid(api, "POST", "/viewers/dora/deposit", {"amount": amount}) == ["amount"]
    assert invalid(api, "POST", "/viewers/dora/deposit", {}) == ["amount"]
    assert api.error("POST", "/viewers/nobody/deposit", {"amount": 5})[0] == 404
    first = api.ok("POST", "/viewers/dora/deposit", {"amount": 500, "reference": "inv-1"})
    assert first == {"viewer": "dora", "amount": 500, "credited": True, "balance": 500}
    again = api.ok("POST", "/viewers/dora/deposit", {"amount": 500, "reference": "inv-1"})
    assert again["credited"] is False and again["balance"] == 500
    assert api.ok("POST", "/viewers/dora/deposit", {"amount": 25})["balance"] == 525
    balance = api.ok("GET", "/viewers/dora/balance")
    assert balance["viewer"] == "dora" and balance["balance"] == 525
    assert balance["seconds_watched"] == balance["spent"] == balance["pending_spend"] == 0
    deposits = api.ok("GET", "/ledger?viewer=dora")
    assert [e["kind"] for e in deposits] == ["deposit", "deposit"]
    for entry in deposits:
        assert sum(p["amount"] for p in entry["postings"]) == 0


def test_playback_urls_for_viewers_and_by_the_operator(api: Api, server: ServerThread) -> None:
    key = api.ok("POST", "/viewers", {"name": "paula"}, 201)["viewer_key"]
    paula = api.ok("GET", "/viewers/paula")["id"]
    status, mine, _ = api("POST", "/channels/show/playback", token=key)
    assert status == 200
    assert mine["url"] == f"{server.http_base}/live/show/master.m3u8?token={mine['token']}"
    claims = verify(SECRET, mine["token"], "show", 0)
    assert claims.viewer_id == paula
    issued = api.ok("POST", "/viewers/paula/playback/show")
    assert verify(SECRET, issued["token"], "show", 0).viewer_id == paula
    assert api("POST", "/channels/nope/playback", token=key)[0] == 404
    assert api.error("POST", "/viewers/nobody/playback/show")[0] == 404
    assert api.error("POST", "/viewers/paula/playback/nope")[0] == 404
    # the URL is checked by the origin: a valid token for a channel that is not live is a 404,
    # a viewer with no balance a 402
    assert http_get(mine["url"])[0] == 402
    me = api("GET", "/me", token=key)
    assert me[0] == 200 and me[1]["viewer"] == "paula" and me[1]["balance"] == 0


def test_viewer_keys_work_only_on_viewer_routes(api: Api) -> None:
    key = api.ok("POST", "/viewers", {"name": "kim"}, 201)["viewer_key"]
    for method, path in [("GET", "/channels"), ("GET", "/viewers"), ("GET", "/status")]:
        assert api(method, path, token=key)[0] == 401
    for token in (TOKEN, None, "vk_not-a-real-key"):
        status, payload, headers = api("GET", "/me", token=token)
        assert status == 401 and payload["error"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
    document = api("GET", "/openapi.json", token=None)[1]
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"bearer", "viewerKey"}
    viewer_routes = {
        (method, path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"viewerKey": []}]
    }
    assert viewer_routes == {("post", "/api/v1/channels/{slug}/playback"), ("get", "/api/v1/me")}


def test_earnings_ledger_settle_and_payout_address(api: Api) -> None:
    earnings = api.ok("GET", "/channels/show/earnings?since=2020-01-01T00:00:00Z")
    assert earnings["channel"] == "show" and earnings["gross"] == earnings["seconds"] == 0
    assert api.ok("GET", "/channels/show/earnings")["since"] is None
    assert api.error("GET", "/channels/nope/earnings")[0] == 404
    assert invalid(api, "GET", "/channels/show/earnings?since=yesterday", None) == ["since"]
    assert invalid(api, "GET", "/ledger?stream=abc", None) == ["stream"]
    assert invalid(api, "GET", "/ledger?limit=0", None) == ["limit"]
    assert api.error("GET", "/ledger?viewer=nobody")[0] == 404
    assert api.error("GET", "/ledger?channel=nope")[0] == 404
    assert api.ok("GET", "/ledger?channel=show") == []
    status, payload, _ = api("POST", "/billing/settle")
    assert status == 200 or (status, payload["error"]) == (503, "settlement_unavailable")

    assert api.ok("PATCH", "/channels/show", {"payout_address": ADDRESS})["payout_address"] == (
        ADDRESS
    )
    assert api.ok("GET", "/channels/show")["payout_address"] == ADDRESS
    assert api.ok("PATCH", "/channels/show", {"title": "Show"})["payout_address"] == ADDRESS
    assert api.ok("PATCH", "/channels/show", {"payout_address": None})["payout_address"] is None
    assert invalid(api, "PATCH", "/channels/show", {"payout_address": "x"}) == ["payout_address"]


# -- the CLI -----------------------------------------------------------------------------------
def cli(*args: str, server: ServerThread | None = None) -> Any:
    remote = ["--server", server.http_base, "--token", TOKEN] if server is not None else []
    result = runner.invoke(app, [*args, *remote, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_remote_cli_billing_commands(api: Api, server: ServerThread) -> None:
    bob = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"  # //Bob: a valid ss58 address
    created = cli("viewer", "create", "remy", "--address", bob, server=server)
    assert created["viewer_key"].startswith("vk_")
    assert "remy" in [v["name"] for v in cli("viewer", "list", server=server)]
    deposit = cli("billing", "deposit", "remy", "900", "--reference", "r-1", server=server)
    assert deposit["credited"] and deposit["balance"] == 900
    assert not cli("billing", "deposit", "remy", "900", "--reference", "r-1", server=server)[
        "credited"
    ]
    assert cli("billing", "balance", "remy", server=server)["balance"] == 900
    url = cli("viewer", "token", "remy", "show", server=server)["url"]
    assert url.startswith(f"{server.http_base}/live/show/master.m3u8?token=")
    assert cli("billing", "earnings", "show", "--since", "2020-01-01", server=server)["gross"] == 0
    entries = cli("billing", "ledger", "--viewer", "remy", server=server)
    assert [e["amount"] for e in entries] == [900]
    table = runner.invoke(app, ["viewer", "token", "remy", "show", "--server", server.http_base,
                                "--token", TOKEN])  # fmt: skip
    assert table.exit_code == 0 and "token=" in table.output
    bad = runner.invoke(
        app, ["billing", "deposit", "remy", "0", "--server", server.http_base, "--token", TOKEN]
    )
    assert bad.exit_code == 2 and "amount" in bad.output
    missing = runner.invoke(
        app, ["billing", "balance", "nobody", "--server", server.http_base, "--token", TOKEN]
    )
    assert missing.exit_code == 1 and "not_found" in missing.output


def test_local_cli_billing_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VILOKANAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VILOKANAM_PUBLIC_HOST", "stream.example")
    monkeypatch.setenv("VILOKANAM_HTTP_PORT", "1")  # no server answers here
    runner.invoke(app, ["channel", "create", "local-show", "--price", "2"])
    created = cli("viewer", "create", "lola")
    assert created["viewer_key"].startswith("vk_")
    assert cli("billing", "deposit", "lola", "40")["balance"] == 40
    balance = cli("billing", "balance", "lola")
    assert balance["balance"] == 40 and balance["seconds_watched"] == 0
    token = cli("viewer", "token", "lola", "local-show")
    assert token["url"].startswith("http://stream.example:1/live/local-show/master.m3u8?token=")
    secret = (tmp_path / "billing-secret").read_text().strip()
    assert verify(secret, token["token"], "local-show", 0).viewer_id == created["id"]
    assert cli("billing", "earnings", "local-show")["net"] == 0
    assert len(cli("billing", "ledger", "--viewer", "lola")) == 1
    settle = runner.invoke(app, ["billing", "settle"])
    assert settle.exit_code == 1 and "Settlement need the running server" in settle.output
    dup = runner.invoke(app, ["viewer", "create", "lola"])
    assert dup.exit_code == 1 and "conflict" in dup.output
    table = runner.invoke(app, ["billing", "ledger"])
    assert table.exit_code == 0 and "+40" in table.output
