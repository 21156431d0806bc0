"""The server API's OpenAPI 3.1 document, built from its route table (no I/O): one ``post``
operation per call, with its scope, request and response schemas, the JSON error shape every
call may answer with, and the two security schemes (bearer token, ``X-API-Key``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["ERROR_STATUSES", "OperationSpec", "idempotency_key_parameter", "openapi_document"]

# The statuses every call may answer with an error body (docs/server-api.md).
ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "415", "429", "503")


class OperationSpec(Protocol):
    """What the document needs of a call (`trio_rt._engine.server_api.APICall`)."""

    @property
    def name(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def request(self) -> dict[str, Any]: ...
    @property
    def response(self) -> dict[str, Any]: ...


def idempotency_key_parameter(max_length: int) -> dict[str, Any]:
    """The optional ``Idempotency-Key`` request header."""
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": max_length},
    }


def openapi_document(
    document_path: str,
    routes: Iterable[tuple[str, OperationSpec]],
    *,
    headers: Mapping[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The document: `document_path` (GET, no credentials) and each (path, call) of `routes`
    as a POST needing the call's scope; `headers` adds header parameters by call name."""
    error = {
        "description": "an error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    paths: dict[str, Any] = {
        document_path: {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {"200": {"description": "the OpenAPI document"}},
            }
        }
    }
    for path, call in routes:
        operation: dict[str, Any] = {
            "operationId": call.name,
            "summary": call.summary,
            "description": f"Needs the `{call.scope}` scope.",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": call.request}},
            },
            "responses": {
                "200": {
                    "description": "done",
                    "content": {"application/json": {"schema": call.response}},
                },
                **{status: error for status in ERROR_STATUSES},
            },
        }
        if headers and call.name in headers:
            operation["parameters"] = headers[call.name]
        paths[path] = {"post": operation}
    return {
        "openapi": "3.1.0",
        "info": {"title": "trio_rt server API", "version": "1"},
        "paths": paths,
        "security": [{"bearer": []}, {"apiKey": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                            "required": ["code", "message"],
                        }
                    },
                    "required": ["error"],
                }
            },
        },
    }
