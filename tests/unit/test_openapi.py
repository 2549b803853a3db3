"""The OpenAPI document against the router and real requests.

No ``jsonschema`` in the venv, so :class:`SchemaChecker` covers the JSON Schema subset that
pydantic emits; the integration tests reuse it to check live responses.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_urldispatcher import PrefixedSubAppResource

from tests.conftest import make_settings
from vilokanam.config.urls import urls_for
from vilokanam.ingest.streams import StreamManager
from vilokanam.origin.api import setup_api
from vilokanam.origin.api.openapi import build_document
from vilokanam.origin.api.routes import ROUTES
from vilokanam.origin.storage import LocalStorage
from vilokanam.store import Store

TOKEN = "unit-test-token-0123456789"
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


class SchemaChecker:
    """Validate JSON values against schemas of one OpenAPI document (``$ref`` resolved)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def errors(self, schema: dict[str, Any], value: Any, path: str = "$") -> list[str]:
        if "$ref" in schema:
            return self.errors(self.resolve(schema["$ref"]), value, path)
        if "anyOf" in schema:
            options = [self.errors(option, value, path) for option in schema["anyOf"]]
            if all(options):
                return [f"{path}: matches no anyOf option ({options})"]
        problems: list[str] = []
        kind = schema.get("type")
        if kind is not None:
            kinds = kind if isinstance(kind, list) else [kind]
            ok = any(
                isinstance(value, _TYPES[k])
                and not (k in ("integer", "number") and value is True)
                and not (k in ("integer", "number") and value is False)
                for k in kinds
            )
            if not ok:
                return [f"{path}: {value!r} is not {kind}"]
        if "enum" in schema and value not in schema["enum"]:
            problems.append(f"{path}: {value!r} not in {schema['enum']}")
        if "const" in schema and value != schema["const"]:
            problems.append(f"{path}: {value!r} != {schema['const']!r}")
        if isinstance(value, str):
            problems += self._string(schema, value, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                problems.append(f"{path}: {value} < {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                problems.append(f"{path}: {value} > {schema['maximum']}")
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                problems.append(f"{path}: more than {schema['maxItems']} items")
            for index, item in enumerate(value):
                problems += self.errors(schema.get("items", {}), item, f"{path}.{index}")
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            for name in schema.get("required", ()):
                if name not in value:
                    problems.append(f"{path}: missing {name}")
            for name, item in value.items():
                if name in properties:
                    problems += self.errors(properties[name], item, f"{path}.{name}")
                elif schema.get("additionalProperties") is False:
                    problems.append(f"{path}: unexpected {name}")
        return problems

    @staticmethod
    def _string(schema: dict[str, Any], value: str, path: str) -> list[str]:
        problems = []
        if "minLength" in schema and len(value) < schema["minLength"]:
            problems.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            problems.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value)
            except ValueError:
                problems.append(f"{path}: {value!r} is not a date-time")
        return problems

    def documents(self, method: str, path: str) -> bool:
        try:
            self.operation(method, path)
        except AssertionError:
            return False
        return True

    def operation(self, method: str, path: str) -> dict[str, Any]:
        """The documented operation a concrete request path belongs to."""
        path = path.split("?")[0]
        for template, item in self.document["paths"].items():
            pattern = "^" + re.sub(r"\{\w+\}", "[^/]+", template) + "$"
            if re.match(pattern, path) and method.lower() in item:
                return item[method.lower()]
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    def check_response(self, method: str, path: str, status: int, body: Any) -> None:
        responses = self.operation(method, path)["responses"]
        assert str(status) in responses, f"{method} {path}: status {status} not documented"
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        problems = self.errors(schema, body)
        assert not problems, f"{method} {path} → {status}: {problems}"

    def request_schema(self, method: str, path: str) -> dict[str, Any]:
        operation = self.operation(method, path)
        return operation["requestBody"]["content"]["application/json"]["schema"]


def router_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route under /api/v1, found by walking the aiohttp router."""
    found = set()
    for resource in app.router.resources():
        if isinstance(resource, PrefixedSubAppResource):
            for route in resource:
                found.add((route.method, route.resource.canonical))  # type: ignore[union-attr]
    return {(m, p) for m, p in found if p.startswith("/api/v1")}


@pytest.fixture
async def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, api={"token": TOKEN})
    store = Store(settings.database_url)
    manager = StreamManager(settings, store, LocalStorage(settings.media_dir))
    app = web.Application()
    setup_api(
        app,
        store=store,
        settings=settings,
        manager=manager,
        urls_provider=lambda: urls_for(settings),
        token=TOKEN,
    )
    async with TestClient(TestServer(app)) as test_client:
        test_client.app_under_test = app  # type: ignore[attr-defined]
        yield test_client
    store.close()


def test_document_is_built_from_every_route_and_refs_resolve() -> None:
    document = build_document("test")
    documented = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert documented == {(r.method, r.full_path) for r in ROUTES}
    checker = SchemaChecker(document)
    text = repr(document)
    for ref in set(re.findall(r"'\$ref': '([^']+)'", text)):
        assert checker.resolve(ref), ref
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/api/v1/openapi.json"]["get"]["security"] == []


async def test_router_and_document_match_both_ways(client: TestClient) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    documented = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert router_routes(client.app_under_test) == documented  # type: ignore[attr-defined]


GOOD = [
    {"slug": "ok-1"},
    {"slug": "ok-2", "title": "T", "category": "music", "tags": ["a", "b"], "price_per_second": 7},
    {"slug": "ok-3", "ladder": [{"name": "240p", "height": 240, "video_bitrate": 400_000}]},
    {"slug": "ok-4", "ladder": None},
]
BAD = [
    ({"slug": "A"}, "slug"),
    ({"slug": "-ab"}, "slug"),
    ({"slug": "x" * 64}, "slug"),
    ({"slug": "bad-1", "price_per_second": -1}, "price_per_second"),
    ({"slug": "bad-2", "price_per_second": 1.5}, "price_per_second"),
    ({"slug": "bad-3", "price_per_second": "3"}, "price_per_second"),
    ({"slug": "bad-4", "price_per_second": True}, "price_per_second"),
    ({"slug": "bad-5", "tags": "music"}, "tags"),
    ({"slug": "bad-6", "ladder": [{"name": "x", "height": 100_000, "video_bitrate": 1}]},
     "ladder.0.height"),
    ({"slug": "bad-7", "colour": "red"}, "colour"),
    ({"title": "no slug"}, "slug"),
]  # fmt: skip


async def test_documented_request_schema_agrees_with_the_server(client: TestClient) -> None:
    """Every body the document accepts the server accepts, and the same for refusals."""
    document = await (await client.get("/api/v1/openapi.json")).json()
    checker = SchemaChecker(document)
    schema = checker.request_schema("POST", "/api/v1/channels")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for body in GOOD:
        assert checker.errors(schema, body) == [], body
        response = await client.post("/api/v1/channels", json=body, headers=headers)
        assert response.status == 201, await response.text()
        checker.check_response("POST", "/api/v1/channels", 201, await response.json())
    for body, field in BAD:
        assert checker.errors(schema, body), f"document accepts {body}"
        response = await client.post("/api/v1/channels", json=body, headers=headers)
        assert response.status == 422, body
        payload = await response.json()
        checker.check_response("POST", "/api/v1/channels", 422, payload)
        assert payload["error"] == "validation_error"
        assert field in [item["field"] for item in payload["detail"]], payload

    update = checker.request_schema("PATCH", "/api/v1/channels/ok-1")
    assert checker.errors(update, {"ladder": None}) == []
    assert checker.errors(update, {"title": None}), "only the ladder may be null"
    response = await client.patch("/api/v1/channels/ok-1", json={"title": None}, headers=headers)
    assert response.status == 422


async def test_every_documented_error_response_is_json(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    document = await (await client.get("/api/v1/openapi.json")).json()
    checker = SchemaChecker(document)
    cases = [
        ("GET", "/api/v1/channels/nope", None, 404),
        ("POST", "/api/v1/channels", b"{not json", 400),
        ("GET", "/api/v1/history?limit=501", None, 422),
        ("GET", "/api/v1/history/abc", None, 422),
        ("GET", "/api/v1/history/12345", None, 404),
    ]
    for method, path, data, status in cases:
        response = await client.request(method, path, data=data, headers=headers)
        assert response.status == status, (path, await response.text())
        assert response.content_type == "application/json"
        checker.check_response(method, path, status, await response.json())


async def test_an_unexpected_error_is_a_logged_json_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Store) -> dict[str, int]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "counts", broken)
    response = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 500
    payload = await response.json()
    assert payload["error"] == "internal_error" and "fire" not in payload["detail"]
    assert "disk on fire" in caplog.text
