"""Where CLI commands are carried out: this machine's database, or a server's REST API.

Both backends return the API's JSON shapes (``vilokanam.origin.api.schemas``), so a command
prints the same table whether it ran locally or against ``--server URL --token T``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from vilokanam.config import Settings
from vilokanam.config.urls import urls_for

if TYPE_CHECKING:
    from vilokanam.origin.storage import Storage

Json = Any

API = "/api/v1"


class CliError(Exception):
    """A failure to print for the operator; the message says what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ServerUnreachable(CliError):
    """Nothing answered at the server's address (not running, wrong port)."""


class ServerUnavailable(CliError):
    """The server (or a proxy in front) answered 502/503/504: restarting, or a part is off."""


def store_error(exc: Exception) -> CliError:
    """A store refusal worded like the API's error for it (same code, same exit status)."""
    from vilokanam.store import ChannelExists, ChannelNotFound, InvalidField, SessionNotFound
    from vilokanam.store.errors import ViewerExists, ViewerNotFound

    if isinstance(exc, ChannelNotFound | SessionNotFound | ViewerNotFound):
        return CliError(f"not_found: {exc}")
    if isinstance(exc, ChannelExists | ViewerExists):
        return CliError(f"conflict: {exc}")
    if isinstance(exc, InvalidField):
        return CliError(f"validation_error: {exc.field}: {exc}", 2)
    return CliError(f"bad_request: {exc}", 2)


