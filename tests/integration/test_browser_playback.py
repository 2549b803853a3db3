"""In a real browser: headless Chromium plays a live stream from the watch page (`/watch/{slug}`).

Chromium is driven over its DevTools protocol (aiohttp websockets, no extra dependency). The
page's ``/static/hls.min.js`` is answered inside the browser (DevTools ``Fetch`` domain) from the
npm package that `.ci/run` unpacks into ``.cache/hlsjs``: no CDN, no change to the server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import REQUIRE_ALL, require_tool
from tests.media import EXPECTED_SIZES, TEST_LADDER, ffmpeg_publish_command, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HLSJS = Path(
    os.environ.get("VILOKANAM_HLSJS", ROOT / ".cache" / "hlsjs" / "package" / "dist" / "hls.min.js")
)
"""hls.js as `.ci/run` unpacks it (`npm pack hls.js@1.7.4`); VILOKANAM_HLSJS overrides."""
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Chromium's own connections (updates, sync, field trials) are refused on a closed network:
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
]
PLAYBACK_TIMEOUT = 25.0

RECORD_HLS_ERRORS = """
window.__hlsErrors = [];
(() => {
  let player;
  Object.defineProperty(window, "vilokanamPlayer", {
    configurable: true,
    get() { return player; },
    set(hls) {
      player = hls;
      hls.on("hlsError", (_, d) => window.__hlsErrors.push(
        {type: d.type, details: d.details, fatal: d.fatal}));
    },
  });
})();
"""
"""Runs before the page's scripts: records every error of the Hls instance the page creates."""

PROBE = """(() => {
  const video = document.getElementById("player"), hls = window.vilokanamPlayer;
  const status = document.getElementById("status");
  if (!video || !status) return null;  // the page is still being parsed
  return {
    time: video.currentTime, width: video.videoWidth, height: video.videoHeight,
    paused: video.paused, ended: video.ended, live: video.duration === Infinity,
    readyState: video.readyState, mediaError: video.error && video.error.message,
    src: video.currentSrc, status: status.textContent,
    hlsjs: hls ? Hls.version : null, errors: window.__hlsErrors,
    levels: hls ? hls.levels.map((l) => ({width: l.width, height: l.height,
                                          codecs: l.attrs.CODECS})) : null,
  };
})()"""


@pytest.fixture
def hlsjs() -> bytes:
    """hls.min.js from npm; missing → skip here, fail in CI (VILOKANAM_REQUIRE_ALL=1)."""
    if not HLSJS.is_file():
        message = f"hls.js not found at {HLSJS} (the watch page's player); `.ci/run` fetches it"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    return HLSJS.read_bytes()


class DevToolsError(Exception):
    pass


