"""The operator API over real HTTP against a running server, with real RTMP publishers.

One server for the module; each test uses its own channels. Every response is checked against
the schema the OpenAPI document gives for its route and status.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import m3u8
import pytest

from tests.conftest import ServerThread, make_settings
from tests.media import http_get, publish_pyav, wait_for
from tests.unit.test_openapi import SchemaChecker
from vilokanam.origin.api.routes import ROUTES
from vilokanam.store import SLUG_RULE

pytestmark = pytest.mark.e2e

TOKEN = "api-test-token-0123456789abcdef"
LADDER = [{"name": "180p", "height": 180, "video_bitrate": 250_000}]


class Api:
    """A tiny JSON client that checks every answer against the served OpenAPI document."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.checker: SchemaChecker | None = None
        self.checker = SchemaChecker(self("GET", "/openapi.json", token=None)[1])

    def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + "/api/v1" + path, data=data, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text, headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            status, text, headers = exc.code, exc.read(), dict(exc.headers)
        assert headers.get("Content-Type", "").startswith("application/json"), (path, text)
        payload = json.loads(text)
        if self.checker is not None and not path.startswith("/openapi"):
            if self.checker.documents(method, "/api/v1" + path):
                self.checker.check_response(method, "/api/v1" + path, status, payload)
            else:  # an unknown route or method: still the documented error shape
                error = {"$ref": "#/components/schemas/ErrorOut"}
                assert not self.checker.errors(error, payload), payload
        return status, payload, headers

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, payload, _ = self(method, path, body)
        assert got == status, (method, path, got, payload)
        return payload

    def error(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        status, payload, _ = self(method, path, body, **kwargs)
        assert set(payload) == {"error", "detail"}, payload
        return status, payload


class Publishing:
    """A PyAV publisher in the background (it may be kicked: its error is kept, not raised)."""

    def __init__(self, url: str, seconds: float = 40.0, pace: float = 1.0) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(url, seconds, pace), daemon=True)
        self.thread.start()

    def _run(self, url: str, seconds: float, pace: float) -> None:
        try:
            publish_pyav(url, seconds=seconds, pace=pace)
        except BaseException as exc:
            self.error = exc

    def stopped(self, timeout: float = 20.0) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def until(predicate: Callable[[], Any], timeout: float = 30.0, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not true within {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    data: Path = tmp_path_factory.mktemp("api")
    thread = ServerThread(
        make_settings(data, api={"token": TOKEN}, transcode={"ladder": LADDER})
    ).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def api(server: ServerThread) -> Api:
    return Api(server.http_base)


def _live(api: Api, slug: str) -> dict[str, Any] | None:
    status, payload, _ = api("GET", f"/streams/{slug}")
    return payload if status == 200 and payload["segments"] > 0 else None


def _example_path(path: str) -> str:
    return path.replace("{slug}", "demo").replace("{id}", "1")


def test_every_route_refuses_a_missing_or_wrong_token(api: Api) -> None:
    for route in ROUTES:
        path = _example_path(route.path)
        if not route.auth:
            assert api(route.method, path, token=None)[0] == 200
            continue
        for token in (None, "wrong-token-0123456789abcdef"):
            status, payload, headers = api(route.method, path, {}, token=token)
            assert status == 401, (route.method, path, payload)
            assert payload["error"] == "unauthorized"
            assert headers["WWW-Authenticate"].startswith("Bearer")
    assert api("GET", "/status", token="Basic abc")[0] == 401


def test_channel_create_list_get_update(api: Api) -> None:
    body = {
        "slug": "crud",
        "title": "Crud show",
        "category": "talk",
        "tags": ["news", "live"],
        "price_per_second": 12,
        "ladder": [{"name": "240p", "height": 240, "video_bitrate": 400_000}],
    }
    status, created, headers = api("POST", "/channels", body)
    assert status == 201 and headers["Location"] == "/api/v1/channels/crud"
    assert created["stream_key"].startswith("sk_") and created["key_active"]
    assert {k: created[k] for k in body} == body
    assert created["playback_url"].endswith("/live/crud/master.m3u8")
    got = api.ok("GET", "/channels/crud")
    assert "stream_key" not in got and got["price_per_second"] == 12
    assert "crud" in [c["slug"] for c in api.ok("GET", "/channels")]

    for change in (
        {"title": "New title"},
        {"category": "music"},
        {"tags": ["a"]},
        {"price_per_second": 0},
        {"ladder": [{"name": "144p", "height": 144, "video_bitrate": 100_000}]},
    ):
        updated = api.ok("PATCH", "/channels/crud", change)
        field = next(iter(change))
        assert updated[field] == change[field]
        assert api.ok("GET", "/channels/crud")[field] == change[field]
    assert api.ok("PATCH", "/channels/crud", {"ladder": None})["ladder"] is None
    kept = api.ok("PATCH", "/channels/crud", {})
    assert kept["title"] == "New title" and kept["tags"] == ["a"]


def test_bad_input_answers_with_status_code_and_field(api: Api) -> None:
    api.ok("POST", "/channels", {"slug": "taken"}, status=201)
    assert api.error("GET", "/channels/nope")[0] == 404
    assert api.error("PATCH", "/channels/nope", {"title": "x"})[1]["error"] == "not_found"
    assert api.error("DELETE", "/channels/nope")[0] == 404
    assert api.error("POST", "/channels/nope/rotate-key")[0] == 404
    assert api.error("POST", "/channels/nope/revoke-key")[0] == 404
    assert api.error("POST", "/streams/nope/kick")[0] == 404
    assert api.error("GET", "/history?channel=nope")[0] == 404
    status, payload = api.error("POST", "/channels", {"slug": "taken"})
    assert (status, payload["error"]) == (409, "conflict")

    def invalid(method: str, path: str, body: Any) -> list[dict[str, str]]:
        status, payload = api.error(method, path, body)
        assert (status, payload["error"]) == (422, "validation_error"), payload
        return payload["detail"]

    for slug in ("A", "a", "-ab", "a_b", "x" * 64):
        detail = invalid("POST", "/channels", {"slug": slug})
        assert detail == [{"field": "slug", "message": SLUG_RULE}]
    for price in (-1, 1.5, "3", True):
        for method, path, body in (
            ("POST", "/channels", {"slug": "priced", "price_per_second": price}),
            ("PATCH", "/channels/taken", {"price_per_second": price}),
        ):
            assert [d["field"] for d in invalid(method, path, body)] == ["price_per_second"]
    rung = {"name": "bad", "height": 7, "video_bitrate": 100_000}
    detail = invalid("PATCH", "/channels/taken", {"ladder": [rung]})
    assert detail[0]["field"] == "ladder.0.height"
    assert invalid("PATCH", "/channels/taken", {"colour": "red"})[0]["field"] == "colour"
    for query in ("limit=0", "limit=501", "limit=many"):
        assert invalid("GET", f"/history?{query}", None)[0]["field"] == "limit"
    assert invalid("GET", "/history?before=x", None)[0]["field"] == "before"
    assert invalid("GET", "/history?before=99999999999999999999999", None)[0]["field"] == "before"
    for raw_id in ("abc", "%C2%B2", "99999999999999999999999", "0"):
        assert invalid("GET", f"/history/{raw_id}", None)[0]["field"] == "id", raw_id
    detail = invalid("POST", "/channels", {"slug": "abc\n"})
    assert detail == [{"field": "slug", "message": SLUG_RULE}], "no trailing newline in a slug"

    status, payload = api.error("POST", "/channels", raw=b'{"slug": ')
    assert (status, payload["error"]) == (400, "bad_request")
    status, payload = api.error("GET", "/no-such-thing")
    assert (status, payload["error"]) == (404, "not_found")
    status, payload, headers = api("PUT", "/channels/taken", {})
    assert (status, payload["error"], headers["Allow"]) == (
        405,
        "method_not_allowed",
        "DELETE, GET, PATCH",
    )
    assert api.ok("GET", "/channels/taken")["title"] == "taken", "nothing changed"


def test_live_stream_figures_kick_history_and_status(server: ServerThread, api: Api) -> None:
    key = api.ok("POST", "/channels", {"slug": "figures"}, status=201)["stream_key"]
    before = api.ok("GET", "/status")
    publisher = Publishing(f"{server.rtmp_base}/{key}")
    live = until(lambda: _live(api, "figures"))
    assert live["state"] == "live" and live["publisher"].startswith("127.0.0.1:")
    assert api.ok("GET", "/channels/figures")["live"] is True

    wait_for(f"{server.http_base}/live/figures/master.m3u8")  # one viewer
    stream = until(lambda: (s := _live(api, "figures")) and s["viewers"] >= 1 and s)
    assert stream["ingest_bitrate"] > 100_000
    assert (stream["width"], stream["height"], stream["fps"]) == (640, 360, pytest.approx(25))
    assert 0 < stream["uptime_seconds"] < 60
    assert {r["name"] for r in stream["renditions"]} == {"source", "180p"}
    small = next(r for r in stream["renditions"] if r["name"] == "180p")
    assert (small["width"], small["height"]) == (320, 180) and small["bandwidth"] > 0
    listed = api.ok("GET", "/streams")
    assert [s["channel"] for s in listed] == ["figures"]
    status = api.ok("GET", "/status")
    assert status["live_streams"] == 1 and status["publishers"] == 1 and status["viewers"] >= 1
    assert status["sessions"] == before["sessions"] + 1

    assert api.ok("POST", "/streams/figures/kick") == {"channel": "figures", "kicked": True}
    assert publisher.stopped() and publisher.error is not None, "publisher disconnected"
    assert api.ok("POST", "/streams/figures/kick")["kicked"] is False
    state = api("GET", "/streams/figures")[1]
    assert state.get("state") == "reconnecting" or state.get("error") == "not_live"
    until(lambda: api("GET", "/streams/figures")[0] == 404, timeout=10)
    assert api.error("GET", "/streams/figures")[1]["error"] == "not_live"
    assert api.ok("GET", "/streams") == []

    [session] = api.ok("GET", "/history?channel=figures")
    assert session["state"] == "ended" and session["end_reason"] == "kicked by an operator"
    assert session["duration_seconds"] > 2 and session["peak_viewers"] >= 1
    assert session["segments"] > 0 and session["ended_at"] is not None
    assert api.ok("GET", f"/history/{session['id']}") == session
    assert session in api.ok("GET", "/history?limit=500")
    assert api.ok("GET", f"/history?before={session['id']}&limit=1") != [session]
    assert api.ok("GET", "/status")["live_streams"] == 0


def test_rotate_and_revoke_keys(server: ServerThread, api: Api) -> None:
    old_key = api.ok("POST", "/channels", {"slug": "keys"}, status=201)["stream_key"]
    publisher = Publishing(f"{server.rtmp_base}/{old_key}")
    until(lambda: _live(api, "keys"))

    rotated = api.ok("POST", "/channels/keys/rotate-key")
    assert rotated["channel"] == "keys" and rotated["stream_key"] not in (old_key, "")
    assert rotated["rtmp_url"] == server.rtmp_base
    time.sleep(1)
    assert _live(api, "keys")["state"] == "live", "the current publisher keeps streaming"
    with pytest.raises(Exception):  # noqa: B017 - libavformat reports the refusal as an I/O error
        publish_pyav(f"{server.rtmp_base}/{old_key}", seconds=1)

    revoked = api.ok("POST", "/channels/keys/revoke-key")
    assert revoked["key_active"] is False and revoked["live"] is False
    assert publisher.stopped() and publisher.error is not None, "live publisher kicked"
    assert api("GET", "/streams/keys")[0] == 404, "ended at once, no reconnect window"
    [session] = api.ok("GET", "/history?channel=keys")
    assert session["state"] == "ended" and session["end_reason"] == "stream key revoked"
    with pytest.raises(Exception):  # noqa: B017
        publish_pyav(f"{server.rtmp_base}/{rotated['stream_key']}", seconds=1)

    fresh = api.ok("POST", "/channels/keys/rotate-key")["stream_key"]
    assert api.ok("GET", "/channels/keys")["key_active"] is True
    publish_pyav(f"{server.rtmp_base}/{fresh}", seconds=3, pace=4)
    until(lambda: len(api.ok("GET", "/history?channel=keys")) == 2)


def test_deleting_a_live_channel_ends_its_stream_first(server: ServerThread, api: Api) -> None:
    key = api.ok("POST", "/channels", {"slug": "doomed"}, status=201)["stream_key"]
    publisher = Publishing(f"{server.rtmp_base}/{key}")
    until(lambda: _live(api, "doomed"))
    stream = server.server.manager.stream_for_slug("doomed")
    assert stream is not None

    deleted = api.ok("DELETE", "/channels/doomed")
    assert deleted["slug"] == "doomed" and deleted["live"] is False
    assert publisher.stopped() and publisher.error is not None, "publisher disconnected"
    assert stream.ended and stream.end_reason == "channel deleted"
    master_url = f"{server.http_base}/live/doomed/master.m3u8"
    master = m3u8.loads(wait_for(master_url).decode())
    for variant in master.playlists:
        status, body, _ = http_get(f"{server.http_base}/live/doomed/{variant.uri}")
        assert status == 200 and b"#EXT-X-ENDLIST" in body, variant.uri
    assert api.error("GET", "/channels/doomed")[1]["error"] == "not_found"
    assert api.error("GET", "/streams/doomed")[0] == 404
    assert "doomed" not in [c["slug"] for c in api.ok("GET", "/channels")]