def describe_api_error(status: int, payload: Json) -> str:
    """``{"error": code, "detail": ...}`` as one readable line (field names included)."""
    if not isinstance(payload, dict):
        return f"HTTP {status}: {payload}"
    detail = payload.get("detail")
    if isinstance(detail, list):
        parts = [
            f"{item.get('field', '?')}: {item.get('message', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        ]
        detail = "; ".join(parts)
    return f"{payload.get('error', f'HTTP {status}')}: {detail}"


class RemoteBackend:
    """Calls a running server's REST API (``/api/v1``) with a bearer token."""

    def __init__(self, server: str, token: str, timeout: float = 30.0) -> None:
        if not server.startswith(("http://", "https://")):
            raise CliError(f"--server {server!r}: give the HTTP URL, e.g. http://host:8080", 2)
        if not token:
            raise CliError(
                "no API token: pass --token or set VILOKANAM_TOKEN "
                "(the server's token is api.token or the file {data_dir}/api-token)",
                2,
            )
        self.base = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: Json = None, query: dict[str, Any] | None = None
    ) -> Json:
        url = self.base + API + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")[:200]
            hint = (
                " (the token does not match the server's: api.token, VILOKANAM_API_TOKEN or "
                "{data_dir}/api-token on the server; pass it with --token)"
                if exc.code == 401
                else ""
            )
            exit_code = 2 if exc.code in (400, 422) else 1
            kind = ServerUnavailable if exc.code in (502, 503, 504) else CliError
            raise kind(describe_api_error(exc.code, payload) + hint, exit_code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable(
                f"cannot reach {self.base}: {reason} (is `vilokanam serve` running there?)"
            ) from None
        return json.loads(raw) if raw else None

    # -- channels -------------------------------------------------------------
    def create_channel(self, body: dict[str, Any]) -> Json:
        return self.request("POST", "/channels", body)

    def list_channels(self) -> Json:
        return self.request("GET", "/channels")

    def get_channel(self, slug: str) -> Json:
        return self.request("GET", f"/channels/{_quote(slug)}")

    def update_channel(self, slug: str, changes: dict[str, Any]) -> Json:
        return self.request("PATCH", f"/channels/{_quote(slug)}", changes)

    def delete_channel(self, slug: str) -> Json:
        return self.request("DELETE", f"/channels/{_quote(slug)}")

    def rotate_key(self, slug: str, kick: bool = False) -> Json:
        query = {"kick": "true"} if kick else None
        return self.request("POST", f"/channels/{_quote(slug)}/rotate-key", query=query)

    def revoke_key(self, slug: str) -> Json:
        return self.request("POST", f"/channels/{_quote(slug)}/revoke-key")

    # -- live streams, history, status ----------------------------------------
    def live_streams(self) -> Json:
        return self.request("GET", "/streams")

    def live_stream(self, slug: str) -> Json:
        return self.request("GET", f"/streams/{_quote(slug)}")

    def kick(self, slug: str) -> Json:
        return self.request("POST", f"/streams/{_quote(slug)}/kick")

    def history(self, channel: str | None, limit: int, before: int | None) -> Json:
        return self.request(
            "GET", "/history", query={"channel": channel, "limit": limit, "before": before}
        )

    def session(self, session_id: int) -> Json:
        return self.request("GET", f"/history/{session_id}")

    def status(self) -> Json:
        return self.request("GET", "/status")

    # -- VODs -------------------------------------------------------------------
    def list_vods(self, channel: str | None, limit: int, before: int | None) -> Json:
        return self.request(
            "GET", "/vods", query={"channel": channel, "limit": limit, "before": before}
        )

    def get_vod(self, vod_id: int) -> Json:
        return self.request("GET", f"/vods/{vod_id}")

    def delete_vod(self, vod_id: int) -> Json:
        """Delete a VOD; returns it as it was (the API answers 204 with no body)."""
        vod = self.get_vod(vod_id)
        self.request("DELETE", f"/vods/{vod_id}")
        return vod

    # -- billing ----------------------------------------------------------------
    def create_viewer(self, body: dict[str, Any]) -> Json:
        return self.request("POST", "/viewers", body)

    def list_viewers(self) -> Json:
        return self.request("GET", "/viewers")

    def viewer_token(self, name: str, slug: str) -> Json:
        return self.request("POST", f"/viewers/{_quote(name)}/playback/{_quote(slug)}")

    def balance(self, name: str) -> Json:
        return self.request("GET", f"/viewers/{_quote(name)}/balance")

    def deposit(self, name: str, amount: int, reference: str | None = None) -> Json:
        body: dict[str, Any] = {"amount": amount}
        if reference is not None:
            body["reference"] = reference
        return self.request("POST", f"/viewers/{_quote(name)}/deposit", body)

    def earnings(self, slug: str, since: str | None = None) -> Json:
        return self.request("GET", f"/channels/{_quote(slug)}/earnings", query={"since": since})

    def ledger(
        self, stream: int | None, viewer: str | None, channel: str | None, limit: int
    ) -> Json:
        query = {"stream": stream, "viewer": viewer, "channel": channel, "limit": limit}
        return self.request("GET", "/ledger", query=query)

    def settle(self) -> Json:
        return self.request("POST", "/billing/settle")

    def cdn_cursor(self, source: str) -> Json:
        return self.request("GET", "/billing/cdn-cursor", query={"source": source})

    def cdn_fetches(self, batch: dict[str, Any]) -> Json:
        return self.request("POST", "/billing/cdn-fetches", batch)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class LocalBackend:
    """Works on this machine's database; live-stream commands ask the local server's API.

    Deleting a channel or revoking its key goes through the local server when it is running,
    so a live stream is stopped cleanly first; otherwise the database is changed directly.
    """

    def __init__(self, settings: Settings) -> None:
        from vilokanam.origin.api.service import ChannelService
        from vilokanam.store import Store

        self.settings = settings
        self._cached_server: RemoteBackend | Literal[False] | None = None
        self.store = Store(settings.database_url)
        self.service = ChannelService(self.store, settings, urls_for(settings), self._live_slugs)

    def _live_slugs(self) -> set[str]:
        """Live channels: the local server's view when it runs, else open sessions in the DB."""
        server = self._server_if_running()
        if server is not None:
            return {stream["channel"] for stream in server.live_streams()}
        from vilokanam.store import SessionState

        return {
            channel.slug
            for stream, channel in self.store.history(limit=500)
            if stream.state is not SessionState.ENDED
        }

    def _local_server(self) -> RemoteBackend | None:
        """The API of a server started from the same config here; None if it has no token yet
        (never started). The token is read, never created: the server owns it."""
        from vilokanam.origin.api.token import token_path

        token = self.settings.api.token
        if not token:
            try:
                token = token_path(self.settings).read_text().strip()
            except OSError:
                return None
        host = self.settings.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return RemoteBackend(f"http://{host}:{self.settings.http.port}", token, 10)

    def _server_if_running(self) -> RemoteBackend | None:
        """The local server's API if something answers there. An answer that is an error
        (a token mismatch) is raised: changing the database behind a running server's back
        would leave its live streams inconsistent."""
        if self._cached_server is not None:
            return self._cached_server or None
        server = self._local_server()
        if server is not None:
            try:
                server.request("GET", "/status")
            except ServerUnreachable:
                server = None
        self._cached_server = server or False
        return server

    def _server_required(self, what: str = "Live-stream commands") -> RemoteBackend:
        server = self._server_if_running()
        if server is None:
            raise CliError(
                f"{what} need the running server, and none answers at "
                f"http://127.0.0.1:{self.settings.http.port}: start `vilokanam serve` here, "
                "or pass --server URL --token TOKEN."
            )
        return server

    @staticmethod
    def _dump(value: Any) -> Json:
        if isinstance(value, list):
            return [item.model_dump(mode="json") for item in value]
        return value.model_dump(mode="json")

    def _validated(self, model: type[Any], body: dict[str, Any]) -> Any:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            from vilokanam.origin.api.errors import field_errors

            payload = {"error": "validation_error", "detail": field_errors(exc)}
            raise CliError(describe_api_error(422, payload), 2) from None

    # -- channels -------------------------------------------------------------
    def create_channel(self, body: dict[str, Any]) -> Json:
        from vilokanam.origin.api.schemas import ChannelCreate

        return self._dump(self.service.create(self._validated(ChannelCreate, body)))

    def list_channels(self) -> Json:
        return self._dump(self.service.list())

    def get_channel(self, slug: str) -> Json:
        return self._dump(self.service.get(slug))

    def update_channel(self, slug: str, changes: dict[str, Any]) -> Json:
        from vilokanam.origin.api.schemas import ChannelUpdate

        return self._dump(self.service.update(slug, self._validated(ChannelUpdate, changes)))

    def delete_channel(self, slug: str) -> Json:
        server = self._server_if_running()
        if server is not None:
            return server.delete_channel(slug)
        from vilokanam.origin.vod import delete_vod, mark_stream_media

        channel = self.store.get_channel(slug)  # its media first: rows go with it
        vods = [vod.id for vod in self.vods.list(channel.slug)]

        async def delete_media(storage: Storage) -> None:
            for vod_id in vods:
                await delete_vod(self.store, storage, vod_id)
            await mark_stream_media(self.store, storage, channel.id)

        self._with_storage(delete_media)
        return self._dump(self.service.delete(slug))

    def rotate_key(self, slug: str, kick: bool = False) -> Json:
        if kick:
            server = self._server_if_running()
            if server is not None:
                return server.rotate_key(slug, kick=True)
        return self._dump(self.service.rotate_key(slug))

    def revoke_key(self, slug: str) -> Json:
        server = self._server_if_running()
        if server is not None:
            return server.revoke_key(slug)
        return self._dump(self.service.revoke_key(slug))

    # -- live streams, history, status ----------------------------------------
    def live_streams(self) -> Json:
        return self._server_required().live_streams()

    def live_stream(self, slug: str) -> Json:
        return self._server_required().live_stream(slug)

    def kick(self, slug: str) -> Json:
        return self._server_required().kick(slug)

    def history(self, channel: str | None, limit: int, before: int | None) -> Json:
        _check_page(limit, before)
        return self._dump(self.service.history(channel, limit, before))

    def session(self, session_id: int) -> Json:
        return self._dump(self.service.session(session_id))

    def status(self) -> Json:
        return self._server_required().status()

    # -- VODs -------------------------------------------------------------------
    @property
    def vods(self) -> Any:
        from vilokanam.origin.api.service import VodService

        return VodService(self.store, urls_for(self.settings))

    def list_vods(self, channel: str | None, limit: int, before: int | None) -> Json:
        _check_page(limit, before)
        return self._dump(self.vods.list(channel, limit, before))

    def get_vod(self, vod_id: int) -> Json:
        return self._dump(self.vods.get(vod_id))

    def delete_vod(self, vod_id: int) -> Json:
        """Through the running server when there is one (it stops serving the VOD at once),
        else media and row directly, in whatever storage the config names (local or S3)."""
        server = self._server_if_running()
        if server is not None:
            return server.delete_vod(vod_id)
        from vilokanam.origin.vod import delete_vod

        vod = self.get_vod(vod_id)
        self._with_storage(lambda storage: delete_vod(self.store, storage, vod_id))
        return vod

    def _with_storage(self, work: Callable[[Storage], Awaitable[object]]) -> None:
        """Run ``work`` on the configured media storage (local disk or S3), no server running."""
        import asyncio

        from vilokanam.app import create_storage

        async def run() -> None:
            storage = create_storage(self.settings)
            await storage.start()
            try:
                await work(storage)
            finally:
                await storage.close(self.settings.s3.shutdown_grace)

        asyncio.run(run())

    # -- billing ----------------------------------------------------------------
    @property
    def billing(self) -> Any:
        """Billing operations on this database; tokens signed with the local secret."""
        from vilokanam.billing.tokens import load_or_create_secret
        from vilokanam.origin.api.service import BillingOps

        settings = self.settings
        return BillingOps(
            self.store, settings, urls_for(settings), lambda: load_or_create_secret(settings)
        )

    def create_viewer(self, body: dict[str, Any]) -> Json:
        from vilokanam.origin.api.schemas import ViewerCreate

        return self._dump(self.billing.create_viewer(self._validated(ViewerCreate, body)))

    def list_viewers(self) -> Json:
        return self._dump(self.billing.list_viewers())

    def viewer_token(self, name: str, slug: str) -> Json:
        ops = self.billing
        return self._dump(ops.playback(ops.viewer(name), slug))

    def balance(self, name: str) -> Json:
        """The running server's live figures when it runs here, else the database's."""
        server = self._server_if_running()
        if server is not None:
            return server.balance(name)
        from vilokanam.origin.api.service import offline_viewer_status

        viewer = self.billing.viewer(name)
        return self._dump(offline_viewer_status(self.store, self.settings, viewer))

    def deposit(self, name: str, amount: int, reference: str | None = None) -> Json:
        """Through the running server when there is one (its live counters see it at once)."""
        from vilokanam.origin.api.schemas import DepositIn

        body: dict[str, Any] = {"amount": amount}
        if reference is not None:
            body["reference"] = reference
        validated = self._validated(DepositIn, body)
        server = self._server_if_running()
        if server is not None:
            return server.deposit(name, amount, reference)
        return self._dump(self.billing.deposit(name, validated))

    def earnings(self, slug: str, since: str | None = None) -> Json:
        from vilokanam.origin.api.schemas import EarningsQuery

        query = self._validated(EarningsQuery, {"since": since} if since else {})
        return self._dump(self.billing.earnings(slug, query.since))

    def ledger(
        self, stream: int | None, viewer: str | None, channel: str | None, limit: int
    ) -> Json:
        from vilokanam.origin.api.schemas import LedgerQuery

        raw = {"stream": stream, "viewer": viewer, "channel": channel, "limit": limit}
        query = self._validated(LedgerQuery, {k: v for k, v in raw.items() if v is not None})
        return self._dump(self.billing.entries(query))

    def settle(self) -> Json:
        return self._server_required("Settlement").settle()

    def ingest_server(self) -> RemoteBackend | None:
        """The local server's API when it runs (CDN logs then feed its live billing and viewer
        counts); None: ``billing ingest-logs`` bills in-process, on this database."""
        return self._server_if_running()


Backend = LocalBackend | RemoteBackend


def _check_page(limit: int, before: int | None) -> None:
    """The paging options as the API checks them (a remote server answers 422 otherwise)."""
    if not 1 <= limit <= 500:
        raise CliError("--limit: must be between 1 and 500", 2)
    if before is not None and before < 1:
        raise CliError("--before: must be a positive id (the last id of the previous page)", 2)