class DevTools:
    """A minimal Chrome DevTools Protocol client: commands, and event callbacks by method."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.handlers: dict[str, Callable[[str | None, dict[str, Any]], None]] = {}
        self.log: list[str] = []
        """What the page said (console, uncaught exceptions, refused requests): diagnostics."""
        self._reader = asyncio.create_task(self._read())

    async def send(
        self, method: str, session: str | None = None, timeout: float = 10.0, **params: Any
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = future
        await self._ws.send_json(message)
        return await asyncio.wait_for(future, timeout)

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is None or future.done():
                    continue
                if "error" in data:
                    future.set_exception(DevToolsError(data["error"]))
                else:
                    future.set_result(data.get("result", {}))
            elif data.get("method") in self.handlers:
                self.handlers[data["method"]](data.get("sessionId"), data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DevToolsError("browser connection closed"))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium on a fresh profile, connected over its DevTools websocket."""
    chromium = require_tool("chromium", "a real browser plays the watch page (Debian `chromium`)")
    profile = tmp_path / "chromium-profile"
    log_path = tmp_path / "chromium.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "about:blank"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    session = aiohttp.ClientSession()
    devtools = None
    try:
        active_port = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID", once ready
        deadline = time.monotonic() + 30
        while not (active_port.is_file() and len(active_port.read_text().split()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"Chromium did not start (exit {process.poll()}):\n{output}")
            await asyncio.sleep(0.05)
        port, path = active_port.read_text().split()[:2]
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        devtools = DevTools(ws)
        yield devtools
    finally:
        if devtools is not None:
            with contextlib.suppress(Exception):
                await devtools.send("Browser.close", timeout=5)
            await devtools.close()
        await session.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the browser's children too
            process.wait(10)
        log.close()


Probe = Callable[[], Awaitable[dict[str, Any] | None]]


async def open_page(devtools: DevTools, url: str, hlsjs: bytes | None) -> tuple[Probe, list[str]]:
    """Open ``url`` in a new tab → (probe of the player's state, URLs answered with ``hlsjs``).

    Requests for ``/static/hls.min.js`` get ``hlsjs``; any other script named hls*.js (the CDN
    fallback) is refused, as on the closed network CI runs in.
    """
    target = await devtools.send("Target.createTarget", url="about:blank")
    attached = await devtools.send(
        "Target.attachToTarget", targetId=target["targetId"], flatten=True
    )
    session = attached["sessionId"]
    served: list[str] = []
    tasks: set[asyncio.Task[Any]] = set()

    def request_paused(event_session: str | None, params: dict[str, Any]) -> None:
        request_url = params["request"]["url"]
        if hlsjs is not None and request_url.split("?")[0].endswith("/static/hls.min.js"):
            served.append(request_url)
            command = devtools.send(
                "Fetch.fulfillRequest", event_session, requestId=params["requestId"],
                responseCode=200, body=base64.b64encode(hlsjs).decode(),
                responseHeaders=[{"name": "Content-Type", "value": "text/javascript"}],
            )  # fmt: skip
        else:
            devtools.log.append(f"refused {request_url}")
            command = devtools.send(
                "Fetch.failRequest", event_session, requestId=params["requestId"],
                errorReason="InternetDisconnected",
            )  # fmt: skip
        task = asyncio.create_task(command)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def console(event_session: str | None, params: dict[str, Any]) -> None:
        texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
        devtools.log.append(f"console.{params['type']}: {' '.join(texts)}")

    def exception(event_session: str | None, params: dict[str, Any]) -> None:
        details = params["exceptionDetails"]
        devtools.log.append(f"exception: {details.get('exception', {}).get('description')}")

    devtools.handlers["Fetch.requestPaused"] = request_paused
    devtools.handlers["Runtime.consoleAPICalled"] = console
    devtools.handlers["Runtime.exceptionThrown"] = exception
    await devtools.send(
        "Fetch.enable", session, patterns=[{"urlPattern": "*hls*.js*", "requestStage": "Request"}]
    )
    await devtools.send("Runtime.enable", session)
    await devtools.send("Page.enable", session)
    await devtools.send("Page.addScriptToEvaluateOnNewDocument", session, source=RECORD_HLS_ERRORS)
    await devtools.send("Page.navigate", session, url=url)

    async def probe() -> dict[str, Any] | None:
        result = await devtools.send(
            "Runtime.evaluate", session, expression=PROBE, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise DevToolsError(result["exceptionDetails"])
        return result["result"].get("value")

    return probe, served


async def watch_until_playing(
    probe: Probe, devtools: DevTools, *, live: bool = False
) -> dict[str, Any]:
    """Poll until ``currentTime`` has moved 2 s at 640 px wide → the player's last state.

    Fails at once on a media error, a fatal hls.js error, an ended video, or (``live``) a video
    whose duration is not infinite once its metadata is known.
    """
    deadline = time.monotonic() + PLAYBACK_TIMEOUT
    first = state = None
    while time.monotonic() < deadline:
        state = await probe()
        if state is not None:
            context = f"{state}\n{devtools.log}"
            assert state["mediaError"] is None, context
            assert not [e for e in state["errors"] or [] if e["fatal"]], context
            assert not state["ended"], f"a live stream ended: {context}"
            if live and state["readyState"] >= 1:
                assert state["live"], f"the browser took the stream for VOD: {context}"
            if first is None and state["time"] > 0 and not state["paused"]:
                first = state
            if first and state["time"] - first["time"] >= 2.0 and state["width"] == 640:
                return state
        await asyncio.sleep(0.2)
    raise AssertionError(f"no playback within {PLAYBACK_TIMEOUT} s: {state}\n{devtools.log}")


@contextlib.contextmanager
def live_stream(server, slug: str) -> Iterator[subprocess.Popen]:  # type: ignore[no-untyped-def]
    """ffmpeg publishing a 640x360 test pattern + tone in real time until the block ends."""
    ffmpeg = require_tool("ffmpeg", "the ffmpeg CLI is a real RTMP publisher")
    key = server.create_channel(slug)
    command = ffmpeg_publish_command(ffmpeg, f"{server.rtmp_base}/{key}", seconds=60, readrate=1)
    publisher = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield publisher
    finally:
        publisher.terminate()
        publisher.communicate(timeout=10)


async def test_hlsjs_plays_the_live_ladder_in_chromium(  # type: ignore[no-untyped-def]
    hlsjs: bytes, start_server, browser: DevTools
) -> None:
    server = start_server(transcode={"ladder": TEST_LADDER})
    with live_stream(server, "browser") as publisher:
        await asyncio.to_thread(wait_for, f"{server.http_base}/live/browser/master.m3u8", 30)
        probe, served = await open_page(browser, f"{server.http_base}/watch/browser?hlsjs", hlsjs)
        last = await watch_until_playing(probe, browser)
        assert publisher.poll() is None, "the page played while the publisher was live"

    assert str(last["hlsjs"]).startswith("1."), "hls.js played it (window.vilokanamPlayer)"
    assert len(served) == 1, "hls.js came from /static/hls.min.js, once"
    assert not [line for line in browser.log if line.startswith("refused")], browser.log
    assert (last["width"], last["height"]) == EXPECTED_SIZES["source"]
    assert sorted((lv["width"], lv["height"]) for lv in last["levels"]) == sorted(
        EXPECTED_SIZES.values()
    ), last["levels"]
    for level in last["levels"]:
        assert "avc1." in level["codecs"] and "mp4a.40.2" in level["codecs"], level
    assert last["status"] == "Live"


async def test_native_hls_plays_in_chromium(start_server, browser: DevTools) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    with live_stream(server, "native") as publisher:
        # Chromium's native player joins 3 segments behind the live edge; from a playlist of
        # one or two segments (the stream's first 4 s) it fails to start (Chromium 156).
        await asyncio.to_thread(
            wait_for,
            f"{server.http_base}/live/native/source/index.m3u8",
            30,
            lambda body: body.count(b"#EXTINF") >= 4,
        )
        probe, served = await open_page(browser, f"{server.http_base}/watch/native?native", None)
        last = await watch_until_playing(probe, browser, live=True)
        assert publisher.poll() is None, "the page played while the publisher was live"
    assert last["hlsjs"] is None and not served, "Chromium played the HLS URL itself"
    assert last["src"].endswith("/live/native/master.m3u8")
    assert last["status"] == "Live"
