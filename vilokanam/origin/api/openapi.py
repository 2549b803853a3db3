"""The OpenAPI 3.1 document, built from the route table and the pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from vilokanam.origin.api.routes import ROUTES, Route
from vilokanam.origin.api.schemas import ErrorOut, FieldError

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{(\w+)}")

_ERROR_TEXT = {
    400: "Malformed JSON body",
    401: "Missing or wrong bearer token",
    404: "Unknown channel, session, viewer or route (or not_live)",
    409: "A channel or viewer with this name exists",
    422: "Invalid field; detail lists {field, message}",
    500: "Unexpected error",
    503: "Not available on this server (billing, settlement or VOD storage off), or the media "
    "storage refused a delete (nothing was deleted from the catalogue: try again)",
}


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str) -> dict[str, str]:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _parameters(route: Route, components: _Components) -> list[dict[str, Any]]:
    types = dict(route.path_types)
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": types.get(name, "string")}}
        for name in _PARAM.findall(route.path)
    ]  # fmt: skip
    if route.query is not None:
        schema = route.query.model_json_schema(ref_template=REF)
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    return params


def _operation(route: Route, components: _Components) -> dict[str, Any]:
    if route.response is None:
        body: dict[str, Any] = {"type": "object"}
    else:
        body = components.ref(route.response, "serialization")
        if route.many:
            body = {"type": "array", "items": body}
    operation: dict[str, Any] = {
        "operationId": route.handler.__name__.strip("_"),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {
            str(route.status): {"description": "No content"}
            if route.status == 204
            else {"description": "OK", "content": _content(body)}
        },
    }
    if not route.auth:
        operation["security"] = []
    elif route.viewer:
        operation["security"] = [{"viewerKey": []}]
    params = _parameters(route, components)
    if params:
        operation["parameters"] = params
    if route.request is not None:
        operation["requestBody"] = {
            "required": True,
            "content": _content(components.ref(route.request, "validation")),
        }
    errors = set(route.errors) | {500}
    if route.auth:
        errors.add(401)
    if route.request is not None:
        errors |= {400, 422}
    if route.query is not None or route.path_types:
        errors.add(422)
    error_schema = components.ref(ErrorOut, "serialization")
    for status in sorted(errors):
        operation["responses"][str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": _content(error_schema),
        }
    return operation


def build_document(version: str) -> dict[str, Any]:
    """The whole document; every path and method comes from :data:`ROUTES`."""
    components = _Components()
    components.ref(FieldError, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Vilokanam operator API",
            "version": version,
            "description": "Channels, live streams, stream history, server status and billing. "
            'Errors are {"error": code, "detail": ...}.',
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Operator token"},
                "viewerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A viewer's key (vk_…), only on the viewer routes",
                },
            },
        },
        "security": [{"bearer": []}],
    }
